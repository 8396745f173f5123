"""Bad input to the learner and the loop: each a clear error saying what is wrong and the fix."""

import re

import pytest
import torch

import fluxpy as fp
from fluxpy.testing import CoeffModel, test_batches, test_learner

TRAIN, VALID = fp.TrainingPhase(), fp.ValidationPhase()
XS = torch.ones(8)
GOOD = [(XS, XS * 3)]


def learner_with_loss(loss_fn):
    return fp.Learner(CoeffModel(1.0), loss_fn, data=(GOOD, None), use_default_callbacks=False)


class NoBatches:
    """Iterable again and again, without a length, and always empty."""

    def __iter__(self):
        return iter(())


# -- batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "what"), [
    (torch.zeros(8), r"a tensor of shape \(8,\)"),
    ((XS, XS, XS), "a tuple of 3 items"),
    ([XS], "a list of 1 items"),
    ({"xs": XS, "ys": XS}, "a dict"),
    (7, "an int"),
])
@pytest.mark.parametrize("phase", [TRAIN, VALID])
def test_batch_that_is_not_a_pair_is_a_bad_batch_error(batch, what, phase):
    with pytest.raises(fp.BadBatchError, match=rf"{type(phase).__name__} got {what} as a batch; "
                       r"the built-in steps need \(xs, ys\) pairs"):
        test_learner().fit(1, phases=[(phase, [batch])])


def test_bad_batch_error_names_the_ways_out():
    with pytest.raises(fp.BadBatchError, match=r"TensorDataset\(xs, ys\).*@fp\.step\.dispatch"):
        test_learner().fit(1, phases=[(TRAIN, [torch.zeros(8)])])


# -- empty data --------------------------------------------------------------------------------


def test_training_data_of_length_zero_is_an_error_before_fit_begins():
    ends = []
    learner = test_learner(fp.CustomCallback(lambda learner: ends.append(1), fp.FitBegin))
    with pytest.raises(ValueError, match=r"the data for TrainingPhase is empty \(len 0\)"):
        learner.fit(1, data=([], GOOD))
    assert ends == []


def test_validation_data_of_length_zero_is_an_error():
    with pytest.raises(ValueError, match=r"the data for ValidationPhase is empty \(len 0\)"):
        test_learner().fit(1, data=(GOOD, []))


def test_dataloader_that_drops_every_batch_is_an_error_naming_drop_last():
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(XS, XS), batch_size=16,
                                         drop_last=True)
    with pytest.raises(ValueError, match=r"empty \(len 0\).*batch_size / drop_last"):
        test_learner().fit(1, data=(loader, None))


def test_data_of_no_items_is_an_error():
    with pytest.raises(TypeError, match=r"data has 0 items; pass \(training, validation\)"):
        test_learner().fit(1, data=())


def test_used_up_generator_is_an_error_in_the_next_epoch():
    batches = (batch for batch in GOOD)
    learner = test_learner(fp.Recorder())
    with pytest.raises(ValueError, match=r"the data for TrainingPhase \(generator\) yielded no "
                                         r"batches: an iterator or generator is used up"):
        learner.fit(2, data=(batches, None))
    assert learner.cbstate.history[TRAIN].epochs == 1


def test_iterable_without_batches_is_an_error():
    with pytest.raises(ValueError, match=r"the data for ValidationPhase \(NoBatches\) yielded "
                                         r"no batches: check the dataset"):
        test_learner().fit(1, data=(GOOD, NoBatches()))


def test_no_phases_is_an_error():
    with pytest.raises(ValueError, match=r"fit\(phases=\[\]\) has no phases to run"):
        test_learner().fit(1, phases=[])


def test_phase_given_as_a_type_is_an_error():
    with pytest.raises(TypeError, match=r"takes \(phase, data\) pairs with phase an fp\.Phase "
                                        r"instance, got \(<class"):
        test_learner().fit(1, phases=[(fp.TrainingPhase, GOOD)])


# -- the loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [TRAIN, VALID])
def test_loss_that_is_not_a_scalar_is_a_bad_loss_error(phase):
    learner = learner_with_loss(lambda preds, ys: (preds - ys).abs())
    with pytest.raises(fp.BadLossError, match=rf"loss_fn returned a tensor of shape \(8,\) in "
                       rf"{type(phase).__name__}; .* reduction='mean'"):
        learner.fit(1, phases=[(phase, GOOD)])


