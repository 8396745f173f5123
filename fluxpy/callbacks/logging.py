"""Logging callbacks: metrics, hyperparameters and parameter histograms to `LogBackend`s.

    tb = fp.TensorBoardBackend("runs/exp1")
    callbacks = [fp.LogMetrics(tb, fp.CSVBackend("runs/exp1.csv")), fp.LogHyperParams(tb),
                 fp.LogHistograms(tb, every=fp.Every(steps=500))]

- `LogMetrics`: every phase's epoch values from `cbstate.metricsepoch` at `EpochEnd` (axis
  "epoch", counted from 1); with `every=fp.Every(steps=k)` also the step values of
  `cbstate.metricsstep` every `k` steps of each phase (axis "step", the step's index from 0:
  steps 0, k, 2k, ...), with `every=fp.Every(seconds=s)` at each phase's first step and then
  its first step at least `s` seconds after the last one logged. Step values stay on the
  device until the epoch ends and are then read together, so logging adds no per-step sync.
- `LogHyperParams`: the optimizer's hyperparameters in each `param_groups` entry, as the
  update of a training step used them (`lr`, `momentum`, `beta1`/`beta2`, `weight_decay`;
  with several groups named `lr/group1`, ...), at `StepEnd` of the training steps `every`
  picks (`Every(steps=k)`: steps 0, k, 2k, ...; `Every(seconds=s)`: as for `LogMetrics`), or
  with `every=fp.Every(epochs=k)` at the end of every `k`-th training epoch (the last step's
  values; `every=None` is `Every(epochs=1)`).
- `LogHistograms`: each parameter's values (named `params/<parameter name>`) at the training
  steps or epoch ends `every` picks, as for `LogHyperParams`; this reads the parameters to
  the host at that rate.

A plain int `every=k` is `fp.Every(steps=k)`; the `every` attribute holds the `fp.Every`.
Step and epoch periods count from the history, so a resumed run keeps its period; a period
in seconds starts again in a new process (the first step after a resume is logged).

Each flushes its backends at `EpochEnd` and closes them at `FitEnd`, which fires also after an
error or Ctrl-C. Under `torch.distributed` only rank 0 logs. Step numbers come from
`cbstate.history` (`Recorder`), so they continue across `fit` calls and checkpoints.

At `FitBegin` each tells its backends where every phase's logging continues
(`LogBackend.purge`): after a resume from a checkpoint, what a killed run logged past it is
dropped instead of logged twice.

With an experiment tracker (`fp.MLflowBackend`, `fp.WandbBackend`: a `RunBackend`) each also
starts the fit's run at `FitBegin` and ends it at `FitEnd`, as failed after an error; for that
it reads `learner.graph_report` (stored with the run) and `learner.fit_error`, declared only
when it has such a backend (see `fluxpy.callbacks.tracking`). The run's id is the callback's
checkpoint state, so a resumed fit continues its run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import torch

from ..core.access import Access, Read
from ..core.callback import Callback, on, stateaccess
from ..core.events import EpochEnd, FitBegin, FitEnd, StepEnd
from ..core.every import Every
from ..core.phases import AbstractTrainingPhase, Phase
from ..support.checkpoint import unwrap_model
from ..support.distributed import is_rank_zero
from .backends import LogBackend
from .periodic import as_every, due_after_step
from .tracking import RunBackend

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
                            "fp.TensorBoardBackend(...), fp.CSVBackend(...), "
                            "fp.MLflowBackend(...), fp.WandbBackend(...) or an instance of "
                            "your own fp.LogBackend subclass")


def _metrics_every(value: object) -> Every | None:
    if value is None:
        return None
    return as_every("LogMetrics", value, ("steps", "seconds"),
                    why="LogMetrics logs every epoch's values already; every= says when it "
                        "also logs step values")


def _hyperparams_every(value: object) -> Every:
    return as_every("LogHyperParams", Every(epochs=1) if value is None else value,
                    ("steps", "epochs", "seconds"))


def _histograms_every(value: object) -> Every:
    return as_every("LogHistograms", value, ("steps", "epochs", "seconds"))


@attrs.define(init=False)
class _Logger(Callback):
    """What the logging callbacks share: backends, rank-0 gating, flush and close."""

    backends: tuple[LogBackend, ...] = attrs.field(validator=_backends)
    _active: bool = attrs.field(default=True, init=False, repr=False)
    #: What `Every(seconds=...)` reads: `time.monotonic`; a test may put a fake clock here.
    clock: Callable[[], float] = attrs.field(default=time.monotonic, init=False, repr=False)
    _last: dict = attrs.field(factory=dict, init=False, repr=False)  # when it last logged
    _runs: tuple = attrs.field(default=(), init=False, repr=False)  # trackers this fit started

    def state_dict(self) -> dict:
        """The ids of its trackers' runs (nothing to save for other backends)."""
        return {"runs": [backend.state_dict() for backend in self._trackers()]}

    def load_state_dict(self, state: dict) -> None:
        trackers = self._trackers()
        if len(state["runs"]) != len(trackers):
            raise ValueError(f"{type(self).__name__} has {len(trackers)} tracker backends "
                             f"(fp.MLflowBackend, fp.WandbBackend) but the checkpoint has runs "
                             f"of {len(state['runs'])}; give it the backends it was saved with")
        for backend, run in zip(trackers, state["runs"]):
            backend.load_state_dict(run)

    def _trackers(self) -> list[RunBackend]:
        return [backend for backend in self.backends if isinstance(backend, RunBackend)]

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
        every: when to log step values too: `fp.Every(steps=k)` (steps 0, k, 2k, ... of each
            phase; a plain int `k` means the same) or `fp.Every(seconds=s)`; `None` logs
            epoch values only. `fp.Every(epochs=...)` is an error: epoch values are logged
            every epoch.
    """

    every: Every | None = attrs.field(default=None, converter=_metrics_every)
    _logged: dict = attrs.field(factory=dict, init=False, repr=False)
    _pending: list = attrs.field(factory=list, init=False, repr=False)

    def __init__(self, *backends: LogBackend, every: Every | int | None = None) -> None:
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
        every: `fp.Every(steps=k)` (training steps 0, k, 2k, ...; a plain int `k` means the
            same; the default logs every step), `fp.Every(seconds=s)` or `fp.Every(epochs=k)`
            (at the end of every `k`-th training epoch; `None` means `Every(epochs=1)`).
    """

    every: Every = attrs.field(default=Every(steps=1), converter=_hyperparams_every)

    def __init__(self, *backends: LogBackend, every: Every | int | None = 1) -> None:
        self.__attrs_init__(tuple(backends), every)


