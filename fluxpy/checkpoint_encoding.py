"""State as `torch.load(weights_only=True)` reads it: plain values, tensors, tagged dicts.

`encode` turns callback state and `cbstate` into values a weights-only load accepts;
`decode` turns them back. The format is described in `fluxpy.checkpoint`.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np
import torch

from .phases import Phase

__all__ = ["decode", "encode"]

TAG = "__fluxpy__"
_PLAIN = (type(None), bool, int, float, str, bytes)
_PLAIN_KEYS = (str, int)


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
        fields = {f.alias: encode(getattr(value, f.name), f"{path}.{f.name}")
                  for f in attrs.fields(type(value)) if f.init}
        return {TAG: "attrs", "class": _qualified(type(value)), "fields": fields}
    if isinstance(value, types.SimpleNamespace):
        return {TAG: "namespace",
                "fields": {k: encode(v, f"{path}.{k}") for k, v in vars(value).items()}}
    raise TypeError(
        f"{path} is a {type(value).__name__}, which a checkpoint cannot hold: checkpoints "
        "keep tensors, numbers, strings, containers of them and attrs values. Store such "
        "values there, or keep the object in a callback with state_dict/load_state_dict."
    )


def decode(value: Any) -> Any:
    """The inverse of `encode`; raises `TypeError` for a class this process does not define."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, (tuple, set, frozenset)):
        return type(value)(decode(v) for v in value)
    if not isinstance(value, dict):
        return value
    kind = value.get(TAG)
    if kind is None:
        return {k: decode(v) for k, v in value.items()}
    if kind == "dict":
        return {decode(k): decode(v) for k, v in value["items"]}
    if kind == "attrs":
        cls = _find_class(value["class"])
        return cls(**{k: decode(v) for k, v in value["fields"].items()})
    if kind == "namespace":
        return types.SimpleNamespace(**{k: decode(v) for k, v in value["fields"].items()})
    if kind == "ndarray":
        return value["data"].numpy()
    raise ValueError(f"unknown tagged value {kind!r}")


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _find_class(name: str) -> type:
    """An attrs class by qualified name: one reachable from a module that is already imported,
    else a `Phase` subclass (one defined in a function too). Nothing is imported."""
    module_name, _, qualname = name.rpartition(".")
    while module_name:
        module = sys.modules.get(module_name)
        if module is not None:
            found: Any = module
            for part in qualname.split("."):
                found = getattr(found, part, None)
            if isinstance(found, type) and attrs.has(found):
                return found
            break
        module_name, _, outer = module_name.rpartition(".")
        qualname = f"{outer}.{qualname}"
    # The last match: attrs replaces a slotted class by a new one, and the old one lingers
    # among the subclasses until it is garbage-collected.
    matches = [cls for cls in _subclasses(Phase) if _qualified(cls) == name]
    if matches:
        return matches[-1]
    raise TypeError(f"it holds a {name}, an attrs class this process does not define; import "
                    "the module that defines it before loading.")


def _subclasses(cls: type) -> list[type]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _subclasses(sub)
    return found
