"""fp.Scheduler driving PyTorch's own LR schedulers, against PyTorch's hand-written loop."""

import pytest
import torch
from linear_data import N_BATCHES, TRAIN, VALID
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau, StepLR

import fluxpy as fp


def new_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(2, 1)


def torch_loop(make, epochs: int, interval: str | None = None):
    """PyTorch's own loop: the lr of every training step and the final parameters."""
    model = new_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = make(optimizer)
    lrs = []
    for _ in range(epochs):
        for x, y in TRAIN:
            lrs.append(optimizer.param_groups[0]["lr"])
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if interval == "step":
                scheduler.step()
        if interval == "epoch":
            scheduler.step()
        if interval is None:  # ReduceLROnPlateau on the validation loss, a mean over examples
            with torch.no_grad():
                total = sum(torch.nn.functional.mse_loss(model(x), y).item() * len(x)
                            for x, y in VALID)
            scheduler.step(total / sum(len(x) for x, _ in VALID))
    return lrs, [p.detach().clone() for p in model.parameters()]


def lr_recorder(lrs: list) -> fp.CustomCallback:
    return fp.CustomCallback(lambda learner: lrs.append(learner.optimizer.param_groups[0]["lr"]),
                             fp.BackwardEnd, fp.TrainingPhase,
                             access=fp.Access(optimizer=fp.Read()))


def learner_with(scheduler, lrs: list, *callbacks, metrics=(), **kwargs) -> fp.Learner:
    """A learner on TRAIN and VALID with `scheduler`, an `fp.Scheduler` or a function
    `optimizer -> fp.Scheduler` (to build a PyTorch scheduler on the learner's optimizer)."""
    model = new_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if not isinstance(scheduler, fp.Callback):
        scheduler = scheduler(optimizer)
    return fp.Learner(model, torch.nn.functional.mse_loss, data=(TRAIN, VALID),
                      optimizer=optimizer, use_default_callbacks=False, device="cpu",
                      callbacks=[fp.Recorder(), fp.Metrics(*metrics), scheduler, lr_recorder(lrs),
                                 *callbacks], **kwargs)


def step_lr(opt):
    return StepLR(opt, step_size=2, gamma=0.5)


def one_cycle(opt):
    return OneCycleLR(opt, max_lr=0.5, total_steps=4 * N_BATCHES)


def plateau(opt):
    return ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.3)


CASES = {
    "StepLR per epoch": (step_lr, {"interval": "epoch"}, "epoch"),
    "OneCycleLR per step": (one_cycle, {"interval": "step"}, "step"),
    "ReduceLROnPlateau on the validation loss": (plateau, {"monitor": "loss"}, None),
}


def params(learner) -> list:
    return [p.detach().clone() for p in learner.model.parameters()]


@pytest.mark.parametrize("case", CASES)
def test_learning_rates_per_step_equal_pytorchs_own_loop(case):
    make, options, interval = CASES[case]
    expected_lrs, expected_params = torch_loop(make, 4, interval)
    lrs: list = []
    learner_with(fp.Scheduler(make, **options), lrs).fit(4)
    assert lrs == pytest.approx(expected_lrs, rel=1e-12)
    assert len(set(lrs)) >= 2  # the schedule moved
    learner = learner_with(fp.Scheduler(make, **options), [])
    learner.fit(4)
    for p, q in zip(params(learner), expected_params):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_scheduler_passed_built_on_the_learners_optimizer_works():
    expected, _ = torch_loop(step_lr, 3, "epoch")
    lrs: list = []
    learner_with(lambda opt: fp.Scheduler(StepLR(opt, step_size=2, gamma=0.5),
                                          interval="epoch"), lrs).fit(3)
    assert lrs == pytest.approx(expected, rel=1e-12)
    expected, _ = torch_loop(one_cycle, 4, "step")
    lrs = []
    learner_with(lambda opt: fp.Scheduler(one_cycle(opt), interval="step"), lrs).fit(4)
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_plateau_reduction_shows_where_the_validation_loss_stopped_improving():
    lrs: list = []
    learner = learner_with(fp.Scheduler(plateau, monitor="loss"), lrs)
    learner.fit(4)
    per_epoch = lrs[::N_BATCHES]
    assert per_epoch[0] == 0.1 and per_epoch[-1] < 0.1


@pytest.mark.parametrize("case", CASES)
def test_an_interrupted_and_resumed_run_has_the_same_lrs_and_parameters(case, tmp_path):
    make, options, _ = CASES[case]
    lrs_whole: list = []
    whole = learner_with(fp.Scheduler(make, **options), lrs_whole)
    whole.fit(4)

    lrs_first: list = []
    first = learner_with(fp.Scheduler(make, **options), lrs_first,
                         fp.Checkpointer(tmp_path / "a", every=fp.Every(steps=100)))
    first.fit(4, max_steps=5)  # stops inside the second epoch, saved at that step
    lrs_rest: list = []
    resumed = learner_with(fp.Scheduler(make, **options), lrs_rest,
                           fp.Checkpointer(tmp_path / "b", every=fp.Every(steps=100)))
    fp.load_checkpoint(resumed, tmp_path / "a")
    resumed.fit(3)  # the rest of the interrupted epoch, then two more
    assert lrs_first + lrs_rest == lrs_whole
    for p, q in zip(params(resumed), params(whole)):
        assert torch.equal(p, q)


