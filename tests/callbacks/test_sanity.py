"""SanityCheck: data, model and loss checked on one batch at FitBegin, every problem at once."""

import pickle
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import fluxpy as fp


def pairs(n=3, features=4, size=8):
    return [(torch.randn(size, features), torch.randn(size, 1)) for _ in range(n)]


def make_learner(train, valid, model=None, loss_fn=F.mse_loss):
    model = model if model is not None else torch.nn.Linear(4, 1)
    return fp.Learner(model, loss_fn, data=(train, valid), callbacks=[fp.SanityCheck()],
                      use_default_callbacks=False, device="cpu")


def test_a_good_setup_passes_and_trains():
    learner = make_learner(pairs(), pairs())
    assert learner.fit(1).epochs == 1


def test_reports_every_problem_at_once():
    triples = [(torch.randn(8, 4), torch.randn(8, 1), torch.randn(8))]
    wrong_width = pairs(features=5)
    learner = make_learner(triples, wrong_width)
    with pytest.raises(fp.SanityCheckError) as info:
        learner.fit(1)
    problems = info.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("the training data yields a tuple of 3 items, not (xs, ys) "
                                  "pairs: yield pairs")
    assert problems[1].startswith("the model raised RuntimeError: mat1 and mat2 shapes cannot "
                                  "be multiplied")
    assert "validation batch with xs a torch.float32 tensor of shape (8, 5)" in problems[1]
    assert "make the model's first layer fit the inputs" in problems[1]
    assert str(info.value).startswith("SanityCheck found 2 problem(s) before the first step:\n"
                                      "  1. the training data")


def test_a_loss_that_is_not_a_scalar_is_reported_with_the_fix():
    learner = make_learner(pairs(), pairs(),
                           loss_fn=lambda preds, ys: F.mse_loss(preds, ys, reduction="none"))
    with pytest.raises(fp.SanityCheckError, match=r"(?s)loss_fn returned a torch.float32 tensor "
                       r"of shape \(8, 1\).* not a scalar: reduce it \(reduction='mean'.*"
                       r"2\. loss_fn returned"):
        learner.fit(1)


def test_a_loss_that_rejects_the_labels_is_reported():
    labels = [(torch.randn(8, 4), torch.randn(8, 3))]
    learner = make_learner(labels, None, model=torch.nn.Linear(4, 3), loss_fn=F.cross_entropy)
    learner.data.training = [(torch.randn(8, 4), torch.randint(0, 3, (8, 2)))]
    with pytest.raises(fp.SanityCheckError, match=r"loss_fn\(preds, ys\) raised RuntimeError.* "
                       r"ys a torch.int64 tensor of shape \(8, 2\).* make the model's output "
                       r"fit the loss function and the labels"):
        learner.fit(1)


def test_empty_and_non_iterable_data_are_reported():
    class NoBatches:  # re-iterable, without a length (like an IterableDataset's loader)
        def __iter__(self):
            return iter(())

    learner = make_learner(NoBatches(), 42)
    with pytest.raises(fp.SanityCheckError) as info:
        learner.fit(1)
    assert info.value.problems == (
        "the training data yielded no batches: check the dataset's size and the DataLoader's "
        "batch_size / drop_last",
        "the validation data is an int, which cannot be iterated: pass a list of (xs, ys) pairs "
        "or a DataLoader",
    )


def test_data_of_single_values_is_reported_in_good_grammar():
    learner = make_learner([1, 2], [object()])
    with pytest.raises(fp.SanityCheckError) as info:
        learner.fit(1)
    assert [p.split(",")[0] for p in info.value.problems] == [
        "the training data yields an int", "the validation data yields an object"]


def test_a_model_that_is_not_a_module_is_reported_with_the_data_problems():
    learner = make_learner(pairs(), [1])
    learner.model = lambda xs: xs.sum(dim=1, keepdim=True)
    with pytest.raises(fp.SanityCheckError) as info:
        learner.fit(1)
    assert info.value.problems == (
        "learner.model is a function, not a torch.nn.Module: the loop switches it between "
        "train() and eval() and the optimizer updates its parameters; wrap it in a "
        "torch.nn.Module whose forward calls it",
        "the validation data yields an int, not (xs, ys) pairs: yield pairs (e.g. a DataLoader "
        "over a TensorDataset(xs, ys)), or give the phase its own step with @fp.step.dispatch",
    )


def test_the_check_changes_nothing():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Dropout(0.5), torch.nn.Linear(4, 1))
    model[1].eval()  # a frozen BatchNorm keeps its mode
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.randn(32, 1)), batch_size=8,
                        shuffle=True)
    learner = make_learner(loader, loader, model=model)
    params = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    modes = [m.training for m in model.modules()]
    rng = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    learner.fit(0)  # FitBegin and FitEnd only
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert [m.training for m in model.modules()] == modes
    assert all(p.grad is None for p in model.parameters())
    assert learner.optimizer.state_dict()["state"] == {}
    assert torch.equal(torch.get_rng_state(), rng[0]) and random.getstate() == rng[1]
    assert np.array_equal(np.random.get_state()[1], rng[2])


def test_a_one_shot_iterator_is_not_consumed():
    steps = []
    learner = make_learner(iter(pairs(2)), None)
    learner.add_callback(fp.CustomCallback(lambda lr: steps.append(1), fp.StepEnd))
    learner.fit(1)
    assert len(steps) == 2


def test_the_error_is_a_value_error_that_pickles():
    error = fp.SanityCheckError(["a", "b"])
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.problems == ("a", "b") and str(copy) == str(error)


def test_a_model_with_batch_norm_passes_strict_mode_because_the_check_declares_its_writes():
    # The check runs the training batch in training mode, which updates BatchNorm statistics
    # in place before they are put back: a write, declared as one.
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4),
                                torch.nn.Linear(4, 1))
    learner = fp.Learner(model, F.mse_loss, data=(pairs(), pairs()),
                         callbacks=[fp.SanityCheck()], use_default_callbacks=False,
                         device="cpu", strict=True)
    assert learner.fit(1).epochs == 1


def test_the_check_runs_after_the_callbacks_that_set_up_the_model():
    graph = fp.build_graph([fp.SanityCheck(), fp.MixedPrecision(torch.bfloat16),
                            fp.ToDevice("cpu"), fp.GradientClipping(1.0)])
    assert [type(cb).__name__ for cb in graph.ordered()] == [
        "ToDevice", "MixedPrecision", "SanityCheck", "GradientClipping"]
