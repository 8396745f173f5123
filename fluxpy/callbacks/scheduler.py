"""`Scheduler`: hyperparameters that follow schedules, set at the start of each training step.

    fp.Scheduler({fp.LearningRate: fp.one_cycle(n_steps, 1e-2),
                  fp.WeightDecay: fp.linear(n_steps, 1e-4, 1e-2)})

A hyperparameter is a `HyperParameter` subclass that says how to set a value on the learner
(`set`) and what that touches (`stateaccess`). The built-in ones write
`optimizer.param_groups`, which every torch optimizer reads at each `step()`, so schedules take
effect whatever the optimizer is. A schedule is any callable `training step (from 0) -> value`
(see `fluxpy.support.schedules`). Per-group values: give a list of schedules (one per
parameter group), or a schedule that returns a list.

The scheduler's position (training steps started) is its state: `state_dict()` /
`load_state_dict()` carry it through a checkpoint, so a resumed run continues the schedule.

Given a PyTorch LR scheduler (or a factory `optimizer -> scheduler`) instead of a dict, it
makes a `TorchScheduler` that steps it (`fluxpy.callbacks.torchschedulers`):

    fp.Scheduler(lambda opt: torch.optim.lr_scheduler.StepLR(opt, 10), interval="epoch")
    fp.Scheduler(lambda opt: ReduceLROnPlateau(opt, patience=2), monitor="loss")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import torch

from ..core.access import Access, Write
from ..core.callback import Callback, NoConflict, Unresolvable, on, resolveconflict, stateaccess
from ..core.events import StepBegin
from ..core.phases import AbstractTrainingPhase
from .gradients import GradientAccumulation
from .todevice import ToDevice

__all__ = [
    "HyperParameter",
    "LearningRate",
    "Momentum",
    "Scheduler",
    "WeightDecay",
    "fit_one_cycle",
]


class HyperParameter:
    """A value that a `Scheduler` sets on the learner at the start of every training step.

    Subclasses are used as types (`{fp.LearningRate: schedule}`); their methods are
    classmethods. The default `set` writes `key` into every optimizer parameter group.

    Extending:
        For an optimizer setting, name its key:

            class Eps(fp.HyperParameter):
                key = "eps"

        For anything else, override `set(learner, value)` and declare what it touches with
        `stateaccess()` (the scheduler's own `stateaccess` is the union over its
        hyperparameters, so the callback graph sees it):

            class DropoutRate(fp.HyperParameter):
                @classmethod
                def set(cls, learner, value):
                    learner.model.dropout.p = value

                @classmethod
                def stateaccess(cls):
                    return fp.Access(model=fp.Write())

        A `set` that writes parameter groups can spread a value over them with
        `per_group(cls, groups, value)` (one number for all, or a list with one per group).
    """

    #: The `param_groups` key the default `set` writes.
    key: ClassVar[str | None] = None

    @classmethod
    def set(cls, learner: Any, value: Any) -> None:
        """Set `value` (one number, or one per parameter group) on `learner` (the view)."""
        if cls.key is None:
            raise NotImplementedError(
                f"{cls.__name__} has no `key` and does not override `set`: give it "
                "key = '<param_groups key>' or a classmethod set(cls, learner, value)"
            )
        groups = learner.optimizer.param_groups
        for group, v in zip(groups, per_group(cls, groups, value)):
            if cls.key not in group:
                raise KeyError(
                    f"{cls.__name__}: {type(learner.optimizer).__name__} has no {cls.key!r} "
                    f"in its param_groups (it has {sorted(k for k in group if k != 'params')})"
                )
            _assign(group, cls.key, v)

    @classmethod
    def stateaccess(cls) -> Access:
        """What `set` touches on the learner; by default the optimizer."""
        return Access(optimizer=Write())


class LearningRate(HyperParameter):
    """The learning rate, `param_groups[i]["lr"]`."""

    key = "lr"


class WeightDecay(HyperParameter):
    """The weight decay, `param_groups[i]["weight_decay"]`."""

    key = "weight_decay"


class Momentum(HyperParameter):
    """The momentum: `momentum` for SGD-like optimizers (SGD, RMSprop), the first of `betas`
    for Adam-like ones (Adam, AdamW, NAdam, ...)."""

    @classmethod
    def set(cls, learner: Any, value: Any) -> None:
        optimizer = learner.optimizer
        groups = optimizer.param_groups
        for group, v in zip(groups, per_group(cls, groups, value)):
            if "betas" in group:
                group["betas"] = (v, *tuple(group["betas"])[1:])
            elif "momentum" in group:
                _assign(group, "momentum", v)
            else:
                raise KeyError(f"Momentum: {type(optimizer).__name__} has neither 'momentum' "
                               "nor 'betas' in its param_groups")


def per_group(hyperparameter: type, groups: Sequence[dict], value: Any) -> Sequence[Any]:
    """`value` as one value per parameter group (a single number is repeated)."""
    if not isinstance(value, (list, tuple)):
        return [value] * len(groups)
    if len(value) != len(groups):
        raise ValueError(f"{hyperparameter.__name__}: got {len(value)} values for "
                         f"{len(groups)} optimizer parameter groups; give one per group")
    return value


def _assign(group: dict, key: str, value: Any) -> None:
    current = group[key]
    if isinstance(current, torch.Tensor):  # e.g. a capturable optimizer's tensor lr
        current.fill_(value)
    else:
        group[key] = value


def _is_torch_scheduler(value: Any) -> bool:
    return isinstance(value, torch.optim.lr_scheduler.LRScheduler)


def _is_hyperparameter(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, HyperParameter)


@attrs.define
class Scheduler(Callback):
    """Sets each hyperparameter to its schedule's value at `StepBegin` of training phases.

    Args:
        schedules: `{HyperParameter subclass: schedule}`, a schedule being a callable
            `step -> value`, or a list of them, one per optimizer parameter group. (A
            `torch.optim.lr_scheduler.LRScheduler` or a factory of one makes a
            `TorchScheduler`, a subclass, which takes `interval`, `monitor` and `phase`.)

    `step` counts the training steps started, over all `fit` calls; it is what the schedules
    are called with and what `state_dict` saves.
    """

    schedules: dict[type[HyperParameter], Any]
    step: int = attrs.field(default=0, init=False)

    def __new__(cls, schedules: Any = None, *args: Any, **kwargs: Any) -> Scheduler:
        if cls is Scheduler and (_is_torch_scheduler(schedules) or (
                callable(schedules) and not isinstance(schedules, dict))):
            from .torchschedulers import TorchScheduler

            cls = TorchScheduler
        return super().__new__(cls)

    @property
    def hyperparameters(self) -> frozenset[type[HyperParameter]]:
        """The hyperparameters it sets (two schedulers may not set the same one)."""
        return frozenset(self.schedules)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.schedules, dict) or not self.schedules:
            raise TypeError("Scheduler takes a non-empty dict {HyperParameter: schedule}, "
                            f"got {self.schedules!r}")
        for kind, schedule in self.schedules.items():
            if not _is_hyperparameter(kind):
                raise TypeError(f"Scheduler: {kind!r} is not an fp.HyperParameter subclass "
                                "(e.g. fp.LearningRate, the class itself)")
            parts = schedule if isinstance(schedule, (list, tuple)) else [schedule]
            if not parts or not all(callable(s) for s in parts):
                raise TypeError(f"Scheduler: the schedule for {kind.__name__} must be a "
                                f"callable step -> value or a list of them, got {schedule!r}")

    def init(self, learner) -> None:
        for kind, schedule in self.schedules.items():
            if isinstance(schedule, (list, tuple)) and _sets_optimizer(kind):
                groups = len(learner.optimizer.param_groups)
                if len(schedule) != groups:
                    raise ValueError(f"Scheduler: {len(schedule)} schedules for "
                                     f"{kind.__name__} but the optimizer has {groups} "
                                     "parameter groups; give one per group")

    def values(self, step: int) -> dict[type[HyperParameter], Any]:
        """Each hyperparameter's value at `step`."""
        return {kind: [s(step) for s in schedule] if isinstance(schedule, (list, tuple))
                else schedule(step) for kind, schedule in self.schedules.items()}

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def _sets_optimizer(kind: type[HyperParameter]) -> bool:
    return kind.stateaccess().permission(("optimizer",)) is not None