def test_a_training_epoch_cut_short_by_a_limit_does_not_step_a_per_epoch_scheduler():
    learner = learner_with(fp.Scheduler(step_lr, interval="epoch"), [])
    learner.fit(3, max_steps=N_BATCHES + 1)
    assert learner.get_callback(fp.Scheduler).torch_scheduler.last_epoch == 1


def test_epoch_end_checkpoints_resume_exactly_too(tmp_path):
    make, options, _ = CASES["ReduceLROnPlateau on the validation loss"]
    lrs_whole: list = []
    whole = learner_with(fp.Scheduler(make, **options), lrs_whole)
    whole.fit(5)
    lrs: list = []
    learner_with(fp.Scheduler(make, **options), lrs, fp.Checkpointer(tmp_path)).fit(2)
    resumed = learner_with(fp.Scheduler(make, **options), lrs, fp.Checkpointer(tmp_path))
    fp.load_checkpoint(resumed, tmp_path)
    resumed.fit(3)
    assert lrs == lrs_whole
    state = resumed.get_callback(fp.Scheduler).state_dict()
    assert state["scheduler"]["best"] == whole.get_callback(fp.Scheduler).torch_scheduler.best


def test_a_scheduler_on_another_optimizer_is_refused_naming_the_fix():
    other = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=0.1)
    scheduler = fp.Scheduler(StepLR(other, step_size=1), interval="epoch")
    with pytest.raises(ValueError, match=r"StepLR was built on another optimizer than the "
                       r"learner's .* Build it on learner.optimizer, or pass a factory, "
                       r"fp.Scheduler\(lambda opt: StepLR\(opt, ...\)\)"):
        learner_with(scheduler, [])
    learner = learner_with(fp.Scheduler({fp.WeightDecay: fp.linear(4, 0.0, 0.1)}), [])
    with pytest.raises(ValueError, match="built on another optimizer"):
        learner.add_callback(fp.Scheduler(StepLR(other, step_size=1), interval="epoch"))
    learner.fit(1)  # still usable


def test_monitoring_a_metric_nobody_computes_is_a_graph_error_at_build_time():
    with pytest.raises(fp.MissingStateError, match=(
            r"TorchScheduler reads cbstate.metricsepoch\[ValidationPhase\(\)\]\[.accuracy.\], "
            r"which "
            r"no callback writes: the learner's Metrics compute \['loss'\] there; add "
            r"fp.Metrics\(accuracy\)")):
        learner_with(fp.Scheduler(plateau, monitor="accuracy"), [])
    model = new_model()
    with pytest.raises(fp.MissingStateError, match=r"reads cbstate.metricsepoch, which no "
                       "callback writes: add Metrics()"):
        fp.Learner(model, torch.nn.functional.mse_loss, data=(TRAIN, VALID),
                   use_default_callbacks=False,
                   callbacks=[fp.Scheduler(plateau, monitor="loss")])


def test_a_metric_of_the_monitored_phase_may_be_monitored():
    def mae(preds, ys):
        return (preds - ys).abs().mean()

    lrs: list = []
    learner = learner_with(fp.Scheduler(plateau, monitor="mae"), lrs,
                           metrics=[fp.Metric(mae, phase=fp.ValidationPhase)])
    learner.fit(2)
    assert lrs[:N_BATCHES] == [0.1] * N_BATCHES
    with pytest.raises(fp.MissingStateError, match=r"metricsepoch\[TrainingPhase\(\)\]\['mae'\]"):
        learner_with(fp.Scheduler(plateau, monitor="mae", phase=fp.TrainingPhase), [],
                     metrics=[fp.Metric(mae, phase=fp.ValidationPhase)])


