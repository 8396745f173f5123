"""`StopOnNaNLoss`: end `fit` when the loss is NaN or infinite.

On the CPU the check reads the loss every training step, before the optimizer update, so a
non-finite loss never reaches the weights. On an accelerator reading the loss every step
would synchronise the host with the device, so by default the finiteness of each step's loss
is folded into a flag on the device and the flag is read every `every` steps and at each
epoch end: up to `every - 1` updates may follow a non-finite loss there. Pass `every=1` to
get the strict check (and the per-step sync) on an accelerator too.

It checks the training loss at `BackwardBegin` after the callbacks that make it (`MixUp`, a
penalty) and before those that only rescale it for the backward pass: `MixedPrecision` and
`GradientAccumulation` declare `RunFirst(StopOnNaNLoss)`, since a finite loss scaled for
float16 can overflow.
"""

from __future__ import annotations

import math

import attrs
import torch

from ..core.access import Access, Read
from ..core.callback import Callback, on, stateaccess
from ..core.errors import CancelFitException
from ..core.events import BackwardBegin, EpochBegin, EpochEnd, StepEnd
from ..core.phases import AbstractTrainingPhase, AbstractValidationPhase, Phase

__all__ = ["StopOnNaNLoss"]


@attrs.define
class StopOnNaNLoss(Callback):
    """Stops training (`CancelFitException`, reason kept) on a non-finite loss.

    Args:
        every: steps between checks on an accelerator; the CPU checks every step.
    """

    every: int = 64
    _flag: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)
    _steps: int = attrs.field(default=0, init=False, repr=False)


@stateaccess.dispatch
def _nan_access(cb: StopOnNaNLoss):
    return Access(batch=Access(loss=Read()))


def _check(cb: StopOnNaNLoss, loss: torch.Tensor, phase: Phase) -> None:
    if loss.is_cpu:  # reading a CPU value is no device sync: check it now
        value = loss.item()
        if not math.isfinite(value):
            raise CancelFitException(f"StopOnNaNLoss: the {phase} loss is {value}; stopped "
                                     "before the optimizer update")
        return
    bad = ~torch.isfinite(loss.detach())
    cb._flag = bad if cb._flag is None else cb._flag | bad
    cb._steps += 1
    if cb._steps % cb.every == 0:
        _read_flag(cb, phase)


def _read_flag(cb: StopOnNaNLoss, phase: Phase) -> None:
    flag, cb._flag = cb._flag, None
    if flag is not None and bool(flag):
        raise CancelFitException(f"StopOnNaNLoss: a {phase} loss was NaN or infinite")


@on.dispatch
def _nan_epoch_begin(event: EpochBegin, phase: Phase, cb: StopOnNaNLoss, learner):
    cb._flag, cb._steps = None, 0


@on.dispatch
def _nan_training(event: BackwardBegin, phase: AbstractTrainingPhase, cb: StopOnNaNLoss, learner):
    _check(cb, learner.batch.loss, phase)


@on.dispatch
def _nan_validation(event: StepEnd, phase: AbstractValidationPhase, cb: StopOnNaNLoss, learner):
    _check(cb, learner.batch.loss, phase)


@on.dispatch
def _nan_epoch_end(event: EpochEnd, phase: Phase, cb: StopOnNaNLoss, learner):
    _read_flag(cb, phase)
