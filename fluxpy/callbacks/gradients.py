"""`GradientAccumulation` and `GradientClipping`: change the update through the step's hook.

The update hook of the built-in training step: the step sets `learner.batch.update = True`
when it starts; after `BackwardEnd` it calls `fp.update_parameters(learner)` only if
`learner.batch.update` is still true. `update_parameters` steps the optimizer (through
`learner.scaler`, a `torch.amp.GradScaler`, when there is one) and then zeroes the gradients
(`set_to_none=True`). So a callback skips an update by setting `batch.update = False`
(`GradientAccumulation` does), and handlers at `BackwardEnd` that read `batch.update` know
whether this step's gradients are about to be used (`GradientClipping` and `MixedPrecision`
clip and unscale only then).

Gradients left pending when a training epoch ends (the last `k < n` accumulated batches) are
applied at `EpochEnd`: `MixedPrecision` unscales them, `GradientClipping` clips them, then
`GradientAccumulation` updates, in that order (their `resolveconflict` methods say so).

Under DistributedDataParallel the gradients are all-reduced inside `backward()`, so
`BackwardEnd` handlers see the averaged gradients of all ranks (clipping clips those).
`GradientAccumulation` turns the all-reduce off from `StepBegin` of its intermediate steps
(what `model.no_sync()` does), so only the updating step's backward communicates; the pending
gradients at epoch end are averaged over the ranks by the first `gradients_pending` call.
"""

from __future__ import annotations

import attrs
import torch

from ..core.access import Access, Read, Write
from ..core.callback import Callback, RunFirst, on, resolveconflict, stateaccess
from ..core.events import BackwardBegin, BackwardEnd, EpochBegin, EpochEnd, StepBegin
from ..core.phases import AbstractTrainingPhase
from ..engine.loop import update_parameters
from ..support.distributed import set_gradient_sync, sync_pending_gradients
from .nan import StopOnNaNLoss
from .todevice import ToDevice

__all__ = ["GradientAccumulation", "GradientClipping", "gradients_pending"]


def gradients_pending(learner) -> bool:
    """Whether the last training step skipped its update and left gradients behind.

    Read at `EpochEnd` by the callbacks that finish an accumulated update. Host-side only:
    it looks at `batch.update` and whether any parameter has a `.grad`, never at values.
    Under DDP, pending gradients accumulated without the all-reduce are averaged over the
    ranks first (by the first caller), so every caller sees the same gradients on all ranks.
    """
    if getattr(learner.batch, "update", True):
        return False
    pending = any(p.grad is not None for p in learner.model.parameters())
    if pending:
        sync_pending_gradients(learner.model)
    return pending


def _positive_int(instance, attribute: attrs.Attribute, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{type(instance).__name__}({attribute.name}={value!r}): need an "
                         "int >= 1")


@attrs.define
class GradientAccumulation(Callback):
    """Updates the parameters every `n` training steps with the gradients of all `n`.

    For a loss that is a mean over the batch, `n` steps with batches of `b` equal one step
    with a batch of `n * b`: each step's loss is divided by `n` at `BackwardBegin` (so the
    summed gradients are the mean over `n * b` samples) and `batch.update` is false except
    on every `n`-th step. Groups start with each training epoch; a last group of `k < n`
    steps is applied at `EpochEnd` with its gradients summed over `k` and divided by `n`
    (as in the other libraries), so use `n` dividing the number of batches for exact
    equivalence.

    `batch.loss` is divided only for the backward pass: it is put back at `BackwardEnd`, so
    `Metrics` and printers see the loss itself.

    Args:
        n: steps per update.
    """

    n: int = attrs.field(validator=_positive_int)
    _count: int = attrs.field(default=0, init=False, repr=False)
    _loss: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)

    def state_dict(self) -> dict:
        """The steps done in the running group (its summed gradients are in the checkpoint's
        `grads`), so a checkpoint inside a group resumes it exactly."""
        return {"count": self._count}

    def load_state_dict(self, state: dict) -> None:
        count = state["count"]
        if not isinstance(count, int) or not 0 <= count < self.n:
            raise ValueError(f"GradientAccumulation(n={self.n}) cannot resume a group at step "
                             f"{count!r}")
        self._count = count


