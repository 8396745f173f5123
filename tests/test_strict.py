"""Strict mode: an in-place change to what a handler may only read is a `ProtectedError`."""

import re
import threading

import numpy as np
import pytest
import torch

import fluxpy as fp
from fluxpy.testing import test_learner


def _msg(text):
    return re.escape(text)


def _cheat(access, change, event=fp.StepEnd, name="Cheat", base=fp.Callback):
    """A callback declaring `access` whose handler for `event` in training calls
    `change(learner)`."""
    cls = type(name, (base,), {})
    fp.stateaccess.dispatch(_returns(cls, access))

    def _handler(event_: event, phase: fp.TrainingPhase, cb: cls, learner):
        change(learner)

    fp.on.dispatch(_handler)
    return cls()


def _returns(cls, access):
    def _access(cb: cls):
        return access

    return _access


def _fit_raises(cb, *others, match, **kwargs):
    learner = test_learner(cb, *others, n_batches=2, **kwargs)
    with pytest.raises(fp.ProtectedError, match=match) as info:
        learner.fit(1)
    return learner, info.value


BATCH_XS = fp.Access(batch=fp.Access(xs=fp.Read()))
MODEL = fp.Access(model=fp.Read())
OPTIMIZER = fp.Access(optimizer=fp.Read())


def test_strict_mode_is_off_by_default_and_on_in_test_learner():
    model = torch.nn.Linear(1, 1)
    assert fp.Learner(model, torch.nn.functional.mse_loss).strict is False
    assert fp.Learner(model, torch.nn.functional.mse_loss, strict=True).strict is True
    assert test_learner().strict is True
    assert test_learner(strict=False).strict is False


def test_strict_must_be_a_bool():
    with pytest.raises(TypeError, match="strict must be True or False, not 'yes'"):
        test_learner(strict="yes")


def test_an_in_place_change_to_a_read_tensor_names_callback_handler_path_and_fix():
    cheat = _cheat(BATCH_XS, lambda learner: learner.batch.xs.add_(1))
    _, error = _fit_raises(cheat, match=_msg(
        "Cheat may not write learner.batch.xs: add it to stateaccess(Cheat) (it has read access "
        "there), e.g. fp.Write() at 'batch.xs' in the fp.Access tree that stateaccess returns. "
        "Strict mode: Cheat's handler for StepEnd in TrainingPhase changed it in place."
    ))
    assert (error.path, error.mode) == ("batch.xs", "write")
    assert any("raised by the handler of Cheat for StepEnd in TrainingPhase" in note
               for note in error.__notes__)


def test_the_same_change_goes_unnoticed_without_strict_mode():
    cheat = _cheat(BATCH_XS, lambda learner: learner.batch.xs.add_(1))
    test_learner(cheat, n_batches=2, strict=False).fit(1)


def test_a_change_through_data_of_a_parameter_is_caught():
    cheat = _cheat(MODEL, lambda learner: learner.model.coeff.data.fill_(0))
    learner, _ = _fit_raises(cheat, match=_msg(
        "Cheat may not write learner.model.coeff: add it to stateaccess(Cheat) (it has read "
        "access there), e.g. fp.Write() at 'model' in"
    ))
    assert learner.model.coeff.item() == 0  # caught after the fact: the handler did run


def test_a_change_without_gradients_is_caught():
    def change(learner):
        with torch.no_grad():
            learner.model.coeff.mul_(2)

    _fit_raises(_cheat(MODEL, change), match=_msg("Cheat may not write learner.model.coeff"))


def test_a_change_through_numpy_is_caught():
    _fit_raises(_cheat(BATCH_XS, lambda learner: learner.batch.xs.numpy().__setitem__(0, -1)),
                match=_msg("Cheat may not write learner.batch.xs"))


def test_a_change_that_restores_the_value_is_still_a_write():
    def change(learner):
        learner.batch.xs.add_(1)
        learner.batch.xs.sub_(1)

    _fit_raises(_cheat(BATCH_XS, change), match=_msg("Cheat may not write learner.batch.xs"))


