"""`learner.predict` and `learner.evaluate`: values, modes, callbacks and what stays untouched."""

import copy
import io

import attrs
import pytest
import torch
from torch.nn import functional as F

import fluxpy as fp

PREDICTION = fp.PredictionPhase()


def net() -> torch.nn.Module:
    """Dropout and BatchNorm: train and eval mode give different outputs."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8),
                               torch.nn.Dropout(0.5), torch.nn.Linear(8, 4))


def dataset(n: int = 10):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, generator=generator), torch.randint(0, 4, (n,), generator=generator)


def pairs(xs, ys, size: int = 4):
    return [(xs[i:i + size], ys[i:i + size]) for i in range(0, len(xs), size)]


def learner(model=None, **kwargs):
    kwargs.setdefault("callbacks", [fp.Metrics(fp.accuracy), fp.MetricsPrinter(io.StringIO())])
    return fp.Learner(model if model is not None else net(), F.cross_entropy, **kwargs)


def expected(model, xs):
    model.eval()
    with torch.no_grad():
        out = model(xs)
    model.train()
    return out


# -- predict -------------------------------------------------------------------------------


def test_predict_equals_the_model_under_no_grad_and_restores_modes():
    xs, ys = dataset()
    learn = learner()
    learn.model.train()
    preds = learn.predict(pairs(xs, ys))  # batches of 4, 4 and 2
    assert torch.equal(preds, expected(learn.model, xs))
    assert preds.shape == (10, 4) and preds.device.type == "cpu"
    assert not preds.requires_grad and not preds.is_inference()  # usable as any tensor
    assert learn.model.training and torch.is_grad_enabled()


def test_predict_leaves_a_model_in_eval_mode_in_eval_mode():
    xs, ys = dataset()
    learn = learner()
    learn.model.eval()
    learn.predict(pairs(xs, ys))
    assert not learn.model.training


def test_predict_takes_inputs_alone_tensors_or_one_item_batches():
    xs, _ = dataset()
    learn = learner(data=None)  # a learner without data
    reference = expected(learn.model, xs)
    tensors = [xs[:4], xs[4:8], xs[8:]]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xs), batch_size=4)
    assert torch.equal(learn.predict(tensors), reference)
    assert torch.equal(learn.predict(loader), reference)  # yields [xs] lists


def test_predict_with_targets_returns_preds_and_targets():
    xs, ys = dataset()
    learn = learner()
    preds, targets = learn.predict(pairs(xs, ys), with_targets=True)
    assert torch.equal(preds, expected(learn.model, xs))
    assert torch.equal(targets, ys)


def test_predict_with_targets_needs_batches_with_targets():
    xs, _ = dataset()
    learn = learner()
    with pytest.raises(ValueError, match=r"learner.predict\(with_targets=True\) needs \(xs, ys\) "
                                         r"batches, but batch 0 holds inputs alone"):
        learn.predict([xs], with_targets=True)


class TwoHeads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, xs):
        out = self.linear(xs)
        return {"scores": out, "parts": (out[:, 0], out.sum(1, keepdim=True))}


def test_predict_joins_tuple_and_dict_outputs_leaf_by_leaf():
    xs, _ = dataset()
    model = TwoHeads()
    learn = fp.Learner(model, lambda preds, ys: preds["scores"].sum(), use_default_callbacks=False)
    preds = learn.predict([xs[:4], xs[4:]])
    with torch.no_grad():
        out = model.linear(xs)
    assert set(preds) == {"scores", "parts"}
    assert torch.equal(preds["scores"], out)
    assert torch.equal(preds["parts"][0], out[:, 0])
    assert torch.equal(preds["parts"][1], out.sum(1, keepdim=True))


class Total(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, xs):
        return xs.sum() * self.scale


def test_predict_needs_outputs_with_a_batch_dimension():
    learn = fp.Learner(Total(), F.l1_loss, use_default_callbacks=False)
    with pytest.raises(TypeError, match=r"joins the outputs of each batch along the first "
                                        r"dimension, but they hold a tensor of shape \(\)"):
        learn.predict([torch.ones(2, 3)])


@attrs.define
class Events(fp.Callback):
    """Records (event, phase) of every event, and doubles xs in validation-like phases."""

    seen: list = attrs.Factory(list)
    fail_at: type | None = None


@fp.stateaccess.dispatch
def _events_access(cb: Events):
    return fp.Access(batch=fp.Access(xs=fp.Write()))


@fp.on.dispatch
def _events_any(event: fp.Event, phase: fp.Phase, cb: Events, learner):
    cb.seen.append((type(event).__name__, type(phase).__name__))
    if cb.fail_at is not None and isinstance(event, cb.fail_at):
        raise RuntimeError("the callback failed")


@fp.on.dispatch
def _events_double(event: fp.StepBegin, phase: fp.AbstractValidationPhase, cb: Events, learner):
    cb.seen.append(("StepBegin", type(phase).__name__))
    learner.batch.xs = learner.batch.xs * 2


@attrs.define
class ValidationOnly(fp.Callback):
    calls: int = 0


@fp.on.dispatch
def _validation_only(event: fp.StepEnd, phase: fp.ValidationPhase, cb: ValidationOnly, learner):
    cb.calls += 1


def test_predict_runs_the_handlers_of_validation_phases_in_a_run_of_its_own():
    xs, ys = dataset(6)
    events, only = Events(), ValidationOnly()
    learn = learner(callbacks=[events, only])
    preds = learn.predict([xs[:4], (xs[4:], ys[4:])])
    assert torch.equal(preds, expected(learn.model, xs * 2))  # the AbstractValidationPhase handler
    assert only.calls == 0  # a ValidationPhase handler is more specific: not in predictions
    assert events.seen == [
        ("FitBegin", "PredictionPhase"), ("EpochBegin", "PredictionPhase"),
        ("StepBegin", "PredictionPhase"), ("StepEnd", "PredictionPhase"),  # inputs alone
        ("StepBegin", "PredictionPhase"), ("LossBegin", "PredictionPhase"),
        ("StepEnd", "PredictionPhase"),
        ("EpochEnd", "PredictionPhase"), ("FitEnd", "PredictionPhase"),
    ]


@pytest.mark.parametrize("fail_at", [fp.FitBegin, fp.StepEnd, fp.EpochEnd])
def test_an_error_in_a_callback_restores_modes_and_callbacks_and_fires_fit_end(fail_at):
    xs, ys = dataset()
    events = Events(fail_at=fail_at)
    learn = learner(callbacks=[events])
    before = learn.given_callbacks
    learn.model.train()
    with pytest.raises(RuntimeError, match="the callback failed") as info:
        learn.predict(pairs(xs, ys))
    assert any("Events" in note for note in info.value.__notes__)
    assert events.seen[-1] == ("FitEnd", "PredictionPhase")
    assert learn.model.training and torch.is_grad_enabled()
    assert learn.given_callbacks == before
    assert not any(isinstance(cb, fp.callbacks.Predictions) for cb in learn.callbacks)
    events.fail_at = None
    assert learn.fit(1, (pairs(xs, ys), pairs(xs, ys))).epochs == 1


def test_predict_and_evaluate_leave_training_history_metrics_and_output_untouched(tmp_path):
    xs, ys = dataset()
    printed = io.StringIO()
    learn = learner(callbacks=[fp.Metrics(fp.accuracy), fp.MetricsPrinter(printed),
                               fp.Checkpointer(tmp_path / "ckpt"),
                               fp.LogMetrics(fp.CSVBackend(tmp_path / "logs"))],
                    data=(pairs(xs, ys), pairs(xs, ys)))
    learn.fit(1)
    state = copy.deepcopy({k: v for k, v in vars(learn.cbstate).items()})
    files = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*")
                   if p.is_file())
    rows = printed.getvalue()
    learn.predict(pairs(xs, ys))
    learn.evaluate(pairs(xs, ys))
    assert vars(learn.cbstate) == state  # history, metricsstep and metricsepoch as they were
    assert PREDICTION not in learn.cbstate.history
    assert printed.getvalue() == rows
    assert sorted((p.relative_to(tmp_path), p.read_bytes()) for p in tmp_path.rglob("*")
                  if p.is_file()) == files  # no checkpoint, no log row
    fp.save_checkpoint(learn, tmp_path / "after.pt")  # cbstate holds nothing it cannot save
    assert learn.fit(1).epochs == 1
    assert learn.cbstate.history[fp.TrainingPhase()].epochs == 2


def test_predict_under_mixed_precision_and_todevice():
    xs, ys = dataset()
    learn = learner(callbacks=[fp.MixedPrecision(torch.bfloat16), fp.ToDevice("cpu")])
    preds = learn.predict(pairs(xs, ys))
    assert preds.dtype == torch.bfloat16  # the forward ran under autocast
    learn.model.eval()
    with torch.no_grad():
        assert learn.model(xs).dtype == torch.float32  # and its hooks are gone afterwards
        with torch.autocast("cpu", torch.bfloat16):
            assert torch.equal(preds, learn.model(xs))


def test_predict_on_data_without_batches_is_an_error_naming_the_fix():
    xs, ys = dataset()
    learn = learner()
    before = learn.given_callbacks
    with pytest.raises(ValueError, match=r"learner.predict got data that yields no batches "
                                         r"\(list of length 0\): pass a DataLoader or a list"):
        learn.predict([])
    used = iter(pairs(xs, ys))
    list(used)
    with pytest.raises(ValueError, match=r"yielded no batches: an iterator or generator is used "
                                         r"up after one pass"):
        learn.predict(used)
    with pytest.raises(ValueError, match=r"learner.evaluate got data that yields no batches"):
        learn.evaluate([])
    with pytest.raises(TypeError, match=r"learner.predict needs the data to run over: pass "
                                        r"the batches, e.g. learner.predict\(learner.data"):
        learn.predict(None)
    assert learn.given_callbacks == before and learn.model.training
    assert learn.fit(1, (pairs(xs, ys), None)).epochs == 1
    assert torch.equal(learn.predict(pairs(xs, ys)), expected(learn.model, xs))


@attrs.define
class PredictsDuringFit(fp.UnsafeCallback):
    pass


@fp.on.dispatch
def _predicts(event: fp.EpochEnd, phase: fp.TrainingPhase, cb: PredictsDuringFit, learner):
    learner.predict([torch.ones(2, 3)])


def test_predict_during_fit_is_refused():
    xs, ys = dataset()
    learn = learner(callbacks=[PredictsDuringFit()])
    with pytest.raises(RuntimeError, match=r"learner.predict was called during fit: it is a run "
                                           r"of its own. Call it after fit returns"):
        learn.fit(1, (pairs(xs, ys), None))


def test_predict_does_not_keep_its_gatherer():
    xs, ys = dataset()
    learn = learner()
    adopted = len(learn._adopted)
    for _ in range(3):
        learn.predict(pairs(xs, ys))
        learn.evaluate(pairs(xs, ys))
    assert len(learn._adopted) == adopted


# -- evaluate ------------------------------------------------------------------------------


def test_evaluate_equals_the_weighted_mean_loss_and_metrics():
    xs, ys = dataset()
    learn = learner()
    batches = pairs(xs, ys)  # 4, 4 and 2 examples
    model = learn.model
    model.eval()
    with torch.no_grad():
        losses = [F.cross_entropy(model(x), y).item() for x, y in batches]
        hits = [(model(x).argmax(1) == y).sum().item() for x, y in batches]
    model.train()
    loss = (losses[0] * 4 + losses[1] * 4 + losses[2] * 2) / 10
    result = learn.evaluate(batches)
    assert set(result) == {"loss", "accuracy"}
    assert all(type(v) is float for v in result.values())
    assert result["loss"] == pytest.approx(loss, rel=1e-6)
    assert result["accuracy"] == pytest.approx(sum(hits) / 10, rel=1e-6)
    assert learn.model.training


def test_evaluate_reports_the_metrics_of_validation():
    xs, ys = dataset()
    learn = learner(callbacks=[fp.Metrics(fp.Metric(fp.accuracy, phase=fp.ValidationPhase),
                                          fp.Metric(fp.error_rate, phase=fp.TrainingPhase))])
    result = learn.evaluate(pairs(xs, ys))
    assert set(result) == {"loss", "accuracy"}


def test_evaluate_without_a_metrics_callback_reports_the_loss():
    xs, ys = dataset()
    learn = fp.Learner(net(), F.cross_entropy, use_default_callbacks=False)
    result = learn.evaluate(pairs(xs, ys))
    with torch.no_grad():
        loss = F.cross_entropy(expected(learn.model, xs), ys).item()
    assert result == {"loss": pytest.approx(loss, rel=1e-6)}
    assert learn.callbacks == ()


def test_evaluate_needs_targets():
    xs, ys = dataset()
    learn = learner()
    with pytest.raises(ValueError, match=r"learner.evaluate needs \(xs, ys\) batches, but batch "
                                         r"1 holds inputs alone: yield \(xs, ys\) pairs"):
        learn.evaluate([(xs[:4], ys[:4]), xs[4:]])


# -- what runs in PredictionPhase ------------------------------------------------------------


def test_explain_lists_the_handlers_of_prediction_runs():
    learn = learner(callbacks=[fp.Metrics(), fp.ToDevice("cpu"), fp.MixedPrecision(torch.bfloat16),
                               fp.MetricsPrinter(io.StringIO())])
    text = fp.explain(learn, [PREDICTION])
    section = text.split("  PredictionPhase\n")[1].split("\n\n")[0]
    assert section.splitlines() == [
        "    FitBegin    ToDevice -> MixedPrecision -> Metrics",
        "    EpochBegin  Metrics -> ProgressPrinter",
        "    StepBegin   ToDevice",
        "    StepEnd     Metrics -> ProgressPrinter",
        "    EpochEnd    Metrics -> ProgressPrinter",
        "    FitEnd      MixedPrecision -> Metrics -> ProgressPrinter",
    ]
    assert "Recorder" not in section and "StopOnNaNLoss" not in section


@attrs.define
class Counter(fp.Callback):
    steps: int = 0


@fp.on.dispatch
def _counter_step_end(event: fp.StepEnd, phase: fp.Phase, cb: Counter, learner):
    cb.steps += 1


class SittingOut(Counter):
    pass


fp.sit_out(SittingOut, fp.PredictionPhase)


class SubCounter(SittingOut):
    pass


@fp.on.dispatch
def _subcounter_step_end(event: fp.StepEnd, phase: fp.Phase, cb: SubCounter, learner):
    cb.steps += 10


def test_sit_out_leaves_a_callback_out_of_a_phase_only():
    xs, ys = dataset()
    sitting, sub = SittingOut(), SubCounter()
    learn = learner(callbacks=[sitting, sub])
    assert learn.plans.handlers(fp.StepEnd(), PREDICTION)[0].callback is sub
    learn.predict(pairs(xs, ys))
    assert (sitting.steps, sub.steps) == (0, 30)  # a subclass's own method is not ambiguous
    learn.fit(1, (pairs(xs, ys), pairs(xs, ys)))
    assert sitting.steps == 6


def test_a_nan_loss_is_reported_by_evaluate_not_a_reason_to_stop():
    xs, ys = dataset()
    learn = learner(callbacks=[fp.Metrics(), fp.StopOnNaNLoss()])
    bad = xs.clone()
    bad[5] = float("nan")
    result = learn.evaluate(pairs(bad, ys))
    assert result["loss"] != result["loss"]  # NaN
    assert torch.isnan(learn.predict(pairs(bad, ys))[5]).all()


@pytest.mark.parametrize("make", [lambda: fp.ThreadedExecutor(4), fp.SerialExecutor])
def test_predict_and_evaluate_give_the_same_values_with_any_executor_and_strict_mode(make):
    xs, ys = dataset()
    learn = learner(executor=make(), strict=True,
                    callbacks=[fp.Metrics(fp.accuracy), Events()])
    preds = learn.predict(pairs(xs, ys))
    assert torch.equal(preds, expected(learn.model, xs * 2))
    with torch.no_grad():
        loss = F.cross_entropy(expected(learn.model, xs * 2), ys).item()
    assert learn.evaluate(pairs(xs, ys))["loss"] == pytest.approx(loss, rel=1e-6)


@attrs.define
class CancelAll(fp.Callback):
    pass


@fp.on.dispatch
def _cancel_all(event: fp.StepBegin, phase: fp.PredictionPhase, cb: CancelAll, learner):
    raise fp.CancelStepException("skip")


def test_predict_and_evaluate_say_so_when_handlers_cancel_every_step():
    xs, ys = dataset()
    learn = learner(callbacks=[fp.Metrics(), CancelAll()])
    with pytest.raises(ValueError, match=r"learner.predict completed no step over the data: "
                                         r"handlers cancelled them all, so there are no outputs"):
        learn.predict(pairs(xs, ys))
    with pytest.raises(ValueError, match=r"learner.evaluate completed no step over the data: "
                                         r"handlers cancelled them all"):
        learn.evaluate(pairs(xs, ys))


class Shifty(torch.nn.Module):
    """A tensor for batches of 4, a tuple for smaller ones."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, xs):
        out = self.linear(xs)
        return out if len(xs) == 4 else (out, out)


def test_predict_needs_outputs_of_one_structure():
    xs, _ = dataset()
    learn = fp.Learner(Shifty(), F.l1_loss, use_default_callbacks=False)
    with pytest.raises(ValueError, match=r"learner.predict cannot join the outputs: batch 2's are "
                                         r"a tuple of 2 leaves, batch 0's a tensor; return the "
                                         r"same structure for every batch"):
        learn.predict([xs[:4], xs[4:8], xs[8:]])
