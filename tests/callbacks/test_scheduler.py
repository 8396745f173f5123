"""Scheduler: hyperparameters set through param_groups at each training step."""

import pytest
import torch

import fluxpy as fp
from fluxpy.testing import test_learner


def lr_recorder(values: list, key: str = "lr", group: int = 0) -> fp.CustomCallback:
    """Records `param_groups[group][key]` as the optimizer sees it after backward."""
    return fp.CustomCallback(
        lambda learner: values.append(learner.optimizer.param_groups[group][key]),
        fp.BackwardEnd, fp.TrainingPhase, access=fp.Access(optimizer=fp.Read()),
    )


def two_group_learner(*callbacks, optimizer=torch.optim.SGD, **kwargs):
    model = torch.nn.Linear(1, 1)
    data = [(torch.ones(4, 1), torch.ones(4, 1))] * 3
    opt = optimizer([{"params": [model.weight]}, {"params": [model.bias]}], lr=0.1, **kwargs)
    return fp.Learner(model, torch.nn.functional.mse_loss, data=(data, None), optimizer=opt,
                      callbacks=callbacks, use_default_callbacks=False, device="cpu")


def test_optimizer_uses_the_scheduled_lr_at_every_training_step():
    schedule = fp.one_cycle(32, 0.01)
    seen: list = []
    learner = test_learner(fp.Scheduler({fp.LearningRate: schedule}), lr_recorder(seen))
    learner.fit(2)
    assert seen == pytest.approx([schedule(s) for s in range(32)])


def test_sgd_update_is_the_scheduled_lr_times_the_gradient():
    updates: list = []

    def record(learner):
        updates.append((learner.model.coeff.detach().clone(), learner.model.coeff.grad.clone(),
                        learner.optimizer.param_groups[0]["lr"]))

    recorder = fp.CustomCallback(record, fp.BackwardEnd, fp.TrainingPhase,
                                 access=fp.Access(model=fp.Read(), optimizer=fp.Read()))
    learner = test_learner(fp.Scheduler({fp.LearningRate: fp.linear(16, 1e-3, 1e-5)}),
                           recorder)
    learner.fit(1)
    after = [u[0] for u in updates[1:]] + [learner.model.coeff.detach()]
    for (before, grad, lr), now in zip(updates, after):
        assert torch.allclose(now, before - lr * grad)
    assert updates[5][2] == pytest.approx(fp.linear(16, 1e-3, 1e-5)(5))


def test_validation_steps_do_not_advance_the_schedule():
    scheduler = fp.Scheduler({fp.LearningRate: fp.linear(100, 1.0, 0.0)})
    learner = test_learner(scheduler, n_batches=5)
    learner.fit(3)
    assert scheduler.step == 15


def test_a_list_of_schedules_sets_one_value_per_param_group():
    learner = two_group_learner(
        fp.Scheduler({fp.LearningRate: [fp.linear(3, 0.1, 0.3), fp.linear(3, 1.0, 3.0)]})
    )
    learner.fit(1)
    assert [g["lr"] for g in learner.optimizer.param_groups] == pytest.approx(
        [fp.linear(3, 0.1, 0.3)(2), fp.linear(3, 1.0, 3.0)(2)]
    )


def test_a_schedule_returning_a_list_sets_one_value_per_param_group():
    learner = two_group_learner(fp.Scheduler({fp.LearningRate: lambda step: [step, 10 * step]}))
    learner.fit(1)
    assert [g["lr"] for g in learner.optimizer.param_groups] == [2, 20]


def test_wrong_number_of_group_schedules_is_an_error_when_the_learner_is_built():
    with pytest.raises(ValueError, match="3 schedules for LearningRate but the optimizer has 2 "
                                         "parameter groups"):
        two_group_learner(fp.Scheduler({fp.LearningRate: [fp.linear(3, 0.1, 0.3)] * 3}))


def test_momentum_sets_sgd_momentum():
    learner = two_group_learner(fp.Scheduler({fp.Momentum: fp.linear(3, 0.9, 0.8)}),
                                optimizer=torch.optim.SGD, momentum=0.5)
    learner.fit(1)
    assert [g["momentum"] for g in learner.optimizer.param_groups] == pytest.approx(
        [fp.linear(3, 0.9, 0.8)(2)] * 2)


def test_momentum_sets_the_first_adam_beta_and_keeps_the_second():
    learner = two_group_learner(fp.Scheduler({fp.Momentum: lambda step: 0.8}),
                                optimizer=torch.optim.Adam, betas=(0.9, 0.95))
    learner.fit(1)
    assert [tuple(g["betas"]) for g in learner.optimizer.param_groups] == [(0.8, 0.95)] * 2


def test_momentum_on_an_optimizer_without_momentum_names_it():
    learner = two_group_learner(fp.Scheduler({fp.Momentum: lambda step: 0.8}),
                                optimizer=torch.optim.Adagrad)
    with pytest.raises(KeyError, match="Adagrad has neither 'momentum' nor 'betas'"):
        learner.fit(1)


def test_weight_decay_sets_weight_decay():
    learner = two_group_learner(fp.Scheduler({fp.WeightDecay: lambda step: 0.01 * step}))
    learner.fit(1)
    assert [g["weight_decay"] for g in learner.optimizer.param_groups] == [0.02, 0.02]


class Eps(fp.HyperParameter):
    key = "eps"


