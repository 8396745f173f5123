"""`Metrics`: the loss and any other metrics, averaged per epoch, accumulated on the device.

On an accelerator each metric's value stays a device tensor per step (no host sync); at epoch
end all of a phase's metrics are summed on the device and read to the host once. On the CPU,
where reading a value is no sync, values are read as they come and nothing is kept for the
epoch (`READ_CPU_VALUES`). Means are weighted by batch size, so a short last batch counts for
what it holds.

- `learner.cbstate.metricsstep[phase][name]`: the latest step's value: a tensor on an
  accelerator (reading it would sync), a float on the CPU.
- `learner.cbstate.metricsepoch[phase][name]`: one float per completed epoch.

In `PredictionPhase` (`learner.predict`, `learner.evaluate`) the metrics of validation are
computed too; steps without a loss (inputs alone) are left out, and the run's entries are
removed at its `FitEnd`, after `evaluate` has read them: `cbstate` keeps training runs only.

Under distributed training the sums and counts of the means are all-reduced at epoch end (one
collective per phase and epoch), so every rank records the metrics of the whole data, e.g. the
validation loss of the full validation set; per-step values stay local. Stateful metrics
synchronise themselves (torchmetrics does in `compute()`).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from ..core.access import Access, Read, Write
from ..core.callback import Callback, on, produces, stateaccess
from ..core.events import EpochBegin, EpochEnd, FitBegin, FitEnd, StepEnd
from ..core.phases import Phase, PredictionPhase, ValidationPhase
from ..support.distributed import all_reduce_sum, is_distributed

__all__ = ["Metric", "Metrics"]

#: Kept device values of one batch size are summed once this many are kept, to bound memory.
FOLD_EVERY = 1024
#: Whether values on the CPU are read to Python numbers every step: there that is no device
#: sync, and it keeps no tensor alive for the rest of the epoch. False treats them like
#: accelerator values (kept as tensors, read once per epoch), which shows that path on the CPU.
READ_CPU_VALUES = True


@attrs.define
class Metric:
    """A metric: `fn(preds, ys)` per step (weighted mean per epoch), or a stateful object with
    `update(preds, ys)`, `compute()` and `reset()` (e.g. a torchmetrics metric).

    Args:
        fn: the function or stateful object.
        name: the name in `metricsepoch`; defaults to the function's `__name__` or the class name.
        phase: only computed in phases of this type (e.g. `fp.ValidationPhase`), and in
            `PredictionPhase` if computed in `ValidationPhase` (so `evaluate` reports it).
    """

    fn: Any
    name: str = attrs.field(default=None)
    phase: type = Phase

    def __attrs_post_init__(self) -> None:
        if self.name is None:
            self.name = getattr(self.fn, "__name__", None) or type(self.fn).__name__
        if not (callable(self.fn) or _is_stateful(self.fn)):
            raise TypeError(f"Metric({self.fn!r}): need fn(preds, ys) or an object with "
                            "update/compute/reset")

    @property
    def stateful(self) -> bool:
        return _is_stateful(self.fn)


class _WeightedMean:
    """A mean weighted by batch size, summed where the values are.

    Numbers and CPU tensors are read as they come (see `READ_CPU_VALUES`). Tensors on an
    accelerator are kept, grouped by batch size, and summed on the device when `FOLD_EVERY`
    of one size are kept and at the end: adding a value never waits for the device.
    """

    def __init__(self) -> None:
        self.total: float | torch.Tensor = 0.0  # sum of value * size; a tensor once one is folded
        self.count = 0  # sum of sizes, of the kept values too
        self._kept: dict[int, list[torch.Tensor]] = {}  # size -> device values not in `total`

    def add(self, value: Any, size: int) -> Any:
        """Add `value` with weight `size`; returns it as kept: a detached tensor on an
        accelerator, a float otherwise."""
        self.count += size
        if isinstance(value, torch.Tensor):
            if not value.is_cpu or not READ_CPU_VALUES:
                return self._keep(value.detach(), size)
            value = value.item()
        value = float(value)
        self.total += value * size
        return value

    def _keep(self, value: torch.Tensor, size: int) -> torch.Tensor:
        kept = self._kept.setdefault(size, [])
        kept.append(value)
        if len(kept) >= FOLD_EVERY:
            self.fold()
        return value

    def fold(self) -> None:
        """Add the kept values to `total`, one sum on the device per batch size."""
        for size, values in self._kept.items():
            stacked = torch.stack([v.reshape(()) for v in values]).to(torch.float64)
            self.total = self.total + stacked.sum() * size
        self._kept = {}

    def result(self) -> torch.Tensor | float:
        """The mean: a device tensor if any value was kept; NaN when nothing was added."""
        self.fold()
        return self.total / self.count if self.count else float("nan")


@attrs.define
class _Epoch:
    """What `Metrics` accumulates during one epoch of a phase."""

    means: dict[str, _WeightedMean]  # the loss's and each function metric's
    functions: tuple[Metric, ...]  # the function metrics computed in this phase
    stateful: tuple[Metric, ...]  # the update/compute/reset metrics computed in this phase
    step: dict  # cbstate.metricsstep[phase]: the latest step's values


class Metrics(Callback):
    """Tracks the loss (always, as `"loss"`) and the given metrics for every phase.

    Args:
        *metrics: functions `fn(preds, ys)`, `fp.Metric(...)`, or stateful objects with
            `update/compute/reset` (torchmetrics metrics work as they are).
    """

    def __init__(self, *metrics: Any) -> None:
        self.metrics: tuple[Metric, ...] = tuple(
            m if isinstance(m, Metric) else Metric(m) for m in metrics
        )
        names = [m.name for m in self.metrics]
        if "loss" in names or len(set(names)) != len(names):
            raise ValueError(f"Metrics names must be unique and not 'loss': {names}; "
                             "rename with fp.Metric(fn, name=...)")
        self._epochs: dict[Phase, _Epoch] = {}  # the running epoch of each phase

    def __repr__(self) -> str:
        return f"Metrics({', '.join(m.name for m in self.metrics)})"

    def init(self, learner) -> None:
        state = learner.cbstate
        if "metricsstep" not in state:
            state.metricsstep = {}
        if "metricsepoch" not in state:
            state.metricsepoch = {}

    def state_dict(self) -> dict:
        """The running state of stateful metrics, and under `"__epochs__"` the means of the
        epochs running now (a checkpoint in the middle of an epoch resumes them)."""
        state = {m.name: m.fn.state_dict() for m in self.metrics
                 if m.stateful and hasattr(m.fn, "state_dict")}
        running = {}
        for phase, epoch in self._epochs.items():
            for mean in epoch.means.values():
                mean.fold()
            running[phase] = {name: (mean.total, mean.count) for name, mean in epoch.means.items()}
        if running:
            state["__epochs__"] = running
        return state

    def load_state_dict(self, state: dict) -> None:
        for m in self.metrics:
            if m.name in state and hasattr(m.fn, "load_state_dict"):
                m.fn.load_state_dict(state[m.name])
        self._epochs = {}
        for phase, means in state.get("__epochs__", {}).items():
            active = [m for m in self.metrics if _computes(m, phase)]
            restored = {}
            for name, (total, count) in means.items():
                restored[name] = mean = _WeightedMean()
                mean.total, mean.count = total, count
            self._epochs[phase] = _Epoch(restored, tuple(m for m in active if not m.stateful),
                                         tuple(m for m in active if m.stateful), {})


def _computes(metric: Metric, phase: Phase) -> bool:
    """Whether `metric` is computed in `phase` (see `Metric`)."""
    return isinstance(phase, metric.phase) or (
        isinstance(phase, PredictionPhase) and issubclass(ValidationPhase, metric.phase))


def _is_stateful(obj: Any) -> bool:
    return all(callable(getattr(obj, a, None)) for a in ("update", "compute", "reset"))


def _batch_size(ys: Any) -> int:
    """The number of examples in `ys`: a tensor's first dimension, else its length, or 1."""
    try:
        return ys.shape[0]  # not len(ys): on a tensor that is a Python function, 4x slower
    except (AttributeError, IndexError, TypeError):
        pass
    try:
        return len(ys)
    except TypeError:
        return 1