def test_loss_that_is_not_a_tensor_is_a_bad_loss_error():
    learner = learner_with_loss(lambda preds, ys: 1.0)
    with pytest.raises(fp.BadLossError, match="loss_fn returned a float in TrainingPhase"):
        learner.fit(1)


@pytest.mark.filterwarnings("ignore:Using a target size")
def test_model_output_that_does_not_fit_the_loss_keeps_the_loss_error_with_a_note():
    data = [(torch.zeros(8, 2), torch.zeros(8, 5))]
    learner = fp.Learner(torch.nn.Linear(2, 3), torch.nn.functional.mse_loss, data=(data, None),
                         use_default_callbacks=False)
    with pytest.raises(RuntimeError, match=r"size of tensor a \(3\) must match") as info:
        learner.fit(1)
    assert info.value.__notes__ == [
        "raised by loss_fn(preds, ys) in the TrainingPhase step, with preds a torch.float32 "
        "tensor of shape (8, 3) and ys a torch.float32 tensor of shape (8, 5): check that the "
        "model's output fits the loss function and the labels"]


def test_labels_out_of_range_for_the_model_keep_the_loss_error_with_a_note():
    data = [(torch.zeros(4, 2), torch.tensor([0, 1, 2, 7]))]
    learner = fp.Learner(torch.nn.Linear(2, 3), torch.nn.functional.cross_entropy,
                         data=(None, data), use_default_callbacks=False)
    with pytest.raises(IndexError, match="Target 7 is out of bounds") as info:
        learner.fit(1, phases=[(VALID, data)])
    assert "in the ValidationPhase step, with preds a torch.float32 tensor of shape (4, 3) " \
        "and ys a torch.int64 tensor of shape (4,)" in info.value.__notes__[0]


# -- the optimizer -----------------------------------------------------------------------------


def test_optimizer_over_other_parameters_is_an_error():
    other = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"the optimizer updates 2 tensor\(s\) that are not "
                                         r"parameters of the model.*model\.parameters\(\)"):
        fp.Learner(CoeffModel(1.0), torch.nn.functional.l1_loss,
                   optimizer=torch.optim.SGD(other.parameters(), lr=0.1))


def test_optimizer_factory_that_ignores_its_parameters_is_an_error():
    other = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"updates 2 tensor\(s\) that are not parameters"):
        fp.Learner(CoeffModel(1.0), torch.nn.functional.l1_loss,
                   optimizer=lambda params: torch.optim.SGD(other.parameters(), lr=0.1))


def test_optimizer_over_some_of_the_model_is_fine():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    optimizer = torch.optim.SGD(model[1].parameters(), lr=0.1)
    assert fp.Learner(model, torch.nn.functional.mse_loss, optimizer=optimizer).optimizer \
        is optimizer


# -- the device --------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
@pytest.mark.parametrize("make", [
    lambda device: fp.Learner(CoeffModel(1.0), torch.nn.functional.l1_loss, device=device),
    fp.ToDevice,
], ids=["Learner", "ToDevice"])
def test_cuda_on_a_machine_without_it_is_an_error(make):
    with pytest.raises(ValueError, match=r"device='cuda:0' asks for CUDA, but CUDA is not "
                                         r"available here; use device='cpu'"):
        make("cuda:0")


@pytest.mark.parametrize("make", [
    lambda device: fp.Learner(CoeffModel(1.0), torch.nn.functional.l1_loss, device=device),
    fp.ToDevice,
], ids=["Learner", "ToDevice"])
def test_device_torch_does_not_know_is_an_error(make):
    with pytest.raises(ValueError, match=r"device='nonsense' is not a device torch knows"):
        make("nonsense")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks a machine without MPS")
def test_other_backend_that_is_not_there_is_an_error():
    with pytest.raises(ValueError, match=r"device='mps' asks for mps, which is not available"):
        fp.Learner(CoeffModel(1.0), torch.nn.functional.l1_loss, device="mps")


def test_bad_batch_in_a_later_batch_still_names_the_phase():
    data = [*test_batches(2), torch.zeros(3)]
    with pytest.raises(fp.BadBatchError, match=r"TrainingPhase got a tensor of shape \(3,\)"):
        test_learner().fit(1, data=(data, None))


