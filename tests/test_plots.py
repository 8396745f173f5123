"""plot_history: loss and metrics per epoch, train vs valid, rendered with matplotlib."""

import pytest

import fluxpy as fp
from fluxpy.testing import test_learner

PNG = b"\x89PNG\r\n\x1a\n"


def score(preds, ys):
    return -(preds - ys).abs().mean()


@pytest.fixture
def trained():
    learner = test_learner(fp.Metrics(score))
    learner.fit(3)
    return learner


def test_plot_history_writes_a_png(trained, tmp_path):
    path = tmp_path / "history.png"
    fp.plot_history(trained, path)
    assert path.read_bytes()[:8] == PNG
    assert path.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["history.png"]


def test_one_subplot_per_metric_with_a_line_per_phase(trained):
    fig = fp.plot_history(trained)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "score"]
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["train", "valid"]


def test_lines_are_the_recorded_epoch_values(trained):
    fig = fp.plot_history(trained)
    valid_loss = fig.axes[0].get_lines()[1]
    assert list(valid_loss.get_xdata()) == [1, 2, 3]
    expected = trained.cbstate.metricsepoch[fp.ValidationPhase()]["loss"]
    assert list(valid_loss.get_ydata()) == expected


def test_plot_history_before_any_epoch_says_what_is_missing():
    with pytest.raises(ValueError, match="no epoch metrics recorded yet"):
        fp.plot_history(test_learner(fp.Metrics()))
