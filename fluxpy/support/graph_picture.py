"""The callback graph as a picture, drawn with matplotlib alone (no Graphviz, no network).

The callbacks stand in a column in run order, top to bottom, numbered. Every edge goes down
(the order respects the graph) as an arc on the right: from the bottom of the callback that
runs first to the top of the one that runs after it, with the edge's label on the arc.
Arcs are packed into tracks like intervals (an arc goes on the innermost track where it
overlaps no other arc), so labels never sit on top of each other however many callbacks
there are. An edge's colour says where its order comes from: declared (`runafter`,
`RunFirst`), state (a writer before its reader), or the given order of a `NoConflict`
pair (dotted). Callbacks from a group are shaded and tagged with it; unsafe callbacks
have a red frame.

Coordinates are inches (the axes fill the figure), and text is monospace, so the layout
is measured without a renderer.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

from ..core.callback import UnsafeCallback
from ..core.graph import DECLARED, STATE, CallbackGraph, Edge
from .figures import new_figure, save_figure

__all__ = ["draw_graph", "graph_figure", "save_graph_figure"]

FONT = "DejaVu Sans Mono"  # ships with matplotlib
SIZE, SMALL = 9.0, 7.5  # points
CHAR = 0.602 / 72  # a DejaVu Sans Mono character is 0.602 em wide; inches per point
ROW, BOX = 0.5, 0.34  # row pitch and box height, inches
TOP, LEFT, GAP = 1.2, 0.2, 0.22  # room for the key; margin; space between tracks
STYLES = {  # kind -> (colour, line style), for edges, their labels and the key
    DECLARED: ("#1f5fbf", "-"),
    STATE: ("#333333", "-"),
    "given order": ("#888888", ":"),
}
KEY = [(DECLARED, "declared (runafter, RunFirst)"), (STATE, "state (writer before reader)"),
       ("given order", "given order (NoConflict)")]
GROUP_FILLS = ["#fde7d9", "#dcebf7", "#e3f1dc", "#efe1f3", "#fbf3cc", "#dff3f1"]
UNSAFE = "#c62828"


def draw_graph(graph: CallbackGraph, path: str | os.PathLike,
               groups: Mapping[str, str] | None = None) -> pathlib.Path:
    """Draw `graph` to `path`, a PNG or an SVG as its suffix says; returns the path.

    `groups` maps a callback's name (as in `graph.names`) to the name of the group it came
    from, to mark it.
    """
    return save_graph_figure(graph_figure(graph, groups), path)


def save_graph_figure(fig: Any, path: str | os.PathLike) -> pathlib.Path:
    """Write a figure of `graph_figure` to `path`, a PNG or an SVG as its suffix says."""
    path = pathlib.Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        raise ValueError(f"cannot write {str(path)!r}: the callback graph is drawn as PNG or "
                         "SVG; give a path ending in .png or .svg")
    save_figure(fig, path)
    return path


def graph_figure(graph: CallbackGraph, groups: Mapping[str, str] | None = None) -> Any:
    """The matplotlib Figure of `graph` (see the module's docstring for how it reads)."""
    groups = dict(groups or {})
    row = {i: k for k, i in enumerate(graph.order)}
    labels = [_label(graph, i, groups) for i in graph.order]
    box_w = max((_width(text, SIZE) + _width(tag, SMALL) for text, tag in labels),
                default=1.0) + 0.4
    edges = _drawn(graph)
    tracks = _tracks(edges, row)
    widths = [max(_label_width(edges[e]) for e in t) for t in tracks]
    xs, x = [], LEFT + box_w + GAP
    for w in widths:
        xs.append(x + w / 2)
        x += w + GAP
    title, subtitle = _titles(graph, len(edges))
    key_w = sum(_width(text, SMALL) + 0.95 for _, text in KEY)
    width = max(x, LEFT + key_w, LEFT + _width(title, SIZE) * 1.05,
                LEFT + _width(subtitle, SMALL), 4.0) + LEFT
    height = TOP + ROW * max(len(graph.order), 1) + 0.2
    fig, ax = new_figure(width=width, height=height, dpi=150)
    fig.set_layout_engine("none")
    ax.set_position((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(-height, 0)
    ax.set_axis_off()
    _key(ax, title, subtitle)
    fills = {g: GROUP_FILLS[k % len(GROUP_FILLS)]
             for k, g in enumerate(dict.fromkeys(groups.values()))}
    for k, i in enumerate(graph.order):
        _box(ax, k, box_w, labels[k], fills.get(groups.get(graph.names[i]), "white"),
             isinstance(graph.callbacks[i], UnsafeCallback))
    for track, xt in zip(tracks, xs):
        for e in track:
            edge = edges[e]
            _arc(ax, LEFT + box_w, xt, (row[edge.before], row[edge.after]), edge)
    return fig


def _drawn(graph: CallbackGraph) -> tuple[Edge, ...]:
    """The edges no longer path implies: `a -> c` is left out when `a -> b -> ... -> c`."""
    return tuple(e for e in graph.edges
                 if not any(f.after == e.after and e.before in graph.ancestors[f.before]
                            for f in graph.edges))


def _y(k: int) -> float:
    return -(TOP + ROW * k + ROW / 2)


def _width(text: str, size: float) -> float:
    return max(len(line) for line in text.split("\n")) * size * CHAR


def _kind(edge: Edge) -> str:
    kinds = {r.kind for r in edge.reasons}
    return next((k for k in (DECLARED, STATE) if k in kinds), "given order")


def _wrapped(edge: Edge) -> str:
    """The edge's label, one item per line beyond 28 characters."""
    return edge.label.replace(", ", ",\n") if len(edge.label) > 28 else edge.label


def _label_width(edge: Edge) -> float:
    return _width(_wrapped(edge), SMALL) + 0.12


def _label(graph: CallbackGraph, i: int, groups: dict[str, str]) -> tuple[str, str]:
    """`(text, tag)`: the numbered name and its marks (group, unsafe)."""
    name = graph.names[i]
    marks = [f"in {groups[name]}"] if name in groups else []
    marks += ["UNSAFE"] if isinstance(graph.callbacks[i], UnsafeCallback) else []
    return f"{graph.order.index(i) + 1:>2}  {name}", f"[{', '.join(marks)}]" if marks else ""


def _tracks(edges: tuple[Edge, ...], row: dict[int, int]) -> list[list[int]]:
    """Edge indices packed into tracks, shortest arcs innermost; the arcs of a track cover
    disjoint runs of rows (not even an end shared), so their labels are apart."""
    spans = sorted(range(len(edges)),
                   key=lambda e: (row[edges[e].after] - row[edges[e].before], row[edges[e].before]))
    tracks: list[list[int]] = []
    for e in spans:
        lo, hi = row[edges[e].before], row[edges[e].after]
        free = [t for t in tracks if all(hi < row[edges[f].before] or lo > row[edges[f].after]
                                         for f in t)]
        if free:
            free[0].append(e)
        else:
            tracks.append([e])
    return tracks


def _titles(graph: CallbackGraph, drawn: int) -> tuple[str, str]:
    n, total = len(graph.order), len(graph.edges)
    title = f"Callback graph: {n} callback{'s' * (n != 1)} in run order, top to bottom"
    subtitle = f"{drawn} edge{'s' * (drawn != 1)}"
    if drawn < total:
        subtitle += (f"; {total - drawn} more follow{'s' * (total - drawn == 1)} from them "
                     "(fp.explain lists every reason)")
    return title, subtitle


def _key(ax, title: str, subtitle: str) -> None:
    """The titles, and a sample of each kind of edge."""
    ax.text(LEFT, -0.28, title, family=FONT, size=SIZE, weight="bold", va="center")
    ax.text(LEFT, -0.53, subtitle, family=FONT, size=SMALL, va="center")
    x = LEFT
    for kind, text in KEY:
        colour, style = STYLES[kind]
        ax.plot([x, x + 0.45], [-0.85, -0.85], color=colour, linestyle=style, lw=1.4)
        ax.text(x + 0.55, -0.85, text, family=FONT, size=SMALL, color=colour, va="center")
        x += 0.95 + _width(text, SMALL)


def _box(ax, k: int, box_w: float, label: tuple[str, str], fill: str, unsafe: bool) -> None:
    from matplotlib.patches import FancyBboxPatch

    y = _y(k)
    ax.add_patch(FancyBboxPatch((LEFT, y - BOX / 2), box_w, BOX,
                                boxstyle="round,pad=0,rounding_size=0.06", facecolor=fill,
                                edgecolor=UNSAFE if unsafe else "#555555",
                                lw=2.0 if unsafe else 0.9))
    text, tag = label
    ax.text(LEFT + 0.12, y, text, family=FONT, size=SIZE, va="center")
    if tag:
        ax.text(LEFT + box_w - 0.12, y, tag, family=FONT, size=SMALL, va="center",
                ha="right", color=UNSAFE if unsafe else "#555555")


def _arc(ax, xb: float, xt: float, rows: tuple[int, int], edge: Edge) -> None:
    """From the bottom right of the upper box out to the track at `xt`, down, and back into
    the top right of the lower box, with the label on the track halfway between two rows
    (where no other arc runs across)."""
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path

    colour, style = STYLES[_kind(edge)]
    first, last = rows
    y1, y2 = _y(first) - 0.07, _y(last) + 0.07
    y_label = _y(first + (last - first - 1) // 2) - ROW / 2
    r = min(0.12, (y1 - y2) / 2)
    vertices = [(xb, y1), (xt - r, y1), (xt, y1), (xt, y1 - r), (xt, y2 + r), (xt, y2),
                (xt - r, y2), (xb, y2)]
    codes = [Path.MOVETO, Path.LINETO, Path.CURVE3, Path.CURVE3, Path.LINETO, Path.CURVE3,
             Path.CURVE3, Path.LINETO]
    ax.add_patch(FancyArrowPatch(path=Path(vertices, codes), arrowstyle="-|>", mutation_scale=9,
                                 color=colour, linestyle=style, lw=1.1, shrinkA=0, shrinkB=0))
    ax.text(xt, y_label, _wrapped(edge), family=FONT, size=SMALL, color=colour,
            ha="center", va="center", zorder=3, linespacing=1.1,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": colour,
                  "lw": 0.5})
