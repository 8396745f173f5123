"""Checkpointer: when it saves, which files it keeps, and what a stopped fit leaves."""

import itertools
import os
import stat

import pytest
import torch

import fluxpy as fp
import fluxpy.support.distributed
from fluxpy.testing import test_learner


def names(folder) -> list[str]:
    return sorted(os.listdir(folder))


def checkpoint_learner(folder, *callbacks, **options):
    return test_learner(fp.Recorder(), fp.Metrics(), *callbacks,
                        fp.Checkpointer(folder, **options), n_batches=4)


def test_saves_one_file_per_epoch_named_by_the_epochs_completed(tmp_path):
    learner = checkpoint_learner(tmp_path, keep_last=None)
    learner.fit(2)
    learner.fit(1)
    assert names(tmp_path) == ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"]
    assert learner.get_callback(fp.Checkpointer).epoch == 3


def test_the_checkpoint_is_taken_after_the_last_phase_of_the_epoch(tmp_path):
    learner = checkpoint_learner(tmp_path)
    learner.fit(1)
    state = torch.load(tmp_path / "epoch-0001.pt", weights_only=True)
    counts = [h["fields"]["epochs"] for _, h in state["cbstate"]["history"]["items"]]
    assert counts == [1, 1]  # training and validation both done
    assert torch.equal(state["model"]["coeff"], learner.model.coeff)
    assert torch.equal(state["rng"]["torch"], torch.get_rng_state())


def test_an_epoch_of_custom_phases_counts_once_even_when_a_phase_repeats(tmp_path):
    learner = checkpoint_learner(tmp_path, keep_last=None)
    data = learner.data.training
    learner.fit(2, phases=[(fp.TrainingPhase(), data), (fp.TrainingPhase(), data)])
    assert names(tmp_path) == ["epoch-0001.pt", "epoch-0002.pt"]


def test_every_saves_each_nth_epoch_and_the_last_one_when_fit_ends(tmp_path):
    learner = checkpoint_learner(tmp_path, every=2, keep_last=None)
    learner.fit(5)
    assert names(tmp_path) == ["epoch-0002.pt", "epoch-0004.pt", "epoch-0005.pt"]


def test_the_last_epoch_written_at_fit_end_is_its_state_at_the_end_of_that_epoch(tmp_path):
    learner = checkpoint_learner(tmp_path, every=2)
    learner.fit(3)
    expected = test_learner(fp.Recorder(), fp.Metrics(), n_batches=4)
    expected.fit(3)
    state = torch.load(tmp_path / "epoch-0003.pt", weights_only=True)
    assert torch.equal(state["model"]["coeff"], expected.model.coeff)


def test_keep_last_keeps_the_newest_files(tmp_path):
    checkpoint_learner(tmp_path, keep_last=2).fit(5)
    assert names(tmp_path) == ["epoch-0004.pt", "epoch-0005.pt"]


def scored_metric(values):
    """A validation metric whose epoch means are `values` (two validation steps per epoch)."""
    stream = itertools.chain.from_iterable((v, v) for v in values)
    return fp.Metric(lambda preds, ys: torch.tensor(float(next(stream))), name="score",
                     phase=fp.ValidationPhase)


@pytest.mark.parametrize(("mode", "kept"), [
    ("min", ["epoch-0002.pt", "epoch-0004.pt", "epoch-0005.pt"]),
    ("max", ["epoch-0001.pt", "epoch-0003.pt", "epoch-0005.pt"]),
])
def test_keep_best_also_keeps_the_best_by_the_monitored_metric(tmp_path, mode, kept):
    learner = test_learner(fp.Recorder(), fp.Metrics(scored_metric([5, 1, 4, 2, 3])),
                           fp.Checkpointer(tmp_path, keep_last=1, monitor="score", mode=mode,
                                           keep_best=2), n_batches=2)
    learner.fit(5)
    assert names(tmp_path) == kept
    scores = learner.get_callback(fp.Checkpointer).scores
    assert sorted(scores) == kept


def test_keep_best_scores_are_resumed_with_the_checkpoint(tmp_path):
    def learner(values):
        return test_learner(fp.Recorder(), fp.Metrics(scored_metric(values)),
                            fp.Checkpointer(tmp_path, keep_last=1, monitor="score", keep_best=1),
                            n_batches=2)

    learner([1, 5]).fit(2)
    resumed = learner([4, 3])
    fp.load_checkpoint(resumed, tmp_path)
    resumed.fit(2)
    assert names(tmp_path) == ["epoch-0001.pt", "epoch-0004.pt"]


