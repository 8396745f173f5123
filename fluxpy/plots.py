"""Plots of a training run, with matplotlib (the optional extra `fluxpy[plot]`).

    fig = fp.plot_history(learner, "history.png")
    fig = fp.plot_graph(learner, "graph.png")

Figures are made with `matplotlib.figure.Figure`, not `pyplot`: no global state, no GUI
backend, safe in scripts, threads and on headless machines (saving renders with Agg), and a
notebook still shows the returned figure. `fp.lr_find(...).plot()` and `ActivationStats`
draw through the same helpers.
"""

from __future__ import annotations

import os
from typing import Any

from .core.graph import CallbackGraph
from .support.figures import new_figure, save_figure
from .support.graph_picture import graph_figure, save_graph_figure

__all__ = ["new_figure", "phase_label", "plot_graph", "plot_history", "save_figure"]

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


def plot_graph(learner_or_graph: Any, path: str | os.PathLike | None = None) -> Any:
    """plot_graph(learner_or_graph, path=None) -> matplotlib Figure

    The callback graph as a picture: the callbacks numbered in run order, top to bottom, and
    each edge an arc labelled with its reason, coloured by where the order comes from
    (declared by `runafter` or `RunFirst`, inferred from state, or the given order of a
    `NoConflict` pair). Edges that follow from longer paths are left out and counted in the
    title (`fp.explain` tells every reason). A learner's group members are shaded and tagged
    with their group; unsafe callbacks are framed in red. Drawn with matplotlib alone: no
    Graphviz, no network.

    Args:
        learner_or_graph: a `Learner` (or the text `fp.explain` returns), or a
            `CallbackGraph` from `fp.build_graph(callbacks)`.
        path: where to save it, a `.png` or an `.svg` file (none: not saved).
    """
    graph = getattr(learner_or_graph, "graph", learner_or_graph)
    if not isinstance(graph, CallbackGraph):
        raise TypeError(f"plot_graph draws a Learner's callback graph or a CallbackGraph "
                        f"(fp.build_graph(callbacks)), not {type(learner_or_graph).__name__}")
    groups = getattr(learner_or_graph, "groups", {})  # id(member) -> its group
    name = {id(cb): graph.names[i] for i, cb in enumerate(graph.callbacks)}
    members = {name[id(cb)]: name[id(groups[id(cb)])] for cb in graph.callbacks
               if id(cb) in groups}
    fig = graph_figure(graph, members)
    if path is not None:
        save_graph_figure(fig, path)
    return fig
