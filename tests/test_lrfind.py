"""lr_find: an exponential LR sweep that leaves the learner exactly as it was."""

import copy

import numpy as np
import pytest
import torch

import fluxpy as fp
from fluxpy.lrfind import LRFindResult
from fluxpy.testing import test_learner


def momentum_sgd(params):
    return torch.optim.SGD(params, lr=1e-3, momentum=0.9)


def assert_same_state(a, b):
    """Two (nested) state dicts hold equal values: tensors element for element."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_state(x, y)
    else:
        assert a == b


def test_leaves_model_optimizer_and_callbacks_exactly_as_they_were():
    scheduler = fp.Scheduler({fp.WeightDecay: lambda step: 1e-4})
    learner = test_learner(fp.Recorder(), fp.Metrics(), fp.ToDevice("cpu"), scheduler,
                           optimizer=momentum_sgd)
    learner.fit(1)
    model = copy.deepcopy(learner.model.state_dict())
    optimizer = copy.deepcopy(learner.optimizer.state_dict())
    callbacks, history = learner.callbacks, copy.deepcopy(learner.cbstate.history)
    metrics = copy.deepcopy(learner.cbstate.metricsepoch)

    result = fp.lr_find(learner)

    assert len(result.lrs) > 10
    assert_same_state(learner.model.state_dict(), model)
    assert_same_state(learner.optimizer.state_dict(), optimizer)
    assert learner.callbacks == callbacks
    assert learner.cbstate.history == history
    assert learner.cbstate.metricsepoch == metrics
    assert scheduler.step == 16


def test_a_fit_after_lr_find_is_the_fit_without_it():
    plain = test_learner(optimizer=momentum_sgd)
    swept = test_learner(optimizer=momentum_sgd)
    torch.manual_seed(1)
    plain.fit(2)
    torch.manual_seed(1)
    fp.lr_find(swept, n_steps=20)
    swept.fit(2)
    assert torch.equal(plain.model.coeff, swept.model.coeff)


def test_lrs_rise_exponentially_from_start_to_end():
    result = fp.lr_find(test_learner(), start=1e-6, end=1e-4, n_steps=5)
    assert result.lrs == pytest.approx([1e-6, 10 ** -5.5, 1e-5, 10 ** -4.5, 1e-4])
    assert result.stop_reason is None


def test_cycles_the_training_data_when_it_has_fewer_batches_than_steps():
    result = fp.lr_find(test_learner(n_batches=3), start=1e-6, end=1e-5, n_steps=10)
    assert len(result.lrs) == len(result.losses) == 10


def test_stops_early_when_the_smoothed_loss_diverges():
    result = fp.lr_find(test_learner(), n_steps=100)
    assert 10 < len(result.lrs) < 100
    assert result.stop_reason.startswith("lr_find: the smoothed loss")
    assert "exceeded 4.0 x the best" in result.stop_reason
    assert result.losses[-1] > 4.0 * min(result.losses[:-1])


def test_first_smoothed_loss_is_the_raw_loss_thanks_to_bias_correction():
    learner = test_learner()
    xs, ys = learner.data.training[0]
    raw = torch.nn.functional.l1_loss(learner.model(xs), ys).item()
    result = fp.lr_find(learner, n_steps=10)
    assert result.losses[0] == pytest.approx(raw)


def test_the_sweep_runs_callbacks_that_change_the_loss():
    def double(learner):
        learner.batch.loss = 2 * learner.batch.loss

    doubler = fp.CustomCallback(double, fp.BackwardBegin, fp.TrainingPhase,
                                access=fp.Access(batch=fp.Access(loss=fp.Write())))
    plain = fp.lr_find(test_learner(), n_steps=10, end=1e-5)
    doubled = fp.lr_find(test_learner(doubler), n_steps=10, end=1e-5)
    assert doubled.losses[0] == pytest.approx(2 * plain.losses[0])


def test_suggestion_is_the_steepest_descent_between_the_first_tenth_and_the_lowest_loss():
    result = fp.lr_find(test_learner())
    losses, lrs = np.array(result.losses), np.array(result.lrs)
    start, end = len(losses) // 10, int(np.argmin(losses)) + 1
    slopes = np.gradient(losses[start:end], np.log10(lrs[start:end]))
    assert result.suggestion == result.lrs[start + int(np.argmin(slopes))]
    assert result.lrs[start] <= result.suggestion <= result.lrs[end - 1]


def test_suggestion_of_a_hand_made_curve_is_where_it_falls_fastest():
    lrs = tuple(10.0 ** k for k in range(-6, 1))
    result = LRFindResult(lrs, (5.0, 4.9, 4.5, 2.0, 1.5, 1.4, 9.0))
    assert result.suggestion == 1e-3


def test_suggestion_is_none_when_the_loss_never_falls():
    assert LRFindResult((1e-3,), (0.5,)).suggestion is None
    assert LRFindResult((1e-3, 1e-2, 1e-1), (0.5, 0.7, 0.9)).suggestion is None


def test_plot_renders_a_png(tmp_path):
    path = tmp_path / "lr.png"
    fig = fp.lr_find(test_learner(), n_steps=30).plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000
    assert fig.axes[0].get_xscale() == "log"


def test_rejects_a_range_that_does_not_rise():
    with pytest.raises(ValueError, match="need 0 < start < end"):
        fp.lr_find(test_learner(), start=1.0, end=1e-3)


def test_runs_with_mixed_precision_and_gradient_callbacks_in_the_sweep():
    learner = test_learner(fp.MixedPrecision(torch.bfloat16), fp.GradientClipping(1.0),
                           fp.GradientAccumulation(2), fp.Metrics())
    before = learner.model.coeff.detach().clone()
    result = fp.lr_find(learner, n_steps=20)
    assert len(result.lrs) == 20
    assert torch.equal(learner.model.coeff, before)
    assert learner.cbstate.metricsepoch == {}
