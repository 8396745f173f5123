"""`Metrics`: the loss and any other metrics, averaged per epoch, accumulated on the device.

On an accelerator each metric's value stays a device tensor per step (no host sync); at epoch
end all of a phase's metrics are reduced together and read to the host once. On the CPU,
where reading a value is no sync, values are read as they come and nothing is kept for the
epoch (`READ_CPU_VALUES`). Means are weighted by batch size, so a short last batch counts for
what it holds.

- `learner.cbstate.metricsstep[phase][name]`: the latest step's value: a tensor on an
  accelerator (reading it would sync), a float on the CPU.
- `learner.cbstate.metricsepoch[phase][name]`: one float per completed epoch.

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
from ..core.events import EpochBegin, EpochEnd, FitBegin, StepEnd
from ..core.phases import Phase
from ..support.distributed import all_reduce_sum, is_distributed

__all__ = ["Metric", "Metrics"]

#: Per-step values are folded into one partial sum every this many steps, to bound memory.
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
        phase: only computed in phases of this type (e.g. `fp.ValidationPhase`).
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
    """A batch-size-weighted mean.

    Values on an accelerator stay there until `result` (reading them per step would
    synchronise the host with the device). Numbers and CPU tensors are read as they come
    (see `READ_CPU_VALUES`).
    """

    __slots__ = ("count", "host_count", "host_total", "partial", "sizes", "values")

    def __init__(self) -> None:
        self.values: list[torch.Tensor] = []  # device values not yet folded into `partial`
        self.sizes: list[int] = []
        self.partial: torch.Tensor | None = None  # float64 sum of value * size on the device
        self.count = 0  # the sizes folded into `partial`
        self.host_total = 0.0  # sum of value * size read on the host
        self.host_count = 0

    def add(self, value: Any, size: int) -> Any:
        """Add `value` with weight `size`; returns it as kept: a detached tensor on an
        accelerator, a float otherwise."""
        if isinstance(value, torch.Tensor):
            if not value.is_cpu or not READ_CPU_VALUES:
                value = value.detach()
                self.values.append(value)
                self.sizes.append(size)
                if len(self.values) >= FOLD_EVERY:
                    self._fold()
                return value
            value = value.item()
        value = float(value)
        self.host_total += value * size
        self.host_count += size
        return value

    def empty(self) -> bool:
        return not (self.count or self.values or self.host_count)

    def _fold(self) -> None:
        if not self.values:
            return
        try:  # the usual case, one op for all terms: tensors of one element, on one device
            values = torch.stack(self.values).reshape(len(self.values)).to(torch.float64)
        except (TypeError, RuntimeError):  # tensors of other shapes or on several devices
            values = torch.stack(
                [torch.as_tensor(v).reshape(()).to(torch.float64) for v in self.values]
            )
        sizes = self.sizes
        if sizes.count(sizes[0]) == len(sizes):  # one batch size throughout: no weights tensor
            total = values.sum() * sizes[0]
        else:
            total = values.dot(torch.tensor(sizes, dtype=torch.float64, device=values.device))
        self.partial = total if self.partial is None else self.partial + total
        self.count += sum(self.sizes)
        self.values, self.sizes = [], []

    def total(self) -> tuple[torch.Tensor | float, int]:
        """The weighted sum (a device tensor if any value was on a device) and the weight."""
        self._fold()
        if self.partial is None:
            return self.host_total, self.host_count
        return self.partial + self.host_total, self.count + self.host_count

    def set_total(self, total: torch.Tensor | float, count: int) -> None:
        """Replace everything added so far by a weighted sum and its weight."""
        self.values, self.sizes = [], []
        self.partial, self.count, self.host_total, self.host_count = None, 0, 0.0, 0
        if isinstance(total, torch.Tensor) and not total.is_cpu:
            self.partial, self.count = total, count
        else:
            self.host_total, self.host_count = float(total), count

    def result(self) -> torch.Tensor | float:
        total, count = self.total()
        if count == 0:
            return float("nan")
        return total / count


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
        self._means: dict[Phase, dict[str, _WeightedMean]] = {}
        self._active: dict[Phase, tuple[Metric, ...]] = {}
        # Per phase, what a step updates: (loss mean, cbstate.metricsstep[phase], means, active),
        # so the step handler looks the phase up once.
        self._steps: dict[Phase, tuple[_WeightedMean, dict, dict, tuple[Metric, ...]]] = {}
        self._current: tuple = (None, None)  # (phase, its _steps entry) of the latest epoch

    def __repr__(self) -> str:
        return f"Metrics({', '.join(m.name for m in self.metrics)})"

    def init(self, learner) -> None:
        state = learner.cbstate
        if "metricsstep" not in state:
            state.metricsstep = {}
        if "metricsepoch" not in state:
            state.metricsepoch = {}

    def state_dict(self) -> dict:
        """The running state of stateful metrics (function metrics have none between epochs)."""
        return {m.name: m.fn.state_dict() for m in self.metrics
                if m.stateful and hasattr(m.fn, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        for m in self.metrics:
            if m.name in state and hasattr(m.fn, "load_state_dict"):
                m.fn.load_state_dict(state[m.name])


def _is_stateful(obj: Any) -> bool:
    return all(callable(getattr(obj, a, None)) for a in ("update", "compute", "reset"))


def _batch_size(ys: Any) -> int:
    """The number of examples in `ys` without a first dimension: its length, or 1."""
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
    for m in cb.metrics:
        if m.stateful and hasattr(m.fn, "to"):
            m.fn.to(learner.device)


@on.dispatch
def _metrics_epoch_begin(event: EpochBegin, phase: Phase, cb: Metrics, learner):
    active = tuple(m for m in cb.metrics if isinstance(phase, m.phase))
    cb._active[phase] = active
    cb._means[phase] = {"loss": _WeightedMean()}
    for m in active:
        if m.stateful:
            m.fn.reset()
        else:
            cb._means[phase][m.name] = _WeightedMean()
    step = learner.cbstate.metricsstep[phase] = {}
    cb._steps[phase] = (cb._means[phase]["loss"], step, cb._means[phase], active)
    cb._current = (phase, cb._steps[phase])
    learner.cbstate.metricsepoch.setdefault(phase, {})


@on.dispatch
def _metrics_step_end(event: StepEnd, phase: Phase, cb: Metrics, learner):
    current, entry = cb._current
    loss_mean, step, means, active = entry if current is phase else cb._steps[phase]
    batch = learner.batch
    ys = batch.ys
    try:
        size = ys.shape[0]  # tensors and arrays
    except (AttributeError, IndexError, TypeError):
        size = _batch_size(ys)
    loss = batch.loss
    if loss.is_cpu and READ_CPU_VALUES:  # the add below, inline for the usual case
        loss = loss.item()
        loss_mean.host_total += loss * size
        loss_mean.host_count += size
        step["loss"] = loss
    else:
        step["loss"] = loss_mean.add(loss, size)
    if active:
        with torch.no_grad():
            preds = batch.preds
            for m in active:
                if m.stateful:
                    m.fn.update(preds, ys)
                else:
                    step[m.name] = means[m.name].add(m.fn(preds, ys), size)


@on.dispatch
def _metrics_epoch_end(event: EpochEnd, phase: Phase, cb: Metrics, learner):
    means = cb._means.pop(phase, None)
    if means is None:
        return
    if is_distributed():  # before the check below: every rank must take part
        _reduce_across_ranks(means, learner.device)
    if means["loss"].empty():
        return  # an epoch without a completed step has no mean to record
    results: dict[str, Any] = {name: mean.result() for name, mean in means.items()}
    for m in cb._active[phase]:
        if m.stateful:
            results[m.name] = m.fn.compute()
    epoch = learner.cbstate.metricsepoch.setdefault(phase, {})
    for name, value in _to_host(results).items():
        epoch.setdefault(name, []).append(value)


def _reduce_across_ranks(means: dict[str, _WeightedMean], device: torch.device) -> None:
    """Sum each mean's weighted total and count over all ranks, in one all-reduce."""
    totals = [mean.total() for mean in means.values()]
    sums = [torch.as_tensor(total, dtype=torch.float64).to(device).reshape(())
            for total, _ in totals]
    counts = torch.tensor([count for _, count in totals], dtype=torch.float64, device=device)
    summed = all_reduce_sum(torch.cat([torch.stack(sums), counts]))
    n = len(means)
    for mean, total, count in zip(means.values(), summed[:n], summed[n:].tolist()):
        mean.set_total(total, int(count))


def _to_host(results: dict[str, Any]) -> dict[str, float]:
    """One device-to-host transfer for all tensor results of an epoch."""
    names = [n for n, v in results.items() if isinstance(v, torch.Tensor) and v.numel() == 1]
    out = {n: float(v) for n, v in results.items() if n not in names}
    if names:
        device = results[names[0]].device
        stacked = torch.stack([results[n].reshape(()).to(device, torch.float64) for n in names])
        out.update(zip(names, stacked.tolist()))
    return {n: out[n] for n in results}