@stateaccess.dispatch
def _metrics_access(cb: Metrics):
    return Access(
        batch=Access(preds=Read(), ys=Read(), loss=Read()),
        cbstate=Access(metricsstep=Write(), metricsepoch=Write()),
        device=Read(),
    )


@produces.dispatch
def _metrics_produces(callback_type: type[Metrics]):
    return ("metricsstep", "metricsepoch")


@on.dispatch
def _metrics_fit_begin(event: FitBegin, phase: Phase, cb: Metrics, learner):
    for running, epoch in cb._epochs.items():  # resumed from a mid-epoch checkpoint
        epoch.step = learner.cbstate.metricsstep.setdefault(running, {})
    for m in cb.metrics:
        if m.stateful and hasattr(m.fn, "to"):
            m.fn.to(learner.device)


@on.dispatch
def _metrics_epoch_begin(event: EpochBegin, phase: Phase, cb: Metrics, learner):
    active = [m for m in cb.metrics if _computes(m, phase)]
    functions = tuple(m for m in active if not m.stateful)
    stateful = tuple(m for m in active if m.stateful)
    for m in stateful:
        m.fn.reset()
    means = {name: _WeightedMean() for name in ["loss", *(m.name for m in functions)]}
    step = learner.cbstate.metricsstep[phase] = {}
    cb._epochs[phase] = _Epoch(means, functions, stateful, step)
    learner.cbstate.metricsepoch.setdefault(phase, {})