@attrs.define(init=False)
class LogHistograms(_Logger):
    """Logs a histogram of each parameter at the training steps or epoch ends `every` picks.

    Args:
        *backends: where to log (`CSVBackend` ignores histograms).
        every: `fp.Every(steps=k)` (training steps 0, k, 2k, ...; a plain int `k` means the
            same), `fp.Every(seconds=s)` or `fp.Every(epochs=k)` (at the end of every `k`-th
            training epoch, with the step number of its last step).
    """

    every: Every = attrs.field(default=Every(steps=100), converter=_histograms_every)

    def __init__(self, *backends: LogBackend, every: Every | int = 100) -> None:
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


def _runs_access(cb: _Logger) -> Access:
    """What starting and ending tracker runs reads (nothing without a tracker)."""
    return Access(graph_report=Read(), fit_error=Read()) if cb._trackers() else Access()


def _start_runs(cb: _Logger, learner) -> None:
    """Start (or join) the fit's run of each tracker backend, on rank 0."""
    trackers = cb._trackers() if cb._active else []
    if trackers:
        report = learner.graph_report
        for backend in trackers:
            backend.start_fit(report)
            cb._runs += (backend,)


def _end_runs(cb: _Logger, learner) -> None:
    """Leave the runs this callback started; the last to leave a run ends it."""
    runs, cb._runs = cb._runs, ()
    if runs:
        error = learner.fit_error
        for backend in runs:
            backend.end_fit(error)


