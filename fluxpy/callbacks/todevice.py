"""`ToDevice`: the model to the device once, each batch to the device as it comes.

The model moves at `FitBegin` with `Module.to`, which keeps the parameter objects, so the
optimizer built on them stays valid (it is never rebuilt); optimizer state that is elsewhere
(e.g. loaded from a checkpoint) follows. Batches move at `StepBegin` with
`non_blocking=True`, so a pinned-memory DataLoader overlaps the copy with compute.

Extending:
    For a custom phase whose batch is not `(xs, ys)`, add a method for that phase:

        @fp.on.dispatch
        def _(event: fp.StepBegin, phase: MyPhase, cb: fp.ToDevice, learner): ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

from ..core.access import Access, Write
from ..core.callback import Callback, on, stateaccess
from ..core.events import FitBegin, StepBegin
from ..core.phases import Phase
from ..support.devices import resolve_device

__all__ = ["ToDevice", "to_device"]


def _checked_device(device: Any) -> torch.device:
    return resolve_device(device)  # the check of Learner(device=...)


@attrs.define
class ToDevice(Callback):
    """Moves the model (at `FitBegin`) and each batch's `xs` and `ys` (at `StepBegin`).

    Args:
        device: anything `torch.device` accepts; one that is not there (CUDA on a machine
            without it) is an error now, not at the first step.
    """

    device: torch.device = attrs.field(converter=_checked_device)


def to_device(value: Any, device: torch.device) -> Any:
    """`value` on `device`: tensors, and tuples, lists and dicts of them, recursively."""
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device, non_blocking=True)
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, Mapping):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


@stateaccess.dispatch
def _todevice_access(cb: ToDevice):
    return Access(model=Write(), optimizer=Write(), batch=Access(xs=Write(), ys=Write()))


@on.dispatch
def _todevice_fit_begin(event: FitBegin, phase: Phase, cb: ToDevice, learner):
    model = learner.model
    if any(p.device != cb.device for p in model.parameters()) or any(
        b.device != cb.device for b in model.buffers()
    ):
        model.to(cb.device)
    for state in learner.optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.device != cb.device and value.ndim:
                state[key] = value.to(cb.device)


@on.dispatch
def _todevice_step_begin(event: StepBegin, phase: Phase, cb: ToDevice, learner):
    batch = learner.batch
    batch.xs = to_device(batch.xs, cb.device)
    batch.ys = to_device(batch.ys, cb.device)
