"""One rank of the DDP scenarios that tests/distributed/test_ddp.py checks.

Run by torchrun with two processes: `ddp_worker.py OUTDIR SCENARIO...`. Each scenario trains
a tiny model under DDP and writes what this rank saw to OUTDIR/SCENARIO-rankN.json (rank 0
also writes the data it used); the test asserts on those files.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import attrs
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import DataLoader, TensorDataset
from worker_common import StopOnRankOne, batches, exit_rank, regression

import fluxpy as fp
import fluxpy.support.distributed

OUT = Path(sys.argv[1]) if __name__ == "__main__" else Path()
RANK = int(os.environ.get("RANK", 0))


def model() -> torch.nn.Module:
    torch.manual_seed(RANK)  # different on each rank: DDP must broadcast rank 0's weights
    return torch.nn.Linear(3, 1)


def weights(learner: fp.Learner) -> list[float]:
    module = learner.model.module if learner.ddp is not None else learner.model
    return [v for p in module.parameters() for v in p.detach().flatten().tolist()]


def write(scenario: str, **values) -> None:
    (OUT / f"{scenario}-rank{RANK}.json").write_text(json.dumps(values))


def sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr)


@attrs.define
class SeenInputs(fp.Callback):
    """The training inputs this rank got, one list per epoch."""

    epochs: list = attrs.Factory(list)


@fp.stateaccess.dispatch
def _seen_access(cb: SeenInputs):
    return fp.Access(batch=fp.Access(xs=fp.Read()))


@fp.on.dispatch
def _seen_epoch(event: fp.EpochBegin, phase: fp.TrainingPhase, cb: SeenInputs, learner):
    cb.epochs.append([])


@fp.on.dispatch
def _seen_step(event: fp.StepBegin, phase: fp.TrainingPhase, cb: SeenInputs, learner):
    cb.epochs[-1].extend(learner.batch.xs.tolist())


@attrs.define
class EpochLog(fp.RankZeroOnly, fp.Callback):
    """Appends one line per epoch to a file shared by all ranks: rank 0's lines only."""

    path: Path


@fp.on.dispatch
def _log_epoch(event: fp.EpochEnd, phase: fp.TrainingPhase, cb: EpochLog, learner):
    with open(cb.path, "a") as f:
        f.write(f"rank {fluxpy.support.distributed.rank()}\n")


def history(learner: fp.Learner) -> dict:
    return {str(p): {"epochs": h.epochs, "steps": h.steps}
            for p, h in learner.cbstate.history.items()}


def train() -> None:
    """Shuffled DataLoaders, metrics, printers, a rank-zero file and checkpoints."""
    train_xs, train_ys = regression(32, seed=1)
    valid_xs, valid_ys = regression(13, seed=2)
    data = (DataLoader(TensorDataset(train_xs, train_ys), batch_size=4, shuffle=True),
            DataLoader(TensorDataset(valid_xs, valid_ys), batch_size=4))
    seen = SeenInputs()
    with open(OUT / f"printer-rank{RANK}.txt", "w") as out:
        learner = fp.Learner(
            model(), F.mse_loss, data=data, optimizer=sgd(0.05),
            callbacks=[seen, EpochLog(OUT / "rankzero.txt"), fp.MetricsPrinter(file=out),
                       fp.Checkpointer(OUT / "train-ckpt")],
        )
        result = learner.fit(3)
    metrics = learner.cbstate.metricsepoch
    write("train", history=history(learner), weights=weights(learner),
          valid_loss=metrics[fp.ValidationPhase()]["loss"],
          seen=seen.epochs, result=[result.epochs, result.stop_reason],
          device=str(learner.device), model=type(learner.model).__name__,
          train_len=len(learner.data.training), valid_len=len(learner.data.validation),
          train_xs=train_xs.tolist(), valid_xs=valid_xs.tolist(), valid_ys=valid_ys.tolist())


def stop() -> None:
    """CancelFitException on rank 1 only; lists of batches (9: the last one is dropped)."""
    learner = fp.Learner(model(), F.mse_loss, data=(batches(9, seed=3), batches(4, seed=4)),
                         optimizer=sgd(0.05), callbacks=[StopOnRankOne(at=3)],
                         use_default_callbacks=False)
    updates = []
    learner.optimizer.register_step_post_hook(lambda *args: updates.append(1))
    result = learner.fit(3)
    write("stop", updates=len(updates), weights=weights(learner),
          result=[result.epochs, result.stop_reason], train_len=len(learner.data.training))