@on.dispatch
def _metrics_step_end(event: StepEnd, phase: Phase, cb: Metrics, learner):
    epoch = cb._epochs[phase]
    batch = learner.batch
    if batch.loss is None:  # inputs alone, in PredictionPhase: nothing to measure
        return
    size = _batch_size(batch.ys)
    epoch.step["loss"] = epoch.means["loss"].add(batch.loss, size)
    if epoch.functions or epoch.stateful:
        with torch.no_grad():
            preds, ys = batch.preds, batch.ys
            for m in epoch.functions:
                epoch.step[m.name] = epoch.means[m.name].add(m.fn(preds, ys), size)
            for m in epoch.stateful:
                m.fn.update(preds, ys)


@on.dispatch
def _metrics_epoch_end(event: EpochEnd, phase: Phase, cb: Metrics, learner):
    epoch = cb._epochs.pop(phase, None)
    if epoch is None:  # cancelled at EpochBegin before this callback's turn
        return
    if is_distributed():  # before the check below: every rank must take part
        _reduce_across_ranks(epoch.means, learner.device)
    if epoch.means["loss"].count == 0:
        return  # an epoch without a completed step has no mean to record
    results: dict[str, Any] = {name: mean.result() for name, mean in epoch.means.items()}
    results.update((m.name, m.fn.compute()) for m in epoch.stateful)
    record = learner.cbstate.metricsepoch.setdefault(phase, {})
    for name, value in _to_host(results).items():
        record.setdefault(name, []).append(value)


@on.dispatch
def _metrics_prediction_end(event: FitEnd, phase: PredictionPhase, cb: Metrics, learner):
    """A prediction run leaves no trace: its running epoch (if an error ended it) and its
    entries in `metricsstep` and `metricsepoch` go (`evaluate` read them before `FitEnd`)."""
    cb._epochs.pop(phase, None)
    learner.cbstate.metricsstep.pop(phase, None)
    learner.cbstate.metricsepoch.pop(phase, None)


def _reduce_across_ranks(means: dict[str, _WeightedMean], device: torch.device) -> None:
    """Sum each mean's weighted total and count over all ranks, in one all-reduce."""
    for mean in means.values():
        mean.fold()
    totals = [torch.as_tensor(mean.total, dtype=torch.float64, device=device).reshape(())
              for mean in means.values()]
    counts = torch.tensor([mean.count for mean in means.values()], dtype=torch.float64,
                          device=device)
    summed = all_reduce_sum(torch.cat([torch.stack(totals), counts]))
    n = len(means)
    for mean, total, count in zip(means.values(), summed[:n], summed[n:].tolist()):
        mean.total, mean.count = total, int(count)


def _to_host(results: dict[str, Any]) -> dict[str, float]:
    """One device-to-host transfer for all tensor results of an epoch."""
    names = [n for n, v in results.items() if isinstance(v, torch.Tensor) and v.numel() == 1]
    out = {n: float(v) for n, v in results.items() if n not in names}
    if names:
        device = results[names[0]].device
        stacked = torch.stack([results[n].reshape(()).to(device, torch.float64) for n in names])
        out.update(zip(names, stacked.tolist()))
    return {n: out[n] for n in results}
