"""Checkpointer(async_save=True): the same files as synchronous saves, written while training
goes on; a failed background write is raised at the next save or at FitEnd, never lost."""

import itertools
import os
import threading
import types

import attrs
import pytest
import torch

import fluxpy as fp
import fluxpy.callbacks.checkpointer as checkpointer_module
import fluxpy.callbacks.recorder as recorder_module
from fluxpy.support.async_save import BackgroundWriter, host_snapshot
from fluxpy.testing import test_learner


def names(folder) -> list[str]:
    return sorted(os.listdir(folder))


def checkpoint_learner(folder, *callbacks, **options):
    return test_learner(fp.Recorder(), fp.Metrics(), *callbacks,
                        fp.Checkpointer(folder, **options), n_batches=4)


@pytest.mark.parametrize("options", [
    {"keep_last": None},
    {"every": 2, "keep_last": 2},
    {"every": fp.Every(steps=3), "keep_last": None},
    {"monitor": "loss", "mode": "max", "keep_best": 1, "keep_last": 1},
], ids=["every-epoch", "every-2", "every-3-steps", "keep-best"])
def test_async_saves_write_the_same_bytes_as_synchronous_ones(tmp_path, monkeypatch,
                                                             options):
    # Recorder's epoch times are in the files: each run reads the same clock
    monkeypatch.setattr(recorder_module, "time",
                        types.SimpleNamespace(perf_counter=itertools.count().__next__))
    synchronous = checkpoint_learner(tmp_path / "sync", **options)
    synchronous.fit(3)
    monkeypatch.setattr(recorder_module, "time",
                        types.SimpleNamespace(perf_counter=itertools.count().__next__))
    background = checkpoint_learner(tmp_path / "async", async_save=True, **options)
    background.fit(3)
    assert names(tmp_path / "async") == names(tmp_path / "sync")
    assert len(names(tmp_path / "sync")) >= 2
    for name in names(tmp_path / "sync"):
        assert (tmp_path / "async" / name).read_bytes() == (tmp_path / "sync" / name).read_bytes()
    assert background.get_callback(fp.Checkpointer).scores == \
        synchronous.get_callback(fp.Checkpointer).scores


def test_a_run_resumed_from_an_async_checkpoint_continues_exactly(tmp_path):
    checkpoint_learner(tmp_path, async_save=True, every=fp.Every(steps=3)).fit(2)
    resumed = checkpoint_learner(tmp_path / "more", async_save=True)
    assert fp.load_checkpoint(resumed, tmp_path).name == "epoch-0002.pt"
    resumed.fit(1)
    uninterrupted = test_learner(fp.Recorder(), fp.Metrics(), n_batches=4)
    uninterrupted.fit(3)
    assert torch.equal(resumed.model.coeff, uninterrupted.model.coeff)


@attrs.define
class StepsWhileWriting(fp.UnsafeCallback):
    """After training step `saved_at` (whose checkpoint write is held until `release`),
    counts the steps that end while the write is held, and lets it go on after two."""

    writing: threading.Event
    release: threading.Event
    saved_at: int = 2
    step: int = 0
    steps: int = 0  # ended while the write was held


@fp.on.dispatch
def _count_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: StepsWhileWriting,
                    learner):
    cb.step += 1
    if cb.step > cb.saved_at and not cb.release.is_set():
        assert cb.writing.wait(timeout=60), "the checkpoint write never started"
        cb.steps += 1
        if cb.steps == 2:
            cb.release.set()


def hold_the_first_write(monkeypatch) -> tuple[threading.Event, threading.Event, list]:
    """The first checkpoint write waits (on its thread) until `release` is set."""
    writing, release, threads = threading.Event(), threading.Event(), []
    real = checkpointer_module.write_checkpoint

    def held(state, path):
        threads.append(threading.current_thread())
        if not writing.is_set():
            writing.set()
            assert release.wait(timeout=60), "the training thread never let the write go on"
        real(state, path)

    monkeypatch.setattr(checkpointer_module, "write_checkpoint", held)
    return writing, release, threads


def test_training_steps_run_while_the_checkpoint_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(recorder_module, "time",
                        types.SimpleNamespace(perf_counter=itertools.count().__next__))
    writing, release, threads = hold_the_first_write(monkeypatch)
    steps = StepsWhileWriting(writing, release)
    learner = checkpoint_learner(tmp_path, steps, async_save=True, every=fp.Every(steps=2))
    learner.fit(1)
    assert steps.steps == 2  # steps 3 and 4 ended while the step-2 checkpoint was written
    assert threads[0] is not threading.main_thread()
    monkeypatch.setattr(recorder_module, "time",
                        types.SimpleNamespace(perf_counter=itertools.count().__next__))
    expected = checkpoint_learner(tmp_path / "sync", StepsWhileWriting(writing, release),
                                  every=fp.Every(steps=2))
    expected.fit(1)
    assert names(tmp_path) == [*names(tmp_path / "sync"), "sync"]
    for name in names(tmp_path / "sync"):
        assert (tmp_path / name).read_bytes() == (tmp_path / "sync" / name).read_bytes()


