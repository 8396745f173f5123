"""Metrics: the loss and other metrics, weighted by batch size, read to the host once per epoch."""

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

import fluxpy as fp
from fluxpy.callbacks import metrics
from fluxpy.testing import test_learner

TRAIN, VALID = fp.TrainingPhase(), fp.ValidationPhase()

# Uneven batches (4, 4, 2) whose last batch has the largest errors: a mean of batch means
# would differ from the mean over all ten examples.
XS = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([5.0, 6.0, 7.0, 8.0]),
      torch.tensor([9.0, 10.0])]
YS = [x * 3 for x in XS[:2]] + [XS[2] * 3 + 40]
UNEVEN = list(zip(XS, YS))


def mean_pred(preds, ys):
    return preds.mean()


def max_error(preds, ys):
    return (preds - ys).abs().max()


class SumOfLabels:
    """A stateful metric: the sum of all labels of the epoch."""

    def __init__(self):
        self.total = torch.zeros(())
        self.resets = self.updates = 0

    def reset(self):
        self.total = torch.zeros(())
        self.resets += 1

    def update(self, preds, ys):
        self.total = self.total + ys.sum()
        self.updates += 1

    def compute(self):
        return self.total


def validate(*metrics, data=UNEVEN, epochs=1):
    learner = test_learner(fp.Metrics(*metrics))
    learner.fit(epochs, phases=[(VALID, data)])
    return learner, learner.cbstate.metricsepoch[VALID]


def test_loss_is_always_tracked_once_per_epoch():
    learner = test_learner(fp.Metrics())
    learner.fit(3)
    assert len(learner.cbstate.metricsepoch[TRAIN]["loss"]) == 3
    assert len(learner.cbstate.metricsepoch[VALID]["loss"]) == 3


def test_loss_mean_is_weighted_by_batch_size():
    learner, epoch = validate()
    coeff = learner.model.coeff.item()
    xs, ys = torch.cat(XS), torch.cat(YS)
    by_hand = (xs * coeff - ys).abs().mean().item()
    unweighted = sum((x * coeff - y).abs().mean().item() for x, y in UNEVEN) / 3
    assert epoch["loss"] == [pytest.approx(by_hand, rel=1e-6)]
    assert abs(by_hand - unweighted) > 1


def test_function_metric_is_named_after_the_function_and_weighted():
    learner, epoch = validate(mean_pred)
    by_hand = (torch.cat(XS) * learner.model.coeff.item()).mean().item()
    assert epoch["mean_pred"] == [pytest.approx(by_hand, rel=1e-6)]


def test_metric_can_be_renamed():
    _, epoch = validate(fp.Metric(max_error, name="worst"))
    assert set(epoch) == {"loss", "worst"}


def test_metric_restricted_to_training_is_not_computed_in_validation():
    learner = test_learner(fp.Metrics(fp.Metric(max_error, phase=fp.TrainingPhase)))
    learner.fit(1)
    assert set(learner.cbstate.metricsepoch[TRAIN]) == {"loss", "max_error"}
    assert set(learner.cbstate.metricsepoch[VALID]) == {"loss"}


def test_stateful_metric_is_reset_each_epoch_updated_each_step_and_computed():
    metric = SumOfLabels()
    _, epoch = validate(metric, epochs=2)
    total = torch.cat(YS).sum().item()
    assert epoch["SumOfLabels"] == [total, total]
    assert (metric.resets, metric.updates) == (2, 6)


def test_torchmetrics_metric_works_unchanged():
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    points = torch.randn(13, 2)
    labels = torch.randint(0, 3, (13,))
    data = [(points[:5], labels[:5]), (points[5:10], labels[5:10]), (points[10:], labels[10:])]
    learner = fp.Learner(model, torch.nn.functional.cross_entropy, data=(data, data),
                         callbacks=[fp.Metrics(MulticlassAccuracy(num_classes=3,
                                                                  average="micro"))],
                         use_default_callbacks=False)
    learner.fit(1)
    with torch.no_grad():
        by_hand = (model(points).argmax(dim=1) == labels).float().mean().item()
    assert learner.cbstate.metricsepoch[VALID]["MulticlassAccuracy"] == [
        pytest.approx(by_hand)]
    assert len(learner.cbstate.metricsepoch[TRAIN]["MulticlassAccuracy"]) == 1


def test_device_values_are_read_to_the_host_once_per_phase_and_epoch(host_reads):
    learner = test_learner(fp.Metrics(mean_pred, max_error, SumOfLabels()))
    host_reads.clear()  # building the test learner reads its random start
    learner.fit(2)
    assert host_reads == ["tolist"] * 4