def test_replacing_a_parameter_of_a_read_module_is_caught():
    def change(learner):
        learner.model.coeff = torch.nn.Parameter(torch.tensor([1.0]))

    _fit_raises(_cheat(MODEL, change), match=_msg(
        "Cheat may not write learner.model.coeff: add it to stateaccess(Cheat) (it has read "
        "access there), e.g. fp.Write() at 'model' in the fp.Access tree that stateaccess "
        "returns. Strict mode: Cheat's handler for StepEnd in TrainingPhase replaced it."
    ))


def test_switching_a_read_module_to_eval_mode_is_caught():
    _fit_raises(_cheat(MODEL, lambda learner: learner.model.eval()),
                match=_msg("Cheat may not write learner.model.training"))


def test_a_gradient_of_a_read_module_is_part_of_it():
    def change(learner):
        learner.model.coeff.grad = None

    _fit_raises(_cheat(MODEL, change, event=fp.BackwardEnd),
                match=_msg("Cheat may not write learner.model.coeff.grad"))


def test_changing_a_read_optimizers_hyperparameters_is_caught():
    def change(learner):
        learner.optimizer.param_groups[0]["lr"] = 0.5

    _fit_raises(_cheat(OPTIMIZER, change), match=_msg(
        "Cheat may not write learner.optimizer.param_groups[0]['lr']: add it to "
        "stateaccess(Cheat) (it has read access there), e.g. fp.Write() at 'optimizer' in"
    ))


def test_stepping_a_read_optimizer_is_caught():
    _fit_raises(_cheat(OPTIMIZER, lambda learner: learner.optimizer.step(),
                       event=fp.BackwardEnd),
                match=_msg("Cheat may not write learner.optimizer.param_groups[0]['params'][0]"))


def test_a_tensor_inside_a_read_only_container_is_watched():
    class Publish(fp.Callback):
        def init(self, learner):
            learner.cbstate.norms = [torch.zeros(1)]

    @fp.stateaccess.dispatch
    def _publish_access(cb: Publish):
        return fp.Access(cbstate=fp.Access(norms=fp.Write()))

    cheat = _cheat(fp.Access(cbstate=fp.Access(norms=fp.Read())),
                   lambda learner: learner.cbstate.norms[0].add_(1))
    _fit_raises(cheat, Publish(), match=_msg(
        "Cheat may not write learner.cbstate.norms[0]: add it to stateaccess(Cheat) (it has "
        "read access there), e.g. fp.Write() at 'cbstate.norms' in"
    ))


def test_a_tensor_read_through_a_merged_read_base_is_watched():
    access = fp.Access(batch=fp.Access(loss=fp.Write())) | fp.Access(batch=fp.Read())
    _fit_raises(_cheat(access, lambda learner: learner.batch.ys.mul_(2)),
                match=_msg("Cheat may not write learner.batch.ys"))


def test_a_numpy_array_changed_around_its_read_only_flag_is_caught():
    class Publish(fp.Callback):
        def init(self, learner):
            learner.cbstate.counts = np.zeros(2)

    @fp.stateaccess.dispatch
    def _publish_access(cb: Publish):
        return fp.Access(cbstate=fp.Access(counts=fp.Write()))

    def change(learner):
        counts = learner.cbstate.counts
        counts.flags.writeable = True
        counts[0] = 1

    _fit_raises(_cheat(fp.Access(cbstate=fp.Access(counts=fp.Read())), change), Publish(),
                match=_msg("Cheat may not write learner.cbstate.counts"))


def test_an_in_place_change_that_leaves_the_value_equal_is_caught():
    _fit_raises(_cheat(BATCH_XS, lambda learner: learner.batch.xs.add_(0)),
                match=_msg("Cheat may not write learner.batch.xs"))


def test_granted_writes_are_not_reported():
    def change(learner):
        with torch.no_grad():
            learner.batch.xs.add_(1)
            learner.batch.loss.add_(0)

    access = fp.Access(batch=fp.Access(xs=fp.Write(), loss=fp.Write(), ys=fp.Read()))
    test_learner(_cheat(access, change), n_batches=2).fit(1)


def test_a_read_module_changed_through_a_written_optimizer_is_not_reported():
    cheat = _cheat(fp.Access(model=fp.Read(), optimizer=fp.Write()),
                   lambda learner: learner.optimizer.step(), event=fp.BackwardEnd)
    test_learner(cheat, n_batches=2).fit(1)