@pytest.mark.parametrize(("args", "options", "message"), [
    (step_lr, {}, r"Scheduler\(a factory's scheduler, interval=None\): say when it steps: "
                  r"interval='step' .* or interval='epoch'"),
    (step_lr, {"interval": "batch"}, r"interval='batch'\): say when it steps"),
    (plateau, {"monitor": "loss", "interval": "epoch"}, r"ReduceLROnPlateau steps at the "
                                                        "EpochEnd of `phase`; drop interval"),
    (plateau, {"monitor": "loss", "phase": fp.ValidationPhase()}, "pass a phase type"),
    ({fp.LearningRate: fp.linear(4, 0.1, 0.2)}, {"interval": "step"},
     "unexpected keyword argument 'interval'"),
])
def test_bad_options_are_refused_when_the_scheduler_is_made(args, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        fp.Scheduler(args, **options)


def test_a_built_plateau_needs_monitor_and_monitor_needs_a_plateau():
    opt = torch.optim.SGD(new_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="give monitor=, the metric it watches"):
        fp.Scheduler(ReduceLROnPlateau(opt), interval="epoch")
    with pytest.raises(ValueError, match="monitor is for ReduceLROnPlateau"):
        fp.Scheduler(StepLR(opt, 1), monitor="loss")


def test_a_factory_is_checked_when_the_learner_adopts_the_scheduler():
    with pytest.raises(ValueError, match="the factory built a ReduceLROnPlateau; give monitor="):
        learner_with(fp.Scheduler(plateau, interval="epoch"), [])
    with pytest.raises(ValueError, match="the factory built a StepLR; monitor is for "):
        learner_with(fp.Scheduler(step_lr, monitor="loss"), [])
    with pytest.raises(TypeError, match=r"the factory returned 0.5, not a torch.optim"):
        learner_with(fp.Scheduler(lambda opt: 0.5, interval="step"), [])


def test_a_torch_scheduler_conflicts_with_a_learning_rate_schedule_and_not_weight_decay():
    lr_schedule = fp.Scheduler({fp.LearningRate: fp.linear(4, 0.1, 0.2)})
    with pytest.raises(fp.UnresolvableConflictError):
        learner_with(fp.Scheduler(step_lr, interval="epoch"), [], lr_schedule)
    decay = fp.Scheduler({fp.WeightDecay: fp.linear(4, 0.0, 0.1)})
    learner_with(fp.Scheduler(step_lr, interval="epoch"), [], decay).fit(1)


def test_a_lambda_scheduler_saves_in_a_checkpoint(tmp_path):
    learner = learner_with(fp.Scheduler(lambda opt: LambdaLR(opt, lambda e: 0.5 ** e),
                                        interval="epoch"), [], fp.Checkpointer(tmp_path))
    learner.fit(2)
    assert learner.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)


def test_scheduler_given_a_pytorch_scheduler_makes_a_torch_scheduler():
    scheduler = fp.Scheduler(step_lr, interval="epoch")
    assert type(scheduler) is fp.TorchScheduler and isinstance(scheduler, fp.Scheduler)
    assert type(fp.Scheduler({fp.LearningRate: fp.linear(4, 0.1, 0.2)})) is fp.Scheduler
    learner = learner_with(scheduler, [])
    assert learner.graph.names[2] == "TorchScheduler"
    learner.fit(2)
    assert scheduler.step == 2 * N_BATCHES
    assert scheduler.torch_scheduler.last_epoch == 2


@pytest.mark.parametrize("case", CASES)
def test_it_keeps_to_its_declared_access_in_strict_mode(case):
    make, options, _ = CASES[case]
    lrs: list = []
    learner_with(fp.Scheduler(make, **options), lrs, strict=True).fit(4)
    assert lrs == pytest.approx(torch_loop(make, 4, CASES[case][2])[0], rel=1e-12)


def test_per_step_schedulers_step_with_each_parameter_update_under_gradient_accumulation():
    lrs: list = []
    learner = learner_with(fp.Scheduler(lambda opt: StepLR(opt, step_size=1, gamma=0.5),
                                        interval="step"), lrs, fp.GradientAccumulation(3))
    learner.fit(2)  # 3 batches an epoch: one update each
    assert learner.get_callback(fp.Scheduler).torch_scheduler.last_epoch == 2
    assert lrs == [0.1] * N_BATCHES + [0.05] * N_BATCHES


def test_a_factorys_one_cycle_beside_a_momentum_schedule_is_a_conflict():
    momentum = fp.Scheduler({fp.Momentum: fp.linear(12, 0.9, 0.8)})
    with pytest.raises(fp.UnresolvableConflictError, match=(
            r"TorchScheduler and Scheduler cannot be used together")) as caught:
        learner_with(fp.Scheduler(one_cycle, interval="step"), [], momentum)
    assert "build it with cycle_momentum=False" in caught.value.__notes__[0]
    learner_with(fp.Scheduler(lambda opt: OneCycleLR(opt, max_lr=0.5, total_steps=12,
                                                     cycle_momentum=False), interval="step"),
                 [], momentum).fit(1)
    learner = learner_with(fp.Scheduler(one_cycle, interval="step"), [])
    with pytest.raises(fp.UnresolvableConflictError):  # once built, the graph sees it
        learner.add_callback(momentum)


@pytest.mark.parametrize("case", CASES)
def test_predict_and_evaluate_step_no_scheduler(case):
    make, options, _ = CASES[case]
    lrs: list = []
    scheduler = fp.Scheduler(make, **options)
    learner = learner_with(scheduler, lrs)
    learner.fit(2)
    state = scheduler.torch_scheduler.state_dict()
    lr = learner.optimizer.param_groups[0]["lr"]
    for _ in range(3):  # a plateau scheduler would reduce the rate after these
        learner.evaluate(VALID)
        learner.predict(VALID)
    assert scheduler.torch_scheduler.state_dict() == state
    assert learner.optimizer.param_groups[0]["lr"] == lr
    plan = fp.explain(learner, [fp.PredictionPhase()])
    assert "Scheduler" not in plan.split("  PredictionPhase\n")[1].split("\n\n")[0]
