"""Figures with matplotlib (the optional extra `fluxpy[plot]`): made without pyplot's global
state, saved or returned. Used by the plots and by callbacks that draw."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["new_figure", "save_figure"]


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 6.0, height: float = 4.0,
               squeeze: bool = True, dpi: float = 100.0) -> tuple[Any, Any]:
    """A `(figure, axes)` pair of `nrows` x `ncols` subplots, each `width` x `height` inches,
    saved at `dpi` dots per inch."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("fluxpy's plots need matplotlib: pip install 'fluxpy[plot]' "
                          "(or pip install matplotlib)") from None
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained", dpi=dpi)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze)
    return fig, axes


def save_figure(fig: Any, path: str | os.PathLike | None) -> None:
    """Write `fig` to `path` (format from the suffix, e.g. `.png`, `.pdf`) atomically; a
    `None` path writes nothing."""
    if path is None:
        return
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as file:
            fig.savefig(file, format=fmt)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
