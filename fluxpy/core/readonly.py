"""Read-only values: what a callback with `Read()` on a path gets back from it.

`readonly(value, owner, path)` is the one place that decides. What cannot change comes back as
it is (numbers, strings, paths, frozen records of them), and so do tensors, modules and
optimizers (proxies would break torch and copies cost too much; strict mode, `fluxpy.core.strict`,
checks that a handler leaves them unchanged) and functions. Containers and objects of any other
kind come back read-only all the way down: a mapping, sequence or other object through
`ReadOnlyMapping`, `ReadOnlySequence`, `ReadOnlyObject` (or `ReadOnlyCallable`), a numpy array
as a read-only view, a set as a frozenset of read-only items, a bytearray as bytes.

Two things are never handed out: a callback's protected view to any other callback (an
`Owned` value: it carries its callback's permissions) and a learner that views guard (it is the
way around every view). The wrappers keep what they show in `_fp_raw_do_not_use`, named for
what it is: not API, and the one way around the wrapper.

Nothing here changes while values are read, so reads are safe from any thread.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import enum
import numbers
import pathlib
import re
import types
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextvars import ContextVar
from functools import partial
from typing import Any

import attrs
import numpy as np
import torch

from .callback import Callback
from .errors import ProtectedError

__all__ = ["WATCH", "Owned", "ReadOnlyCallable", "ReadOnlyMapping", "ReadOnlyObject",
           "ReadOnlySequence", "guard", "readonly"]

#: Strict mode's note-taker for the handler call running in this thread (or context), set by
#: `fluxpy.core.strict` for the length of the call: `note(owner, path, value)` is told every
#: tensor, module, optimizer or numpy array `readonly` hands out. `None` outside strict mode.
WATCH: ContextVar[Callable[[Any, str, Any], None] | None] = ContextVar("WATCH", default=None)

#: `id(learner) -> weak reference` of every learner a view guards. Written by `guard` when a
#: view is made, never while one is read.
_GUARDED: dict[int, weakref.ref] = {}


def guard(learner: Any) -> None:
    """Refuse `learner` wherever `readonly` meets it: views of it are being made."""
    key = id(learner)
    if key not in _GUARDED:
        _GUARDED[key] = weakref.ref(learner, lambda _, key=key: _GUARDED.pop(key, None))


class Owned:
    """Base of what belongs to one callback (its protected view): `readonly` gives it back to
    that callback, `_fp_owner`, and refuses it to any other."""

    __slots__ = ()
    _fp_owner: Any


#: Exact types handed out as they are, tested before anything else: most reads are of these.
_PLAIN = frozenset({torch.Tensor, torch.nn.Parameter, int, float, bool, str, type(None)})
#: Handed out as they are; tensors, modules and optimizers are watched in strict mode.
_AS_IS = (torch.Tensor, torch.nn.Module, torch.optim.Optimizer,
          int, float, complex, str, bytes, bool, type(None), range, slice, type(...),
          np.generic, enum.Enum, datetime.date, datetime.time, datetime.timedelta,
          pathlib.PurePath, re.Pattern, torch.device, torch.dtype, torch.Size, torch.layout,
          torch.memory_format,
          # values that are code: reading them means calling them
          types.FunctionType, types.BuiltinFunctionType, types.MethodType, type,
          types.MethodWrapperType, types.WrapperDescriptorType, types.MethodDescriptorType)


def readonly(value: Any, owner: Any, path: str) -> Any:
    """`value` as `owner`, a callback with `Read()` on `path`, may see it (see the module).

    The tests go from the cheapest to the dearest (`isinstance` of an abstract class such as
    `Mapping` is); no two of them match the same value where the order would matter."""
    if type(value) in _PLAIN:  # (as `_as_is`, without its call: most reads end here)
        note = WATCH.get()
        if note is not None:
            note(owner, path, value)
        return value
    if isinstance(value, dict):  # the usual containers, before the dearer tests
        return ReadOnlyMapping(value, owner, path)
    if isinstance(value, list) or type(value) is tuple:  # (not its subclasses: torch.Size)
        return ReadOnlySequence(value, owner, path)
    if isinstance(value, Owned):
        return _owned(value, owner, path)
    if isinstance(value, _ReadOnly):  # another callback's read-only value: now with this path
        return readonly(value._fp_raw_do_not_use, owner, path)
    if isinstance(value, _AS_IS):
        return _as_is(value, owner, path)
    if isinstance(value, np.ndarray):
        return _array(value, owner, path)
    ref = _GUARDED.get(id(value))
    if ref is not None and ref() is value:
        reader = type(owner).__name__
        raise ProtectedError(owner, path, "read", reason=(
            f"it is the learner itself, unprotected; declare what {reader} needs in "
            f"stateaccess({reader})"))
    if _is_frozen_record(value):
        return value if _immutable(value) else ReadOnlyObject(value, owner, path)
    if isinstance(value, numbers.Number):
        return value
    if isinstance(value, Mapping):
        return ReadOnlyMapping(value, owner, path)
    if isinstance(value, AbstractSet):
        return frozenset(readonly(item, owner, path) for item in value)
    if isinstance(value, bytearray):
        return bytes(value)
    if isinstance(value, Sequence):
        return ReadOnlySequence(value, owner, path)
    if callable(value):
        return ReadOnlyCallable(value, owner, path)
    return ReadOnlyObject(value, owner, path)


def _as_is(value: Any, owner: Any, path: str) -> Any:
    note = WATCH.get()
    if note is not None:
        note(owner, path, value)
    return value


def _owned(view: Owned, owner: Any, path: str) -> Owned:
    holder = view._fp_owner
    if holder is owner:
        return view
    name, reader = type(holder).__name__, type(owner).__name__
    raise ProtectedError(owner, path, "read", reason=(
        f"it is {name}'s view of the learner, which has {name}'s permissions; declare what "
        f"{reader} needs in stateaccess({reader})"))


def _array(array: np.ndarray, owner: Any, path: str) -> np.ndarray:
    if array.dtype.hasobject:
        raise ProtectedError(owner, path, "read", reason=(
            "a numpy array of Python objects cannot be made read-only (its items could still "
            "be changed); keep such state in a list, or declare fp.Write() for it"))
    _as_is(array, owner, path)  # its flag can be set back: strict mode compares the data
    view = array.view()
    view.flags.writeable = False
    return view


#: What cannot change, as parts of a frozen record that then cannot change either.
_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), range, slice, type(...),
              np.generic, enum.Enum, datetime.date, datetime.time, datetime.timedelta,
              pathlib.PurePath, re.Pattern, torch.device, torch.dtype, torch.Size,
              torch.layout, torch.memory_format)


def _is_frozen_record(value: Any) -> bool:
    cls = type(value)
    if getattr(cls, "__attrs_attrs__", None) is not None:  # (attrs.has, 5x faster)
        # attrs has no public test for frozen; its frozen classes get this
        return getattr(cls.__setattr__, "__name__", None) == "_frozen_setattrs"
    params = getattr(cls, "__dataclass_params__", None)
    return params is not None and params.frozen


def _immutable(value: Any) -> bool:
    """Whether `value` cannot change at all: a frozen record (a phase, a key of a history)
    of such values comes back as it is."""
    if isinstance(value, (_IMMUTABLE, numbers.Number)):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(map(_immutable, value))
    if _is_frozen_record(value):
        names = (f.name for f in (attrs.fields(type(value)) if attrs.has(type(value))
                                  else dataclasses.fields(value)))
        return all(_immutable(getattr(value, name)) for name in names)
    return False


class _ReadOnly:
    """What the read-only wrappers share: attributes come back read-only, writes raise."""

    __slots__ = ("_fp_owner", "_fp_path", "_fp_raw_do_not_use")

    def __init__(self, obj: Any, owner: Any, path: str) -> None:
        object.__setattr__(self, "_fp_raw_do_not_use", obj)
        object.__setattr__(self, "_fp_owner", owner)
        object.__setattr__(self, "_fp_path", path)

    def _fp_denied(self, *args: Any, **kwargs: Any):
        raise ProtectedError(self._fp_owner, self._fp_path, "write", "read access")

    def __getattr__(self, name: str) -> Any:
        # Reached for names the wrapper does not have: the object's attributes.
        if name.startswith(("__", "_fp_")):  # dunders are the wrapper's own protocol
            raise AttributeError(name)
        raw = self._fp_raw_do_not_use
        path = f"{self._fp_path}.{name}"
        if name.startswith("_"):
            raise ProtectedError(self._fp_owner, path, "read",
                                 reason=_private(raw, self._fp_owner))
        value = getattr(raw, name)
        if getattr(value, "__self__", None) is raw:  # a method of the object: refused when
            return partial(_method_call, self._fp_owner, f"{path}()")  # called
        return readonly(value, self._fp_owner, path)

    def __setattr__(self, name: str, value: Any) -> None:
        raise ProtectedError(self._fp_owner, f"{self._fp_path}.{name}", "write", "read access")

    def __delattr__(self, name: str) -> None:
        raise ProtectedError(self._fp_owner, f"{self._fp_path}.{name}", "write", "read access")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _ReadOnly):
            other = other._fp_raw_do_not_use
        return self._fp_raw_do_not_use == other

    def __hash__(self) -> int:
        return hash(self._fp_raw_do_not_use)  # hashable when the object is (a tuple, a phase)

    def __repr__(self) -> str:
        return f"readonly({self._fp_raw_do_not_use!r})"

    def __str__(self) -> str:
        return str(self._fp_raw_do_not_use)

    def __format__(self, spec: str) -> str:
        return format(self._fp_raw_do_not_use, spec)

    def __dir__(self) -> list[str]:
        return dir(self._fp_raw_do_not_use)

    def __copy__(self) -> _ReadOnly:
        return self  # as unchangeable as a copy would be

    def __deepcopy__(self, memo: dict) -> Any:
        """A detached copy of the object, the caller's own: changing it changes nothing here."""
        return copy.deepcopy(self._fp_raw_do_not_use, memo)

    def __reduce__(self) -> Any:
        # Pickles as the object it shows; a copy, so the reduction does not hand it out.
        return (_unpickled, (copy.deepcopy(self._fp_raw_do_not_use),))