def test_monitor_without_validation_values_is_a_clear_error(tmp_path):
    learner = checkpoint_learner(tmp_path, monitor="accuracy", keep_best=1)
    with pytest.raises(ValueError, match=r"monitor='accuracy'\): no 'accuracy' value recorded "
                                         r"for ValidationPhase this epoch \(validation metrics: "
                                         r"'loss'\)"):
        learner.fit(1)


def test_leftover_temporary_files_are_ignored_by_loading_and_removed_at_the_next_save(tmp_path):
    folder = tmp_path / "checkpoints"
    learner = checkpoint_learner(folder)
    learner.fit(1)
    (folder / ".epoch-0002.pt.x1y2z3.tmp").write_bytes(b"half a checkpoint")
    reader = checkpoint_learner(tmp_path / "reader")
    assert fp.load_checkpoint(reader, folder).name == "epoch-0001.pt"
    learner.fit(1)
    assert names(folder) == ["epoch-0001.pt", "epoch-0002.pt"]


def test_a_folder_with_another_runs_later_checkpoints_is_refused_at_fit_begin(tmp_path):
    checkpoint_learner(tmp_path).fit(3)
    fresh = checkpoint_learner(tmp_path)
    with pytest.raises(fp.CheckpointError, match=r"already holds epoch-0003\.pt, beyond this "
                                                 r"learner's epoch 0: it is another run's"):
        fresh.fit(1)
    assert names(tmp_path) == ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"]


def test_it_runs_after_every_other_callback(tmp_path):
    stopper = fp.EarlyStopping(patience=5)
    learner = test_learner(fp.Checkpointer(tmp_path), fp.Recorder(), fp.Metrics(), stopper)
    plan = learner.plans.handlers(fp.EpochEnd(), fp.ValidationPhase())
    assert [h.name for h in plan] == ["Recorder", "Metrics", "EarlyStopping", "Checkpointer"]
    learner.fit(1)
    saved = torch.load(tmp_path / "epoch-0001.pt", weights_only=True)["callbacks"]
    assert saved["EarlyStopping"] == stopper.state_dict()
    assert saved["EarlyStopping"]["best_epoch"] == 1


def interrupt_at(epoch: int) -> fp.CustomCallback:
    """Raises KeyboardInterrupt (as Ctrl-C does) at the first training step of `epoch`."""
    steps = itertools.count()

    def maybe_interrupt(learner):
        if next(steps) == (epoch - 1) * 4:
            raise KeyboardInterrupt

    return fp.CustomCallback(maybe_interrupt, fp.StepBegin, fp.TrainingPhase)


def test_on_ctrl_c_the_last_completed_epoch_is_written(tmp_path):
    learner = checkpoint_learner(tmp_path, interrupt_at(5), every=3, keep_last=None)
    with pytest.raises(KeyboardInterrupt):
        learner.fit(10)
    assert names(tmp_path) == ["epoch-0003.pt", "epoch-0004.pt"]
    expected = test_learner(fp.Recorder(), fp.Metrics(), n_batches=4)
    expected.fit(4)
    resumed = checkpoint_learner(tmp_path / "resumed")
    fp.load_checkpoint(resumed, tmp_path)
    assert torch.equal(resumed.model.coeff, expected.model.coeff)
    assert resumed.cbstate.history[fp.TrainingPhase()].epochs == 4


def test_on_ctrl_c_with_every_epoch_saved_nothing_more_is_written(tmp_path):
    learner = checkpoint_learner(tmp_path, interrupt_at(3), keep_last=None)
    with pytest.raises(KeyboardInterrupt):
        learner.fit(10)
    assert names(tmp_path) == ["epoch-0001.pt", "epoch-0002.pt"]


def test_a_second_checkpointer_is_an_error_when_the_learner_is_built(tmp_path):
    with pytest.raises(ValueError, match="a learner takes one Checkpointer, and this one has 2"):
        test_learner(fp.Checkpointer(tmp_path / "a"), fp.Checkpointer(tmp_path / "b"))