@stateaccess.dispatch
def _log_metrics_access(cb: LogMetrics):
    access = Access(cbstate=Access(metricsepoch=Read())) | _runs_access(cb)
    if cb.every is not None:
        access = access | Access(cbstate=Access(metricsstep=Read(), history=Read()))
    return access


@stateaccess.dispatch
def _log_hyperparams_access(cb: LogHyperParams):
    return Access(optimizer=Read(), cbstate=Access(history=Read())) | _runs_access(cb)


@stateaccess.dispatch
def _log_histograms_access(cb: LogHistograms):
    return Access(model=Read(), cbstate=Access(history=Read())) | _runs_access(cb)


@on.dispatch
def _logger_fit_begin(event: FitBegin, phase: Phase, cb: _Logger, learner):
    """LogHyperParams and LogHistograms: training steps continue from the history's count."""
    cb._active = is_rank_zero()
    _start_runs(cb, learner)
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
    try:
        _end_runs(cb, learner)
    finally:
        for backend in cb.backends:
            backend.close()


@on.dispatch
def _log_metrics_fit_begin(event: FitBegin, phase: Phase, cb: LogMetrics, learner):
    cb._active = is_rank_zero()
    _start_runs(cb, learner)
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
    if due_after_step(cb.every, index, cb.clock, cb._last, phase):
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
        try:
            _end_runs(cb, learner)
        finally:
            for backend in cb.backends:
                backend.close()


def _log_hyperparams(cb: LogHyperParams, learner, phase: Phase, step: int) -> None:
    for name, value in hyperparameters(learner.optimizer.param_groups).items():
        cb._scalar(name, value, step, phase, "step")


@on.dispatch
def _log_hyperparams_step_end(event: StepEnd, phase: AbstractTrainingPhase, cb: LogHyperParams,
                              learner):
    if cb.every.epochs is not None or not cb._active:
        return
    index = learner.cbstate.history[phase].steps - 1
    if due_after_step(cb.every, index, cb.clock, cb._last):
        _log_hyperparams(cb, learner, phase, index)


@on.dispatch
def _log_hyperparams_epoch_end(event: EpochEnd, phase: AbstractTrainingPhase,
                               cb: LogHyperParams, learner):
    if not cb._active:
        return
    history = learner.cbstate.history[phase]
    if cb.every.epochs is not None and history.steps_epoch and cb.every.due(history.epochs):
        _log_hyperparams(cb, learner, phase, history.steps - 1)
    cb._flush()


def _log_histograms(cb: LogHistograms, learner, phase: Phase, step: int) -> None:
    for name, param in unwrap_model(learner.model).named_parameters():
        for backend in cb.backends:
            backend.log_histogram(f"params/{name}", param.detach(), step=step, phase=str(phase))


@on.dispatch
def _log_histograms_step_end(event: StepEnd, phase: AbstractTrainingPhase, cb: LogHistograms,
                             learner):
    if cb.every.epochs is not None or not cb._active:
        return
    index = learner.cbstate.history[phase].steps - 1
    if due_after_step(cb.every, index, cb.clock, cb._last):
        _log_histograms(cb, learner, phase, index)


@on.dispatch
def _log_histograms_epoch_end(event: EpochEnd, phase: AbstractTrainingPhase, cb: LogHistograms,
                              learner):
    if not cb._active:
        return
    history = learner.cbstate.history[phase]
    if cb.every.epochs is not None and history.steps_epoch and cb.every.due(history.epochs):
        _log_histograms(cb, learner, phase, history.steps - 1)
    cb._flush()