def nan() -> None:
    """A NaN loss in rank 1's second batch: both ranks stop before its update."""
    data = batches(8, seed=5)
    data[3] = (torch.full_like(data[3][0], float("nan")), data[3][1])  # rank 1 gets 1, 3, ...
    learner = fp.Learner(model(), F.mse_loss, data=(data, None), optimizer=sgd(0.05),
                         callbacks=[fp.Recorder(), fp.StopOnNaNLoss()],
                         use_default_callbacks=False)
    first = weights(learner)
    result = learner.fit(2)
    write("nan", history=history(learner), weights=weights(learner), first=first,
          result=[result.epochs, result.stop_reason])


def early() -> None:
    """EarlyStopping on a diverging validation loss stops both ranks at the same epoch."""
    learner = fp.Learner(model(), F.mse_loss, data=(batches(8, seed=6), batches(4, seed=7)),
                         optimizer=sgd(1.5),
                         callbacks=[fp.Recorder(), fp.Metrics(), fp.EarlyStopping(1)],
                         use_default_callbacks=False)
    result = learner.fit(6)
    write("early", history=history(learner), result=[result.epochs, result.stop_reason],
          valid_loss=learner.cbstate.metricsepoch[fp.ValidationPhase()]["loss"])


def accumulate() -> None:
    """GradientAccumulation(2) over 10 batches: 5 per rank, the last group at epoch end."""
    learner = fp.Learner(model(), F.mse_loss, data=(batches(10, seed=8), None),
                         optimizer=sgd(0.05), callbacks=[fp.GradientAccumulation(2)],
                         use_default_callbacks=False)
    allreduces = []

    def counting(state, bucket):
        allreduces.append(1)
        return default_hooks.allreduce_hook(state, bucket)

    learner.model.register_comm_hook(None, counting)
    start = weights(learner)
    learner.fit(1)
    write("accumulate", weights=weights(learner), start=start, allreduces=len(allreduces))


def resume() -> None:
    """Three epochs at once, and two epochs + a resume from the checkpoint + one epoch."""
    def make(folder: str) -> fp.Learner:
        torch.manual_seed(0)
        xs, ys = regression(24, seed=9)
        data = (DataLoader(TensorDataset(xs, ys), batch_size=4, shuffle=True),
                DataLoader(TensorDataset(*regression(9, seed=10)), batch_size=4))
        return fp.Learner(model(), F.mse_loss, data=data, optimizer=sgd(0.05),
                          callbacks=[fp.Recorder(), fp.Checkpointer(OUT / folder)],
                          use_default_callbacks=False)

    whole = make("whole")
    whole.fit(3)
    first = make("parts")
    first.fit(2)
    second = make("parts")
    fp.load_checkpoint(second, OUT / "parts")
    second.fit(1)
    write("resume", whole=weights(whole), resumed=weights(second),
          history=history(second))


@attrs.define
class SeenAll(fp.Callback):
    """Every training input this rank got, in order (a resumed epoch has no EpochBegin)."""

    seen: list = attrs.Factory(list)


@fp.stateaccess.dispatch
def _seen_all_access(cb: SeenAll):
    return fp.Access(batch=fp.Access(xs=fp.Read()))


@fp.on.dispatch
def _seen_all_step(event: fp.StepBegin, phase: fp.TrainingPhase, cb: SeenAll, learner):
    cb.seen.extend(learner.batch.xs.tolist())


def midresume() -> None:
    """Three epochs at once, and a fit stopped by max_steps in the second epoch + a resume
    from its final (mid-epoch) checkpoint: each rank resumes its own shard at the step."""
    def make(folder: str) -> fp.Learner:
        torch.manual_seed(0)
        xs, ys = regression(24, seed=9)
        data = (DataLoader(TensorDataset(xs, ys), batch_size=4, shuffle=True),
                DataLoader(TensorDataset(*regression(9, seed=10)), batch_size=4))
        return fp.Learner(model(), F.mse_loss, data=data, optimizer=sgd(0.05),
                          callbacks=[fp.Recorder(), SeenAll(), fp.Checkpointer(OUT / folder)],
                          use_default_callbacks=False)

    whole = make("midwhole")
    whole.fit(3)  # 3 steps an epoch on each rank
    first = make("midparts")
    result = first.fit(3, max_steps=5)
    second = make("midparts")
    loaded = fp.load_checkpoint(second, OUT / "midparts")
    second.fit(2)
    seen = whole.get_callback(SeenAll).seen
    write("midresume", whole=weights(whole), resumed=weights(second), loaded=loaded.name,
          stop=result.stop_reason, history=history(second),
          first_seen=first.get_callback(SeenAll).seen,
          resumed_seen=second.get_callback(SeenAll).seen, whole_seen=seen)


