"""Logging callbacks: metrics, hyperparameters and parameter histograms to `LogBackend`s.

    tb = fp.TensorBoardBackend("runs/exp1")
    callbacks = [fp.LogMetrics(tb, fp.CSVBackend("runs/exp1.csv")), fp.LogHyperParams(tb),
                 fp.LogHistograms(tb, every=500)]

- `LogMetrics`: every phase's epoch values from `cbstate.metricsepoch` at `EpochEnd` (axis
  "epoch", counted from 1); with `every=k` also the step values of `cbstate.metricsstep`
  every `k` steps of each phase (axis "step", the step's index from 0). Step values stay on
  the device until the epoch ends and are then read together, so logging adds no per-step
  sync.
- `LogHyperParams`: the optimizer's hyperparameters in each `param_groups` entry, as the
  update of a training step used them (`lr`, `momentum`, `beta1`/`beta2`, `weight_decay`;
  with several groups named `lr/group1`, ...): every `every` training steps at `StepEnd`, or
  with `every=None` once per training epoch (the last step's values).
- `LogHistograms`: each parameter's values every `every` training steps (named
  `params/<parameter name>`); this reads the parameters to the host at that rate.

Each flushes its backends at `EpochEnd` and closes them at `FitEnd`, which fires also after an
error or Ctrl-C. Under `torch.distributed` only rank 0 logs. Step numbers come from
`cbstate.history` (`Recorder`), so they continue across `fit` calls and checkpoints.

At `FitBegin` each tells its backends where every phase's logging continues
(`LogBackend.purge`): after a resume from a checkpoint, what a killed run logged past it is
dropped instead of logged twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs
import torch

from ..core.access import Access, Read
from ..core.callback import Callback, on, stateaccess
from ..core.events import EpochEnd, FitBegin, FitEnd, StepEnd
from ..core.phases import AbstractTrainingPhase, Phase
from ..support.distributed import is_rank_zero
from .backends import LogBackend

__all__ = ["LogHistograms", "LogHyperParams", "LogMetrics"]

#: `param_groups` keys logged by `LogHyperParams`; `betas` is split into `beta1` and `beta2`.
HYPERPARAMETERS = ("lr", "momentum", "betas", "weight_decay")


def _backends(instance: Any, attribute: attrs.Attribute, value: tuple) -> None:
    name = type(instance).__name__
    if not value:
        raise ValueError(f"{name}() needs at least one backend, e.g. "
                         f"{name}(fp.TensorBoardBackend('runs/exp'))")
    for backend in value:
        if not isinstance(backend, LogBackend):
            raise TypeError(f"{name}: {backend!r} is not a logging backend; pass "
                            "fp.TensorBoardBackend(...), fp.CSVBackend(...) or an instance of "
                            "your own fp.LogBackend subclass")


def _every(instance: Any, attribute: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{type(instance).__name__}(every={value!r}): every is a number of "
                         "steps >= 1")


def _every_or_none(instance: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                              or value < 1):
        raise ValueError(f"{type(instance).__name__}(every={value!r}): every is a number of "
                         "steps >= 1, or None")


@attrs.define(init=False)
class _Logger(Callback):
    """What the logging callbacks share: backends, rank-0 gating, flush and close."""

    backends: tuple[LogBackend, ...] = attrs.field(validator=_backends)
    _active: bool = attrs.field(default=True, init=False, repr=False)

    def _scalar(self, name: str, value: float, step: int, phase: Phase, axis: str) -> None:
        for backend in self.backends:
            backend.log_scalar(name, value, step=step, phase=str(phase), axis=axis)

    def _flush(self) -> None:
        for backend in self.backends:
            backend.flush()

    def _purge(self, step: int, phase: Phase, axis: str) -> None:
        for backend in self.backends:
            backend.purge(step, phase=str(phase), axis=axis)


@attrs.define(init=False)
class LogMetrics(_Logger):
    """Logs epoch metrics, and with `every=k` step metrics every `k` steps; see the module.

    Args:
        *backends: where to log.
        every: steps between step values, per phase; `None` logs epoch values only.
    """

    every: int | None = attrs.field(default=None, validator=_every_or_none)
    _logged: dict = attrs.field(factory=dict, init=False, repr=False)
    _pending: list = attrs.field(factory=list, init=False, repr=False)

    def __init__(self, *backends: LogBackend, every: int | None = None) -> None:
        self.__attrs_init__(tuple(backends), every)

    def _flush_steps(self) -> None:
        """Read the buffered step values to the host at once and log them."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        tensors = [v.detach().reshape(()).to(torch.float64) for *_, v in pending
                   if isinstance(v, torch.Tensor)]
        read = iter(torch.stack(tensors).tolist() if tensors else ())
        for phase, step, name, value in pending:
            value = next(read) if isinstance(value, torch.Tensor) else float(value)
            self._scalar(name, value, step, phase, "step")


@attrs.define(init=False)
class LogHyperParams(_Logger):
    """Logs the optimizer's hyperparameters during training; see the module docstring.

    Args:
        *backends: where to log.
        every: training steps between logs; `None` logs once per training epoch.
    """

    every: int | None = attrs.field(default=1, validator=_every_or_none)

    def __init__(self, *backends: LogBackend, every: int | None = 1) -> None:
        self.__attrs_init__(tuple(backends), every)


@attrs.define(init=False)
class LogHistograms(_Logger):
    """Logs a histogram of each parameter every `every` training steps.

    Args:
        *backends: where to log (`CSVBackend` ignores histograms).
        every: training steps between histograms.
    """

    every: int = attrs.field(default=100, validator=_every)

    def __init__(self, *backends: LogBackend, every: int = 100) -> None:
        self.__attrs_init__(tuple(backends), every)


