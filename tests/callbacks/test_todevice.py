"""ToDevice: the model moves once at FitBegin (the optimizer is kept), batches at StepBegin.

There is no accelerator here, so the moving tests use the device "cpu:0": CPU tensors report
the device "cpu", which is not equal to it, so ToDevice sees everything as elsewhere and moves
it (a no-op copy), and spies count what moved.
"""

import pytest
import torch

import fluxpy as fp
from fluxpy.callbacks import todevice
from fluxpy.callbacks.todevice import to_device
from fluxpy.testing import test_learner

ELSEWHERE = torch.device("cpu:0")


def spy_model_to(learner):
    calls = []
    original = learner.model.to

    def to(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    learner.model.to = to
    return calls


def test_model_moves_once_at_fit_begin():
    learner = test_learner(fp.ToDevice(ELSEWHERE))
    calls = spy_model_to(learner)
    learner.fit(1)
    assert calls == [(ELSEWHERE,)]


def test_model_already_on_the_device_is_not_moved():
    learner = test_learner(fp.ToDevice("cpu"))
    calls = spy_model_to(learner)
    learner.fit(1)
    assert calls == []


def test_optimizer_is_kept_with_the_same_parameters():
    learner = test_learner(fp.ToDevice(ELSEWHERE))
    optimizer, coeff = learner.optimizer, learner.model.coeff
    start = coeff.item()
    learner.fit(1)
    assert learner.optimizer is optimizer
    assert learner.model.coeff is coeff
    assert optimizer.param_groups[0]["params"][0] is coeff
    assert coeff.item() != start  # the kept optimizer still trains the model


def test_each_batch_moves_at_step_begin(monkeypatch):
    moved, seen = [], []

    def spy(value, device):
        result = to_device(value, device)
        moved.append((device, result))
        return result

    def probe(learner):
        seen.append(learner.batch.xs)

    monkeypatch.setattr(todevice, "to_device", spy)
    learner = test_learner(
        fp.ToDevice(ELSEWHERE),
        fp.CustomCallback(probe, fp.LossBegin, access=fp.Access(batch=fp.Access(xs=fp.Read()))),
        n_batches=3,
    )
    learner.fit(1)
    assert [device for device, _ in moved] == [ELSEWHERE] * 12  # xs and ys, 6 steps
    assert [id(x) for x in seen] == [id(result) for _, result in moved[::2]]


def test_to_device_moves_tensors_in_nested_containers_non_blocking(monkeypatch):
    calls = []
    original = torch.Tensor.to

    def spy(self, *args, **kwargs):
        calls.append((args, kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    t = torch.ones(2)
    moved = to_device({"a": [t, (t, "label")], "b": 3}, ELSEWHERE)
    assert isinstance(moved["a"], list) and isinstance(moved["a"][1], tuple)
    assert moved["a"][1][1] == "label" and moved["b"] == 3
    assert calls == [((ELSEWHERE,), {"non_blocking": True})] * 2


def test_to_device_leaves_tensors_already_there_alone():
    t = torch.ones(2)
    assert to_device(t, torch.device("cpu")) is t


def test_two_todevice_callbacks_conflict():
    with pytest.raises(fp.WriteConflictError, match="between ToDevice#1 and ToDevice#2"):
        test_learner(fp.ToDevice("cpu"), fp.ToDevice("cpu"))