def midaccum() -> None:
    """Metrics and GradientAccumulation(2): three epochs at once, and a fit stopped by
    max_steps at the first step of the second epoch (inside a group, with running means that
    differ between the ranks) + a resume from its mid-epoch checkpoint."""
    def make(folder: str) -> fp.Learner:
        torch.manual_seed(0)
        xs, ys = regression(24, seed=16)
        data = (DataLoader(TensorDataset(xs, ys), batch_size=4, shuffle=True),
                DataLoader(TensorDataset(*regression(9, seed=17)), batch_size=4))
        return fp.Learner(model(), F.mse_loss, data=data, optimizer=sgd(0.05),
                          callbacks=[fp.Recorder(), fp.Metrics(), fp.GradientAccumulation(2),
                                     fp.Checkpointer(OUT / folder)],
                          use_default_callbacks=False)

    def losses(learner: fp.Learner) -> dict:
        return {str(p): m["loss"] for p, m in learner.cbstate.metricsepoch.items()}

    whole = make("accwhole")
    whole.fit(3)  # 3 steps an epoch on each rank
    first = make("accparts")
    result = first.fit(3, max_steps=4)
    second = make("accparts")
    loaded = fp.load_checkpoint(second, OUT / "accparts")
    second.fit(2)
    write("midaccum", whole=weights(whole), resumed=weights(second), loaded=loaded.name,
          stop=result.stop_reason, whole_losses=losses(whole), resumed_losses=losses(second))


def batchnorm_learner() -> fp.Learner:
    """A BatchNorm model, different on each rank, with Metrics."""
    torch.manual_seed(RANK)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                              torch.nn.Linear(4, 1))
    return fp.Learner(net, F.mse_loss, data=(batches(6, seed=12), batches(3, seed=13)),
                      optimizer=sgd(0.05), callbacks=[fp.Metrics()], use_default_callbacks=False)


def buffers() -> None:
    """A BatchNorm model: its buffers are rank 0's on every rank after validation."""
    learner = batchnorm_learner()
    learner.fit(2)
    write("buffers", running_mean=learner.model.module[1].running_mean.tolist(),
          valid_loss=learner.cbstate.metricsepoch[fp.ValidationPhase()]["loss"])


def predict() -> None:
    """predict and evaluate after training a BatchNorm model: over the same data on both
    ranks, and over each rank's own data (3 batches on rank 0, 2 on rank 1)."""
    learner = batchnorm_learner()
    learner.fit(1)
    shared, own = batches(5, seed=20), batches(3 if RANK == 0 else 2, seed=30 + RANK)
    state = {k: v.tolist() for k, v in learner.model.module.state_dict().items()}
    write("predict", state=state, shared=learner.predict(shared).flatten().tolist(),
          shared_evaluated=learner.evaluate(shared),
          own=learner.predict(own).flatten().tolist(), own_evaluated=learner.evaluate(own),
          state_after={k: v.tolist() for k, v in learner.model.module.state_dict().items()})


def threaded() -> None:
    """The same training under the serial and the threaded executor: accumulation, clipping,
    metrics, early stopping, checkpoints, a printer (the handlers that communicate included)."""
    def run(executor, name: str) -> dict:
        torch.manual_seed(0)
        with open(OUT / f"threaded-{name}-printer-rank{RANK}.txt", "w") as out:
            learner = fp.Learner(
                model(), F.mse_loss, data=(batches(12, seed=14), batches(5, seed=15)),
                optimizer=sgd(0.05), executor=executor,
                callbacks=[fp.GradientAccumulation(2), fp.GradientClipping(0.5),
                           fp.EarlyStopping(patience=5), fp.MetricsPrinter(file=out),
                           fp.Checkpointer(OUT / f"threaded-{name}")],
            )
            learner.fit(3)
        return {"weights": weights(learner), "metrics": {
            str(p): values for p, values in learner.cbstate.metricsepoch.items()}}

    write("threaded", serial=run(fp.SerialExecutor(), "serial"),
          threaded=run(fp.ThreadedExecutor(4), "threaded"))


def limits() -> None:
    """max_steps=6 and validation every 2 steps over 8 batches (4 per rank): same stop."""
    learner = fp.Learner(model(), F.mse_loss, data=(batches(8, seed=12), batches(4, seed=13)),
                         optimizer=sgd(0.05), callbacks=[fp.Recorder(), fp.Metrics()],
                         use_default_callbacks=False)
    result = learner.fit(max_steps=6, validate_every=fp.Every(steps=2))
    write("limits", history=history(learner), weights=weights(learner),
          result=[result.epochs, result.stop_reason],
          valid_loss=learner.cbstate.metricsepoch[fp.ValidationPhase()]["loss"])


