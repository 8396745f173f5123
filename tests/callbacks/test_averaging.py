"""WeightAveraging: EMA and SWA against hand-written averages, BatchNorm, swapping, resume."""

import pytest
import torch
from linear_data import N_BATCHES, TRAIN, VALID

import fluxpy as fp


def new_model(batchnorm: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    if batchnorm:
        return torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4),
                                   torch.nn.Linear(4, 1))
    return torch.nn.Linear(2, 1)


def learner_with(*callbacks, batchnorm: bool = False) -> fp.Learner:
    model = new_model(batchnorm)
    return fp.Learner(model, torch.nn.functional.mse_loss, data=(TRAIN, VALID),
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                      callbacks=[fp.Recorder(), fp.Metrics(), *callbacks],
                      use_default_callbacks=False, device="cpu")


def snapshots(epochs: int) -> list[list[list[torch.Tensor]]]:
    """PyTorch's own loop: the parameters after every update, grouped by epoch."""
    model = new_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out = []
    for _ in range(epochs):
        epoch = []
        for x, y in TRAIN:
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch.append([p.detach().clone() for p in model.parameters()])
        out.append(epoch)
    return out


def averaged_params(averaging: fp.WeightAveraging) -> list[torch.Tensor]:
    return [p.detach() for p in averaging.averaged.module.parameters()]