def _unpickled(obj: Any) -> Any:
    return obj


def _method_call(owner: Any, path: str, *args: Any, **kwargs: Any) -> Any:
    raise ProtectedError(owner, path, "write", "read access; methods may change the object")


def _private(obj: Any, reader: Any) -> str:
    name, reader_name = type(obj).__name__, type(reader).__name__
    if isinstance(obj, Callback):
        return (f"it is private to {name} (a leading underscore); to share state, a callback "
                f"publishes it in learner.cbstate, and {reader_name} declares it in "
                f"stateaccess({reader_name})")
    return f"it is private to {name} (a leading underscore); read its public attributes"


class ReadOnlyMapping(_ReadOnly, Mapping):
    """A mapping seen through `Read()`: keys and values come back read-only, writes raise."""

    __slots__ = ()

    def __getitem__(self, key: Any) -> Any:
        raw = self._fp_raw_do_not_use
        if isinstance(key, _ReadOnly):
            key = key._fp_raw_do_not_use
        if isinstance(raw, defaultdict) and key not in raw:  # what a read would give, without
            if raw.default_factory is None:                   # the insertion it would make
                raise KeyError(key)
            value = raw.default_factory()
        else:
            value = raw[key]
        return readonly(value, self._fp_owner, f"{self._fp_path}[{key!s}]")

    def __iter__(self) -> Iterator[Any]:
        owner, path = self._fp_owner, self._fp_path
        return (readonly(key, owner, path) for key in self._fp_raw_do_not_use)

    # The mapping's own answers: Mapping's would ask __getitem__, which a dict with
    # __missing__ (cbstate.history) answers for every key.
    def __contains__(self, key: object) -> bool:
        return key in self._fp_raw_do_not_use

    def get(self, key: Any, default: Any = None) -> Any:
        return self[key] if key in self._fp_raw_do_not_use else default

    def __len__(self) -> int:
        return len(self._fp_raw_do_not_use)

    __setitem__ = __delitem__ = _ReadOnly._fp_denied


