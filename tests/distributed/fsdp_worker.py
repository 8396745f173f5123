"""One rank of the FSDP scenarios that tests/distributed/test_fsdp.py checks.

Run by torchrun with two processes: `fsdp_worker.py OUTDIR SCENARIO...`. Each scenario
trains a small model sharded with FSDP2 and writes what this rank saw to
OUTDIR/SCENARIO-rankN.json; the test asserts on those files.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import attrs
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from worker_common import StopOnRankOne, batches, regression, run_scenarios

import fluxpy as fp
import fluxpy.support.checkpoint_sharded

OUT = Path(sys.argv[1]) if __name__ == "__main__" else Path()
RANK = int(os.environ.get("RANK", 0))


def validation() -> DataLoader:
    """10 samples in batches of 3: the ranks get 5 each, in batches of 3 and 2."""
    return DataLoader(TensorDataset(*regression(10, seed=99)), batch_size=3)


def model(dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(RANK)  # different on each rank: rank 0's weights must be taken
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Dropout(dropout),
                               torch.nn.Linear(8, 1))


def weights(learner: fp.Learner) -> list[float]:
    """The full parameters (a collective under FSDP: every rank calls it)."""
    values = []
    for p in learner.model.parameters():
        full = p.full_tensor() if isinstance(p, dist.tensor.DTensor) else p
        values += full.detach().flatten().tolist()
    return values


def write(scenario: str, **values) -> None:
    (OUT / f"{scenario}-rank{RANK}.json").write_text(json.dumps(values))


def sgd(params):
    return torch.optim.SGD(params, lr=0.1)


def adam(params):
    return torch.optim.Adam(params, lr=0.01)


def learner(distributed, callbacks=(), optimizer=sgd, dropout=0.0, **kwargs) -> fp.Learner:
    return fp.Learner(model(dropout), F.mse_loss, data=(batches(8, seed=1), validation()),
                      optimizer=optimizer, callbacks=list(callbacks), distributed=distributed,
                      use_default_callbacks=False, **kwargs)


def train() -> None:
    """The same data under DDP and FSDP, with clipping, with and without accumulation."""
    for name, extra in (("plain", []), ("accumulate", [fp.GradientAccumulation(2)])):
        results = {}
        for kind, how in (("ddp", fp.DDP()), ("fsdp", fp.FSDP(shard=(torch.nn.Linear,)))):
            lrn = learner(how, [fp.Recorder(), fp.Metrics(), fp.GradientClipping(0.5), *extra])
            lrn.fit(2)
            losses = lrn.cbstate.metricsepoch[fp.ValidationPhase()]["loss"]
            results[kind] = {"weights": weights(lrn), "valid": [float(v) for v in losses]}
            if kind == "fsdp":
                results["explain"] = str(fp.explain(lrn)).split("Distributed")[1].splitlines()
        write(f"train-{name}", **results)


def resume() -> None:
    """Uninterrupted FSDP run vs. stopped mid-epoch and resumed from its sharded checkpoint."""

    def make(folder: str) -> fp.Learner:
        return learner(fp.FSDP(shard=(torch.nn.Linear,)), [
            fp.Recorder(), fp.Metrics(), fp.Checkpointer(OUT / folder, every=fp.Every(steps=3),
                                                         keep_last=None)],
            optimizer=adam, dropout=0.25)

    whole = make("whole")
    whole.fit(4)
    first = make("resumed")
    first.fit(4, max_steps=6)  # 4 steps per epoch per rank: stops 2 steps into epoch 2
    stopped_at = weights(first)
    second = make("resumed")
    fp.load_checkpoint(second, OUT / "resumed")
    loaded = weights(second)
    second.fit(3)
    valid = [second.cbstate.metricsepoch[fp.ValidationPhase()]["loss"],
             whole.cbstate.metricsepoch[fp.ValidationPhase()]["loss"]]
    write("resume", whole=weights(whole), resumed=weights(second), stopped_at=stopped_at,
          loaded=loaded, valid=[[float(v) for v in vs] for vs in valid],
          files=sorted(os.listdir(OUT / "resumed")))


def load_single() -> None:
    """A one-file checkpoint written by one process loads into an FSDP learner."""
    lrn = learner(fp.FSDP(), optimizer=adam)
    fp.load_checkpoint(lrn, OUT / "single.pt")
    state = lrn.optimizer.state_dict()["state"]
    write("load_single", weights=weights(lrn),
          exp_avg=[state[i]["exp_avg"].full_tensor().flatten().tolist() for i in sorted(state)])


def stop() -> None:
    """A stop asked for on rank 1 only ends fit on both ranks at the same step."""
    lrn = learner(fp.FSDP(), [StopOnRankOne(at=3)])
    updates = []
    lrn.optimizer.register_step_post_hook(lambda *args: updates.append(1))
    result = lrn.fit(3)
    write("stop", updates=len(updates), weights=weights(lrn), reason=result.stop_reason)


def paths() -> None:
    """Each rank gives save_checkpoint a path of its own."""
    lrn = learner(fp.FSDP())
    try:
        fp.save_checkpoint(lrn, OUT / f"rank{RANK}.pt")
    except fp.CheckpointError as error:
        write("paths", error=str(error), files=sorted(p.name for p in OUT.glob("rank*.pt")))


def load_one_sharded() -> None:
    """A sharded checkpoint written by one process loads at two."""
    lrn = learner(fp.FSDP(), optimizer=adam)
    fp.load_checkpoint(lrn, OUT / "one-sharded")
    state = lrn.optimizer.state_dict()["state"]
    write("load_one_sharded", weights=weights(lrn),
          exp_avg=[state[i]["exp_avg"].full_tensor().flatten().tolist() for i in sorted(state)])


def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def killed(**checkpointer) -> None:
    """A rank is killed in the middle of the second checkpoint: rank 1 while it writes its
    shards (`killed 1`), or rank 0 while it writes fluxpy.pt after every shard (`killed 0`).
    `checkpointer`: further options of the Checkpointer that saves (async_fsdp_worker.py's
    `killed` saves in the background)."""
    victim = int(sys.argv[3])
    lrn = learner(fp.FSDP(), [fp.Checkpointer(OUT / "killed", **checkpointer)], optimizer=adam)
    lrn.fit(1)
    write("killed", weights=weights(lrn))
    if RANK == victim == 1:
        dcp.FileSystemWriter.write_data = _die
    if RANK == victim == 0:
        fluxpy.support.checkpoint_sharded.write_checkpoint = _die
    lrn.fit(1)
    write("killed-survived")  # never reached: a rank dies, torchrun ends the other


def uneven_validation() -> DataLoader:
    """13 samples in batches of 3: rank 0 gets 7 (3 batches), rank 1 gets 6 (2 batches)."""
    return DataLoader(TensorDataset(*regression(13, seed=98)), batch_size=3)


def own_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each rank's own data for predict and evaluate: 3 batches on rank 0, 2 on rank 1."""
    return batches(3 if RANK == 0 else 2, seed=40 + RANK)