class RankClock:
    """`fluxpy.engine.budget.clock` faked per rank: rank 0's moves 1 s per read, rank 1's
    3 s per read from another origin (it runs ahead: alone it would stop much earlier)."""

    def __init__(self) -> None:
        self.now, self.tick = 1000.0 + 500.0 * RANK, 1.0 + 2.0 * RANK

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


class Collectives:
    """Counts the calls of torch.distributed's broadcast and all_reduce (as wrappers)."""

    def __init__(self) -> None:
        self.counts = {"broadcast": 0, "all_reduce": 0}
        self.originals = {name: getattr(dist, name) for name in self.counts}
        for name, original in self.originals.items():
            setattr(dist, name, self._counting(name, original))

    def _counting(self, name, original):
        def call(*args, **kwargs):
            self.counts[name] += 1
            return original(*args, **kwargs)
        return call

    def take(self) -> dict:
        counts, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return counts

    def restore(self) -> None:
        for name, original in self.originals.items():
            setattr(dist, name, original)


@attrs.define
class ValidationSteps(fp.Callback):
    """The training step (of the running fit) after which each validation epoch began."""

    steps: int = 0
    at: list = attrs.Factory(list)


@fp.on.dispatch
def _count_step(event: fp.StepEnd, phase: fp.TrainingPhase, cb: ValidationSteps, learner):
    cb.steps += 1


@fp.on.dispatch
def _validation_at(event: fp.EpochBegin, phase: fp.ValidationPhase, cb: ValidationSteps,
                   learner):
    cb.at.append(cb.steps)


def timed() -> None:
    """max_time and Every(seconds=) with clocks that differ per rank: rank 0's decides."""
    budget_module = sys.modules["fluxpy.engine.budget"]
    saved_clock, budget_module.clock = budget_module.clock, RankClock()
    seen = ValidationSteps()
    learner = fp.Learner(model(), F.mse_loss, data=(batches(8, seed=14), batches(4, seed=15)),
                         optimizer=sgd(0.05), callbacks=[fp.Recorder(), fp.Metrics(), seen],
                         use_default_callbacks=False)
    learner.fit(1)  # the first fit agrees on a seed (one broadcast): not counted
    collectives = Collectives()
    try:
        by_steps = learner.fit(max_steps=6)
        counted_steps = collectives.take()
        by_time = learner.fit(max_time=5.5)  # rank 0: 1 s per step, so 6 steps
        counted_time = collectives.take()
        time_history, time_weights = history(learner), weights(learner)
        seen.steps, seen.at = 0, []
        every = learner.fit(max_steps=8, validate_every=fp.Every(seconds=2.5))
    finally:
        collectives.restore()
        budget_module.clock = saved_clock
    write("timed", by_steps=[by_steps.epochs, by_steps.stop_reason],
          by_time=[by_time.epochs, by_time.stop_reason], counted_steps=counted_steps,
          counted_time=counted_time, time_history=time_history, time_weights=time_weights,
          every=[every.epochs, every.stop_reason], validated_at=seen.at,
          history=history(learner), weights=weights(learner),
          valid_loss=learner.cbstate.metricsepoch[fp.ValidationPhase()]["loss"])


def load_single() -> None:
    """A checkpoint written by one process loads into a DDP learner."""
    learner = fp.Learner(model(), F.mse_loss, data=(batches(4, seed=11), None),
                         use_default_callbacks=False)
    fp.load_checkpoint(learner, OUT / "single.pt")
    write("load_single", weights=weights(learner))


def tracked() -> None:
    """LogMetrics to an MLflow store (SQLite) on both ranks: rank 0 alone starts a run."""
    tracker = fp.MLflowBackend(f"sqlite:///{OUT / 'mlflow.db'}", experiment="ddp")
    learner = fp.Learner(model(), F.mse_loss, data=(batches(8, seed=12), batches(4, seed=13)),
                         optimizer=sgd(0.05), use_default_callbacks=False,
                         callbacks=[fp.Recorder(), fp.Metrics(), fp.LogMetrics(tracker)])
    learner.fit(2)
    write("tracked", run_id=tracker.run_id,
          losses=learner.cbstate.metricsepoch[fp.TrainingPhase()]["loss"])


if __name__ == "__main__":
    torch.set_num_threads(1)
    for name in sys.argv[2:]:
        globals()[name]()
    exit_rank()
