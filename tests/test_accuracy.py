"""`fp.accuracy`, `fp.top_k_accuracy(k)`, `fp.error_rate` against hand-computed values, alone and
in `fp.Metrics`; and `fp.seed_everything`."""

import random

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import fluxpy as fp

# 4 examples, 3 classes: predicted classes 2, 0, 1, 1.
LOGITS = torch.tensor([[0.1, 0.2, 0.7], [2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.3, 0.4, 0.35]])
TARGETS = torch.tensor([2, 1, 1, 0])  # right, wrong, right, wrong


def test_accuracy_of_class_indices():
    assert fp.accuracy(LOGITS, TARGETS).item() == 0.5
    assert fp.error_rate(LOGITS, TARGETS).item() == 0.5
    assert fp.accuracy(LOGITS.softmax(1), TARGETS).item() == 0.5  # probabilities alike


def test_accuracy_of_one_hot_and_probability_targets():
    one_hot = F.one_hot(TARGETS, 3).float()
    assert fp.accuracy(LOGITS, one_hot).item() == 0.5
    smoothed = one_hot * 0.8 + 0.2 / 3  # label smoothing keeps the argmax
    assert fp.accuracy(LOGITS, smoothed).item() == 0.5


def test_accuracy_counts_every_position_of_further_dimensions():
    preds = torch.zeros(2, 3, 2, 2)  # a 2x2 "image" per example
    preds[:, 1] = 1.0  # class 1 everywhere
    ys = torch.tensor([[[1, 1], [1, 0]], [[2, 1], [0, 0]]])  # 4 of 8 are class 1
    assert fp.accuracy(preds, ys).item() == 0.5


def test_binary_accuracy_takes_one_logit_per_example():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0, 0.1])  # predicted 1, 0, 1, 0, 1
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0])  # right, right, wrong, wrong, right
    assert fp.accuracy(logits, labels).item() == pytest.approx(0.6)
    assert fp.accuracy(logits[:, None], labels).item() == pytest.approx(0.6)  # (N, 1) and (N,)
    assert fp.accuracy(logits[:, None], labels[:, None]).item() == pytest.approx(0.6)
    assert fp.accuracy(logits, labels.long()).item() == pytest.approx(0.6)
    assert fp.error_rate(logits, labels.bool()).item() == pytest.approx(0.4)


def test_top_k_accuracy_is_named_and_counts_targets_among_the_k_best():
    top2 = fp.top_k_accuracy(2)
    assert top2.__name__ == "top2_accuracy"
    # top two classes: {2, 1}, {0, 1}, {1, 2}, {1, 2}: targets 2, 1, 1 in; 0 out.
    assert top2(LOGITS, TARGETS).item() == 0.75
    assert top2(LOGITS, F.one_hot(TARGETS, 3)).item() == 0.75
    assert fp.top_k_accuracy(1)(LOGITS, TARGETS).item() == fp.accuracy(LOGITS, TARGETS).item()
    assert fp.top_k_accuracy(3)(LOGITS, TARGETS).item() == 1.0


def test_metric_functions_stay_on_the_device_of_preds():
    preds = LOGITS.to("meta")  # a tensor without values: no read could happen
    for fn in (fp.accuracy, fp.error_rate, fp.top_k_accuracy(2)):
        value = fn(preds, TARGETS.to("meta"))
        assert value.device.type == "meta" and value.shape == () and value.dtype == torch.float32


def test_metric_functions_say_what_shapes_they_take():
    with pytest.raises(ValueError, match=r"accuracy cannot compare preds of shape \(4, 3\) with "
                                         r"ys of shape \(4, 2\): give preds \(N, C, \.\.\.\) "
                                         r"with class indices"):
        fp.accuracy(LOGITS, torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"accuracy cannot compare preds of shape \(4,\) with ys "
                                         r"of shape \(3,\)"):
        fp.accuracy(torch.zeros(4), torch.zeros(3))
    with pytest.raises(TypeError, match=r"accuracy: ys of shape \(4,\) are class indices and must "
                                        r"be integers, got torch.float32 \(convert with ys.long"):
        fp.accuracy(LOGITS, TARGETS.float())
    with pytest.raises(ValueError, match=r"top4_accuracy needs preds of shape \(N, C, \.\.\.\) "
                                         r"with C >= 4 classes, got preds of shape \(4, 3\)"):
        fp.top_k_accuracy(4)(LOGITS, TARGETS)
    for k in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"top_k_accuracy\(k=.*\): k is a number of classes"):
            fp.top_k_accuracy(k)


class Scale(torch.nn.Module):
    """Its input as its output, times a parameter of 1."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def forward(self, xs):
        return xs * self.weight


def test_metric_functions_in_metrics_are_weighted_by_batch_size():
    batches = [(LOGITS[:3], TARGETS[:3]), (LOGITS[3:], TARGETS[3:])]  # 2 of 3 right, 0 of 1
    learn = fp.Learner(Scale(), F.cross_entropy, use_default_callbacks=False,
                       callbacks=[fp.Metrics(fp.accuracy, fp.error_rate, fp.top_k_accuracy(2))])
    learn.fit(1, phases=[(fp.ValidationPhase(), batches)])
    epoch = learn.cbstate.metricsepoch[fp.ValidationPhase()]
    assert epoch["accuracy"] == [pytest.approx(0.5)]  # not (2/3 + 0) / 2
    assert epoch["error_rate"] == [pytest.approx(0.5)]
    assert epoch["top2_accuracy"] == [pytest.approx(0.75)]
    assert learn.evaluate(batches)["top2_accuracy"] == pytest.approx(0.75)


def draws():
    return random.random(), np.random.rand(), torch.rand(()).item()


def test_seed_everything_repeats_every_generator_and_returns_the_seed():
    assert fp.seed_everything(123) == 123
    first = draws()
    assert fp.seed_everything(123) == 123
    assert draws() == first
    fp.seed_everything(124)
    assert all(a != b for a, b in zip(draws(), first))


def test_seed_everything_repeats_a_shuffled_dataloader_and_initialised_weights():
    def run():
        fp.seed_everything(7)
        loader = torch.utils.data.DataLoader(list(range(10)), batch_size=5, shuffle=True)
        return [b.tolist() for b in loader], torch.nn.Linear(3, 2).weight.tolist()

    assert run() == run()


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, "1", True])
def test_seed_everything_takes_ints_numpy_accepts(seed):
    with pytest.raises(ValueError, match=r"seed_everything\(seed=.*\): the seed is an int in "
                                         r"\[0, 2\*\*32\)"):
        fp.seed_everything(seed)