# -- a loss that cannot be differentiated --------------------------------------------------------


class Frozen(CoeffModel):
    """A CoeffModel whose parameter is frozen."""

    def __init__(self):
        super().__init__(1.0)
        self.coeff.requires_grad_(False)


class Detaching(CoeffModel):
    """A CoeffModel whose forward detaches its output."""

    def forward(self, xs):
        return super().forward(xs).detach()


class DetachLoss(fp.Callback):
    """Puts a detached copy of the loss in its place at BackwardBegin."""


@fp.on.dispatch
def _detach_loss(event: fp.BackwardBegin, phase: fp.Phase, cb: DetachLoss, learner):
    learner.batch.loss = learner.batch.loss.detach()


@fp.stateaccess.dispatch
def _detach_loss_access(cb: DetachLoss):
    return fp.Access(batch=fp.Access(loss=fp.Write()))


def l1_detached(preds, ys):
    return torch.nn.functional.l1_loss(preds, ys).detach()


def l1_without_grad(preds, ys):
    with torch.no_grad():
        return torch.nn.functional.l1_loss(preds, ys)


@pytest.mark.parametrize("loss_fn", [l1_detached, l1_without_grad])
def test_loss_cut_off_from_the_model_keeps_torchs_error_with_a_note_on_the_cause(loss_fn):
    learner = learner_with_loss(loss_fn)
    with pytest.raises(RuntimeError, match="does not require grad") as info:
        learner.fit(1)
    assert info.value.__notes__ == [
        f"loss.backward() failed in TrainingPhase: the loss, tensor(2.), does not require "
        f"grad, so nothing connects it to the model's parameters. It is what loss_fn "
        f"{loss_fn.__name__} returned. Likely cause: loss_fn cut it off from the model's "
        "output (.detach(), .item(), a new tensor made from values, or torch.no_grad()): "
        "compute it from preds with torch operations."]


def test_model_without_trainable_parameters_is_named_as_the_cause():
    learner = fp.Learner(Frozen(), torch.nn.functional.l1_loss, data=(GOOD, None),
                         use_default_callbacks=False)
    with pytest.raises(RuntimeError, match="does not require grad") as info:
        learner.fit(1)
    assert info.value.__notes__[0].endswith(
        "Likely cause: the model has no trainable parameters (requires_grad is False for "
        "all of them): unfreeze some, or run only validation phases.")


def test_model_that_detaches_its_output_is_named_as_the_cause():
    learner = fp.Learner(Detaching(1.0), torch.nn.functional.l1_loss, data=(GOOD, None),
                         use_default_callbacks=False)
    with pytest.raises(RuntimeError, match="does not require grad") as info:
        learner.fit(1)
    assert info.value.__notes__[0].endswith(
        "Likely cause: the model's output does not require grad: its forward cuts it off "
        "(.detach(), .item(), torch.no_grad(), a tensor rebuilt from values).")


def test_handler_that_replaces_the_loss_with_a_detached_one_is_named():
    learner = fp.Learner(CoeffModel(1.0), torch.nn.functional.l1_loss, data=(GOOD, None),
                         callbacks=[DetachLoss()], use_default_callbacks=False)
    with pytest.raises(RuntimeError, match="does not require grad") as info:
        learner.fit(1)
    note = info.value.__notes__[-1]
    assert "It is batch.loss as the BackwardBegin handlers (DetachLoss) left it" in note
    assert note.endswith(
        "Likely cause: a BackwardBegin handler replaced batch.loss with a value that does not "
        "require grad: compute the replacement from batch.loss with torch operations.")


def test_integer_loss_is_a_bad_loss_error():
    learner = learner_with_loss(lambda preds, ys: (preds.round() == ys).sum())
    with pytest.raises(fp.BadLossError, match=re.escape(
            "the loss in TrainingPhase is a torch.int64 tensor (what loss_fn <lambda> "
            "returned): gradients need a floating-point loss. Compute it from preds with float "
            "operations (counts and argmax have no gradient; report those with fp.Metrics).")):
        learner.fit(1)


def test_python_int_loss_is_a_bad_loss_error_in_good_grammar():
    learner = learner_with_loss(lambda preds, ys: 1)
    with pytest.raises(fp.BadLossError, match="loss_fn returned an int in TrainingPhase"):
        learner.fit(1)
