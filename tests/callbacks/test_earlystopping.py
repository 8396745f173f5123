"""EarlyStopping: stops fit normally once a monitored epoch metric stops improving."""

import io

import pytest

import fluxpy as fp
from fluxpy.testing import test_learner


def score(preds, ys):
    """Higher is better: the negative mean absolute error."""
    return -(preds - ys).abs().mean()


def test_flat_metric_stops_after_exactly_patience_epochs_with_the_reason_kept():
    learner = test_learner(fp.EarlyStopping(3), fp.Metrics(), lr=0.0)
    result = learner.fit(10)
    valid = learner.cbstate.metricsepoch[fp.ValidationPhase()]["loss"]
    assert len(valid) == 1 + 3
    assert result.stop_reason == (
        f"EarlyStopping: valid loss did not improve by more than 0.0 for 3 epochs "
        f"(best {valid[0]:.4g} at epoch 1)"
    )


def test_improving_metric_does_not_stop():
    result = test_learner(fp.EarlyStopping(1), fp.Metrics(), lr=3e-4).fit(5)
    assert result == fp.FitResult(5)


def test_mode_max_treats_higher_as_better():
    higher = test_learner(fp.EarlyStopping(1, "score", mode="max"), fp.Metrics(score), lr=3e-4)
    assert higher.fit(4).stop_reason is None
    lower = test_learner(fp.EarlyStopping(1, "score", mode="min"), fp.Metrics(score), lr=3e-4)
    stopped = lower.fit(4)
    assert stopped.stop_reason.startswith("EarlyStopping: valid score did not improve")


def test_improvements_within_min_delta_do_not_count():
    learner = test_learner(fp.EarlyStopping(2, min_delta=1e9), fp.Metrics())
    result = learner.fit(10)
    assert len(learner.cbstate.metricsepoch[fp.ValidationPhase()]["loss"]) == 3
    assert "by more than 1000000000.0 for 2 epochs" in result.stop_reason


def test_monitors_the_training_phase_when_asked():
    learner = test_learner(fp.EarlyStopping(2, phase=fp.TrainingPhase), fp.Metrics(), lr=0.0)
    result = learner.fit(10)
    assert len(learner.cbstate.metricsepoch[fp.TrainingPhase()]["loss"]) == 3
    assert result.stop_reason.startswith("EarlyStopping: train loss did not improve")


def test_unknown_monitor_names_the_available_metrics():
    learner = test_learner(fp.EarlyStopping(2, monitor="acc"), fp.Metrics(score))
    with pytest.raises(ValueError, match=r"no metric 'acc' is recorded for ValidationPhase "
                                         r"\(available: 'loss', 'score'\)"):
        learner.fit(1)


def test_state_dict_round_trip_continues_the_count():
    first = fp.EarlyStopping(3)
    learner = test_learner(first, fp.Metrics(), lr=0.0)
    learner.fit(2)
    assert first.state_dict()["wait"] == 1
    resumed = fp.EarlyStopping(3)
    resumed.load_state_dict(first.state_dict())
    learner.replace_callback(first, resumed)
    learner.fit(10)
    assert len(learner.cbstate.metricsepoch[fp.ValidationPhase()]["loss"]) == 4
    assert resumed.state_dict() == {**first.state_dict(), "wait": 3}


def test_runs_after_metrics_whatever_the_order_given():
    stopping, metrics = fp.EarlyStopping(2), fp.Metrics()
    learner = test_learner(stopping, metrics)
    assert learner.graph.ordered() == [metrics, stopping]


def test_without_metrics_the_graph_says_what_to_add():
    with pytest.raises(fp.MissingStateError, match=r"EarlyStopping reads cbstate\.metricsepoch"):
        test_learner(fp.EarlyStopping(2))


def test_mode_must_be_min_or_max():
    with pytest.raises(ValueError, match=r"mode is 'min' .* or 'max'"):
        fp.EarlyStopping(2, mode="lowest")


def test_patience_must_be_a_positive_int():
    with pytest.raises(ValueError, match="patience is a number of epochs >= 1"):
        fp.EarlyStopping(0)


def test_fit_result_counts_the_epoch_it_stopped_at():
    learner = test_learner(fp.EarlyStopping(3), fp.Metrics(), fp.Recorder(), lr=0.0)
    result = learner.fit(10)
    assert result.epochs == 4
    assert learner.cbstate.history[fp.ValidationPhase()].epochs == 4
    assert result.stop_reason.startswith("EarlyStopping: valid loss did not improve")


def test_the_stopping_epoch_is_printed_before_fit_ends():
    out = io.StringIO()
    learner = test_learner(fp.EarlyStopping(2), fp.Metrics(), fp.MetricsPrinter(file=out), lr=0.0)
    learner.fit(10)
    rows = [line for line in out.getvalue().splitlines() if line.lstrip()[:1].isdigit()]
    assert [row.split("│")[0].strip() for row in rows] == ["1", "2", "3"]
    assert all(len(row.split("│")) == 3 for row in rows)  # epoch, train loss, valid loss
