"""Why a built-in step failed: the checks and notes that turn a bad batch, a bad loss or a
failed backward into a message naming the cause and the fix. Called only on the way to an
error (or, for the batch and the loss, after one cheap type test)."""

from __future__ import annotations

from typing import Any

import torch

from ..core.errors import BadBatchError, BadLossError
from ..core.phases import Phase, PredictionPhase
from ..core.state import Batch

__all__ = ["backward_failed", "check_loss", "loss_note", "unpack"]


def unpack(batch: Any, phase: Phase) -> Any:
    """`batch` as the `(xs, ys)` pair the built-in step needs, or a `BadBatchError`. In
    `PredictionPhase` inputs alone (a tensor, or a tuple or list of one) are `(xs, None)`."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch
    if isinstance(phase, PredictionPhase):
        if isinstance(batch, torch.Tensor):
            return batch, None
        if isinstance(batch, (tuple, list)) and len(batch) == 1:
            return batch[0], None
    if isinstance(batch, (tuple, list)):
        what = f"a {type(batch).__name__} of {len(batch)} items"
    elif isinstance(batch, torch.Tensor):
        what = f"a tensor of shape {tuple(batch.shape)}"
    else:
        what = _a(type(batch).__name__)
    raise BadBatchError(
        f"{phase} got {what} as a batch; the built-in steps need (xs, ys) pairs (a tuple or "
        "list of two). Yield pairs from the data (e.g. a DataLoader over a TensorDataset(xs, "
        f"ys)){_alone(phase)}, or give {type(phase).__name__} its own step with "
        "@fp.step.dispatch."
    )


def _alone(phase: Phase) -> str:
    return ("; predict also takes inputs alone: a tensor, or a tuple or list of one"
            if isinstance(phase, PredictionPhase) else "")


def loss_note(exc: BaseException, state: Batch, phase: Phase) -> None:
    """The note on an error of `loss_fn(preds, ys)`: what it was given."""
    exc.add_note(f"raised by loss_fn(preds, ys) in the {phase} step, with preds "
                 f"{_describe(state.preds)} and ys {_describe(state.ys)}: check that the "
                 "model's output fits the loss function and the labels")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return _a(type(value).__name__)


def _a(noun: str) -> str:
    """`noun` with its indefinite article: "a float", "an int"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def check_loss(loss: Any, phase: Phase) -> Any:
    if isinstance(loss, torch.Tensor) and loss.ndim == 0:
        return loss
    what = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
            else _a(type(loss).__name__))
    raise BadLossError(
        f"loss_fn returned {what} in {phase}; fluxpy needs a scalar tensor to differentiate "
        "and to average. Reduce it (e.g. reduction='mean', or .mean() at the end of loss_fn)."
    )


def backward_failed(exc: RuntimeError, learner, phase: Phase, returned: Any,
                     differentiated: Any, handlers: tuple) -> None:
    """Say why `differentiated.backward()` failed, when fluxpy can tell: an integer loss is a
    `BadLossError`; a loss that does not require grad gets a note naming it and the likely
    cause (torch's own message says neither)."""
    if not isinstance(differentiated, torch.Tensor):
        return
    fn = learner.loss_fn
    source = f"what loss_fn {getattr(fn, '__name__', type(fn).__name__)} returned"
    if differentiated is not returned:
        names = ", ".join(h.name for h in handlers)
        source = f"batch.loss as the BackwardBegin handlers ({names}) left it"
    if not (differentiated.is_floating_point() or differentiated.is_complex()):
        raise BadLossError(
            f"the loss in {phase} is a {differentiated.dtype} tensor ({source}): gradients need "
            "a floating-point loss. Compute it from preds with float operations (counts and "
            "argmax have no gradient; report those with fp.Metrics)."
        ) from exc
    if differentiated.requires_grad:
        return  # another failure (a second backward, an in-place change): torch's message says
    if not any(p.requires_grad for p in learner.model.parameters()):
        cause = ("the model has no trainable parameters (requires_grad is False for all of "
                 "them): unfreeze some, or run only validation phases")
    elif differentiated is not returned and getattr(returned, "requires_grad", False):
        cause = ("a BackwardBegin handler replaced batch.loss with a value that does not "
                 "require grad: compute the replacement from batch.loss with torch operations")
    elif not getattr(learner.batch.preds, "requires_grad", True):
        cause = ("the model's output does not require grad: its forward cuts it off "
                 "(.detach(), .item(), torch.no_grad(), a tensor rebuilt from values)")
    else:
        cause = ("loss_fn cut it off from the model's output (.detach(), .item(), a new tensor "
                 "made from values, or torch.no_grad()): compute it from preds with torch "
                 "operations")
    exc.add_note(f"loss.backward() failed in {phase}: the loss, {differentiated!r}, does not "
                 "require grad, so nothing connects it to the model's parameters. It is "
                 f"{source}. Likely cause: {cause}.")