@pytest.mark.parametrize("fold_every", [1024, 2])
def test_device_means_are_weighted_by_batch_size(host_reads, monkeypatch, fold_every):
    monkeypatch.setattr(metrics, "FOLD_EVERY", fold_every)  # 2: summed mid-epoch too
    learner = test_learner(fp.Metrics(mean_pred, max_error))
    host_reads.clear()  # building the test learner reads its random start
    learner.fit(1, phases=[(VALID, UNEVEN * 2)])
    assert host_reads == ["tolist"]
    epoch = learner.cbstate.metricsepoch[VALID]
    coeff = learner.model.coeff.item()
    xs, ys = torch.cat(XS), torch.cat(YS)
    assert epoch["loss"] == [pytest.approx((xs * coeff - ys).abs().mean().item(), rel=1e-6)]
    assert epoch["mean_pred"] == [pytest.approx((xs * coeff).mean().item(), rel=1e-6)]
    worst = [(x * coeff - y).abs().max().item() for x, y in UNEVEN]
    by_size = (4 * worst[0] + 4 * worst[1] + 2 * worst[2]) / 10
    assert epoch["max_error"] == [pytest.approx(by_size, rel=1e-6)]


def test_device_values_are_summed_in_one_op_per_batch_size(host_reads, monkeypatch):
    stacks = []
    stack = torch.stack

    def counting_stack(tensors, *args, **kwargs):
        stacks.append(len(tensors))
        return stack(tensors, *args, **kwargs)

    monkeypatch.setattr(torch, "stack", counting_stack)
    validate(data=UNEVEN * 3)
    assert sorted(stacks[:-1]) == [3, 6]  # the loss of 3 batches of 2 and 6 of 4
    assert stacks[-1] == 1  # the epoch's results, read to the host together


def test_device_and_cpu_accumulation_give_the_same_means(monkeypatch):
    def run():
        learner = test_learner(fp.Metrics(mean_pred, max_error), n_batches=5)
        learner.fit(2)
        return learner.cbstate.metricsepoch

    on_the_cpu = run()
    monkeypatch.setattr(metrics, "READ_CPU_VALUES", False)
    as_on_a_device = run()
    assert on_the_cpu.keys() == as_on_a_device.keys()
    for phase, epoch in on_the_cpu.items():
        for name, values in epoch.items():
            assert values == pytest.approx(as_on_a_device[phase][name], rel=1e-12), name


def test_cpu_values_are_read_per_step_and_no_tensor_is_kept(host_reads, monkeypatch):
    kept = []
    add = metrics._WeightedMean.add

    def counting_add(self, value, size):
        add(self, value, size)
        kept.append(sum(len(values) for values in self._kept.values()))

    monkeypatch.setattr(metrics._WeightedMean, "add", counting_add)
    monkeypatch.setattr(metrics, "READ_CPU_VALUES", True)  # as it is (host_reads sets False)
    learner = test_learner(fp.Metrics(mean_pred), n_batches=4)
    host_reads.clear()
    learner.fit(1)
    # loss and mean_pred, for 4 training and 4 validation steps
    assert host_reads == ["item"] * (2 * 8)
    assert kept == [0] * (2 * 8)


@pytest.mark.parametrize("read_cpu_values", [True, False])
def test_step_values_are_floats_on_the_cpu_and_tensors_on_a_device(read_cpu_values, monkeypatch):
    monkeypatch.setattr(metrics, "READ_CPU_VALUES", read_cpu_values)
    learner, _ = validate(mean_pred)
    step = learner.cbstate.metricsstep[VALID]
    kind = float if read_cpu_values else torch.Tensor
    assert isinstance(step["loss"], kind) and isinstance(step["mean_pred"], kind)
    last_x, last_y = UNEVEN[-1]
    coeff = learner.model.coeff.detach()
    assert float(step["loss"]) == pytest.approx((last_x * coeff - last_y).abs().mean().item())
    assert float(step["mean_pred"]) == pytest.approx((last_x * coeff).mean().item())


def test_epoch_without_a_completed_step_records_nothing():
    def cancel(learner):
        raise fp.CancelStepException()

    learner = test_learner(fp.Metrics(), fp.CustomCallback(cancel, fp.StepBegin, fp.TrainingPhase))
    learner.fit(1)
    assert learner.cbstate.metricsepoch[TRAIN] == {}
    assert len(learner.cbstate.metricsepoch[VALID]["loss"]) == 1


def test_metric_named_loss_is_an_error():
    def loss(preds, ys):
        return preds.sum()

    with pytest.raises(ValueError, match=r"unique and not 'loss': \['loss'\]"):
        fp.Metrics(loss)


def test_two_metrics_of_one_name_are_an_error():
    with pytest.raises(ValueError, match=r"rename with fp\.Metric\(fn, name=\.\.\.\)"):
        fp.Metrics(mean_pred, fp.Metric(max_error, name="mean_pred"))


def test_metric_that_is_neither_function_nor_stateful_is_an_error():
    with pytest.raises(TypeError, match=r"need fn\(preds, ys\) or an object with update"):
        fp.Metric(42)
