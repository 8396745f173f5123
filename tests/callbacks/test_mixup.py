"""MixUp: mixed inputs and the matching loss in training, validation untouched."""

import pytest
import torch
import torch.nn.functional as F

import fluxpy as fp
from fluxpy.testing import test_learner

TRAINING, VALIDATION = fp.TrainingPhase(), fp.ValidationPhase()


def step_losses(into):
    """A callback appending each training step's `batch.loss` (a float) to `into`."""
    return fp.CustomCallback(lambda lr: into.append(lr.batch.loss.item()), fp.StepEnd,
                             fp.TrainingPhase, access=fp.Access(batch=fp.Access(loss=fp.Read())))


def draw(alpha, n):
    """What MixUp draws from torch's global generator for a batch of `n`: lam, then perm."""
    alpha = torch.tensor(alpha)
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return lam, torch.randperm(n)


def test_training_loss_matches_a_hand_computation():
    losses = []
    learner = test_learner(fp.MixUp(0.4), step_losses(losses), n_batches=1)
    (xs, ys), = learner.data.training
    coeff = learner.model.coeff.detach().clone()
    torch.manual_seed(7)
    lam, perm = draw(0.4, 8)
    preds = (lam * xs + (1 - lam) * xs[perm]) * coeff
    expected = lam * F.l1_loss(preds, ys) + (1 - lam) * F.l1_loss(preds, ys[perm])
    torch.manual_seed(7)
    learner.fit(1)
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(8))
    assert losses == [pytest.approx(expected.item(), rel=1e-6)]
    assert learner.callbacks[0].lam == lam


def test_class_index_targets_mix_the_two_losses():
    torch.manual_seed(0)
    xs, ys = torch.randn(6, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    model = torch.nn.Linear(5, 3)
    expected_model = torch.nn.Linear(5, 3)
    expected_model.load_state_dict(model.state_dict())
    losses = []
    learner = fp.Learner(model, F.cross_entropy, data=([(xs, ys)], None),
                         callbacks=[fp.MixUp(1.0), step_losses(losses)],
                         use_default_callbacks=False, device="cpu")
    torch.manual_seed(3)
    lam, perm = draw(1.0, 6)
    with torch.no_grad():
        preds = expected_model(lam * xs + (1 - lam) * xs[perm])
        expected = lam * F.cross_entropy(preds, ys) + (1 - lam) * F.cross_entropy(preds, ys[perm])
    torch.manual_seed(3)
    learner.fit(1)
    assert losses == [pytest.approx(expected.item(), rel=1e-6)]


def test_the_mixed_loss_is_what_is_differentiated():
    # With SGD the update is -lr times the gradient of the mixed loss.
    learner = test_learner(fp.MixUp(0.4), n_batches=1, lr=1e-3)
    (xs, ys), = learner.data.training
    coeff = learner.model.coeff.detach().clone().requires_grad_()
    torch.manual_seed(11)
    lam, perm = draw(0.4, 8)
    preds = (lam * xs + (1 - lam) * xs[perm]) * coeff
    (lam * F.l1_loss(preds, ys) + (1 - lam) * F.l1_loss(preds, ys[perm])).backward()
    torch.manual_seed(11)
    learner.fit(1, phases=[(TRAINING, learner.data.training)])
    assert learner.model.coeff.item() == pytest.approx((coeff - 1e-3 * coeff.grad).item(),
                                                       abs=1e-6)


def test_validation_loss_is_the_plain_loss():
    learner = test_learner(fp.MixUp(0.4), fp.Recorder(), fp.Metrics(), n_batches=4)
    learner.fit(2)
    with torch.no_grad():
        plain = sum(F.l1_loss(learner.model(xs), ys).item()
                    for xs, ys in learner.data.validation) / 4
    assert learner.cbstate.metricsepoch[VALIDATION]["loss"][-1] == pytest.approx(plain, rel=1e-6)


def test_validation_draws_nothing_from_the_generator():
    learner = test_learner(fp.MixUp(0.4), n_batches=2)
    state = torch.get_rng_state()
    learner.fit(1, phases=[(VALIDATION, learner.data.validation)])
    assert torch.equal(torch.get_rng_state(), state)


def test_integer_inputs_are_an_error_that_says_so():
    learner = fp.Learner(torch.nn.Embedding(10, 1), F.l1_loss,
                         data=([(torch.tensor([[1], [2]]), torch.zeros(2, 1, 1))], None),
                         callbacks=[fp.MixUp()], use_default_callbacks=False, device="cpu")
    with pytest.raises(TypeError, match=r"MixUp mixes floating-point input tensors, but "
                                        r"batch.xs is a torch.int64 tensor"):
        learner.fit(1)


def test_declares_exactly_what_it_writes():
    access = fp.stateaccess(fp.MixUp())
    assert sorted(access.writes()) == [("batch", "loss"), ("batch", "xs"), ("rng",)]
    assert sorted(access.reads()) == [("batch", "preds"), ("batch", "ys"), ("loss_fn",)]


def test_alpha_must_be_positive():
    with pytest.raises(ValueError, match=r"MixUp\(alpha=0\): need alpha > 0"):
        fp.MixUp(0)


@pytest.mark.parametrize("others", [
    [fp.MixedPrecision],
    [fp.GradientAccumulation],
    [fp.GradientAccumulation, fp.MixedPrecision, fp.GradientClipping, fp.ToDevice],
])
def test_mixup_makes_the_loss_before_others_scale_it(others):
    made = {fp.MixedPrecision: fp.MixedPrecision(), fp.GradientAccumulation:
            fp.GradientAccumulation(2), fp.GradientClipping: fp.GradientClipping(1.0),
            fp.ToDevice: fp.ToDevice("cpu")}
    expected = [t for t in (fp.ToDevice, fp.MixUp, fp.MixedPrecision, fp.GradientClipping,
                            fp.GradientAccumulation) if t in others or t is fp.MixUp]
    for cbs in ([made[t] for t in others] + [fp.MixUp()], [fp.MixUp()] + [made[t] for t in others]):
        assert [type(c) for c in fp.build_graph(cbs).ordered()] == expected


def test_mixup_trains_with_mixed_precision_and_accumulation():
    losses = []
    learner = test_learner(fp.MixUp(0.4), fp.MixedPrecision(torch.bfloat16),
                           fp.GradientAccumulation(2), step_losses(losses), fp.Recorder(),
                           fp.Metrics(), lr=1e-3)
    learner.fit(3)
    valid = learner.cbstate.metricsepoch[VALIDATION]["loss"]
    assert valid[-1] < valid[0]
    assert len(losses) == 48 and all(loss > 0 for loss in losses)


class Dropper(fp.Callback):
    """Another callback that draws random numbers (and touches nothing MixUp touches)."""


@fp.stateaccess.dispatch
def _dropper_access(cb: Dropper):
    return fp.Access(rng=fp.Write())


def test_mixup_conflicts_with_another_random_callback_until_their_order_is_declared():
    with pytest.raises(fp.WriteConflictError, match=(
        r"^Write conflict between MixUp and Dropper:\n  - MixUp writes learner\.rng\n"
        r"  - Dropper writes learner\.rng\nTo resolve it, implement\n"
        r"    @fp\.resolveconflict\.dispatch\n    def _\(a: MixUp, b: Dropper\):"
    )):
        fp.build_graph([fp.MixUp(), Dropper()])


def test_two_mixups_conflict_on_the_generator_too():
    with pytest.raises(fp.WriteConflictError) as info:
        fp.build_graph([fp.MixUp(), fp.MixUp()])
    assert ("rng", "rng") in info.value.paths