def test_a_user_hyperparameter_with_a_key_sets_that_param_group_entry():
    learner = two_group_learner(fp.Scheduler({Eps: lambda step: 1e-6 * (step + 1)}),
                                optimizer=torch.optim.Adam)
    learner.fit(1)
    assert learner.optimizer.param_groups[1]["eps"] == pytest.approx(3e-6)


class Scale(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.factor = 1.0

    def forward(self, xs):
        return self.linear(xs) * self.factor


class OutputScale(fp.HyperParameter):
    """A user hyperparameter on the model, not the optimizer."""

    @classmethod
    def set(cls, learner, value):
        learner.model.factor = value

    @classmethod
    def stateaccess(cls):
        return fp.Access(model=fp.Write())


def test_a_user_hyperparameter_sets_its_own_state_and_declares_it():
    scheduler = fp.Scheduler({OutputScale: lambda step: step + 1.0})
    model = Scale()
    data = [(torch.ones(2, 1), torch.ones(2, 1))] * 4
    learner = fp.Learner(model, torch.nn.functional.mse_loss, data=(data, None),
                         callbacks=[scheduler], use_default_callbacks=False, device="cpu")
    learner.fit(1)
    assert model.factor == 4.0
    assert fp.stateaccess(scheduler) == fp.Access(model=fp.Write())


def test_scheduler_declares_write_on_the_optimizer():
    scheduler = fp.Scheduler({fp.LearningRate: fp.linear(3, 1.0, 0.0)})
    assert fp.stateaccess(scheduler) == fp.Access(optimizer=fp.Write())


def test_hyperparameter_without_key_or_set_says_how_to_define_it():
    class Nothing(fp.HyperParameter):
        pass

    learner = test_learner(fp.Scheduler({Nothing: lambda step: 1.0}))
    with pytest.raises(NotImplementedError, match="Nothing has no `key` and does not override"):
        learner.fit(1)


def test_scheduler_rejects_a_key_that_is_not_a_hyperparameter():
    with pytest.raises(TypeError, match=r"'lr' is not an fp\.HyperParameter subclass"):
        fp.Scheduler({"lr": fp.linear(3, 1.0, 0.0)})


def test_schedulers_of_different_hyperparameters_work_together():
    seen_lr: list = []
    seen_wd: list = []
    learner = test_learner(fp.Scheduler({fp.LearningRate: lambda step: 1e-3 / (step + 1)}),
                           fp.Scheduler({fp.WeightDecay: lambda step: 1e-4 * step}),
                           lr_recorder(seen_lr), lr_recorder(seen_wd, "weight_decay"),
                           n_batches=3)
    learner.fit(1)
    assert seen_lr == pytest.approx([1e-3, 5e-4, 1e-3 / 3])
    assert seen_wd == pytest.approx([0.0, 1e-4, 2e-4])


def test_two_schedulers_of_the_same_hyperparameter_cannot_be_used_together():
    with pytest.raises(fp.UnresolvableConflictError, match="Scheduler#1 and Scheduler#2 cannot be"):
        test_learner(fp.Scheduler({fp.LearningRate: lambda step: 1e-3}),
                     fp.Scheduler({fp.LearningRate: lambda step: 1e-4}))


def test_state_dict_round_trip_resumes_the_schedule():
    schedule = fp.linear(32, 1e-3, 1e-5)
    first = fp.Scheduler({fp.LearningRate: schedule})
    test_learner(first).fit(1)
    assert first.state_dict() == {"step": 16}

    resumed = fp.Scheduler({fp.LearningRate: schedule})
    resumed.load_state_dict(first.state_dict())
    seen: list = []
    test_learner(resumed, lr_recorder(seen)).fit(1)
    assert seen == pytest.approx([schedule(s) for s in range(16, 32)])
    assert resumed.step == 32


def test_fit_one_cycle_uses_one_cycle_sized_to_the_fit_and_removes_its_scheduler():
    seen: list = []
    learner = test_learner(lr_recorder(seen), n_batches=8)
    result = fp.fit_one_cycle(learner, 2, 0.01)
    assert result == fp.FitResult(2)
    assert seen == pytest.approx([fp.one_cycle(16, 0.01)(s) for s in range(16)])
    assert not any(isinstance(cb, fp.Scheduler) for cb in learner.callbacks)


def test_fit_one_cycle_passes_its_shape_arguments_on():
    seen: list = []
    learner = test_learner(lr_recorder(seen), n_batches=10)
    fp.fit_one_cycle(learner, 1, 0.1, pct_start=0.5, div=10, final_div=100)
    assert seen[0] == pytest.approx(0.01)
    assert seen[5] == pytest.approx(0.1)


def test_fit_one_cycle_refuses_a_learner_that_already_schedules_the_lr():
    learner = test_learner(fp.Scheduler({fp.LearningRate: lambda step: 1e-3}))
    with pytest.raises(ValueError, match="already has a Scheduler for LearningRate"):
        fp.fit_one_cycle(learner, 1, 0.01)


def test_scheduler_shares_the_optimizer_with_todevice_and_gradient_accumulation():
    seen: list = []
    learner = test_learner(fp.Scheduler({fp.LearningRate: fp.linear(16, 1e-3, 0.0)}),
                           fp.ToDevice("cpu"), fp.GradientAccumulation(2), lr_recorder(seen))
    learner.fit(1)
    assert seen == pytest.approx([fp.linear(16, 1e-3, 0.0)(s) for s in range(16)])
