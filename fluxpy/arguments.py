"""How the `Learner`'s arguments become its state: the callbacks (groups flattened, the
default callbacks added), the device and the optimizer, each checked with an error that says
what was given and what is expected."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Any

import torch

from .core.callback import Callback
from .core.errors import CallbackDeclarationError

__all__ = ["flatten_callbacks", "make_optimizer", "missing_defaults"]


def flatten_callbacks(roots: Iterable[Callback]) -> tuple[list[Callback], dict[int, Callback]]:
    """Callbacks with groups expanded depth-first, and `id(child) -> group`.

    A group is a callback whose `subcallbacks()` returns callbacks; nothing else makes one (a
    `callbacks` attribute of a callback is just an attribute)."""
    flat: list[Callback] = []
    groups: dict[int, Callback] = {}
    seen: set[int] = set()

    def visit(cb: Callback, group: Callback | None) -> None:
        if not isinstance(cb, Callback):
            raise CallbackDeclarationError(
                f"{cb!r} is not a callback: callbacks are instances of fp.Callback subclasses"
                + (f"; pass {cb.__name__}() instead"
                   if isinstance(cb, type) and issubclass(cb, Callback) else "")
                + (f" (found in {type(group).__name__})" if group is not None else "")
            )
        if id(cb) in seen:
            raise CallbackDeclarationError(
                f"{type(cb).__name__} was given twice (the same object); pass it once."
            )
        seen.add(id(cb))
        flat.append(cb)
        if group is not None:
            groups[id(cb)] = group
        children = cb.subcallbacks()
        if not isinstance(children, (tuple, list)):
            raise CallbackDeclarationError(
                f"{type(cb).__name__}.subcallbacks() returned {children!r}: return a tuple of "
                "the callbacks in the group"
            )
        if not children:
            _warn_if_carried_unnoticed(cb)
        for child in children:
            visit(child, cb)

    for cb in roots:
        visit(cb, None)
    return flat, groups


def _warn_if_carried_unnoticed(cb: Callback) -> None:
    """A `callbacks` attribute holding callbacks looks like a group, but only `subcallbacks()`
    makes one: say so rather than leave those callbacks out silently."""
    carried = getattr(cb, "callbacks", None)
    if isinstance(carried, (tuple, list)) and any(isinstance(c, Callback) for c in carried):
        warnings.warn(
            f"{type(cb).__name__} has a `callbacks` attribute holding callbacks, which the "
            f"learner does not add: to make {type(cb).__name__} a group, override "
            "subcallbacks() to return them.", stacklevel=4)


def missing_defaults(given: list[Callback]) -> list[Callback]:
    from .callbacks import Metrics, MetricsPrinter, ProgressPrinter, Recorder, StopOnNaNLoss

    present = flatten_callbacks(given)[0]
    return [kind() for kind in (Recorder, Metrics, ProgressPrinter, MetricsPrinter, StopOnNaNLoss)
            if not any(isinstance(c, kind) for c in present)]


def make_optimizer(optimizer: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    if optimizer is None:
        return torch.optim.Adam(model.parameters(), lr=1e-3)
    if not isinstance(optimizer, torch.optim.Optimizer):
        if not callable(optimizer):
            raise TypeError(f"optimizer must be a torch Optimizer, a factory params -> Optimizer, "
                            f"or None; got {type(optimizer).__name__}")
        optimizer = optimizer(model.parameters())
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"the optimizer factory returned {type(optimizer).__name__}, "
                            "not a torch.optim.Optimizer")
    owned = {id(p) for p in model.parameters()}
    foreign = sum(1 for g in optimizer.param_groups for p in g["params"] if id(p) not in owned)
    if foreign:
        raise ValueError(
            f"the optimizer updates {foreign} tensor(s) that are not parameters of the model, so "
            "training would not change the model. Build it from model.parameters(), or pass a "
            "factory such as lambda params: torch.optim.SGD(params, lr=0.1)."
        )
    return optimizer
