"""One rank of the scenarios of tests/distributed/test_async_fsdp.py: sharded (FSDP)
checkpoints saved with `Checkpointer(async_save=True)`.

Run by torchrun with two processes: `async_fsdp_worker.py OUTDIR SCENARIO...`; each scenario
writes what this rank saw to OUTDIR/SCENARIO-rankN.json (fsdp_worker.py's helpers).
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import attrs
import fsdp_worker
import torch
import torch.distributed.checkpoint as dcp
from fsdp_worker import RANK, adam, learner, weights, write
from worker_common import run_scenarios

import fluxpy as fp
import fluxpy.support.checkpoint_sharded

OUT = fsdp_worker.OUT = Path(sys.argv[1]) if __name__ == "__main__" else Path()


def checkpointing(folder: str, **options) -> fp.Learner:
    return learner(fp.FSDP(shard=(torch.nn.Linear,)), [
        fp.Recorder(), fp.Metrics(), fp.Checkpointer(OUT / folder, keep_last=None, **options)],
        optimizer=adam, dropout=0.25)


def same() -> None:
    """The same run saving every 3 steps, synchronously and in the background."""
    for folder, background in (("sync", False), ("async", True)):
        checkpointing(folder, every=fp.Every(steps=3), async_save=background).fit(2)


def resume() -> None:
    """Uninterrupted (synchronous saves) vs. stopped mid-epoch and resumed from async saves."""
    whole = checkpointing("whole", every=fp.Every(steps=3))
    whole.fit(4)
    first = checkpointing("resumed", every=fp.Every(steps=3), async_save=True)
    first.fit(4, max_steps=6)
    stopped_at = weights(first)
    second = checkpointing("resumed", every=fp.Every(steps=3), async_save=True)
    fp.load_checkpoint(second, OUT / "resumed")
    loaded = weights(second)
    second.fit(3)
    write("resume", whole=weights(whole), resumed=weights(second), stopped_at=stopped_at,
          loaded=loaded, files=sorted(os.listdir(OUT / "resumed")))


@attrs.define
class StepsWhileWriting(fp.UnsafeCallback):
    """Counts the training steps after the first epoch's save that end while its shards'
    write is held (`writing` set, `release` not), and what the folder holds then; lets the
    write go on after two."""

    writing: threading.Event
    release: threading.Event
    step: int = 0
    steps: int = 0
    seen: list = attrs.Factory(list)


@fp.on.dispatch
def _count_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: StepsWhileWriting,
                    learner):
    cb.step += 1
    if cb.step > 4 and not cb.release.is_set():  # 4 steps per epoch per rank
        assert cb.writing.wait(timeout=60), "the checkpoint write never started"
        cb.steps += 1
        cb.seen.append(sorted(os.listdir(OUT / "overlap")))
        if cb.steps == 2:
            cb.release.set()


def overlap() -> None:
    """Each rank's write of its shards of the epoch-1 checkpoint waits, on its thread, until
    two steps of epoch 2 have ended on the training thread."""
    writing, release, threads = threading.Event(), threading.Event(), []
    real = dcp.FileSystemWriter.write_data

    def held(self, plan, planner):
        if not writing.is_set():
            threads.append(threading.current_thread().name)
            writing.set()
            assert release.wait(timeout=60), "the training thread never let the write go on"
        return real(self, plan, planner)

    dcp.FileSystemWriter.write_data = held
    steps = StepsWhileWriting(writing, release)
    lrn = learner(fp.FSDP(), [steps, fp.Checkpointer(OUT / "overlap", async_save=True)],
                  optimizer=adam)
    lrn.fit(2)
    dcp.FileSystemWriter.write_data = real
    write("overlap", steps=steps.steps, seen=steps.seen, threads=threads,
          files=sorted(os.listdir(OUT / "overlap")))


def failed() -> None:
    """Rank 0's background write of fluxpy.pt fails at the second save: both ranks raise at
    the third."""
    real = fluxpy.support.checkpoint_sharded.write_checkpoint
    calls = []

    def failing(state, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(state, path)

    if RANK == 0:
        fluxpy.support.checkpoint_sharded.write_checkpoint = failing
    lrn = learner(fp.FSDP(), [fp.Recorder(), fp.Checkpointer(OUT / "failed", async_save=True)],
                  optimizer=adam)
    try:
        lrn.fit(4)
    except (OSError, fp.CheckpointError) as error:
        write("failed", error=f"{type(error).__name__}: {error}",
              notes=getattr(error, "__notes__", []),
              epochs=lrn.cbstate.history[fp.TrainingPhase()].epochs,
              files=sorted(os.listdir(OUT / "failed")))
    fluxpy.support.checkpoint_sharded.write_checkpoint = real


def failed_shards() -> None:
    """Rank 1's background write of its shards fails at the second save: DCP tells rank 0,
    and both ranks raise at the third."""
    real = dcp.FileSystemWriter.write_data
    calls = []

    def failing(self, plan, planner):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(self, plan, planner)

    if RANK == 1:
        dcp.FileSystemWriter.write_data = failing
    lrn = learner(fp.FSDP(), [fp.Recorder(), fp.Checkpointer(OUT / "failed_shards",
                                                             async_save=True)], optimizer=adam)
    try:
        lrn.fit(4)
    except fp.CheckpointError as error:
        write("failed_shards", error=str(error),
              epochs=lrn.cbstate.history[fp.TrainingPhase()].epochs,
              files=sorted(os.listdir(OUT / "failed_shards")))
    dcp.FileSystemWriter.write_data = real


def killed() -> None:
    """A rank is killed in the middle of the second checkpoint's background write: rank 1
    while it writes its shards (`killed 1`), or rank 0 while it writes fluxpy.pt (`killed 0`)."""
    fsdp_worker.killed(async_save=True)


if __name__ == "__main__":
    run_scenarios(globals())