def test_reading_changes_nothing_and_is_not_reported():
    def look(learner):
        _ = (learner.batch.xs.sum(), learner.model(learner.batch.xs),
             learner.optimizer.param_groups[0]["lr"], learner.cbstate.history)

    access = fp.Access(batch=fp.Read(), model=fp.Read(), optimizer=fp.Read(),
                       cbstate=fp.Access(history=fp.Read()))
    learner = test_learner(_cheat(access, look), fp.Recorder(), n_batches=2)
    learner.fit(1)
    assert learner.cbstate.history[fp.TrainingPhase()].steps == 2


def test_a_change_before_a_control_flow_exception_is_still_caught():
    def change(learner):
        learner.batch.xs.add_(1)
        raise fp.CancelFitException("done")

    _fit_raises(_cheat(BATCH_XS, change), match=_msg("Cheat may not write learner.batch.xs"))


def test_the_handlers_own_error_is_not_hidden_by_strict_mode():
    def change(learner):
        learner.batch.xs.add_(1)
        raise ValueError("the handler's own problem")

    learner = test_learner(_cheat(BATCH_XS, change), n_batches=2)
    with pytest.raises(ValueError, match="the handler's own problem"):
        learner.fit(1)


def test_unsafe_callbacks_are_not_checked():
    cheat = _cheat(fp.Access(), lambda learner: learner.batch.xs.add_(1), base=fp.UnsafeCallback)
    test_learner(cheat, n_batches=2).fit(1)


def test_validation_handlers_are_checked_too():
    class Look(fp.Callback):
        pass

    @fp.stateaccess.dispatch
    def _look_access(cb: Look):
        return fp.Access(batch=fp.Access(preds=fp.Read()))

    @fp.on.dispatch
    def _look_step_end(event: fp.StepEnd, phase: fp.ValidationPhase, cb: Look, learner):
        learner.batch.preds.add_(1)

    learner = test_learner(Look(), n_batches=2)
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Look may not write learner.batch.preds: add it to stateaccess(Look) (it has read "
        "access there), e.g. fp.Write() at 'batch.preds' in the fp.Access tree that stateaccess "
        "returns. Strict mode: Look's handler for StepEnd in ValidationPhase changed it in place."
    )):
        learner.fit(1)


def test_the_built_in_callbacks_train_cleanly_in_strict_mode():
    learner = test_learner(use_default_callbacks=True, n_batches=4)
    learner.fit(2)
    assert learner.cbstate.history[fp.TrainingPhase()].steps == 8


def test_two_handlers_checked_at_once_on_threads_each_answer_for_their_own_reads():
    """Each strict check notes what its own handler call reads, also while another handler
    runs on another thread: here both have started before either reads, and the cheat's
    change is found in its own check, the honest handler's check finds nothing."""
    both_started, both_read = threading.Barrier(2, timeout=10), threading.Barrier(2, timeout=10)

    class Publish(fp.Callback):
        def init(self, learner):
            learner.cbstate.norms = [torch.zeros(1), torch.zeros(1)]

    @fp.stateaccess.dispatch
    def _publish_access(cb: Publish):
        return fp.Access(cbstate=fp.Access(norms=fp.Write()))

    def cheat(learner):
        both_started.wait()
        learner.cbstate.norms[0].add_(1)
        both_read.wait()

    def honest(learner):
        both_started.wait()
        _ = learner.cbstate.norms[1].sum()
        both_read.wait()

    reads = fp.Access(cbstate=fp.Access(norms=fp.Read()))
    _, error = _fit_raises(
        _cheat(reads, cheat, event=fp.EpochEnd), _cheat(reads, honest, event=fp.EpochEnd,
                                                        name="Honest"),
        Publish(), executor=fp.ThreadedExecutor(max_workers=2), match=_msg(
            "Cheat may not write learner.cbstate.norms[0]: add it to stateaccess(Cheat) (it has "
            "read access there), e.g. fp.Write() at 'cbstate.norms' in the fp.Access tree that "
            "stateaccess returns. Strict mode: Cheat's handler for EpochEnd in TrainingPhase "
            "changed it in place."))
    assert not any("Honest" in note for note in error.__notes__)