@attrs.define
class GradientClipping(Callback):
    """Clips the gradients' total norm to `max_norm` at `BackwardEnd` before each update.

    With `GradientAccumulation` it clips only on update steps (when `batch.update` is true),
    so the norm is that of the accumulated gradients; with `MixedPrecision` it runs after
    the gradients are unscaled, so `max_norm` is in the units of the true gradients.

    Args:
        max_norm: the largest total norm the update may use.
        norm_type: the p of the p-norm (`float("inf")` for the largest absolute value).
    """

    max_norm: float
    norm_type: float = 2.0

    def __attrs_post_init__(self) -> None:
        if not self.max_norm > 0:
            raise ValueError(f"GradientClipping(max_norm={self.max_norm!r}): need max_norm > 0")


@stateaccess.dispatch
def _accumulation_access(cb: GradientAccumulation):
    # model, optimizer and scaler: the update at the end of an epoch (update_parameters).
    return Access(batch=Access(loss=Write(), update=Write()), model=Write(), optimizer=Write(),
                  scaler=Write())


@stateaccess.dispatch
def _clipping_access(cb: GradientClipping):
    return Access(batch=Access(update=Read()), model=Write())


@on.dispatch
def _accumulation_epoch_begin(event: EpochBegin, phase: AbstractTrainingPhase,
                              cb: GradientAccumulation, learner):
    cb._count = 0


@on.dispatch
def _accumulation_step_begin(event: StepBegin, phase: AbstractTrainingPhase,
                             cb: GradientAccumulation, learner):
    # DDP decides in the forward pass whether the backward all-reduces: say so before it.
    set_gradient_sync(learner.model, cb._count + 1 >= cb.n)


@on.dispatch
def _accumulation_backward_begin(event: BackwardBegin, phase: AbstractTrainingPhase,
                                 cb: GradientAccumulation, learner):
    batch = learner.batch
    cb._count += 1
    batch.update = cb._count >= cb.n
    if batch.update:
        cb._count = 0
    cb._loss = batch.loss
    batch.loss = batch.loss / cb.n


@on.dispatch
def _accumulation_backward_end(event: BackwardEnd, phase: AbstractTrainingPhase,
                               cb: GradientAccumulation, learner):
    learner.batch.loss, cb._loss = cb._loss, None


@on.dispatch
def _accumulation_epoch_end(event: EpochEnd, phase: AbstractTrainingPhase,
                            cb: GradientAccumulation, learner):
    if gradients_pending(learner):
        update_parameters(learner)
    cb._count = 0


def _clip(cb: GradientClipping, learner) -> None:
    torch.nn.utils.clip_grad_norm_(learner.model.parameters(), cb.max_norm, cb.norm_type)


@on.dispatch
def _clipping_backward_end(event: BackwardEnd, phase: AbstractTrainingPhase,
                           cb: GradientClipping, learner):
    if getattr(learner.batch, "update", True):
        _clip(cb, learner)


@on.dispatch
def _clipping_epoch_end(event: EpochEnd, phase: AbstractTrainingPhase, cb: GradientClipping,
                        learner):
    if gradients_pending(learner):
        _clip(cb, learner)


@resolveconflict.dispatch
def _clip_before_accumulation(a: GradientClipping, b: GradientAccumulation):
    """Both touch the gradients; at `EpochEnd` the pending ones are clipped, then applied."""
    return RunFirst(a)


@resolveconflict.dispatch
def _nan_check_before_accumulation(a: StopOnNaNLoss, b: GradientAccumulation):
    """Check the loss itself, not the loss divided for the backward pass."""
    return RunFirst(a)


@resolveconflict.dispatch
def _device_before_accumulation(a: ToDevice, b: GradientAccumulation):
    return RunFirst(a)


@resolveconflict.dispatch
def _device_before_clipping(a: ToDevice, b: GradientClipping):
    return RunFirst(a)
