"""GradientAccumulation and GradientClipping through the update hook of the training step."""

import attrs
import pytest
import torch

import fluxpy as fp
from fluxpy.testing import test_learner

TRAINING = fp.TrainingPhase()


def linear_learner(*callbacks, data, lr=0.05, seed=0):
    """A Linear(3, 2) regression with MSE and plain SGD, no default callbacks."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    return fp.Learner(model, torch.nn.functional.mse_loss, data=(data, None),
                      optimizer=lambda ps: torch.optim.SGD(ps, lr=lr), callbacks=callbacks,
                      use_default_callbacks=False, device="cpu")


def regression_batches(n, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 2, generator=g)
    batches = []
    for _ in range(n):
        xs = torch.randn(size, 3, generator=g)
        batches.append((xs, xs @ w + 0.1 * torch.randn(size, 2, generator=g)))
    return batches


def merged(batches, n):
    """Consecutive groups of `n` batches concatenated into one batch each."""
    return [tuple(torch.cat(parts) for parts in zip(*batches[i:i + n]))
            for i in range(0, len(batches), n)]


def params(learner):
    return torch.cat([p.detach().flatten() for p in learner.model.parameters()])


def recorder(event, read, into, phase=fp.TrainingPhase):
    """A CustomCallback appending `read(learner)` to `into` at `event`."""
    access = fp.Access(batch=fp.Access(update=fp.Read(), loss=fp.Read()), model=fp.Read())
    return fp.CustomCallback(lambda learner: into.append(read(learner)), event, phase,
                             access=access)


def grad_norm(learner):
    grads = [p.grad.flatten() for p in learner.model.parameters() if p.grad is not None]
    return torch.cat(grads).norm().item()


@attrs.define
class GradNorm(fp.Callback):
    """Records the gradient norm at `BackwardEnd`, declared to run before clipping."""

    norms: list = attrs.Factory(list)


@fp.stateaccess.dispatch
def _grad_norm_access(cb: GradNorm):
    return fp.Access(model=fp.Read())


@fp.on.dispatch
def _grad_norm_backward_end(event: fp.BackwardEnd, phase: fp.TrainingPhase, cb: GradNorm,
                            learner):
    cb.norms.append(grad_norm(learner))


@fp.resolveconflict.dispatch
def _grad_norm_before_clipping(a: GradNorm, b: fp.GradientClipping):
    return fp.RunFirst(a)


# -- GradientAccumulation -------------------------------------------------------------------------


def test_accumulation_equals_the_n_times_bigger_batch():
    data = regression_batches(16)
    accumulated = linear_learner(fp.GradientAccumulation(4), data=data)
    accumulated.fit(1)
    bigger = linear_learner(data=merged(data, 4))
    bigger.fit(1)
    assert torch.allclose(params(accumulated), params(bigger), atol=1e-6, rtol=0)
    assert not torch.allclose(params(accumulated), params(linear_learner(data=data)))


def test_accumulation_equals_the_bigger_batch_over_several_epochs_with_momentum():
    data = regression_batches(8)
    def sgd(ps):
        return torch.optim.SGD(ps, lr=0.05, momentum=0.9)
    accumulated = linear_learner(fp.GradientAccumulation(2), data=data)
    accumulated.optimizer = sgd(accumulated.model.parameters())
    accumulated.fit(3)
    bigger = linear_learner(data=merged(data, 2))
    bigger.optimizer = sgd(bigger.model.parameters())
    bigger.fit(3)
    assert torch.allclose(params(accumulated), params(bigger), atol=1e-6, rtol=0)


def test_accumulation_updates_only_every_nth_step():
    updates = []
    learner = linear_learner(fp.GradientAccumulation(3),
                             recorder(fp.StepEnd, lambda lr: lr.batch.update, updates),
                             data=regression_batches(7))
    learner.fit(1)
    assert updates == [False, False, True, False, False, True, False]


def test_accumulation_updates_pending_gradients_at_epoch_end():
    data = regression_batches(6)
    learner = linear_learner(fp.GradientAccumulation(4), data=data)
    expected = linear_learner(data=data).model  # the same initial parameters
    opt = torch.optim.SGD(expected.parameters(), lr=0.05)
    for group in (data[:4], data[4:]):  # each batch's loss divided by n = 4
        for xs, ys in group:
            (torch.nn.functional.mse_loss(expected(xs), ys) / 4).backward()
        opt.step()
        opt.zero_grad()
    learner.fit(1)
    assert torch.allclose(params(learner), torch.cat([p.detach().flatten()
                                                      for p in expected.parameters()]),
                          atol=1e-6, rtol=0)
    assert all(p.grad is None for p in learner.model.parameters())


def test_accumulation_restarts_its_groups_each_epoch():
    updates = []
    learner = linear_learner(fp.GradientAccumulation(2),
                             recorder(fp.StepEnd, lambda lr: lr.batch.update, updates),
                             data=regression_batches(3))
    learner.fit(2)
    assert updates == [False, True, False] * 2


def test_accumulation_reports_the_undivided_loss():
    data = regression_batches(4)
    plain, divided = [], []
    for cbs, into in (((), plain), ((fp.GradientAccumulation(4),), divided)):
        learner = linear_learner(*cbs, recorder(fp.StepEnd, lambda lr: lr.batch.loss.item(),
                                                into), data=data, lr=0.0)
        learner.fit(1)
    assert divided == pytest.approx(plain, rel=1e-6)


def test_accumulation_needs_a_positive_int():
    with pytest.raises(ValueError, match=r"GradientAccumulation\(n=0\): need an int >= 1"):
        fp.GradientAccumulation(0)


# -- GradientClipping -----------------------------------------------------------------------------


def test_clipping_bounds_the_update():
    # |d loss / d coeff| is about 50 here, so every step moves coeff by exactly lr * max_norm.
    learner = test_learner(fp.GradientClipping(0.5), lr=1e-3)
    start = learner.model.coeff.item()
    learner.fit(1, phases=[(TRAINING, learner.data.training)])
    assert learner.model.coeff.item() == pytest.approx(start + 16 * 1e-3 * 0.5, abs=1e-6)


def test_clipped_gradient_norm_is_at_most_max_norm():
    norms = []
    learner = linear_learner(fp.GradientClipping(0.1),
                             recorder(fp.BackwardEnd, grad_norm, norms),
                             data=regression_batches(8))
    learner.fit(1)
    assert max(norms) <= 0.1 * (1 + 1e-6)
    assert min(norms) == pytest.approx(0.1, rel=1e-5)  # these gradients were all larger


def test_clipping_leaves_small_gradients_alone():
    data = regression_batches(8)
    clipped = linear_learner(fp.GradientClipping(1e6), data=data)
    clipped.fit(1)
    plain = linear_learner(data=data)
    plain.fit(1)
    assert torch.equal(params(clipped), params(plain))


def test_clipping_with_accumulation_clips_only_the_accumulated_gradients():
    seen = []
    learner = linear_learner(
        fp.GradientAccumulation(4), fp.GradientClipping(0.1),
        recorder(fp.BackwardEnd, lambda lr: (lr.batch.update, grad_norm(lr)), seen),
        data=regression_batches(8))
    learner.fit(1)
    on_update = [n for update, n in seen if update]
    between = [n for update, n in seen if not update]
    assert len(on_update) == 2 and max(on_update) <= 0.1 * (1 + 1e-6)
    assert min(between) > 0.1  # partial sums are left as they are


def test_clipping_applies_to_the_update_at_epoch_end():
    # 6 batches in groups of 4: an update after batch 4, and one of the pending 2 at EpochEnd.
    learner = test_learner(fp.GradientAccumulation(4), fp.GradientClipping(0.5), n_batches=6,
                           lr=1e-3)
    start = learner.model.coeff.item()
    learner.fit(1, phases=[(TRAINING, learner.data.training)])
    assert learner.model.coeff.item() == pytest.approx(start + 2 * 1e-3 * 0.5, abs=1e-6)


def test_clipping_needs_a_positive_max_norm():
    with pytest.raises(ValueError, match=r"max_norm > 0"):
        fp.GradientClipping(0.0)


# -- the graph ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_clipping_runs_before_accumulation_in_either_list_order(reverse):
    cbs = [fp.GradientClipping(1.0), fp.GradientAccumulation(2)]
    graph = fp.build_graph(cbs[::-1] if reverse else cbs)
    assert [type(c) for c in graph.ordered()] == [fp.GradientClipping, fp.GradientAccumulation]


def test_to_device_runs_before_accumulation_and_clipping():
    graph = fp.build_graph([fp.GradientAccumulation(2), fp.GradientClipping(1.0),
                            fp.ToDevice("cpu")])
    assert [type(c) for c in graph.ordered()] == [
        fp.ToDevice, fp.GradientClipping, fp.GradientAccumulation]


def test_accumulation_and_clipping_read_no_tensor_values_per_step(host_reads):
    counts = []
    for n_batches in (4, 12):
        learner = test_learner(fp.GradientAccumulation(2), fp.GradientClipping(0.5),
                               fp.Recorder(), fp.Metrics(), n_batches=n_batches)
        host_reads.clear()
        learner.fit(1)
        counts.append(len(host_reads))
    assert counts[0] == counts[1]  # only the epoch ends read values


@pytest.mark.parametrize("reverse", [False, True])
def test_a_gradient_norm_declared_run_first_sees_the_gradients_before_clipping(reverse):
    data = regression_batches(8)
    unclipped = GradNorm()
    linear_learner(unclipped, data=data).fit(1)
    before, after = GradNorm(), []
    cbs = [fp.GradientClipping(0.1), before]
    learner = linear_learner(*(cbs[::-1] if reverse else cbs),
                             recorder(fp.BackwardEnd, grad_norm, after), data=data)
    assert [type(c).__name__ for c in learner.graph.ordered()] == [
        "GradNorm", "GradientClipping", "CustomCallback"]
    learner.fit(1)
    assert before.norms[0] == unclipped.norms[0]  # same parameters at the first step
    assert min(before.norms) > 0.1
    assert max(after) <= 0.1 * (1 + 1e-6)


def test_explain_shows_the_run_first_of_the_gradient_norm_as_declared():
    text = fp.explain(linear_learner(fp.GradientClipping(0.1), GradNorm(), data=[]))
    assert ("GradNorm before GradientClipping: RunFirst(GradNorm) declared by "
            "resolveconflict(GradNorm, GradientClipping) for model") in [
        " ".join(line.split()) for line in text.splitlines()]


def test_gradient_accumulation_saves_its_count_in_the_group_and_refuses_a_bad_one():
    accumulation = fp.GradientAccumulation(4)
    assert accumulation.state_dict() == {"count": 0}
    accumulation.load_state_dict({"count": 3})
    assert accumulation.state_dict() == {"count": 3}
    with pytest.raises(ValueError, match=r"GradientAccumulation\(n=4\) cannot resume a group "
                       r"at step 4"):
        accumulation.load_state_dict({"count": 4})
    assert accumulation.state_dict() == {"count": 3}
