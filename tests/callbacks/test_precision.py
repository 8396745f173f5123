"""MixedPrecision: autocast over forward and loss, the float16 gradient scaler, its order."""

import pytest
import torch

import fluxpy as fp
from fluxpy.testing import test_learner

TRAINING, VALIDATION = fp.TrainingPhase(), fp.ValidationPhase()


def linear_learner(*callbacks, n_batches=8, lr=0.1, **kwargs):
    """Linear(4, 1) regression on y = x @ w with MSE and SGD, on the CPU."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 1, generator=g)
    data = [(xs, xs @ w) for xs in (torch.randn(16, 4, generator=g) for _ in range(n_batches))]
    torch.manual_seed(0)
    return fp.Learner(torch.nn.Linear(4, 1), torch.nn.functional.mse_loss, data=(data, data),
                      optimizer=lambda ps: torch.optim.SGD(ps, lr=lr), callbacks=callbacks,
                      use_default_callbacks=False, device="cpu", **kwargs)


def recorder(event, read, into, phase=fp.Phase):
    access = fp.Access(batch=fp.Access(preds=fp.Read(), loss=fp.Read()), model=fp.Read())
    return fp.CustomCallback(lambda learner: into.append(read(learner)), event, phase,
                             access=access)


def training_only(learner):
    return [(TRAINING, learner.data.training)]


# -- autocast -------------------------------------------------------------------------------------


def test_bfloat16_autocast_trains_on_the_cpu():
    dtypes = []
    learner = linear_learner(fp.MixedPrecision(torch.bfloat16), fp.Recorder(), fp.Metrics(),
                             recorder(fp.LossBegin, lambda lr: lr.batch.preds.dtype, dtypes))
    learner.fit(4)
    losses = learner.cbstate.metricsepoch[TRAINING]["loss"]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.1 * losses[0]
    assert set(dtypes) == {torch.bfloat16}  # training and validation forwards
    assert learner.scaler is None  # bfloat16 needs no scaler


def test_the_loss_is_computed_under_autocast_and_restored_after_fit():
    states = []

    def loss_fn(preds, ys):
        states.append(torch.is_autocast_enabled("cpu"))
        return torch.nn.functional.mse_loss(preds, ys)

    learner = linear_learner(fp.MixedPrecision(torch.bfloat16))
    learner.loss_fn = loss_fn
    learner.fit(1)
    assert states and all(states)
    assert learner.loss_fn is loss_fn
    assert not torch.is_autocast_enabled("cpu")


def test_autocast_works_under_the_threaded_executor():
    dtypes = []
    learner = linear_learner(fp.MixedPrecision(torch.bfloat16), fp.Recorder(), fp.Metrics(),
                             recorder(fp.LossBegin, lambda lr: lr.batch.preds.dtype, dtypes),
                             executor=fp.ThreadedExecutor(2))
    learner.fit(1)
    assert set(dtypes) == {torch.bfloat16}


def test_autocast_is_left_and_hooks_removed_when_the_forward_raises():
    class Failing(torch.nn.Linear):
        def forward(self, xs):
            raise RuntimeError("broken forward")

    learner = linear_learner(fp.MixedPrecision(torch.bfloat16))
    learner.model = Failing(4, 1)
    with pytest.raises(RuntimeError, match="broken forward"):
        learner.fit(1)
    assert not torch.is_autocast_enabled("cpu")
    assert not learner.model._forward_hooks and not learner.model._forward_pre_hooks


def test_dtype_must_be_float16_or_bfloat16():
    with pytest.raises(ValueError, match=r"use torch.float16 .* or torch.bfloat16"):
        fp.MixedPrecision(torch.float64)


# -- float16 and the gradient scaler --------------------------------------------------------------


def test_float16_installs_a_grad_scaler_when_adopted():
    learner = linear_learner(fp.MixedPrecision(torch.float16))
    assert isinstance(learner.scaler, torch.amp.GradScaler)


def test_float16_scaling_leaves_training_exact():
    # coeff * x is not an autocast op, so only the (power-of-two) scale and unscale differ.
    scaled = test_learner(fp.MixedPrecision(torch.float16), fp.Recorder(), fp.Metrics())
    scaled.fit(2)
    plain = test_learner(fp.Recorder(), fp.Metrics())
    plain.fit(2)
    assert scaled.scaler.get_scale() == 65536.0
    assert scaled.model.coeff.item() == plain.model.coeff.item()
    assert (scaled.cbstate.metricsepoch[TRAINING]["loss"]
            == plain.cbstate.metricsepoch[TRAINING]["loss"])  # metrics see the unscaled loss


def test_skipped_steps_counts_updates_with_inf_gradients():
    seen = []
    learner = test_learner(fp.MixedPrecision(torch.float16),
                           recorder(fp.StepEnd, lambda lr: lr.model.coeff.item(), seen,
                                    fp.TrainingPhase), n_batches=4)
    data = list(learner.data.training)
    data[2] = (torch.full((8,), float("inf")), data[2][1])
    learner.fit(1, phases=[(TRAINING, data)])
    assert learner.callbacks[0].skipped_steps == 1
    assert seen[2] == seen[1] != seen[3]  # the skipped step left the parameters alone
    assert learner.scaler.get_scale() == 32768.0


def test_skipped_steps_is_kept_in_the_state_dict():
    cb = fp.MixedPrecision()
    cb.load_state_dict({"skipped_steps": 3})
    assert cb.state_dict() == {"skipped_steps": 3}


# -- together with GradientClipping and GradientAccumulation --------------------------------------


def test_gradients_are_unscaled_before_clipping():
    # Clipping the scaled gradients would move coeff 65536 times less.
    learner = test_learner(fp.GradientClipping(0.5), fp.MixedPrecision(torch.float16), lr=1e-3)
    start = learner.model.coeff.item()
    learner.fit(1, phases=training_only(learner))
    assert learner.model.coeff.item() == pytest.approx(start + 16 * 1e-3 * 0.5, abs=1e-6)


@pytest.mark.parametrize("n_batches", [8, 6])  # 6: two batches left for the epoch-end update
def test_float16_with_accumulation_and_clipping_equals_full_precision(n_batches):
    def run(*extra):
        learner = test_learner(fp.GradientAccumulation(4), fp.GradientClipping(20.0), *extra,
                               n_batches=n_batches, lr=1e-3)
        learner.fit(2, phases=training_only(learner))
        return learner.model.coeff.item()

    assert run(fp.MixedPrecision(torch.float16)) == pytest.approx(run(), abs=1e-6)


@pytest.mark.parametrize("given", [
    [fp.MixedPrecision, fp.GradientAccumulation],
    [fp.GradientAccumulation, fp.MixedPrecision],
    [fp.MixedPrecision, fp.GradientClipping],
    [fp.GradientClipping, fp.MixedPrecision],
    [fp.GradientAccumulation, fp.GradientClipping, fp.MixedPrecision],
    [fp.GradientClipping, fp.GradientAccumulation, fp.MixedPrecision],
])
def test_mixed_precision_runs_first_in_any_list_order(given):
    made = {fp.MixedPrecision: fp.MixedPrecision(), fp.GradientAccumulation:
            fp.GradientAccumulation(2), fp.GradientClipping: fp.GradientClipping(1.0)}
    order = [type(c) for c in fp.build_graph([made[t] for t in given]).ordered()]
    expected = [fp.MixedPrecision, fp.GradientClipping, fp.GradientAccumulation]
    assert order == [t for t in expected if t in given]


def test_all_three_train_together():
    learner = linear_learner(fp.GradientClipping(1.0), fp.GradientAccumulation(2),
                             fp.MixedPrecision(torch.bfloat16), fp.Recorder(), fp.Metrics())
    learner.fit(3)
    losses = learner.cbstate.metricsepoch[VALIDATION]["loss"]
    assert losses[-1] < losses[0]


def test_bfloat16_reads_no_tensor_values_per_step(host_reads):
    counts = []
    for n_batches in (4, 12):
        learner = linear_learner(fp.MixedPrecision(torch.bfloat16), fp.GradientClipping(1.0),
                                 fp.Recorder(), fp.Metrics(), n_batches=n_batches)
        host_reads.clear()
        learner.fit(1)
        counts.append(len(host_reads))
    assert counts[0] == counts[1]


def test_float16_with_a_fused_optimizer_reads_no_tensor_values_per_step(host_reads):
    counts = []
    for n_batches in (4, 12):
        learner = test_learner(fp.MixedPrecision(torch.float16), fp.Recorder(), fp.Metrics(),
                               n_batches=n_batches,
                               optimizer=lambda ps: torch.optim.SGD(ps, lr=1e-3, fused=True))
        host_reads.clear()
        learner.fit(1)
        counts.append(len(host_reads))
    assert counts[0] == counts[1]
