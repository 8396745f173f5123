"""`MixedPrecision`: forward and loss under `torch.autocast`, with a gradient scaler for float16.

Autocast is entered by a forward pre-hook on the model and left by a forward hook that also
runs when the forward raises (`always_call=True`), and the loss function is wrapped in the
same context for the duration of `fit`. Autocast state is per thread; hooks run in the thread
that runs the model, so this works with any executor (a handler entering the context at
`StepBegin` would enter it in a worker thread under `ThreadedExecutor`). Hooks and wrapper are
installed at `FitBegin` and removed at `FitEnd`, which always fires.

With float16 a `torch.amp.GradScaler` becomes `learner.scaler` (when the learner adopts the
callback, so a checkpoint can restore it before `fit`). It stays there as learner state: after
removing the callback, set `learner.scaler = None`. It works through the update hook of the
built-in step (see `fluxpy.callbacks.gradients`): the loss is scaled at `BackwardBegin` (and put
back at `StepEnd`, so metrics see the true loss); at `BackwardEnd`, when `batch.update` is true,
the gradients are unscaled, so `GradientClipping` (which runs after) sees true gradients;
`update_parameters` then calls `scaler.step(optimizer)` and `scaler.update()`, which skips the
update when a gradient is inf or NaN and lowers the scale.

Skipped updates are counted without a per-step sync: the scale tensor is compared on the
device after each update (it only goes down on a skip) and the count is read at epoch end.
`GradScaler.step` itself reads the inf/NaN check to the host once per update (PyTorch's
behaviour), unless the optimizer is fused (`torch.optim.SGD`, `Adam` or `AdamW` with
`fused=True`), which skips the step on the device: use one to keep float16 steps sync-free.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import attrs
import torch

from ..core.access import Access, Read, Write
from ..core.callback import Callback, RunFirst, on, resolveconflict, stateaccess
from ..core.events import (
    BackwardBegin,
    BackwardEnd,
    EpochBegin,
    EpochEnd,
    FitBegin,
    FitEnd,
    StepEnd,
)
from ..core.phases import AbstractTrainingPhase, Phase
from .gradients import GradientAccumulation, GradientClipping, gradients_pending
from .nan import StopOnNaNLoss
from .todevice import ToDevice

__all__ = ["MixedPrecision"]

_DTYPES = (torch.float16, torch.bfloat16)

#: The autocast contexts entered by forward pre-hooks and not yet left, per thread.
_ENTERED = threading.local()


def _check_dtype(instance: MixedPrecision, attribute: attrs.Attribute, value: Any) -> None:
    if value not in _DTYPES:
        raise ValueError(f"MixedPrecision(dtype={value!r}): use torch.float16 (with a gradient "
                         "scaler) or torch.bfloat16")


@attrs.define
class MixedPrecision(Callback):
    """Runs the model's forward and the loss under `torch.autocast(dtype=dtype)`.

    The device type is that of `learner.device`. float16 adds a gradient scaler
    (`learner.scaler`); bfloat16 has float32's range and needs none, and works on the CPU.

    Args:
        dtype: `torch.float16` or `torch.bfloat16`.

    Attributes:
        skipped_steps: updates the scaler skipped because of inf/NaN gradients, counted up to
            the last epoch end (and the end of `fit`).
    """

    dtype: torch.dtype = attrs.field(default=torch.float16, validator=_check_dtype)
    skipped_steps: int = attrs.field(default=0, init=False)
    _device_type: str = attrs.field(default="cpu", init=False, repr=False)
    _handles: list = attrs.field(factory=list, init=False, repr=False)
    _loss_fn: Any = attrs.field(default=None, init=False, repr=False)
    _loss: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)
    _last_scale: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)
    _skipped: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)

    def init(self, learner) -> None:
        self._device_type = learner.device.type
        if self.dtype == torch.float16 and learner.scaler is None:
            learner.scaler = torch.amp.GradScaler(self._device_type)

    def autocast(self) -> torch.autocast:
        """A fresh autocast context for this callback's device type and dtype."""
        return torch.autocast(self._device_type, dtype=self.dtype)

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_steps = int(state["skipped_steps"])

    def _enter(self, module: torch.nn.Module, args: Any) -> None:
        context = self.autocast()
        context.__enter__()
        stack = getattr(_ENTERED, "contexts", None)
        if stack is None:
            stack = _ENTERED.contexts = []
        stack.append(context)

    def _exit(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        _ENTERED.contexts.pop().__exit__(None, None, None)

    def _observe_scale(self, scaler: Any) -> None:
        """Add 1 on the device if the scale went down since the last look (a skipped update)."""
        scale = getattr(scaler, "_scale", None)  # scaler.get_scale() would sync
        if scale is None:
            return
        if self._last_scale is not None:
            dropped = (scale < self._last_scale).to(torch.int64)
            self._skipped = dropped if self._skipped is None else self._skipped + dropped
        self._last_scale = scale.clone()

    def _count_skipped(self) -> None:
        if self._skipped is not None:
            self.skipped_steps += int(self._skipped.sum())  # one sync per epoch
            self._skipped = None


def _autocast_loss(loss_fn: Callable[[Any, Any], Any], cb: MixedPrecision) -> Callable:
    """`loss_fn` called under `cb`'s autocast context (a plain function, so callbacks that may
    only read `learner.loss_fn` can still call it)."""

    @functools.wraps(loss_fn)
    def loss_under_autocast(preds: Any, ys: Any) -> Any:
        with cb.autocast():
            return loss_fn(preds, ys)

    return loss_under_autocast


@stateaccess.dispatch
def _precision_access(cb: MixedPrecision):
    # model: the autocast hooks and unscaling its gradients; loss_fn: the autocast wrapper.
    return Access(
        model=Write(), loss_fn=Write(), scaler=Write(),
        batch=Access(loss=Write(), update=Read()),
        optimizer=Read(), device=Read(),
    )


@on.dispatch
def _precision_fit_begin(event: FitBegin, phase: Phase, cb: MixedPrecision, learner):
    cb._device_type = learner.device.type
    model = learner.model
    cb._handles = [
        model.register_forward_pre_hook(cb._enter, prepend=True),
        model.register_forward_hook(cb._exit, always_call=True),
    ]
    cb._loss_fn = learner.loss_fn
    learner.loss_fn = _autocast_loss(cb._loss_fn, cb)
    cb._last_scale = None


@on.dispatch
def _precision_backward_begin(event: BackwardBegin, phase: AbstractTrainingPhase,
                              cb: MixedPrecision, learner):
    scaler = learner.scaler
    if scaler is not None:
        batch = learner.batch
        cb._loss = batch.loss
        batch.loss = scaler.scale(batch.loss)


@on.dispatch
def _precision_backward_end(event: BackwardEnd, phase: AbstractTrainingPhase,
                            cb: MixedPrecision, learner):
    scaler = learner.scaler
    if scaler is not None and getattr(learner.batch, "update", True):
        scaler.unscale_(learner.optimizer)


@on.dispatch
def _precision_step_end(event: StepEnd, phase: AbstractTrainingPhase, cb: MixedPrecision,
                        learner):
    # Put the unscaled loss back here, not at BackwardEnd: GradientAccumulation runs after this
    # callback and puts back the loss it saw (this one's scaled loss) at BackwardEnd.
    batch = learner.batch
    if cb._loss is not None:
        batch.loss, cb._loss = cb._loss, None
    scaler = learner.scaler
    if scaler is not None and getattr(batch, "update", True):
        cb._observe_scale(scaler)


@on.dispatch
def _precision_epoch_begin(event: EpochBegin, phase: AbstractTrainingPhase, cb: MixedPrecision,
                           learner):
    if learner.scaler is not None:  # an update at the last epoch's end
        cb._observe_scale(learner.scaler)


@on.dispatch
def _precision_epoch_end(event: EpochEnd, phase: AbstractTrainingPhase, cb: MixedPrecision,
                         learner):
    scaler = learner.scaler
    if scaler is not None and gradients_pending(learner):
        scaler.unscale_(learner.optimizer)
    cb._count_skipped()


@on.dispatch
def _precision_fit_end(event: FitEnd, phase: Phase, cb: MixedPrecision, learner):
    for handle in cb._handles:
        handle.remove()
    cb._handles = []
    if getattr(learner.loss_fn, "__wrapped__", None) is cb._loss_fn:
        learner.loss_fn = cb._loss_fn
    cb._loss_fn = cb._loss = None
    if learner.scaler is not None:
        cb._observe_scale(learner.scaler)
    cb._count_skipped()


@resolveconflict.dispatch
def _precision_before_accumulation(a: MixedPrecision, b: GradientAccumulation):
    """Scale the loss first (each puts back what it saw), unscale pending gradients first."""
    return RunFirst(a)


@resolveconflict.dispatch
def _precision_before_clipping(a: MixedPrecision, b: GradientClipping):
    """Unscale before clipping, so `max_norm` bounds the true gradients."""
    return RunFirst(a)


@resolveconflict.dispatch
def _nan_check_before_scaling(a: StopOnNaNLoss, b: MixedPrecision):
    """Check the loss itself: scaled for the float16 backward, a finite loss can overflow."""
    return RunFirst(a)


@resolveconflict.dispatch
def _device_before_precision(a: ToDevice, b: MixedPrecision):
    return RunFirst(a)
