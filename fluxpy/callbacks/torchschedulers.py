"""PyTorch's own LR schedulers, driven by `fp.Scheduler`.

    fp.Scheduler(lambda opt: StepLR(opt, step_size=10), interval="epoch")
    fp.Scheduler(lambda opt: OneCycleLR(opt, max_lr=0.1, total_steps=n), interval="step")
    fp.Scheduler(lambda opt: ReduceLROnPlateau(opt, patience=2), monitor="loss")

`fp.Scheduler(...)` given one makes a `TorchScheduler`, the `Scheduler` subclass here. A
scheduler is given built (on `learner.optimizer`) or as a factory `optimizer -> scheduler`,
which the `TorchScheduler` calls with the learner's optimizer when the learner adopts it (the
learner may have built the optimizer itself). It steps where PyTorch's hand-written loop
steps it: with `interval="step"` after each training step that updated the parameters
(`optimizer.step(); scheduler.step()`), with `interval="epoch"` at the end of each training
epoch; `ReduceLROnPlateau` at the `EpochEnd` of `phase` (validation by default) with the
epoch's `monitor` value from `cbstate.metricsepoch`, after `Metrics` has recorded it. A
training epoch cut short by `fit(max_steps=...)` or `max_time` does not step an
`interval="epoch"` scheduler: the resumed run finishes that epoch and steps it then.

The scheduler's `state_dict()` is part of the `TorchScheduler`'s, so checkpoints resume it.
It sets the learning rate (and momentum, for `OneCycleLR` and `CyclicLR` with
`cycle_momentum`): a `Scheduler` of `fp.LearningRate` beside it, or of `fp.Momentum` beside
one that cycles momentum, is an `UnresolvableConflictError` (for a factory's scheduler, when
the learner adopts it and the factory has run).
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from ..core.access import Access, Read, Write
from ..core.callback import on, stateaccess
from ..core.errors import MissingStateError, UnresolvableConflictError
from ..core.events import EpochEnd, StepBegin, StepEnd
from ..core.phases import AbstractTrainingPhase, Phase, ValidationPhase
from .metrics import Metrics
from .scheduler import HyperParameter, LearningRate, Momentum, Scheduler

__all__ = ["TorchScheduler"]

_LRScheduler = torch.optim.lr_scheduler.LRScheduler
_Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau


@attrs.define
class TorchScheduler(Scheduler):
    """Steps a PyTorch LR scheduler; what `fp.Scheduler(scheduler_or_factory, ...)` makes.

    Args:
        schedules: a `torch.optim.lr_scheduler.LRScheduler` built on the learner's
            optimizer, or a factory `optimizer -> LRScheduler`, called with the learner's
            optimizer when the learner adopts the callback.
        interval: when it steps: `"step"` after every training step that updated the
            parameters (`OneCycleLR`), `"epoch"` after every training epoch.
        monitor: for `ReduceLROnPlateau` (and only for it), instead of `interval`: the metric
            it steps with, a name in `cbstate.metricsepoch[phase]` (`"loss"`, or one given to
            `Metrics`). Whether lower or higher is better is the scheduler's own `mode`
            (`ReduceLROnPlateau(opt, mode="max")`).
        phase: the phase type at whose `EpochEnd` `ReduceLROnPlateau` steps.

    `torch_scheduler` is the PyTorch scheduler (once built); `step` counts the training steps
    started, as in `Scheduler`.
    """

    interval: str | None = None
    monitor: str | None = None
    phase: type = ValidationPhase
    torch_scheduler: Any = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        built = self.schedules if isinstance(self.schedules, _LRScheduler) else None
        name = type(built).__name__ if built is not None else "a factory's scheduler"
        if isinstance(built, _Plateau) and self.monitor is None:
            raise ValueError("Scheduler(ReduceLROnPlateau): give monitor=, the metric it "
                             "watches, e.g. fp.Scheduler(plateau, monitor='loss')")
        if self.monitor is not None:
            if built is not None and not isinstance(built, _Plateau):
                raise ValueError(f"Scheduler({name}, monitor={self.monitor!r}): monitor is for "
                                 "ReduceLROnPlateau; give interval='step' or 'epoch' instead")
            if self.interval is not None:
                raise ValueError(f"Scheduler(monitor={self.monitor!r}, interval="
                                 f"{self.interval!r}): ReduceLROnPlateau steps at the EpochEnd "
                                 "of `phase`; drop interval")
            if not (isinstance(self.phase, type) and issubclass(self.phase, Phase)):
                raise TypeError(f"Scheduler(phase={self.phase!r}): pass a phase type such as "
                                "fp.ValidationPhase (the class, not an instance)")
        elif self.interval not in ("step", "epoch"):
            raise ValueError(f"Scheduler({name}, interval={self.interval!r}): say when it "
                             "steps: interval='step' (after every parameter update, as "
                             "OneCycleLR expects) or interval='epoch' (after every training "
                             "epoch)")
        self.torch_scheduler = built

    @property
    def plateau(self) -> bool:
        """Whether it steps a `ReduceLROnPlateau` (known from `monitor` before it is built)."""
        return self.monitor is not None

    @property
    def hyperparameters(self) -> frozenset[type[HyperParameter]]:
        cycles = getattr(self.torch_scheduler, "cycle_momentum", False)
        return frozenset({LearningRate, *([Momentum] if cycles else [])})

    def init(self, learner) -> None:
        scheduler = self.torch_scheduler
        if scheduler is None:
            scheduler = self.schedules(learner.optimizer)
            if not isinstance(scheduler, _LRScheduler):
                raise TypeError(f"Scheduler: the factory returned {scheduler!r}, not a "
                                "torch.optim.lr_scheduler.LRScheduler; it is called with the "
                                "learner's optimizer: lambda opt: StepLR(opt, step_size=10)")
        _check_optimizer(scheduler, learner.optimizer)
        kind = type(scheduler).__name__
        if isinstance(scheduler, _Plateau) and not self.plateau:
            raise ValueError("Scheduler: the factory built a ReduceLROnPlateau; give monitor=, "
                             "the metric it watches, e.g. monitor='loss', instead of interval")
        if self.plateau and not isinstance(scheduler, _Plateau):
            raise ValueError(f"Scheduler(monitor={self.monitor!r}): the factory built a {kind}; "
                             "monitor is for ReduceLROnPlateau, give interval='step' or 'epoch'")
        if self.plateau:
            _check_monitored(self, learner)
        self.torch_scheduler = scheduler
        _check_momentum(self, learner)

    def state_dict(self) -> dict:
        return {"step": self.step, "scheduler": self.torch_scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "scheduler" not in state:
            raise ValueError("the state is a Scheduler's of schedules, not of a PyTorch "
                             f"{type(self.torch_scheduler).__name__}")
        self.torch_scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])


def _check_optimizer(scheduler: Any, optimizer: Any) -> None:
    if scheduler.optimizer is not optimizer:
        kind = type(scheduler).__name__
        raise ValueError(
            f"Scheduler: the {kind} was built on another optimizer than the learner's "
            f"{type(optimizer).__name__}, so stepping it would not change the learning rates "
            "training uses. Build it on "
            f"learner.optimizer, or pass a factory, fp.Scheduler(lambda opt: {kind}(opt, ...)),"
            " which is called with the learner's optimizer")


def _check_momentum(cb: TorchScheduler, learner: Any) -> None:
    """A factory's scheduler that cycles momentum, beside a `Scheduler` of `fp.Momentum`:
    the conflict the graph could not see before the factory ran."""
    if not callable(cb.schedules) or Momentum not in cb.hyperparameters:
        return  # a scheduler given built: the graph knew what it sets
    # the learner's callbacks are read-only views here, cb's own too: tell it by its factory
    # (a function, which views hand out as it is)
    others = [other for other in learner.callbacks if isinstance(other, Scheduler)
              and Momentum in other.hyperparameters and other.schedules is not cb.schedules]
    if others:
        kind = type(cb.torch_scheduler).__name__
        error = UnresolvableConflictError(cb, others[0], [("optimizer", "optimizer")],
                                          (type(cb).__name__, others[0].__class__.__name__))
        error.add_note(f"The {kind} sets the momentum too (cycle_momentum=True); build it "
                       "with cycle_momentum=False to keep the momentum schedule.")
        raise error


def _check_monitored(cb: TorchScheduler, learner: Any) -> None:
    """A `MissingStateError` (a graph error) when no `Metrics` of the learner computes the
    metric `ReduceLROnPlateau` monitors in `cb.phase`. (With no `Metrics` at all the graph
    already refused the read of `cbstate.metricsepoch`.)"""
    metrics = [m for m in learner.callbacks if isinstance(m, Metrics)]
    names = {"loss"} | {metric.name for m in metrics for metric in m.metrics
                        if issubclass(cb.phase, metric.phase)}
    if metrics and cb.monitor not in names:
        raise MissingStateError(
            cb, f"cbstate.metricsepoch[{cb.phase.__name__}()][{cb.monitor!r}]",
            f"the learner's Metrics compute {sorted(names)} there; add fp.Metrics("
            f"{cb.monitor}) (a metric computed in {cb.phase.__name__}) or monitor one of those")


@stateaccess.dispatch
def _torch_scheduler_access(cb: TorchScheduler):
    # the optimizer's param_groups, and what tells when to step: whether the step updated the
    # parameters, whether a limit cut the epoch, the monitored metric; and the callbacks, to
    # check at init what the graph could not see before a factory ran (the monitored metric
    # is computed, no other Scheduler sets the momentum a OneCycleLR cycles)
    if cb.plateau:
        return Access(optimizer=Write(), cbstate=Access(metricsepoch=Read()), callbacks=Read())
    if cb.interval == "step":
        return Access(optimizer=Write(), batch=Access(update=Read()), callbacks=Read())
    return Access(optimizer=Write(), budget=Read(), callbacks=Read())


@on.dispatch
def _torch_scheduler_step_begin(event: StepBegin, phase: AbstractTrainingPhase,
                                cb: TorchScheduler, learner):
    cb.step += 1


@on.dispatch
def _torch_scheduler_step_end(event: StepEnd, phase: AbstractTrainingPhase, cb: TorchScheduler,
                              learner):
    # after the update, as in PyTorch's loop: optimizer.step(); scheduler.step()
    if cb.interval == "step" and learner.batch.update:
        cb.torch_scheduler.step()


@on.dispatch
def _torch_scheduler_epoch_end(event: EpochEnd, phase: Phase, cb: TorchScheduler, learner):
    if cb.plateau:
        if isinstance(phase, cb.phase):
            series = learner.cbstate.metricsepoch.get(phase, {}).get(cb.monitor)
            if series:
                cb.torch_scheduler.step(series[-1])
    elif cb.interval == "epoch" and isinstance(phase, AbstractTrainingPhase):
        budget = learner.budget
        if budget is None or not budget.cut_short:
            cb.torch_scheduler.step()
