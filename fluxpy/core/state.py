"""The namespaces a learner keeps its state in: `batch`, `cbstate` and `data`."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import attrs

__all__ = ["Batch", "Data", "State", "as_data"]


class Batch(SimpleNamespace):
    """The state of one step: `xs`, `ys`, then `preds`, `loss` (and `update` in training).

    A fresh `Batch` is made for every step, so nothing leaks from one step to the next. It is a
    `SimpleNamespace`: `Batch(xs=..., ys=...)`, any attribute can be added, `vars(batch)` lists
    them, and a name not set yet raises `AttributeError`. (SimpleNamespace's own `__init__`, in
    C, makes a built-in step 0.6 us cheaper than a Python one (A/B).)
    """


class State(SimpleNamespace):
    """`learner.cbstate`: state that callbacks share (`history`, `metricsstep`, ...)."""

    def __contains__(self, name: str) -> bool:
        return name in self.__dict__


@attrs.define
class Data:
    """The data of the two built-in phases; either may be `None`."""

    training: Any = None
    validation: Any = None


def as_data(data: Any) -> Data | None:
    """Accepts `(train, valid)`, a mapping or object with `training`/`validation`, or `None`."""
    if data is None or isinstance(data, Data):
        return data
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise TypeError(
                f"data has {len(data)} items; pass (training, validation), or "
                "(training, None) for no validation."
            )
        return Data(data[0], data[1])
    if isinstance(data, Mapping):
        unknown = set(data) - {"training", "validation"}
        if unknown or "training" not in data:
            raise TypeError(
                f"data mapping has keys {sorted(map(str, data))}; expected 'training' and "
                "optionally 'validation'."
            )
        return Data(data["training"], data.get("validation"))
    if hasattr(data, "training"):
        return Data(data.training, getattr(data, "validation", None))
    raise TypeError(
        f"data of type {type(data).__name__} is not understood; pass (training, validation), "
        "a mapping with 'training'/'validation', or an object with those attributes."
    )
