"""Side effects that must happen once under `torch.distributed`: on rank 0, the others waiting.

    on_rank_zero(lambda: write_file(path))

Without an initialised process group (a plain `python train.py`) it is a plain call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .distributed import barrier, is_distributed, is_rank_zero

__all__ = ["on_rank_zero"]

T = TypeVar("T")


def on_rank_zero(fn: Callable[[], T]) -> T | None:
    """`fn()` on rank 0 only (its result there, `None` elsewhere), then a barrier.

    The barrier makes every rank wait until rank 0 is done (e.g. until a checkpoint file is
    complete), so no rank runs ahead of a file it may read. Rank 0 reaches the barrier also
    when `fn` raises, so the other ranks are not left waiting for it.
    """
    if not is_distributed():
        return fn()
    result = None
    try:
        if is_rank_zero():
            result = fn()
    finally:
        barrier()
    return result
