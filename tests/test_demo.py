"""The `fluxpy` command and the demo it runs."""

import io

import pytest

from fluxpy import demo
from fluxpy.__main__ import USAGE, main


def test_help_prints_the_usage(capsys):
    assert main(["--help"]) == 0
    assert capsys.readouterr().out == USAGE


def test_unknown_command_prints_the_usage_and_exits_2(capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fluxpy: unknown command: train\n")
    assert USAGE in err


def test_no_command_prints_the_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("fluxpy: no command given\n")


def test_demo_command_runs_the_demo(monkeypatch):
    runs = []
    monkeypatch.setattr(demo, "run_demo", lambda: runs.append(1))
    assert main(["demo"]) == 0
    assert runs == [1]


@pytest.fixture(scope="module")
def short_demo():
    out, bars = io.StringIO(), io.StringIO()
    final = demo.run_demo(epochs=2, n_per_class=200, out=out, progress=bars)
    return final, out.getvalue(), bars.getvalue()


def test_demo_prints_the_plan_the_table_and_the_summary(short_demo):
    _, text, _ = short_demo
    assert "The callback plan (fp.explain(learner)):" in text
    assert "epoch │ train loss │ train accuracy │ valid loss │ valid accuracy" in text
    assert "Final metrics: train loss" in text
    assert "Summary: 2 epochs, 30 training steps, valid accuracy" in text


def test_demo_shows_progress_bars_even_when_not_a_terminal(short_demo):
    _, _, bars = short_demo
    assert "Epoch 2 TrainingPhase" in bars
    assert "Epoch 2 ValidationPhase" in bars


def test_demo_returns_the_final_metrics(short_demo):
    final, _, _ = short_demo
    assert set(final) == {"train loss", "train accuracy", "valid loss", "valid accuracy"}
    assert 0.0 <= final["valid accuracy"] <= 1.0


def test_spirals_are_balanced_and_reproducible():
    points, labels = demo.spirals(50)
    again, _ = demo.spirals(50)
    assert points.shape == (150, 2)
    assert sorted(set(labels.tolist())) == [0, 1, 2]
    assert (labels == 0).sum() == 50
    assert (points == again).all()
