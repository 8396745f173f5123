"""Plots of a training run, with matplotlib (the optional extra `fluxpy[plot]`).

    fig = fp.plot_history(learner, "history.png")

Figures are made with `matplotlib.figure.Figure`, not `pyplot`: no global state, no GUI
backend, safe in scripts, threads and on headless machines (saving renders with Agg), and a
notebook still shows the returned figure. `fp.lr_find(...).plot()` and `ActivationStats`
draw through the same helpers.
"""

from __future__ import annotations

import os
from typing import Any

from .support.figures import new_figure, save_figure

__all__ = ["new_figure", "phase_label", "plot_history", "save_figure"]

_SHORT = {"TrainingPhase": "train", "ValidationPhase": "valid"}


def phase_label(phase: Any) -> str:
    """`"train"`, `"valid"`, or the phase's class name."""
    name = type(phase).__name__
    return _SHORT.get(name, name)


def plot_history(learner: Any, path: str | os.PathLike | None = None) -> Any:
    """plot_history(learner, path=None) -> matplotlib Figure

    The loss and each metric per epoch, one subplot per metric, one line per phase (train vs
    valid), from `learner.cbstate.metricsepoch` (recorded by `fp.Metrics`). Saved to `path`
    when given.
    """
    cbstate = learner.cbstate
    epochs = cbstate.metricsepoch if "metricsepoch" in cbstate else {}
    names: list[str] = []
    for values in epochs.values():
        names += [n for n, series in values.items() if len(series) and n not in names]
    if not names:
        raise ValueError("plot_history: no epoch metrics recorded yet; train with the "
                         "fp.Metrics callback (a default) for at least one epoch first")
    fig, axes = new_figure(1, len(names), width=4.5, squeeze=False)
    for ax, name in zip(axes[0], names):
        for phase, values in epochs.items():
            series = list(values.get(name, ()))
            if series:
                ax.plot(range(1, len(series) + 1), series, marker="o", label=phase_label(phase))
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend()
    save_figure(fig, path)
    return fig
