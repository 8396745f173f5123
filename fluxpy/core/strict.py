"""Strict mode: an in-place change to state a handler may only read is a `ProtectedError`.

Under `Read()`, tensors, modules and optimizers come back as they are (a read-only copy of a
model would cost too much), so `learner.batch.xs.add_(1)` or
`learner.model.weight.data.fill_(0)` in a handler that only reads them would go unnoticed.
With `fp.Learner(..., strict=True)` (on in `fluxpy.testing.test_learner`) each handler is
checked: what it may only read is noted before it runs and compared after, and a difference
is a `ProtectedError` naming the callback, the handler, the path and the declaration to add.

What is noted, for one call of a handler:

- the tensors, modules and optimizers at the callback's `Read` paths (`batch.xs`, `model`);
- every tensor, module, optimizer or numpy array handed to the handler by a read-only
  container (`cbstate.norms[0]`) or through a merged `Read()` base, when it is handed out.

A tensor is compared by identity, by torch's version counter (which every in-place operation
bumps, also under `no_grad`) and by value (a write through `.data` or `.numpy()` bumps no
counter). A module is its parameters, their gradients, its buffers and each submodule's
train/eval mode; an optimizer its parameters, their gradients, its hyperparameters and its
state; a numpy array its values (its read-only flag can be set back).

Writes the callback may make are not reported: a change to anything also reachable from one
of its `Write` paths (a model's parameters, for a callback that reads `model` and writes
`optimizer`) is its own business.

What is handed out during a call is noted through `fluxpy.core.readonly.WATCH`, a context
variable set for the length of the call: per thread, so handlers running at once under
`ThreadedExecutor` each note their own reads, and restored after, so the handlers of an event
that a handler fires have their own.

Strict mode copies what it notes at every handler call (on the tiny benchmark, Recorder +
Metrics, a step costs about a third more), so it is meant for tests and off by default; when it
is off, handlers are not wrapped and a value handed out as it is costs one context-variable
lookup.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from .access import Access, Path
from .errors import CancelEpochException, CancelFitException, CancelStepException, ProtectedError
from .protect import ProtectedObject
from .readonly import WATCH

__all__ = ["checked"]

_CONTROL_FLOW = (CancelStepException, CancelEpochException, CancelFitException)
_WATCHED = (torch.Tensor, torch.nn.Module, torch.optim.Optimizer, np.ndarray)
_MISSING = object()


def checked(method: Callable[..., Any], callback: Any, access: Access) -> Callable[..., Any]:
    """`method`, a handler of `callback` (which declared `access`), checked as strict mode
    checks (see the module docstring). Keeps `method`'s name for error notes."""
    reads, writes = access.reads(), access.writes()

    @functools.wraps(method)
    def strict_handler(event: Any, phase: Any, cb: Any, learner: Any) -> None:
        watch = _Watch(callback)
        for path in reads:
            watch.add(".".join(path), _read(learner, path), grant=".".join(path))
        token = WATCH.set(watch.note)
        try:
            method(event, phase, cb, learner)
        except _CONTROL_FLOW:  # the handler's changes still count: check before stopping
            _check(watch, callback, writes, learner, event, phase)
            raise
        finally:
            WATCH.reset(token)
        _check(watch, callback, writes, learner, event, phase)

    return strict_handler


def _read(learner: Any, path: Path) -> Any:
    """`learner.<path>` as the handler sees it, or `_MISSING`."""
    value = learner
    for name in path:
        try:
            value = getattr(value, name)
        except (AttributeError, ProtectedError):
            return _MISSING
    return value


class _Watch:
    """What one handler call of `callback` may only read: for each watched object, where it
    is and how each of its parts looked (`_parts`, `_look`)."""

    def __init__(self, callback: Any) -> None:
        self.callback = callback
        self.objects: dict[int, tuple[str, str | None, Any, dict[str, tuple[Any, Any]]]] = {}

    def note(self, owner: Any, path: str, value: Any) -> None:
        """`readonly` handed `value` to `owner` at `path`: watch it if `owner` is ours."""
        if owner is self.callback:
            self.add(path, value)

    def add(self, path: str, value: Any, grant: str | None = None) -> None:
        if isinstance(value, _WATCHED) and id(value) not in self.objects:
            looks = {part: (owner, _look(thing)) for part, owner, thing in _parts(value)}
            self.objects[id(value)] = (path, grant, value, looks)

    def changes(self) -> Iterator[tuple[str, str | None, Any, str]]:
        """`(path, grant point, owner, what happened)` of every part that changed."""
        for path, grant, value, before in self.objects.values():
            now = {part: (owner, thing) for part, owner, thing in _parts(value)}
            for part, (owner, look) in before.items():
                if part not in now:
                    yield path + part, grant, owner, "removed it"
                else:
                    how = _difference(look, now[part][1])
                    if how is not None:
                        yield path + part, grant, now[part][0], how
            for part in now.keys() - before.keys():
                yield path + part, grant, now[part][0], "added it"


