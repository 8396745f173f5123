"""What the periodic callbacks share: reading their `every=` and deciding when work is due.

`as_every` turns what a user passes as `every=` (an `fp.Every`, or the plain int of steps the
callbacks took before `Every`) into an `fp.Every`, or raises a `ValueError` that names the
callback, the value and the fix. `due_after_step` answers for the step kinds; epoch kinds are
checked by the callbacks at `EpochEnd` with `Every.due`.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Collection

from ..core.every import Every

__all__ = ["as_every", "due_after_step", "every_repr"]


def every_repr(every: Every) -> str:
    """How a user writes it: `fp.Every(steps=4)`."""
    return f"fp.Every({every.unit}={every.amount!r})"


def as_every(owner: str, value: object, kinds: Collection[str], *, why: str = "",
             int_means: str = "steps", args: str = "") -> Every:
    """`value` as an `Every` of one of `kinds`; a plain int `n >= 1` is `Every(<int_means>=n)`.

    Args:
        owner: the callback's name, for the message.
        kinds: the units the callback can honour, e.g. `("steps", "seconds")`.
        why: why the other units cannot be honoured, said in the message.
        int_means: the unit of a plain int.
        args: the call's other arguments, shown before `every=` in the message.
    """
    said = f"{owner}({args}every="
    examples = " or ".join(f"fp.Every({kind}={_example(kind)})" for kind in kinds)
    if isinstance(value, Every):
        if value.unit not in kinds:
            raise ValueError(f"{said}{every_repr(value)}): "
                             f"{why or owner + ' cannot run every so many ' + value.unit}; "
                             f"use {examples}")
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return Every(**{int_means: int(value)})
    raise ValueError(f"{said}{value!r}): every is an fp.Every ({examples}) or a whole "
                     f"number of {int_means} >= 1")


def _example(kind: str) -> int:
    return {"steps": 100, "epochs": 1, "seconds": 60}[kind]


def due_after_step(every: Every, index: int, clock: Callable[[], float], last: dict,
                   key: object = None) -> bool:
    """Whether step-kind work is due at the training step with this `index` (from 0).

    `Every(steps=n)`: steps 0, n, 2n, ... (the count comes from the history, so it goes on
    across fits and resumed runs). `Every(seconds=s)`: the first step, then the first step at
    least `s` seconds after the last one the work ran at; `last[key]` holds that time.
    `Every(epochs=...)`: never (it is checked at `EpochEnd`).
    """
    if every.steps is not None:
        return index % every.steps == 0
    if every.seconds is not None:
        now = clock()
        previous = last.get(key)
        if previous is None or now - previous >= every.seconds:
            last[key] = now
            return True
    return False