@stateaccess.dispatch
def _scheduler_access(cb: Scheduler):
    access = Access()
    for kind in cb.schedules:
        access = access | kind.stateaccess()
    return access


@resolveconflict.dispatch
def _schedulers_conflict(a: Scheduler, b: Scheduler):
    """Two schedulers may share the optimizer if they schedule different hyperparameters."""
    return Unresolvable() if a.hyperparameters & b.hyperparameters else NoConflict()


@resolveconflict.dispatch
def _device_and_scheduler(a: ToDevice, b: Scheduler):
    """`ToDevice` moves optimizer state at `FitBegin`; the scheduler sets `param_groups`
    values at `StepBegin`: they never touch the same thing at the same event."""
    return NoConflict()


@resolveconflict.dispatch
def _scheduler_and_accumulation(a: Scheduler, b: GradientAccumulation):
    """`GradientAccumulation` steps the optimizer at `EpochEnd` for pending gradients; the
    scheduler only sets `param_groups` values at `StepBegin`."""
    return NoConflict()


@on.dispatch
def _scheduler_step_begin(event: StepBegin, phase: AbstractTrainingPhase, cb: Scheduler,
                          learner):
    for kind, value in cb.values(cb.step).items():
        kind.set(learner, value)
    cb.step += 1


def fit_one_cycle(learner: Any, n_epochs: int, max_lr: float | Sequence[float], *,
                  pct_start: float = 0.25, div: float = 25.0, final_div: float = 1e5) -> Any:
    """fit_one_cycle(learner, n_epochs, max_lr, *, pct_start=0.25, div=25, final_div=1e5)

    `learner.fit(n_epochs)` under a one-cycle learning rate sized to this fit
    (`n_epochs * len(training data)` steps); `max_lr` may be a list, one per parameter group.
    The `Scheduler` it adds is removed again when the fit ends, so later fits are untouched;
    for a schedule that a checkpoint can resume, add `fp.Scheduler({fp.LearningRate:
    fp.one_cycle(...)})` to the learner yourself. Returns the `FitResult`.
    """
    from ..support.schedules import one_cycle

    if any(isinstance(cb, Scheduler) and LearningRate in cb.hyperparameters
           for cb in learner.callbacks):
        raise ValueError("fit_one_cycle: the learner already has a Scheduler for "
                         "LearningRate; call learner.fit instead, or remove that Scheduler")
    data = learner.data.training if learner.data is not None else None
    if data is None or not hasattr(data, "__len__"):
        raise ValueError("fit_one_cycle sizes the schedule from len(training data): give the "
                         "learner training data with a length (a list or a DataLoader)")
    n_steps = max(1, n_epochs * len(data))
    peaks = max_lr if isinstance(max_lr, (list, tuple)) else [max_lr]
    cycles = [one_cycle(n_steps, m, pct_start, div, final_div) for m in peaks]
    scheduler = Scheduler({LearningRate: cycles if isinstance(max_lr, (list, tuple))
                           else cycles[0]})
    learner.add_callback(scheduler)
    try:
        return learner.fit(n_epochs)
    finally:
        learner.remove_callback(scheduler)
