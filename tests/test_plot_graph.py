"""fp.plot_graph: a learner's (or a graph's) callback graph as a matplotlib figure."""

import re

import attrs
import pytest

import fluxpy as fp
from fluxpy.testing import test_learner

PNG = b"\x89PNG\r\n\x1a\n"


class Clip(fp.Callback):
    pass


class Watch(fp.UnsafeCallback):
    pass


@attrs.define
class Bundle(fp.Callback):
    def subcallbacks(self):
        return (Clip(),)


@fp.stateaccess.dispatch
def _clip(cb: Clip):
    return fp.Access(model=fp.Write())


def shown(fig):
    return [t.get_text() for t in fig.axes[0].texts]


def test_a_learners_graph_with_its_groups_marked(tmp_path):
    learner = test_learner(Bundle(), Watch())
    fig = fp.plot_graph(learner, tmp_path / "graph.png")
    assert (tmp_path / "graph.png").read_bytes()[:8] == PNG
    names = [t.split()[1] for t in shown(fig) if re.fullmatch(r" ?\d+  \w+", t)]
    assert names == [learner.graph.names[i] for i in learner.graph.order]
    assert "[in Bundle]" in shown(fig)
    assert "[UNSAFE]" in shown(fig)


def test_a_graph_from_build_graph_and_explains_text():
    graph = fp.build_graph([Clip(), Watch()])
    assert shown(fp.plot_graph(graph))[0].startswith("Callback graph: 2 callbacks in run order")
    explanation = fp.explain(test_learner(Clip()))
    assert " 1  Clip" in shown(fp.plot_graph(explanation))


def test_svg_by_the_suffix(tmp_path):
    fp.plot_graph(fp.build_graph([Clip()]), tmp_path / "graph.svg")
    assert "<svg" in (tmp_path / "graph.svg").read_text()


def test_anything_else_is_refused_with_what_it_takes():
    with pytest.raises(TypeError, match=r"plot_graph draws a Learner's callback graph or a "
                                        r"CallbackGraph \(fp.build_graph\(callbacks\)\), not list"):
        fp.plot_graph([Clip()])