def hyperparameters(param_groups: Iterable[dict]) -> dict[str, float]:
    """The logged hyperparameters of an optimizer's `param_groups`, by name."""
    groups = list(param_groups)
    values: dict[str, float] = {}
    for i, group in enumerate(groups):
        suffix = f"/group{i}" if len(groups) > 1 else ""
        for key in HYPERPARAMETERS:
            if key not in group:
                continue
            value = group[key]
            if key == "betas":
                values[f"beta1{suffix}"], values[f"beta2{suffix}"] = map(float, value)
            elif isinstance(value, (int, float, torch.Tensor)):
                values[f"{key}{suffix}"] = float(value)
    return values


@stateaccess.dispatch
def _log_metrics_access(cb: LogMetrics):
    access = Access(cbstate=Access(metricsepoch=Read()))
    if cb.every is not None:
        access = access | Access(cbstate=Access(metricsstep=Read(), history=Read()))
    return access


@stateaccess.dispatch
def _log_hyperparams_access(cb: LogHyperParams):
    return Access(optimizer=Read(), cbstate=Access(history=Read()))


@stateaccess.dispatch
def _log_histograms_access(cb: LogHistograms):
    return Access(model=Read(), cbstate=Access(history=Read()))


@on.dispatch
def _logger_fit_begin(event: FitBegin, phase: Phase, cb: _Logger, learner):
    """LogHyperParams and LogHistograms: training steps continue from the history's count."""
    cb._active = is_rank_zero()
    if cb._active:
        for p, history in learner.cbstate.history.items():
            if isinstance(p, AbstractTrainingPhase):
                cb._purge(history.steps, p, "step")


@on.dispatch
def _logger_epoch_end(event: EpochEnd, phase: Phase, cb: _Logger, learner):
    if cb._active:
        cb._flush()


@on.dispatch
def _logger_fit_end(event: FitEnd, phase: Phase, cb: _Logger, learner):
    for backend in cb.backends:
        backend.close()


@on.dispatch
def _log_metrics_fit_begin(event: FitBegin, phase: Phase, cb: LogMetrics, learner):
    cb._active = is_rank_zero()
    # Values already in metricsepoch (an earlier fit, a loaded checkpoint) were logged then.
    cb._logged = {(p, name): len(values)
                  for p, metrics in learner.cbstate.metricsepoch.items()
                  for name, values in metrics.items()}
    if not cb._active:
        return
    for p, metrics in learner.cbstate.metricsepoch.items():
        cb._purge(max(map(len, metrics.values()), default=0) + 1, p, "epoch")
    if cb.every is not None:
        for p, history in learner.cbstate.history.items():
            cb._purge(history.steps, p, "step")


@on.dispatch
def _log_metrics_step_end(event: StepEnd, phase: Phase, cb: LogMetrics, learner):
    if cb.every is None or not cb._active:
        return
    index = learner.cbstate.history[phase].steps - 1
    if index % cb.every == 0:
        for name, value in learner.cbstate.metricsstep[phase].items():
            if isinstance(value, (int, float)) or (
                    isinstance(value, torch.Tensor) and value.numel() == 1):
                cb._pending.append((phase, index, name, value))


@on.dispatch
def _log_metrics_epoch_end(event: EpochEnd, phase: Phase, cb: LogMetrics, learner):
    if not cb._active:
        return
    cb._flush_steps()
    for name, values in learner.cbstate.metricsepoch.get(phase, {}).items():
        start = cb._logged.get((phase, name), 0)
        for epoch in range(start, len(values)):
            cb._scalar(name, values[epoch], epoch + 1, phase, "epoch")
        cb._logged[(phase, name)] = len(values)
    cb._flush()


@on.dispatch
def _log_metrics_fit_end(event: FitEnd, phase: Phase, cb: LogMetrics, learner):
    try:
        if cb._active:
            cb._flush_steps()  # steps of an epoch an error ended
    finally:
        for backend in cb.backends:
            backend.close()


def _log_hyperparams(cb: LogHyperParams, learner, phase: Phase, step: int) -> None:
    for name, value in hyperparameters(learner.optimizer.param_groups).items():
        cb._scalar(name, value, step, phase, "step")


@on.dispatch
def _log_hyperparams_step_end(event: StepEnd, phase: AbstractTrainingPhase, cb: LogHyperParams,
                              learner):
    if cb.every is None or not cb._active:
        return
    index = learner.cbstate.history[phase].steps - 1
    if index % cb.every == 0:
        _log_hyperparams(cb, learner, phase, index)


@on.dispatch
def _log_hyperparams_epoch_end(event: EpochEnd, phase: AbstractTrainingPhase,
                               cb: LogHyperParams, learner):
    if not cb._active:
        return
    if cb.every is None:
        history = learner.cbstate.history[phase]
        if history.steps_epoch:
            _log_hyperparams(cb, learner, phase, history.steps - 1)
    cb._flush()


@on.dispatch
def _log_histograms_step_end(event: StepEnd, phase: AbstractTrainingPhase, cb: LogHistograms,
                             learner):
    if not cb._active:
        return
    index = learner.cbstate.history[phase].steps - 1
    if index % cb.every == 0:
        for name, param in learner.model.named_parameters():
            for backend in cb.backends:
                backend.log_histogram(f"params/{name}", param.detach(), step=index,
                                      phase=str(phase))
