"""The callback graph as a picture (`fluxpy/support/graph_picture.py`), drawn with matplotlib
alone: no Graphviz binary, no network."""

import re
import socket

import attrs
import pytest
import torch
from PIL import Image

import fluxpy as fp
from fluxpy.support.graph_picture import draw_graph, graph_figure

PNG = b"\x89PNG\r\n\x1a\n"


class Source(fp.Callback):
    pass


class Middle(fp.Callback):
    pass


class Sink(fp.Callback):
    pass


class Peek(fp.UnsafeCallback):
    pass


@fp.stateaccess.dispatch
def _source(cb: Source):
    return fp.Access(cbstate=fp.Access(x=fp.Write()))


@fp.stateaccess.dispatch
def _middle(cb: Middle):
    return fp.Access(cbstate=fp.Access(x=fp.Read(), y=fp.Write()))


@fp.stateaccess.dispatch
def _sink(cb: Sink):
    return fp.Access(cbstate=fp.Access(x=fp.Read(), y=fp.Read()))


@fp.runafter.dispatch
def _peek_after(cb: Peek):
    return (Sink,)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a socket was opened: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def twenty_callbacks(folder):
    """Twenty real callbacks: the defaults, a group, an unsafe Checkpointer, loggers..."""
    @attrs.define
    class Regularise(fp.Callback):
        def subcallbacks(self):
            return (fp.GradientClipping(1.0), fp.EarlyStopping(patience=2))

    callbacks = [
        fp.ToDevice("cpu"), fp.Scheduler({fp.LearningRate: fp.one_cycle(10, 1e-2)}),
        fp.LogMetrics(fp.CSVBackend(folder / "metrics")),
        fp.LogHyperParams(fp.CSVBackend(folder / "hyper")), fp.MixUp(),
        fp.GradientAccumulation(2), fp.SanityCheck(), fp.ActivationStats(), Regularise(),
        fp.Checkpointer(folder / "checkpoints"), fp.LogHistograms(fp.CSVBackend(folder / "hist")),
        fp.MixedPrecision(), Peek(),
    ]
    return fp.Learner(torch.nn.Linear(2, 1), torch.nn.functional.mse_loss, callbacks=callbacks)


def test_a_twenty_callback_graph_is_a_png_drawn_without_network(tmp_path, no_network):
    learner = twenty_callbacks(tmp_path)
    assert len(learner.graph.callbacks) == 20
    path = draw_graph(learner.graph, tmp_path / "graph.png")
    assert path == tmp_path / "graph.png"
    data = path.read_bytes()
    assert data[:8] == PNG
    assert len(data) > 50_000
    width, height = Image.open(path).size
    # 150 dpi; a 0.5 inch row per callback below the key: readable, not a thumbnail.
    assert height == round(150 * (1.2 + 0.5 * 20 + 0.2))
    assert 1000 < width < 4000


def test_an_svg_when_the_path_says_so(tmp_path, no_network):
    path = draw_graph(fp.build_graph([Source(), Middle(), Sink()]), tmp_path / "graph.svg")
    text = path.read_text()
    assert text.startswith("<?xml") and "<svg" in text


def test_other_formats_are_refused_with_the_fix(tmp_path):
    expected = (r"cannot write '.*graph.jpg': the callback graph is drawn as PNG or SVG; give "
                r"a path ending in .png or .svg")
    with pytest.raises(ValueError, match=expected):
        draw_graph(fp.build_graph([Source()]), tmp_path / "graph.jpg")
    assert list(tmp_path.iterdir()) == []


def texts(fig):
    return [(t.get_text(), t.get_position()) for t in fig.axes[0].texts]


def test_callbacks_stand_in_run_order_top_to_bottom_numbered():
    graph = fp.build_graph([Sink(), Peek(), Middle(), Source()])
    names = [(y, text) for text, (_, y) in texts(graph_figure(graph))
             if re.fullmatch(r" ?\d+  \w+", text)]
    assert [text.split() for _, text in sorted(names, reverse=True)] == [
        ["1", "Source"], ["2", "Middle"], ["3", "Sink"], ["4", "Peek"]]


def test_edges_are_labelled_and_implied_edges_left_out():
    # Source -> Middle (x), Middle -> Sink (y), Sink -> Peek (runafter); Source -> Sink (x)
    # follows from the first two.
    graph = fp.build_graph([Source(), Middle(), Sink(), Peek()])
    assert len(graph.edges) == 4
    fig = graph_figure(graph)
    assert [t.get_text() for t in fig.axes[0].texts[:2]] == [
        "Callback graph: 4 callbacks in run order, top to bottom",
        "3 edges; 1 more follows from them (fp.explain lists every reason)"]
    labels = [t.get_text() for t in fig.axes[0].texts if t.get_bbox_patch() is not None]
    assert sorted(labels) == ["cbstate.x", "cbstate.y", "runafter"]


def test_unsafe_callbacks_and_group_members_are_marked():
    graph = fp.build_graph([Source(), Peek(), Sink(), Middle()])
    fig = graph_figure(graph, groups={"Sink": "Bundle"})
    shown = [text for text, _ in texts(fig)]
    assert "[UNSAFE]" in shown and "[in Bundle]" in shown
    frames = {round(p.get_linewidth(), 1): p.get_edgecolor() for p in fig.axes[0].patches
              if type(p).__name__ == "FancyBboxPatch"}
    assert frames[2.0][:3] == pytest.approx((0xc6 / 255, 0x28 / 255, 0x28 / 255))


def test_edge_colours_say_where_the_order_comes_from():
    @attrs.define
    class Twin(fp.Callback):
        pass

    @fp.stateaccess.dispatch
    def _twin(cb: Twin):
        return fp.Access(model=fp.Write())

    @fp.resolveconflict.dispatch
    def _commute(a: Twin, b: Twin):
        return fp.NoConflict()

    graph = fp.build_graph([Source(), Middle(), Sink(), Peek(), Twin(), Twin()])
    colours = {text: t.get_color() for t in graph_figure(graph).axes[0].texts
               for text in [t.get_text()]}
    assert colours["runafter"] == "#1f5fbf"  # declared
    assert colours["cbstate.x"] == "#333333"  # state
    assert colours["no conflict"] == "#888888"  # given order
