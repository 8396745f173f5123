"""State as `torch.load(weights_only=True)` reads it: plain values, tensors, tagged dicts.

`encode` turns callback state and `cbstate` into values a weights-only load accepts;
`decode` turns them back. The format is described in `fluxpy.support.checkpoint`.

An "attrs" value names its class, and a file can name any class. So decoding builds only
`FLUXPY_VALUES` and the classes registered with `register_checkpoint_class`; encoding refuses
other attrs classes too, so that what saves also loads.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np
import torch

__all__ = ["DecodeError", "decode", "encode", "qualified_name", "register_checkpoint_class"]

TAG = "__fluxpy__"
_PLAIN = (type(None), bool, int, float, str, bytes)
_PLAIN_KEYS = (str, int)

#: fluxpy's own value classes that checkpoints hold: the phases keying `cbstate`'s dicts and
#: Recorder's `History`. Named, not imported: the callbacks sit above this module.
FLUXPY_VALUES = frozenset({
    "fluxpy.core.phases.Phase",
    "fluxpy.core.phases.AbstractTrainingPhase",
    "fluxpy.core.phases.AbstractValidationPhase",
    "fluxpy.core.phases.TrainingPhase",
    "fluxpy.core.phases.ValidationPhase",
    "fluxpy.callbacks.recorder.History",
})

#: Where files written before the package was split into layers name the phases.
_EARLIER_NAMES = {f"fluxpy.phases.{name}": f"fluxpy.core.phases.{name}" for name in (
    "Phase", "AbstractTrainingPhase", "AbstractValidationPhase", "TrainingPhase",
    "ValidationPhase")}

_registered: dict[str, type] = {}  # qualified name -> class, by register_checkpoint_class


class DecodeError(ValueError):
    """A stored value that decoding refuses; the message says why, for a `CheckpointError`."""


def encode(value: Any, path: str) -> Any:
    """`value` with everything a weights-only load would refuse turned into tagged dicts.

    Raises `TypeError` naming `path` (e.g. `learner.cbstate.history[TrainingPhase]`) for a
    value that has no encoding.
    """
    if isinstance(value, (_PLAIN, torch.Tensor)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return {TAG: "ndarray", "data": torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, Mapping):
        if all(isinstance(k, _PLAIN_KEYS) for k in value) and TAG not in value:
            return {k: encode(v, f"{path}[{k!r}]") for k, v in value.items()}
        return {TAG: "dict", "items": [(encode(k, f"{path} key {k!r}"), encode(v, f"{path}[{k}]"))
                                        for k, v in value.items()]}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        for kind in (list, tuple, set, frozenset):  # subclasses (namedtuples) become the base
            if isinstance(value, kind):
                return kind(items)
    if attrs.has(type(value)):
        _check_registered(type(value), path)
        fields = {f.alias: encode(getattr(value, f.name), f"{path}.{f.name}")
                  for f in attrs.fields(type(value)) if f.init}
        return {TAG: "attrs", "class": qualified_name(type(value)), "fields": fields}
    if isinstance(value, types.SimpleNamespace):
        return {TAG: "namespace",
                "fields": {k: encode(v, f"{path}.{k}") for k, v in vars(value).items()}}
    raise TypeError(
        f"{path} is a {type(value).__name__}, which a checkpoint cannot hold: checkpoints "
        "keep tensors, numbers, strings, containers of them and registered attrs values. "
        "Store such values there, or keep the object in a callback with "
        "state_dict/load_state_dict."
    )


def decode(value: Any) -> Any:
    """The inverse of `encode`. Raises `DecodeError` for a malformed tagged value or a class
    that is neither fluxpy's nor registered: a checkpoint builds nothing else."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, (tuple, set, frozenset)):
        return type(value)(decode(v) for v in value)
    if not isinstance(value, dict):
        return value
    kind = value.get(TAG)
    if kind is None:
        return {k: decode(v) for k, v in value.items()}
    if kind == "dict" and _is_list_of_pairs(value.get("items")):
        return {decode(k): decode(v) for k, v in value["items"]}
    if kind == "attrs" and isinstance(value.get("class"), str) and _has_str_keys(value, "fields"):
        cls = checkpoint_class(value["class"])
        fields = {k: decode(v) for k, v in value["fields"].items()}
        try:
            return cls(**fields)
        except Exception as exc:  # the class's own validation: the fields are wrong
            raise DecodeError(f"its {value['class']} has fields {sorted(fields)} that "
                              f"{cls.__name__} refuses: {type(exc).__name__}: {exc}") from exc
    if kind == "namespace" and _has_str_keys(value, "fields"):
        return types.SimpleNamespace(**{k: decode(v) for k, v in value["fields"].items()})
    if kind == "ndarray" and isinstance(value.get("data"), torch.Tensor):
        return value["data"].numpy()
    raise DecodeError(f"it holds a malformed tagged value of kind {kind!r}")


def register_checkpoint_class(cls: type) -> type:
    """Let checkpoints hold instances of the attrs class `cls`; returns `cls` (a decorator).

    Loading a checkpoint builds only fluxpy's own values (phases, `History`) and registered
    classes, so a file cannot make this process build anything else. Register your own
    phases and the attrs values your callbacks keep in `cbstate` or `state_dict()`, where
    they are defined, so that the process that saves and the one that loads both do:

        @fp.register_checkpoint_class
        @attrs.frozen
        class PretrainingPhase(fp.AbstractTrainingPhase):
            pass
    """
    if not (isinstance(cls, type) and attrs.has(cls)):
        raise TypeError(f"register_checkpoint_class({cls!r}): checkpoints hold instances of "
                        "attrs classes; register the class itself, decorated with attrs")
    _registered[qualified_name(cls)] = cls
    return cls


def checkpoint_class(name: str) -> type:
    """The class a checkpoint may build under the qualified `name`; `DecodeError` if none."""
    name = _EARLIER_NAMES.get(name, name)
    cls = _registered.get(name)
    if cls is None and name in FLUXPY_VALUES:
        cls = _imported(name)
    if cls is None:
        short = name.rpartition(".")[2]
        raise DecodeError(
            f"it holds a {name}, a class checkpoints do not build: only fluxpy's values and "
            f"registered classes are. If the file is yours, call "
            f"fp.register_checkpoint_class({short}) where {short} is defined, then load again."
        )
    return cls


def _is_list_of_pairs(items: Any) -> bool:
    return isinstance(items, list) and all(
        isinstance(item, (tuple, list)) and len(item) == 2 for item in items)


def _has_str_keys(value: dict, key: str) -> bool:
    fields = value.get(key)
    return isinstance(fields, dict) and all(isinstance(k, str) for k in fields)


def _check_registered(cls: type, path: str) -> None:
    name = qualified_name(cls)
    if _registered.get(name) is not cls and (name not in FLUXPY_VALUES
                                             or _imported(name) is not cls):
        raise TypeError(
            f"{path} is a {name}, which checkpoints hold only when the class is registered "
            f"(loading builds no other class): call fp.register_checkpoint_class("
            f"{cls.__name__}) where {cls.__name__} is defined."
        )


def qualified_name(cls: type) -> str:
    """`module.QualName` of `cls`, the name checkpoints store classes under."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _imported(name: str) -> type | None:
    """A class by qualified name from a module already imported; imports nothing."""
    module, _, qualname = name.rpartition(".")
    found = getattr(sys.modules.get(module), qualname, None)
    return found if isinstance(found, type) and attrs.has(found) else None
