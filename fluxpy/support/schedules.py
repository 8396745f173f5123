"""Schedules: functions `training step (from 0) -> value` for `fp.Scheduler`.

    fp.one_cycle(1000, 0.1)                              # the one-cycle learning rate
    fp.warmup(100, fp.cosine(900, 0.1, 0.0))             # linear warm-up, then cosine decay
    fp.concat((300, fp.linear(300, 0.1, 0.1)), (700, fp.cosine(700, 0.1, 1e-4)))

Each schedule here is an attrs-frozen value with `__call__`, so it prints what it is, compares
by value and pickles (a checkpoint or a worker process can carry it). Before step 0 a
schedule gives its step-0 value; after its last step it holds its final value.

Extending:
    Any callable `step -> value` is a schedule: a `lambda`, a function, or your own frozen
    class. Values are plain Python numbers (no tensors), so applying one costs no device work.
    A schedule may return a list with one value per optimizer parameter group.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs

__all__ = [
    "Concat",
    "Cosine",
    "Exponential",
    "Linear",
    "OneCycle",
    "Schedule",
    "Warmup",
    "concat",
    "cosine",
    "exponential",
    "linear",
    "one_cycle",
    "warmup",
]

#: What a schedule is: a callable from the training step (an int from 0) to a value.
Schedule = Callable[[int], Any]


def _positive_int(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{type(instance).__name__}({attribute.name}={value!r}): "
                         f"{attribute.name} must be an int >= 1")


def _is_schedule(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not callable(value):
        raise TypeError(f"{type(instance).__name__}({attribute.name}={value!r}): a schedule is "
                        "a callable step -> value")


def _progress(step: int, n_steps: int) -> float:
    """How far `step` is into `n_steps` steps, clamped to [0, 1]."""
    if n_steps <= 0:
        return 1.0
    return min(max(step / n_steps, 0.0), 1.0)


def _cosine(start: float, end: float, t: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * t)) / 2.0


@attrs.frozen
class Linear:
    """From `start` at step 0 to `end` at step `n_steps`, in a straight line."""

    n_steps: int = attrs.field(validator=_positive_int)
    start: float = attrs.field(converter=float)
    end: float = attrs.field(converter=float)

    def __call__(self, step: int) -> float:
        return self.start + (self.end - self.start) * _progress(step, self.n_steps)


@attrs.frozen
class Cosine:
    """From `start` at step 0 to `end` at step `n_steps` along half a cosine."""

    n_steps: int = attrs.field(validator=_positive_int)
    start: float = attrs.field(converter=float)
    end: float = attrs.field(converter=float)

    def __call__(self, step: int) -> float:
        return _cosine(self.start, self.end, _progress(step, self.n_steps))


@attrs.frozen
class Exponential:
    """From `start` at step 0 to `end` at step `n_steps` by a constant factor per step (a
    straight line on a log scale); both must be > 0."""

    n_steps: int = attrs.field(validator=_positive_int)
    start: float = attrs.field(converter=float)
    end: float = attrs.field(converter=float)

    def __attrs_post_init__(self) -> None:
        if self.start <= 0 or self.end <= 0:
            raise ValueError(f"exponential(start={self.start}, end={self.end}): both must be "
                             "> 0")

    def __call__(self, step: int) -> float:
        return self.start * (self.end / self.start) ** _progress(step, self.n_steps)


@attrs.frozen
class OneCycle:
    """Cosine up from `max_value / div` to `max_value` over the first `pct_start` of the steps,
    then cosine down to `max_value / final_div` at step `n_steps`."""

    n_steps: int = attrs.field(validator=_positive_int)
    max_value: float = attrs.field(converter=float)
    pct_start: float = attrs.field(default=0.25, converter=float)
    div: float = attrs.field(default=25.0, converter=float)
    final_div: float = attrs.field(default=1e5, converter=float)

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.pct_start <= 1.0:
            raise ValueError(f"one_cycle(pct_start={self.pct_start}): pct_start is the share "
                             "of steps spent warming up, between 0 and 1")
        if self.div <= 0 or self.final_div <= 0:
            raise ValueError(f"one_cycle(div={self.div}, final_div={self.final_div}): both "
                             "divide max_value and must be > 0")

    @property
    def peak(self) -> int:
        """The step at which the value is `max_value`."""
        return round(self.pct_start * self.n_steps)

    def __call__(self, step: int) -> float:
        peak = self.peak
        if step < peak:
            return _cosine(self.max_value / self.div, self.max_value, _progress(step, peak))
        end = self.max_value / self.final_div
        return _cosine(self.max_value, end, _progress(step - peak, self.n_steps - peak))


@attrs.frozen
class Warmup:
    """Linear from 0 at step 0 to `schedule(0)` at step `n_steps`, then `schedule(step -
    n_steps)`: the schedule runs in full after the warm-up."""

    n_steps: int = attrs.field(validator=_positive_int)
    schedule: Schedule = attrs.field(validator=_is_schedule)

    def __call__(self, step: int) -> Any:
        if step >= self.n_steps:
            return self.schedule(step - self.n_steps)
        t = _progress(step, self.n_steps)
        target = self.schedule(0)
        if isinstance(target, (list, tuple)):
            return [v * t for v in target]
        return target * t


@attrs.frozen
class Concat:
    """`segments` of `(n_steps, schedule)` one after the other; each schedule sees steps
    counted from the start of its own segment, and the last one runs on past its end."""

    segments: tuple[tuple[int, Schedule], ...] = attrs.field(converter=tuple)

    def __attrs_post_init__(self) -> None:
        if not self.segments:
            raise ValueError("concat() needs at least one (n_steps, schedule) pair")
        for segment in self.segments:
            if not (isinstance(segment, tuple) and len(segment) == 2 and callable(segment[1])
                    and isinstance(segment[0], int) and segment[0] >= 1):
                raise TypeError(f"concat: {segment!r} is not an (n_steps, schedule) pair with "
                                "n_steps an int >= 1 and schedule callable")

    def __call__(self, step: int) -> Any:
        offset = 0
        for n_steps, schedule in self.segments[:-1]:
            if step < offset + n_steps:
                return schedule(step - offset)
            offset += n_steps
        return self.segments[-1][1](step - offset)


def linear(n_steps: int, start: float, end: float) -> Linear:
    """linear(n_steps, start, end)

    A straight line from `start` (step 0) to `end` (step `n_steps`), held after that.
    """
    return Linear(n_steps, start, end)


def cosine(n_steps: int, start: float, end: float) -> Cosine:
    """cosine(n_steps, start, end)

    Cosine annealing from `start` (step 0) to `end` (step `n_steps`), held after that.
    """
    return Cosine(n_steps, start, end)


def exponential(n_steps: int, start: float, end: float) -> Exponential:
    """exponential(n_steps, start, end)

    From `start` (step 0) to `end` (step `n_steps`) multiplying by the same factor each
    step, held after that; the learning rate sweep of `fp.lr_find`.
    """
    return Exponential(n_steps, start, end)


def one_cycle(n_steps: int, max_value: float, pct_start: float = 0.25, div: float = 25.0,
              final_div: float = 1e5) -> OneCycle:
    """one_cycle(n_steps, max_value, pct_start=0.25, div=25, final_div=1e5)

    The one-cycle policy (Smith, 2018; fastai's `fit_one_cycle`): starts at `max_value / div`,
    rises along a cosine to `max_value` at step `round(pct_start * n_steps)`, then anneals
    along a cosine to `max_value / final_div` at step `n_steps` (so the last training step,
    `n_steps - 1`, is near it).
    """
    return OneCycle(n_steps, max_value, pct_start, div, final_div)


def warmup(n_steps: int, schedule: Schedule) -> Warmup:
    """warmup(n_steps, schedule)

    A linear warm-up from 0 to `schedule(0)` over `n_steps` steps, then `schedule` from its
    own step 0. Works with per-group schedules that return lists.
    """
    return Warmup(n_steps, schedule)


def concat(*segments: tuple[int, Schedule]) -> Concat:
    """concat((n1, schedule1), (n2, schedule2), ...)

    The schedules one after the other, `schedule1` for `n1` steps, then `schedule2` (from its
    own step 0) for `n2` steps, and so on; the last runs on past its segment.
    """
    return Concat(segments)
