"""The protected view: the learner as a callback's handlers see it.

`protect(learner, access, callback)` wraps the learner so that every attribute read and write
is checked against the callback's `stateaccess` tree, all the way down nested namespaces
(`learner.batch.loss`, `learner.cbstate.history`). A denied access raises `fp.ProtectedError`
naming the callback, the full path and the fix.

A view is built once per callback and learner, with one object per node of the tree, whose
class attributes are the granted names: a granted leaf is a property whose getter is compiled
for its path (`learner.batch.loss` reads `root.batch.loss` directly, and a `Read` adds one type
test). Views are live: `learner.batch` as a handler sees it is the same view every step and
always shows the learner's current batch.

Nothing reached through a view is a way around it. Under a `Read()` node, values come back
read-only all the way down (`readonly`): mappings, sequences and objects of any kind through
`ReadOnlyMapping`, `ReadOnlySequence`, `ReadOnlyObject`, a numpy array as a read-only view, a
set as a frozenset; a callback allowed to read `cbstate.history` cannot change it, and one
that reads `learner.callbacks` cannot change them, read their private attributes or reach
the view another callback kept (nor the raw learner). Tensors, modules and optimizers come
back as they are (proxies would break torch, copies cost too much): strict mode
(`fluxpy.core.strict`) checks that a handler that only reads them leaves them unchanged.

No attribute of a view holds the learner: the getters and the view's methods close over it.
The read-only wrappers keep what they show in `_fp_raw_do_not_use`, named for what it is.
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
from functools import partial
from operator import attrgetter
from typing import Any

import attrs
import numpy as np
import torch

from .access import Access, Read, Write, is_attribute_name
from .errors import ProtectedError
from .state import Batch

__all__ = ["ProtectedObject", "ReadOnlyCallable", "ReadOnlyMapping", "ReadOnlyObject",
           "ReadOnlySequence", "protect", "readonly"]

#: `id(learner) -> weak reference` of every learner a view guards: such a learner reached
#: through another object is refused (it would be the way around every view). Written when a
#: view is made, never while one is read.
_GUARDED: dict[int, weakref.ref] = {}


def protect(learner: Any, access: Access, callback: Any) -> ProtectedObject:
    """The protected view of `learner` for `callback`, which declared `access`."""
    key = id(learner)
    if key not in _GUARDED:
        _GUARDED[key] = weakref.ref(learner, lambda _, key=key: _GUARDED.pop(key, None))
    return _Node(access, callback, "", learner).view


def _guarded(value: Any) -> bool:
    ref = _GUARDED.get(id(value))
    return ref is not None and ref() is value


class _Node:
    """One node of a permission tree, compiled once for one learner into `view`, the only
    instance of its own subclass of `ProtectedObject`. The class attributes of that subclass
    are the granted names: a granted namespace is its child's view itself, a leaf a property
    whose getter is compiled for its path (see `_leaf_getter`). So a granted read is an
    ordinary attribute lookup, and a view allocates nothing when read.

    Neither the node nor the view keeps the learner in an attribute: the getters and the
    view's methods close over it (see `_view_methods`), so no attribute of a view, private or
    not, leads to the raw learner."""

    __slots__ = ("base", "named", "owner", "prefix", "tree", "view")

    def __init__(self, tree: Access, owner: Any, prefix: str, root: Any) -> None:
        self.tree = tree
        self.base = tree.base
        self.named = frozenset(name for name, _ in tree.items)
        self.owner = owner
        self.prefix = prefix
        show = partial(attrgetter(prefix[:-1]), root) if prefix else partial(_itself, root)
        namespace: dict[str, Any] = {"__slots__": (), "_fp_node": self,
                                     **_view_methods(self, show)}
        for name, child in tree.items:
            path = prefix + name
            if isinstance(child, Access):
                namespace[name] = _Node(child, owner, path + ".", root).view
            else:
                namespace[name] = property(_leaf_getter(path, owner, root, type(child) is Write))
        self.view = _new_view(type("ProtectedObject", (ProtectedObject,), namespace))

    def check_write(self, name: str) -> None:
        permission = self.tree.get(name)
        if type(permission) is not Write:
            granted = None if permission is None else (
                "read access" if type(permission) is Read else "access to parts of it only")
            raise ProtectedError(self.owner, self.prefix + name, "write", granted)

    def unnamed(self, obj: Any, name: str) -> Any:
        """A read of `obj.name`, a name the tree does not list: covered by `base`, or denied."""
        if self.base is None:
            value = getattr(obj, name, None)
            if _is_namespace(value):  # report the full path: learner.batch.loss, not .batch
                return _Denied(self.owner, self.prefix + name)
            raise ProtectedError(self.owner, self.prefix + name, "read")
        value = getattr(obj, name)
        if type(self.base) is Write:
            return value
        return readonly(value, self.owner, self.prefix + name)


def _itself(obj: Any) -> Any:
    return obj


def _view_methods(node: _Node, show: Callable[[], Any]) -> dict[str, Callable[..., Any]]:
    """The methods of `node`'s view that need the object it shows (`show()`: the learner,
    `learner.batch`, ...). Made for each node, they hold `show` in their closure rather than
    the view in an attribute."""

    def __getattr__(self: ProtectedObject, name: str) -> Any:
        # Reached only for names without a descriptor (or whose getter raised AttributeError).
        if name.startswith(("__", "_fp_")):  # the view's own attributes
            raise AttributeError(name)
        if name in node.named:  # granted, but the object has no such attribute (yet):
            getattr(show(), name)  # the object's own AttributeError
            raise AttributeError(name)  # (the getter failed otherwise: never the raw value)
        return node.unnamed(show(), name)

    def __setattr__(self: ProtectedObject, name: str, value: Any) -> None:
        node.check_write(name)
        setattr(show(), name, value)

    def __delattr__(self: ProtectedObject, name: str) -> None:
        node.check_write(name)
        delattr(show(), name)

    def __contains__(self: ProtectedObject, name: str) -> bool:
        if node.tree.get(name) is None:
            raise ProtectedError(node.owner, node.prefix + name, "read")
        return hasattr(show(), name)

    def __dir__(self: ProtectedObject) -> list[str]:
        if node.base is not None:
            return dir(show())
        return sorted(node.named)

    return {"__getattr__": __getattr__, "__setattr__": __setattr__,
            "__delattr__": __delattr__, "__contains__": __contains__, "__dir__": __dir__}


def _leaf_getter(path: str, owner: Any, root: Any, write: bool) -> Callable[[Any], Any]:
    """The getter of a granted leaf at `path` (e.g. `batch.loss`) of `root`'s view.

    Compiled for the path, like attrs compiles `__init__`: `root.batch.loss` in the source, so
    every hop is an attribute load the interpreter specialises, where `attrgetter` or a loop
    over the names would look each name up generically. A view has a single root (each tree
    node's class is built for one learner), so the getter holds it and ignores the view. A
    `Read` leaf returns tensors and numbers as they are and anything else through `readonly`.
    """
    if not all(map(is_attribute_name, path.split("."))):
        raise ValueError(f"{path!r} is not a valid attribute path")  # `Access` rejects these
    if write:
        source = f"def get(view):\n    return root.{path}\n"
    else:
        source = (f"def get(view):\n"
                  f"    value = root.{path}\n"
                  f"    if type(value) in as_is:  # tensors, numbers: no wrapper, no call\n"
                  f"        return value\n"
                  f"    return readonly(value, owner, path)\n")
    scope = {"root": root, "as_is": _AS_IS_TYPES, "readonly": readonly, "owner": owner,
             "path": path}
    exec(compile(source, f"<fluxpy view of {path}>", "exec"), scope)
    get = scope["get"]
    get.__qualname__ = f"view.{path}"
    return get


class ProtectedObject:
    """An object seen through a permission tree; nested namespaces are protected too.

    A view is live: it shows the learner, not copies of its state, so `learner.batch` as a
    handler sees it always shows the learner's current batch (keep a value, e.g. the tensor
    `learner.batch.loss`, to remember it). Each tree node has its own subclass (see `_Node`);
    a name the tree does not list falls through to `__getattr__`, which applies the node's
    `base` permission or raises `ProtectedError`. A view is handed only to its own callback:
    read through another object (a callback that kept its view), it is a `ProtectedError`.
    """

    __slots__ = ()
    _fp_node: _Node

    def __new__(cls, obj: Any, tree: Access, owner: Any) -> ProtectedObject:
        return protect(obj, tree, owner)

    def __init__(self, *args: Any) -> None:
        pass  # all done in __new__

    def __repr__(self) -> str:
        node = type(self)._fp_node
        where = f"learner.{node.prefix.rstrip('.')}" if node.prefix else "learner"
        return f"<{where} as {type(node.owner).__name__} may see it>"

    def __copy__(self) -> ProtectedObject:
        return self  # a view has no state of its own to copy

    def _fp_not_copyable(self, *args: Any) -> Any:
        # A copy would be a second, working view with this callback's permissions, handed to
        # whoever copied (e.g. another callback deep-copying one that kept its view).
        raise TypeError(f"{self!r}: a protected view is live and cannot be copied or "
                        "pickled; copy the values you need from it instead")

    __deepcopy__ = __reduce__ = __reduce_ex__ = _fp_not_copyable


_new_view = object.__new__  # a view's class is made with it; no __init__ to run


def _is_namespace(value: Any) -> bool:
    return isinstance(value, (types.SimpleNamespace, Batch)) or attrs.has(type(value))


class _Denied:
    """A namespace the callback may not see: any use raises `ProtectedError` with the full
    path, so the message says `learner.batch.loss` rather than `learner.batch`."""

    __slots__ = ("_fp_owner", "_fp_path")

    def __init__(self, owner: Any, path: str) -> None:
        object.__setattr__(self, "_fp_owner", owner)
        object.__setattr__(self, "_fp_path", path)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ProtectedError(self._fp_owner, f"{self._fp_path}.{name}", "read")

    def __setattr__(self, name: str, value: Any) -> None:
        raise ProtectedError(self._fp_owner, f"{self._fp_path}.{name}", "write")

    def _fp_use(self, *args: Any, **kwargs: Any) -> Any:
        raise ProtectedError(self._fp_owner, self._fp_path, "read")

    __delattr__ = __getitem__ = __setitem__ = __iter__ = __len__ = __contains__ = _fp_use
    __bool__ = __call__ = __eq__ = __repr__ = __str__ = _fp_use
    __hash__ = None  # type: ignore[assignment]


def readonly(value: Any, owner: Any, path: str) -> Any:
    """`value` as `owner`, a callback with `Read()` on `path`, may see it.

    What cannot change comes back as it is (numbers, strings, paths, frozen records of them),
    and so do tensors, modules and optimizers (strict mode watches them) and functions.
    Containers and objects of any other kind come back read-only all the way down; a numpy
    array as a read-only view, a set as a frozenset of read-only items, a bytearray as bytes.
    Another callback's view and the raw learner are refused (`ProtectedError`).
    """
    kind = _READ_KINDS.get(type(value))
    if kind is None:
        kind = _read_kind(value)
        if not isinstance(value, ProtectedObject):  # a class per view: caching would keep
            _READ_KINDS[type(value)] = kind           # every learner's views alive
        if kind is _AS_IS:
            _AS_IS_TYPES.add(type(value))
    if kind is _AS_IS:
        if WATCHERS:
            _tell(owner, path, value)
        return value
    return kind(value, owner, path)


_AS_IS = object()
#: How `readonly` treats each type: `_AS_IS` or a function `(value, owner, path) -> seen`. A
#: read of a tensor or a number costs one dictionary lookup.
_READ_KINDS: dict[type, Any] = {}
#: The types `readonly` gives back as they are, for the getters' one-test fast path.
_AS_IS_TYPES: set[type] = set()

#: Strict mode's watchers (see `fluxpy.core.strict`): the id of a callback -> a function told each
#: value `readonly` hands to that callback as it is, or a numpy array's data, while one of its
#: handlers runs. Empty when strict mode is off, so reading costs one more test.
WATCHERS: dict[int, Callable[[str, Any], None]] = {}


def _tell(owner: Any, path: str, value: Any) -> None:
    watcher = WATCHERS.get(id(owner))
    if watcher is not None:
        watcher(path, value)


_IMMUTABLE = (int, float, complex, str, bytes, bool, type(None), range, slice, type(...),
              numbers.Number, np.generic, enum.Enum, datetime.date, datetime.time,
              datetime.timedelta, pathlib.PurePath, re.Pattern, torch.device, torch.dtype,
              torch.Size, torch.layout, torch.memory_format)
#: Values that are code: reading them means calling them.
_CODE = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, type,
         types.MethodWrapperType, types.WrapperDescriptorType, types.MethodDescriptorType)


def _read_kind(value: Any) -> Any:
    if isinstance(value, ProtectedObject):
        return _view
    if isinstance(value, _ReadOnly):
        return _rewrapped
    if isinstance(value, (_IMMUTABLE, _Denied, _CODE)):
        return _AS_IS
    if isinstance(value, (torch.Tensor, torch.nn.Module, torch.optim.Optimizer)):
        return _AS_IS  # copying them would cost too much; strict mode watches them
    if isinstance(value, np.ndarray):
        return _array
    if _guarded(value):
        return _learner
    if _is_frozen_record(value):
        return _record
    if isinstance(value, Mapping):
        return ReadOnlyMapping
    if isinstance(value, AbstractSet):
        return _frozen
    if isinstance(value, bytearray):
        return _bytes
    if isinstance(value, Sequence):
        return ReadOnlySequence
    if callable(value):
        return ReadOnlyCallable
    return ReadOnlyObject


def _view(view: ProtectedObject, owner: Any, path: str) -> ProtectedObject:
    """A view reached through another object: only its own callback may have it back."""
    holder = type(view)._fp_node.owner
    if holder is owner:
        return view
    name, reader = type(holder).__name__, type(owner).__name__
    raise ProtectedError(owner, path, "read", reason=(
        f"it is {name}'s view of the learner, which has {name}'s permissions; declare what "
        f"{reader} needs in stateaccess({reader})"))


def _learner(learner: Any, owner: Any, path: str) -> Any:
    reader = type(owner).__name__
    raise ProtectedError(owner, path, "read", reason=(
        f"it is the learner itself, unprotected; declare what {reader} needs in "
        f"stateaccess({reader})"))


def _rewrapped(seen: _ReadOnly, owner: Any, path: str) -> Any:
    """A read-only value another callback kept: read-only for this one, with its path."""
    return readonly(seen._fp_raw_do_not_use, owner, path)


def _array(array: np.ndarray, owner: Any, path: str) -> np.ndarray:
    if array.dtype.hasobject:
        raise ProtectedError(owner, path, "read", reason=(
            "a numpy array of Python objects cannot be made read-only (its items could still "
            "be changed); keep such state in a list, or declare fp.Write() for it"))
    if WATCHERS:
        _tell(owner, path, array)  # its flag can be set back: strict mode compares the data
    view = array.view()
    view.flags.writeable = False
    return view


def _frozen(items: AbstractSet, owner: Any, path: str) -> frozenset:
    return frozenset(readonly(item, owner, path) for item in items)


def _bytes(data: bytearray, owner: Any, path: str) -> bytes:
    return bytes(data)


def _is_frozen_record(value: Any) -> bool:
    cls = type(value)
    if attrs.has(cls):  # attrs has no public test for frozen; its frozen classes get this
        return getattr(cls.__setattr__, "__name__", None) == "_frozen_setattrs"
    params = getattr(cls, "__dataclass_params__", None)
    return params is not None and params.frozen


def _record(value: Any, owner: Any, path: str) -> Any:
    """A frozen attrs or dataclass record: itself when its fields cannot change either (a
    phase, a key of a history), read-only otherwise."""
    if _immutable(value):
        return value
    return ReadOnlyObject(value, owner, path)


def _immutable(value: Any) -> bool:
    if isinstance(value, _IMMUTABLE):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(map(_immutable, value))
    if _is_frozen_record(value):
        names = (f.name for f in (attrs.fields(type(value)) if attrs.has(type(value))
                                  else dataclasses.fields(value)))
        return all(_immutable(getattr(value, name)) for name in names)
    return False


class _ReadOnly:
    """What the read-only wrappers share. `_fp_raw_do_not_use` is the wrapped object; the
    name says what it is: not API, and the one way around the wrapper."""

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
    from .callback import Callback  # (imported here: callbacks import this module)

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