@pytest.mark.parametrize("start", [0, 2])
def test_ema_weights_equal_a_hand_written_ema(start):
    ema = fp.WeightAveraging("ema", decay=0.9, start=start)
    learner_with(ema).fit(3)
    steps = [params for epoch in snapshots(3) for params in epoch][start:]
    expected = [p.clone() for p in steps[0]]
    for params in steps[1:]:
        expected = [0.9 * e + 0.1 * p for e, p in zip(expected, params)]
    for got, want in zip(averaged_params(ema), expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert int(ema.averaged.n_averaged) == 3 * N_BATCHES - start
    assert ema.count == 3 * N_BATCHES


def test_swa_weights_equal_the_mean_of_the_weights_at_each_epoch_end_from_start_on():
    swa = fp.WeightAveraging("swa", start=1)
    learner_with(swa).fit(4)
    ends = [epoch[-1] for epoch in snapshots(4)][1:]
    expected = [sum(ps) / len(ends) for ps in zip(*ends)]
    for got, want in zip(averaged_params(swa), expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert int(swa.averaged.n_averaged) == 3


def test_swa_per_step_averages_every_update():
    swa = fp.WeightAveraging("swa", interval="step")
    learner_with(swa).fit(2)
    steps = [params for epoch in snapshots(2) for params in epoch]
    expected = [sum(ps) / len(steps) for ps in zip(*steps)]
    for got, want in zip(averaged_params(swa), expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_swa_recomputes_batchnorm_statistics_of_the_average_when_fit_ends():
    swa = fp.WeightAveraging("swa")
    learner = learner_with(swa, batchnorm=True)
    learner.fit(2)
    first = swa.averaged.module[0]
    with torch.no_grad():  # momentum None in update_bn: the mean of the batches' means
        means = torch.stack([first(x).mean(0) for x, _ in TRAIN]).mean(0)
    bn = swa.averaged.module[1]
    torch.testing.assert_close(bn.running_mean, means, rtol=1e-5, atol=1e-6)
    assert not torch.equal(bn.running_mean, learner.model[1].running_mean)


def test_update_bn_on_request_leaves_the_global_random_state_as_it_was():
    swa = fp.WeightAveraging("swa", update_bn=False)
    learner = learner_with(swa, batchnorm=True)
    learner.fit(1)
    before = swa.averaged.module[1].running_mean.clone()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(
        torch.randn(32, 2), torch.randn(32, 1)), batch_size=8, shuffle=True)
    state = torch.get_rng_state()
    swa.update_batchnorm(loader)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(swa.averaged.module[1].running_mean, before)


def test_swapped_evaluates_with_the_averaged_weights_and_puts_the_model_back():
    ema = fp.WeightAveraging("ema", decay=0.5)
    learner = learner_with(ema)
    learner.fit(2)
    own = [p.detach().clone() for p in learner.model.parameters()]
    x = VALID[0][0]
    with ema.swapped(learner) as model:
        assert model is learner.model
        torch.testing.assert_close(learner.model(x), ema.averaged.module(x))
        learner.fit(1, phases=[(fp.ValidationPhase(), VALID)])
    with torch.no_grad():
        loss = sum(torch.nn.functional.mse_loss(ema.averaged.module(x), y) * len(x)
                   for x, y in VALID) / sum(len(x) for x, _ in VALID)
    valid = learner.cbstate.metricsepoch[fp.ValidationPhase()]["loss"]
    assert valid[-1] == pytest.approx(loss.item(), rel=1e-6)
    assert valid[-1] != pytest.approx(valid[-2], rel=1e-3)  # not the model's own weights
    for p, q in zip(learner.model.parameters(), own):
        assert torch.equal(p, q)


def test_swapped_puts_the_model_back_after_an_error_too():
    ema = fp.WeightAveraging("ema", decay=0.5)
    learner = learner_with(ema)
    learner.fit(1)
    own = [p.detach().clone() for p in learner.model.parameters()]
    with pytest.raises(RuntimeError, match="boom"), ema.swapped(learner.model):
        raise RuntimeError("boom")
    for p, q in zip(learner.model.parameters(), own):
        assert torch.equal(p, q)


def test_copy_to_loads_the_average_into_a_model():
    ema = fp.WeightAveraging("ema", decay=0.5)
    learner = learner_with(ema)
    learner.fit(1)
    plain = new_model()
    ema.copy_to(plain)
    for p, q in zip(plain.parameters(), averaged_params(ema)):
        assert torch.equal(p, q)


def test_using_the_average_before_any_update_is_refused_and_the_learner_stays_usable():
    swa = fp.WeightAveraging("swa", start=5)
    learner = learner_with(swa)
    learner.fit(1)
    with pytest.raises(ValueError, match=r"WeightAveraging\('swa'\) has averaged no weights "
                       r"yet \(1 epochs seen, start=5\): train past start first"):
        ema_model = learner.model
        with swa.swapped(ema_model):
            pass
    learner.fit(1)


@pytest.mark.parametrize("decay", [0, 1, 1.5, -0.1, True, "0.9"])
def test_an_ema_decay_outside_0_1_is_refused(decay):
    with pytest.raises(ValueError, match=rf"WeightAveraging\(decay={decay!r}\): the EMA decay "
                       r"is a number in \(0, 1\), e\.g\. 0\.999"):
        fp.WeightAveraging("ema", decay=decay)


@pytest.mark.parametrize(("options", "message"), [
    ({"kind": "mean"}, r"kind is 'ema' \(an exponential moving average\) or 'swa'"),
    ({"kind": "swa", "decay": 0.9}, "a SWA is the plain mean of the weights; decay is for "),
    ({"interval": "batch"}, r"interval='batch'\): 'step' .* or 'epoch'"),
    ({"start": -1}, r"start=-1\): the number of steps before the first update, an int >= 0"),
])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        fp.WeightAveraging(**options)


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_an_interrupted_and_resumed_run_averages_as_an_uninterrupted_one(kind, tmp_path):
    def averaging():
        return fp.WeightAveraging(kind, interval="step", start=1)

    whole = averaging()
    learner_with(whole).fit(4)
    first = averaging()
    learner_with(first, fp.Checkpointer(tmp_path / "a", every=fp.Every(steps=100))).fit(
        4, max_steps=5)
    resumed = averaging()
    learner = learner_with(resumed, fp.Checkpointer(tmp_path / "b"))
    fp.load_checkpoint(learner, tmp_path / "a")
    assert resumed.count == 5
    learner.fit(3)
    assert resumed.count == whole.count
    for (name, p), q in zip(resumed.averaged.state_dict().items(),
                            whole.averaged.state_dict().values()):
        assert torch.equal(p, q), name


def test_epoch_averaging_resumes_from_epoch_end_checkpoints(tmp_path):
    whole = fp.WeightAveraging("swa")
    learner_with(whole).fit(4)
    first = fp.WeightAveraging("swa")
    learner_with(first, fp.Checkpointer(tmp_path)).fit(2)
    resumed = fp.WeightAveraging("swa")
    learner = learner_with(resumed, fp.Checkpointer(tmp_path))
    fp.load_checkpoint(learner, tmp_path)
    learner.fit(2)
    for p, q in zip(averaged_params(resumed), averaged_params(whole)):
        assert torch.equal(p, q)


def test_explain_shows_what_it_reads_and_when_it_runs():
    text = str(fp.explain(learner_with(fp.WeightAveraging("ema"))))
    assert "WeightAveraging" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("WeightAveraging"))
    assert "model" in row and "batch.update" in row


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_it_keeps_to_its_declared_access_in_strict_mode(kind):
    from fluxpy.testing import test_learner

    averaging = fp.WeightAveraging(kind, interval="step")
    learner = test_learner(averaging)
    assert learner.strict
    learner.fit(2)
    assert int(averaging.averaged.n_averaged) == 32


class NoHostReads(torch.Tensor):
    """A tensor whose value may not be read to the host (what would wait for a GPU)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.__bool__, torch.Tensor.item, torch.Tensor.__int__,
                    torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.tolist):
            raise AssertionError(f"{func.__name__} read a tensor's value to the host")
        return super().__torch_function__(func, types, args, kwargs or {})


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_updates_never_read_the_update_count_to_the_host(kind):
    averaging = fp.WeightAveraging(kind, interval="step", update_bn=False)
    learner = learner_with(averaging, batchnorm=True)
    averaging.averaged.n_averaged = averaging.averaged.n_averaged.as_subclass(NoHostReads)
    learner.fit(2)
    assert averaging.updates == 2 * N_BATCHES
    assert torch.equal(averaging.averaged.n_averaged.as_subclass(torch.Tensor),
                       torch.tensor(2 * N_BATCHES))
    with pytest.raises(AssertionError, match="read a tensor's value to the host"):
        averaging.averaged.update_parameters(learner.model)  # torch's own method does


def test_copy_to_a_module_with_a_submodule_named_model_copies_into_that_module():
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.model(x)

    torch.manual_seed(0)
    wrapper = Wrapper()
    ema = fp.WeightAveraging("ema", decay=0.5)
    learner = fp.Learner(wrapper, torch.nn.functional.mse_loss, data=(TRAIN, None),
                         optimizer=torch.optim.SGD(wrapper.parameters(), lr=0.1),
                         callbacks=[ema], use_default_callbacks=False, device="cpu")
    learner.fit(1)
    target = Wrapper()
    ema.copy_to(target)
    assert torch.equal(target.model.weight, ema.averaged.module.model.weight)


def test_predict_and_evaluate_inside_swapped_use_the_average():
    ema = fp.WeightAveraging("ema", decay=0.5)
    learner = learner_with(ema)
    learner.fit(2)
    xs = torch.cat([x for x, _ in VALID])
    with ema.swapped(learner):
        preds = learner.predict(VALID)
        loss = learner.evaluate(VALID)["loss"]
    with torch.no_grad():
        expected = ema.averaged.module(xs)
    torch.testing.assert_close(preds, expected)
    ys = torch.cat([y for _, y in VALID])
    assert loss == pytest.approx(torch.nn.functional.mse_loss(expected, ys).item(), rel=1e-6)
    with torch.no_grad():
        own = learner.model(xs)
    assert not torch.allclose(preds, own)  # the model's own weights give other outputs


def test_evaluate_and_predict_leave_the_average_and_its_batchnorm_statistics_alone():
    # SWA recomputes BatchNorm statistics when a fit ends; predict and evaluate are no fit
    torch.manual_seed(0)
    xs = torch.randn(1024, 4)
    ys = xs.sum(dim=1, keepdim=True).sin() + 0.3 * torch.randn(1024, 1)
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs[:768], ys[:768]),
                                        batch_size=32, shuffle=True)
    valid = [(xs[768:], ys[768:])]
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.BatchNorm1d(64),
                                torch.nn.ReLU(), torch.nn.Linear(64, 1))
    swa = fp.WeightAveraging("swa", start=3)
    learner = fp.Learner(model, torch.nn.functional.mse_loss, data=(train, valid),
                         callbacks=[fp.Metrics(), swa], use_default_callbacks=False)
    learner.fit(8)
    before = {k: v.clone() for k, v in swa.averaged.state_dict().items()}
    with swa.swapped(learner):
        first = learner.evaluate(valid)
    learner.evaluate(valid)
    learner.predict(valid)
    with swa.swapped(learner):
        assert learner.evaluate(valid) == first
    after = swa.averaged.state_dict()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    plan = fp.explain(learner, [fp.PredictionPhase()])
    in_predictions = plan.split("  PredictionPhase\n")[1].split("\n\n")[0]
    assert "Metrics" in in_predictions and "WeightAveraging" not in in_predictions