def uneven() -> None:
    """Validation shards, and predict/evaluate data, with more batches on rank 0."""
    learner = fp.Learner(model(), F.mse_loss, data=(batches(8, seed=1), uneven_validation()),
                         optimizer=sgd, callbacks=[fp.Metrics()], use_default_callbacks=False,
                         distributed=fp.FSDP(shard=(torch.nn.Linear,)))
    learner.fit(2)
    mine = own_batches()
    preds, ys = learner.predict(mine, with_targets=True)
    write("uneven", weights=weights(learner), preds=preds.flatten().tolist(),
          ys=ys.flatten().tolist(), evaluated=learner.evaluate(mine),
          valid=learner.cbstate.metricsepoch[fp.ValidationPhase()]["loss"])


@attrs.define
class SkipFirstOnRankOne(fp.Callback):
    """Cancels rank 1's first validation step of each epoch at StepBegin."""

    seen: int = 0


@fp.on.dispatch
def _skip_first(event: fp.StepBegin, phase: fp.ValidationPhase, cb: SkipFirstOnRankOne, learner):
    cb.seen += 1
    if RANK == 1 and cb.seen == 1:
        raise fp.CancelStepException("rank 1 skips its first validation batch")


@fp.on.dispatch
def _skip_reset(event: fp.EpochBegin, phase: fp.ValidationPhase, cb: SkipFirstOnRankOne,
                learner):
    cb.seen = 0


def cancelled() -> None:
    """Validation in which rank 1 alone cancels its first step before the forward pass."""
    learner = fp.Learner(model(), F.mse_loss, data=(batches(8, seed=1), validation()),
                         optimizer=sgd, callbacks=[fp.Metrics(), SkipFirstOnRankOne()],
                         use_default_callbacks=False, distributed=fp.FSDP(shard=(torch.nn.Linear,)))
    learner.fit(1)
    write("cancelled", weights=weights(learner),
          valid=learner.cbstate.metricsepoch[fp.ValidationPhase()]["loss"])


def without_batches() -> None:
    """predict where rank 1's data yields nothing while rank 0's has a batch."""
    learner = fp.Learner(model(), F.mse_loss, optimizer=sgd, use_default_callbacks=False,
                         distributed=fp.FSDP(shard=(torch.nn.Linear,)))
    learner.predict(batches(1, seed=40) if RANK == 0 else iter(()))


if __name__ == "__main__":
    run_scenarios(globals())