def _parts(value: Any) -> Iterator[tuple[str, Any, Any]]:
    """`(path below value, owner, thing)` for each part of `value` strict mode compares; the
    owner is the object whose part it is (for telling granted writes apart)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        yield "", value, value
    elif isinstance(value, torch.nn.Module):
        for name, p in value.named_parameters():
            yield f".{name}", p, p
            yield f".{name}.grad", p, p.grad
        for name, b in value.named_buffers():
            yield f".{name}", b, b
        for name, m in value.named_modules():
            yield f".{name}.training" if name else ".training", m, m.training
    elif isinstance(value, torch.optim.Optimizer):
        number: dict[int, int] = {}
        for i, group in enumerate(value.param_groups):
            for key, setting in group.items():
                if key == "params":
                    for j, p in enumerate(setting):
                        number.setdefault(id(p), len(number))
                        yield f".param_groups[{i}]['params'][{j}]", p, p
                        yield f".param_groups[{i}]['params'][{j}].grad", p, p.grad
                else:
                    yield f".param_groups[{i}][{key!r}]", value, setting
        for p, state in value.state.items():
            for key, thing in state.items():
                yield f".state[{number.get(id(p), '?')}][{key!r}]", p, thing


def _look(thing: Any) -> Any:
    """What is compared of a part: a tensor's identity, version counter and values, an
    array's identity and values, anything else itself."""
    if isinstance(thing, torch.Tensor):
        version = None if thing.is_inference() else thing._version
        values = None
        if thing.layout == torch.strided and thing.device.type != "meta":
            values = thing.detach().clone()
        return ("tensor", thing, version, values)
    if isinstance(thing, np.ndarray):
        return ("array", thing, thing.copy())
    return ("value", thing)


def _difference(look: Any, thing: Any) -> str | None:
    """How `thing` differs from what `look` noted (`"changed it in place"`), or `None`."""
    kind = look[0]
    if kind == "tensor":
        _, tensor, version, values = look
        if thing is not tensor:
            return "replaced it"
        if version is not None and thing._version != version:
            return "changed it in place"
        if values is not None and not _same_values(values, thing):
            return "changed it in place"
        return None
    if kind == "array":
        _, array, values = look
        if thing is not array:
            return "replaced it"
        return None if np.array_equal(values, thing, equal_nan=values.dtype.kind in "fc") \
            else "changed it in place"
    if isinstance(thing, (torch.Tensor, np.ndarray)):
        return "replaced it"
    try:
        same = look[1] is thing or bool(look[1] == thing)
    except Exception:  # a value that cannot say (e.g. a tuple holding tensors): by identity
        same = False
    return None if same else "changed it"


def _same_values(before: torch.Tensor, now: torch.Tensor) -> bool:
    now = now.detach()
    if before.shape != now.shape or before.dtype != now.dtype:
        return False
    if torch.equal(before, now):
        return True
    if not (before.is_floating_point() or before.is_complex()):
        return False
    # NaN is not equal to itself: compare the bits (an unchanged NaN keeps them), without
    # reading a value to the host.
    if before.is_complex():
        before, now = torch.view_as_real(before), torch.view_as_real(now)
    bits = _BITS.get(before.element_size())
    return bits is not None and torch.equal(before.view(bits), now.view(bits))


#: An integer type of each element size, to compare floating-point tensors bit for bit.
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _check(watch: _Watch, callback: Any, writes: list[Path], learner: Any, event: Any,
           phase: Any) -> None:
    changes = list(watch.changes())
    if not changes:
        return
    writable: set[int] | None = None
    for path, grant, owner, how in changes:
        if writable is None:
            writable = _reachable(learner, writes)
        if id(owner) in writable:
            continue
        name = type(callback).__name__
        raise ProtectedError(
            callback, path, "write", "read access", grant=grant,
            detail=f"Strict mode: {name}'s handler for {event} in {phase} {how}.")


def _reachable(learner: Any, writes: list[Path]) -> set[int]:
    """The ids of the objects reachable from the `Write` paths: what the handler may change."""
    stack: list[Any] = []
    for path in writes:
        value = _read(learner, path)
        if isinstance(value, ProtectedObject):  # a node whose unnamed names `Write()` covers
            stack += [getattr(value, n) for n in dir(value) if not n.startswith("__")]
        elif value is not _MISSING:
            stack.append(value)
    seen: set[int] = set()
    while stack:
        value = stack.pop()
        if id(value) in seen or isinstance(value, (str, bytes, int, float, type(None))):
            continue
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            if value.is_leaf and value.grad is not None:  # (only leaves keep a gradient)
                stack.append(value.grad)
        elif isinstance(value, torch.nn.Module):
            stack += [*value.modules(), *value.parameters(), *value.buffers()]
        elif isinstance(value, torch.optim.Optimizer):
            stack += [p for group in value.param_groups for p in group["params"]]
            stack += list(value.state.values())
        elif isinstance(value, Mapping):
            stack += list(value.values())
        elif isinstance(value, (list, tuple, set, frozenset)):
            stack += list(value)
        elif hasattr(value, "__dict__") and not isinstance(value, (type, ProtectedObject)):
            stack += list(vars(value).values())
    return seen
