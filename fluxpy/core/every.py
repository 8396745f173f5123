"""`Every`: one value for periodic work, in epochs, training steps or seconds.

    fp.Every(epochs=2)      # at the end of every second training epoch
    fp.Every(steps=500)     # after every 500th training step
    fp.Every(seconds=600)   # at the first step boundary after each 10 minutes

`learner.fit(validate_every=...)` and the periodic callbacks (`every=`) take it. `Every` says
when; what counts (which steps, from when) is the user's: an `Every` is a frozen value, and
`Every.due(count)` answers for a count kept elsewhere.
"""

from __future__ import annotations

import numbers

import attrs

__all__ = ["Every"]


@attrs.frozen
class Every:
    """Every `epochs` training epochs, `steps` training steps or `seconds` seconds: exactly one.

    Args:
        epochs: a whole number of training epochs, at least 1.
        steps: a whole number of training steps (optimizer steps of the training phase's
            built-in step, or steps of a custom training phase), at least 1.
        seconds: wall-clock seconds, more than 0; checked at step boundaries.
    """

    epochs: int | None = None
    steps: int | None = None
    seconds: float | None = None

    def __attrs_post_init__(self) -> None:
        given = {name: value for name, value in attrs.asdict(self).items() if value is not None}
        if len(given) != 1:
            said = ", ".join(f"{k}={v!r}" for k, v in given.items()) or "nothing"
            raise ValueError(f"fp.Every({said}): give exactly one of epochs=, steps= or "
                             "seconds=, e.g. fp.Every(steps=500)")
        (name, value), = given.items()
        if name == "seconds":
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
                raise ValueError(f"fp.Every(seconds={value!r}): seconds must be a number > 0")
        elif isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"fp.Every({name}={value!r}): {name} must be a whole number >= 1")

    @property
    def unit(self) -> str:
        """`"epochs"`, `"steps"` or `"seconds"`."""
        return next(name for name in ("epochs", "steps", "seconds")
                    if getattr(self, name) is not None)

    @property
    def amount(self) -> float:
        """How many of `unit` between two runs of the periodic work."""
        return getattr(self, self.unit)

    def due(self, count: float) -> bool:
        """Whether the work is due after `count` epochs or steps (counted from 1); for
        seconds, whether `count` seconds since the last run reach the period."""
        if self.seconds is not None:
            return count >= self.seconds
        return count > 0 and count % self.amount == 0

    def __str__(self) -> str:
        amount = self.amount
        unit = self.unit if amount != 1 else self.unit[:-1]
        return f"every {amount:g} {unit}"
