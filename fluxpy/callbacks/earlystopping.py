"""`EarlyStopping`: end `fit` when a metric has stopped improving.

    fp.EarlyStopping(3)                                      # valid loss, 3 epochs
    fp.EarlyStopping(5, monitor="accuracy", mode="max", min_delta=1e-3)

It reads the epoch values that `Metrics` records in `learner.cbstate.metricsepoch` (so the
graph runs it after `Metrics`) and stops with `CancelFitException`, whose message is the
reason `fit` returns in `FitResult.stop_reason`. Its counters carry over `fit` calls, like the
history they are derived from, and `state_dict` / `load_state_dict` carry them through a
checkpoint, so a resumed run stops where an uninterrupted one would.
"""

from __future__ import annotations

import math

import attrs

from ..core.access import Access, Read
from ..core.callback import Callback, on, runafter, stateaccess
from ..core.errors import CancelFitException
from ..core.events import EpochEnd
from ..core.phases import Phase, ValidationPhase
from .logging import LogMetrics
from .printer import MetricsPrinter
from .recorder import Recorder

__all__ = ["EarlyStopping"]

_SHORT = {"TrainingPhase": "train", "ValidationPhase": "valid"}


def _check_mode(instance: EarlyStopping, attribute: attrs.Attribute, value: str) -> None:
    if value not in ("min", "max"):
        raise ValueError(f"EarlyStopping(mode={value!r}): mode is 'min' (lower is better) or "
                         "'max' (higher is better)")


def _check_patience(instance: EarlyStopping, attribute: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"EarlyStopping(patience={value!r}): patience is a number of epochs "
                         ">= 1")


@attrs.define
class EarlyStopping(Callback):
    """Stops training when `monitor` has not improved for `patience` epochs of `phase`.

    Args:
        patience: epochs without improvement to wait before stopping.
        monitor: a metric name in `cbstate.metricsepoch[phase]` (`"loss"`, or a name given
            to `Metrics`).
        phase: the phase type whose epoch values are watched.
        mode: `"min"` if lower is better, `"max"` if higher is better.
        min_delta: an improvement must beat the best value by more than this.

    `best`, `best_epoch` (counting the phase's recorded epochs from 1) and `wait` (epochs
    since the best) are the state it keeps.
    """

    patience: int = attrs.field(validator=_check_patience)
    monitor: str = "loss"
    phase: type = ValidationPhase
    mode: str = attrs.field(default="min", validator=_check_mode)
    min_delta: float = 0.0
    best: float | None = attrs.field(default=None, init=False)
    best_epoch: int = attrs.field(default=0, init=False)
    wait: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if not (isinstance(self.phase, type) and issubclass(self.phase, Phase)):
            raise TypeError(f"EarlyStopping(phase={self.phase!r}): pass a phase type such as "
                            "fp.ValidationPhase (the class, not an instance)")

    def improved(self, value: float) -> bool:
        """Whether `value` beats the best so far by more than `min_delta`."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best = state["best"]
        self.best_epoch = int(state["best_epoch"])
        self.wait = int(state["wait"])


@stateaccess.dispatch
def _earlystopping_access(cb: EarlyStopping):
    return Access(cbstate=Access(metricsepoch=Read()))


@runafter.dispatch
def _earlystopping_after(cb: EarlyStopping):
    # Stopping at EpochEnd skips the handlers after it: let the epoch be counted, printed and
    # logged first. (The Checkpointer runs after every callback and saves at FitEnd.)
    return (Recorder, MetricsPrinter, LogMetrics)


@on.dispatch
def _earlystopping_epoch_end(event: EpochEnd, phase: Phase, cb: EarlyStopping, learner):
    if not isinstance(phase, cb.phase):
        return
    values = learner.cbstate.metricsepoch.get(phase, {})
    if cb.monitor not in values:
        available = ", ".join(repr(n) for n in values) or "none yet"
        raise ValueError(
            f"EarlyStopping(monitor={cb.monitor!r}): no metric {cb.monitor!r} is recorded for "
            f"{type(phase).__name__} (available: {available}); pass one of those, or add the "
            "metric to fp.Metrics(...)"
        )
    series = values[cb.monitor]
    if not len(series):
        return
    value, epoch = series[-1], len(series)
    if cb.improved(value):
        cb.best, cb.best_epoch, cb.wait = value, epoch, 0
        return
    cb.wait += 1
    if cb.wait >= cb.patience:
        label = _SHORT.get(type(phase).__name__, type(phase).__name__)
        best = "none" if cb.best is None else f"{cb.best:.4g} at epoch {cb.best_epoch}"
        raise CancelFitException(
            f"EarlyStopping: {label} {cb.monitor} did not improve by more than {cb.min_delta} "
            f"for {cb.wait} epochs (best {best})"
        )