def block_the_file(folder, name: str) -> None:
    """A folder where the checkpoint file should go: every write of it fails when it moves
    the finished temporary file into place (os.replace: Is a directory)."""
    (folder / name).mkdir(parents=True)
    (folder / name / "keep").write_text("")


def test_a_failed_background_write_is_raised_at_the_next_save(tmp_path):
    learner = checkpoint_learner(tmp_path, async_save=True, keep_last=None)
    learner.fit(1)
    block_the_file(tmp_path, "epoch-0002.pt")
    with pytest.raises(fp.CheckpointError, match=r"epoch-0002\.pt: could not be written: Is "
                                                 r"a directory\. No partial file") as info:
        learner.fit(3)
    notes = "\n".join(info.value.__notes__)
    assert (f"Checkpointer(folder={str(tmp_path)!r}, async_save=True): the background write "
            f"of {tmp_path / 'epoch-0002.pt'} failed.") in notes
    assert "Checkpointer" in notes and "EpochEnd" in notes  # raised by the epoch-3 save
    assert learner.cbstate.history[fp.TrainingPhase()].epochs == 3
    assert names(tmp_path) == ["epoch-0001.pt", "epoch-0002.pt"]  # no temporary file left
    assert (tmp_path / "epoch-0002.pt").is_dir()


def test_a_failed_last_write_is_raised_at_fit_end(tmp_path):
    learner = checkpoint_learner(tmp_path, async_save=True)
    block_the_file(tmp_path, "epoch-0001.pt")
    with pytest.raises(fp.CheckpointError, match=r"epoch-0001\.pt: could not be written") as info:
        learner.fit(1)
    assert "FitEnd" in "\n".join(info.value.__notes__)
    assert names(tmp_path) == ["epoch-0001.pt"]


@attrs.define
class FailInEpoch(fp.Callback):
    epoch: int
    epochs: int = 0


@fp.on.dispatch
def _fail_epoch_begin(event: fp.EpochBegin, phase: fp.TrainingPhase, cb: FailInEpoch, learner):
    cb.epochs += 1
    if cb.epochs == cb.epoch:
        raise RuntimeError("the data loader broke")


def test_a_failed_write_is_noted_on_the_error_that_ended_fit(tmp_path):
    learner = checkpoint_learner(tmp_path, FailInEpoch(2), async_save=True)
    block_the_file(tmp_path, "epoch-0001.pt")
    with pytest.raises(RuntimeError, match="the data loader broke") as info:
        learner.fit(3)
    notes = "\n".join(info.value.__notes__)
    assert "FitEnd handlers also failed: CheckpointError" in notes
    assert "epoch-0001.pt" in notes


@attrs.define
class ReleaseAtFitEnd(fp.Callback):
    """Lets the held write go on at FitEnd (before the Checkpointer's FitEnd, which runs last)."""

    release: threading.Event


@fp.on.dispatch
def _release_fit_end(event: fp.FitEnd, phase: fp.Phase, cb: ReleaseAtFitEnd, learner):
    cb.release.set()


def test_an_error_in_fit_waits_for_the_write_in_progress(tmp_path, monkeypatch):
    writing, release, _ = hold_the_first_write(monkeypatch)
    learner = checkpoint_learner(tmp_path, ReleaseAtFitEnd(release), FailInEpoch(2),
                                 async_save=True)
    with pytest.raises(RuntimeError, match="the data loader broke"):
        learner.fit(3)
    assert writing.is_set()  # the epoch-1 write was held until FitEnd, and is complete now
    assert names(tmp_path) == ["epoch-0001.pt"]
    state = torch.load(tmp_path / "epoch-0001.pt", weights_only=True)
    assert state["callbacks"]["Checkpointer"]["epoch"] == 1


def test_a_host_snapshot_keeps_shared_storages_shared_and_is_not_changed_by_training():
    weight = torch.randn(4, 3)
    state = {"model": {"w": weight, "row": weight[1], "t": (weight, 2)}, "n": [1, "a"]}
    snapshot = host_snapshot(state)
    weight.add_(1)
    assert torch.equal(snapshot["model"]["w"] + 1, weight)
    assert snapshot["model"]["row"].untyped_storage().data_ptr() == \
        snapshot["model"]["w"].untyped_storage().data_ptr()
    assert snapshot["model"]["row"].storage_offset() == 3
    assert snapshot["model"]["t"][0] is snapshot["model"]["t"][0] and snapshot["n"] == [1, "a"]


def test_a_background_writer_raises_a_failure_once():
    writer = BackgroundWriter("writer")

    def fail():
        raise OSError("disk on fire")

    writer.submit(fail, "a.pt")
    with pytest.raises(OSError, match="disk on fire") as info:
        writer.wait()
    assert info.value.__notes__ == ["writer: the background write of a.pt failed. The files "
                                    "written before it are as they were."]
    writer.wait()  # raised once