@pytest.mark.parametrize(("options", "match"), [
    ({"every": 0}, r"every=0\): every must be an int >= 1"),
    ({"every": True}, r"every=True\): every must be an int >= 1 \(epochs\) or an fp.Every, "
                      r"e.g. every=fp.Every\(steps=500\)"),
    ({"every": "3"}, r"every='3'\): every must be an int >= 1"),
    ({"keep_last": 0}, r"keep_last=0\): keep at least the newest"),
    ({"mode": "avg"}, r"mode='avg'\): mode is 'min' or 'max'"),
    ({"keep_best": 2}, r"monitor=None, keep_best=2\): give both or neither"),
    ({"monitor": "loss"}, r"monitor='loss', keep_best=0\): give both or neither"),
])
def test_bad_options_are_errors_at_construction(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        fp.Checkpointer(tmp_path, **options)


def test_with_validate_every_a_round_is_its_training_epoch(tmp_path):
    learner = checkpoint_learner(tmp_path, keep_last=None)
    learner.fit(2, validate_every=fp.Every(steps=3))  # 4 steps an epoch: validation at 3, 6
    assert names(tmp_path) == ["epoch-0001.pt", "epoch-0002.pt"]
    assert learner.get_callback(fp.Checkpointer).epoch == 2


def test_an_epoch_checkpoint_taken_at_a_training_epochs_end_is_not_a_mid_epoch_one(tmp_path):
    learner = checkpoint_learner(tmp_path)
    learner.fit(1, data=(learner.data.training, None))  # the round is the training epoch
    state = torch.load(tmp_path / "epoch-0001.pt", weights_only=True)
    assert state["version"] == 2
    assert "position" not in state


def test_every_epochs_is_the_int(tmp_path):
    checkpointer = fp.Checkpointer(tmp_path, every=fp.Every(epochs=2))
    assert checkpointer.every == 2
    learner = checkpoint_learner(tmp_path / "b", every=fp.Every(epochs=2), keep_last=None)
    learner.fit(3)
    assert names(tmp_path / "b") == ["epoch-0002.pt", "epoch-0003.pt"]


def test_every_steps_saves_in_the_middle_of_epochs_and_the_last_epoch_at_fit_end(tmp_path):
    learner = checkpoint_learner(tmp_path, every=fp.Every(steps=3), keep_last=None)
    learner.fit(2)  # 4 steps an epoch: steps 3 and 6 (the second's 2nd)
    assert names(tmp_path) == ["epoch-0000-step-000003.pt", "epoch-0001-step-000002.pt",
                               "epoch-0002.pt"]
    state = torch.load(tmp_path / "epoch-0001-step-000002.pt", weights_only=True)
    assert (state["version"], state["position"]["phase"], state["position"]["steps"]) == (3, 0, 2)


def test_every_seconds_saves_at_the_first_step_boundary_after_the_period(tmp_path,
                                                                          monkeypatch):
    from fluxpy.callbacks import checkpointer

    ticks = itertools.count()
    monkeypatch.setattr(checkpointer, "clock", lambda: float(next(ticks)))
    learner = checkpoint_learner(tmp_path, every=fp.Every(seconds=2.5), keep_last=None)
    learner.fit(1)  # FitBegin reads 0; the steps read 1, 2, 3 (save, and 4 after it), 5, ...
    assert names(tmp_path) == ["epoch-0000-step-000003.pt", "epoch-0001.pt"]


def test_a_limit_in_the_middle_of_an_epoch_leaves_a_checkpoint_of_that_step(tmp_path):
    learner = checkpoint_learner(tmp_path, keep_last=None)
    result = learner.fit(3, max_steps=6)
    assert result.stop_reason == "max_steps=6 reached"
    assert names(tmp_path) == ["epoch-0001-step-000002.pt", "epoch-0001.pt"]
    state = torch.load(tmp_path / "epoch-0001-step-000002.pt", weights_only=True)
    # taken at the step, before the cut epoch's EpochEnd: the Recorder has not counted it
    counts = [h["fields"]["epochs"] for _, h in state["cbstate"]["history"]["items"]]
    assert counts == [1, 1]  # training and validation of the first round only


@pytest.mark.parametrize(("rank", "written"), [(0, ["epoch-0001.pt"]), (1, [])])
def test_under_torch_distributed_only_rank_zero_writes_and_every_rank_waits(
        tmp_path, monkeypatch, rank, written):
    waits = []
    monkeypatch.setattr(fluxpy.support.distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(fluxpy.support.distributed, "is_rank_zero", lambda: rank == 0)
    monkeypatch.setattr(fluxpy.support.distributed, "barrier",
                        lambda: waits.append(names(tmp_path)))
    checkpoint_learner(tmp_path).fit(1)
    assert names(tmp_path) == written
    assert waits == [written]  # the barrier comes after rank 0's write


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_checkpoint_files_get_the_mode_the_umask_gives_new_files(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        checkpoint_learner(tmp_path, every=2).fit(3)  # epoch 2 saved in fit, epoch 3 at FitEnd
    finally:
        os.umask(old)
    assert {name: stat.S_IMODE((tmp_path / name).stat().st_mode)
            for name in names(tmp_path)} == {"epoch-0002.pt": mode, "epoch-0003.pt": mode}


def test_a_checkpointers_file_holds_a_digest_that_load_verifies(tmp_path):
    checkpoint_learner(tmp_path).fit(1)
    state = torch.load(tmp_path / "epoch-0001.pt", weights_only=True)
    assert state["digest"] == fluxpy.support.checkpoint.checkpoint_digest(state)