class ReadOnlySequence(_ReadOnly, Sequence):
    """A list, tuple, deque or other sequence seen through `Read()`: items come back
    read-only, writes raise."""

    __slots__ = ()

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [readonly(v, self._fp_owner, self._fp_path)
                    for v in self._fp_raw_do_not_use[index]]
        return readonly(self._fp_raw_do_not_use[index], self._fp_owner,
                        f"{self._fp_path}[{index}]")

    def __iter__(self) -> Iterator[Any]:
        owner, path = self._fp_owner, self._fp_path
        return (readonly(v, owner, f"{path}[{i}]")
                for i, v in enumerate(self._fp_raw_do_not_use))

    def __contains__(self, item: object) -> bool:
        return item in self._fp_raw_do_not_use

    def __len__(self) -> int:
        return len(self._fp_raw_do_not_use)

    __setitem__ = __delitem__ = __iadd__ = _ReadOnly._fp_denied


class ReadOnlyObject(_ReadOnly):
    """Any other object seen through `Read()` (a namespace, an attrs or dataclass value, a
    callback, a data loader): its public attributes, items and iteration come back
    read-only; writes, method calls and private attributes raise. `isinstance` sees the
    object's class."""

    __slots__ = ()

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return type(self._fp_raw_do_not_use)

    def __getitem__(self, key: Any) -> Any:
        return readonly(self._fp_raw_do_not_use[key], self._fp_owner,
                        f"{self._fp_path}[{key!s}]")

    def __iter__(self) -> Iterator[Any]:
        raw = self._fp_raw_do_not_use
        iterator = iter(raw)
        if iterator is raw:  # a one-shot iterator: iterating it is advancing it (`__next__`)
            return self
        owner, path = self._fp_owner, self._fp_path
        return (readonly(v, owner, f"{path}[{i}]") for i, v in enumerate(iterator))

    def __next__(self) -> Any:
        raise ProtectedError(self._fp_owner, self._fp_path, "write",
                             "read access; advancing an iterator changes it")

    def __len__(self) -> int:
        return len(self._fp_raw_do_not_use)

    def __contains__(self, item: object) -> bool:
        return item in self._fp_raw_do_not_use

    def __bool__(self) -> bool:
        return bool(self._fp_raw_do_not_use)

    __setitem__ = __delitem__ = _ReadOnly._fp_denied


class ReadOnlyCallable(ReadOnlyObject):
    """A callable object seen through `Read()` (a loss object, a metric): reading it means
    calling it, so it can be called; its attributes are read-only."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fp_raw_do_not_use(*args, **kwargs)
