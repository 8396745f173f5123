"""The protected view: each handler sees the learner through its callback's `stateaccess`."""

import copy
import pickle
import re

import attrs
import pytest
import torch

import fluxpy as fp
from fluxpy.protect import ProtectedObject, ReadOnlyMapping, ReadOnlyObject, ReadOnlySequence
from fluxpy.state import Batch
from fluxpy.testing import test_learner


def _view(access, *others, cls_name="Printer"):
    """A learner with a callback declaring `access`, that callback's view and the learner."""
    cls = type(cls_name, (fp.Callback,), {})
    fp.stateaccess.dispatch(_declare(cls, access))
    cb = cls()
    learner = test_learner(*others, cb)
    learner.batch = Batch(xs=torch.ones(2), ys=torch.ones(2), loss=torch.tensor(0.5))
    return learner.view(cb), learner


def _declare(cls, access):
    def _access(cb: cls):
        return access

    return _access


def _msg(text):
    return re.escape(text)


# -- reads ---------------------------------------------------------------------------------------


def test_granted_read_returns_the_value():
    view, learner = _view(fp.Access(batch=fp.Access(loss=fp.Read())))
    assert view.batch.loss is learner.batch.loss


def test_granted_read_of_a_missing_attribute_is_the_objects_attribute_error():
    view, learner = _view(fp.Access(batch=fp.Access(preds=fp.Read(), loss=fp.Write())))
    with pytest.raises(AttributeError, match="'Batch' object has no attribute 'preds'"):
        _ = view.batch.preds
    del learner.batch.loss
    with pytest.raises(AttributeError, match="'Batch' object has no attribute 'loss'"):
        _ = view.batch.loss


def test_read_of_an_undeclared_attribute_names_callback_path_and_fix():
    view, _ = _view(fp.Access())
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not read learner.model: add it to stateaccess(Printer), e.g. fp.Read() "
        "at 'model' in the fp.Access tree that stateaccess returns."
    )):
        _ = view.model


def test_read_inside_an_undeclared_namespace_names_the_full_path():
    view, _ = _view(fp.Access())
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not read learner.batch.loss: add it to stateaccess(Printer)"
    )):
        _ = view.batch.loss


def test_read_of_an_undeclared_sibling_in_a_granted_namespace():
    view, _ = _view(fp.Access(batch=fp.Access(xs=fp.Read())))
    assert torch.equal(view.batch.xs, torch.ones(2))
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not read learner.batch.loss: add it to stateaccess(Printer), e.g. "
        "fp.Read() at 'batch.loss'"
    )):
        _ = view.batch.loss


def test_read_in_a_nested_cbstate_namespace():
    view, _ = _view(fp.Access(cbstate=fp.Access(history=fp.Read())), fp.Recorder())
    assert view.cbstate.history == {}
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not read learner.cbstate.metricsepoch: add it to stateaccess(Printer)"
    )):
        _ = view.cbstate.metricsepoch


def test_read_in_a_nested_data_namespace():
    view, learner = _view(fp.Access(data=fp.Access(training=fp.Read())))
    assert len(view.data.training) == len(learner.data.training)
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not read learner.data.validation: add it to stateaccess(Printer)"
    )):
        _ = view.data.validation


def test_membership_test_of_an_undeclared_attribute_is_denied():
    view, _ = _view(fp.Access(batch=fp.Read()))
    assert "batch" in view
    with pytest.raises(fp.ProtectedError, match=_msg("Printer may not read learner.model")):
        _ = "model" in view


def test_dir_lists_only_declared_attributes():
    view, _ = _view(fp.Access(batch=fp.Read(), model=fp.Write()))
    assert dir(view) == ["batch", "model"]


def test_denied_read_is_not_an_attribute_error():
    view, _ = _view(fp.Access())
    assert not issubclass(fp.ProtectedError, AttributeError)
    with pytest.raises(fp.ProtectedError):
        getattr(view, "model", "default")
    with pytest.raises(fp.ProtectedError):
        getattr(view.batch, "loss", None)
    with pytest.raises(fp.ProtectedError):
        hasattr(view, "optimizer")


def test_protected_error_keeps_callback_path_and_mode():
    view, _ = _view(fp.Access())
    with pytest.raises(fp.ProtectedError) as info:
        _ = view.batch.loss
    assert type(info.value.callback).__name__ == "Printer"
    assert info.value.path == "batch.loss"
    assert info.value.mode == "read"
    assert isinstance(info.value, PermissionError)


class _Pickled(fp.Callback):
    pass


def test_protected_error_pickles_with_its_message():
    error = fp.ProtectedError(_Pickled(), "batch.loss", "write", "read access")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == str(error)
    assert (copy.path, copy.mode, copy.granted) == ("batch.loss", "write", "read access")


# -- writes --------------------------------------------------------------------------------------


def test_granted_write_changes_the_learner():
    view, learner = _view(fp.Access(batch=fp.Access(loss=fp.Write())))
    view.batch.loss = torch.tensor(2.0)
    assert learner.batch.loss.item() == 2.0


def test_write_of_an_undeclared_attribute_names_callback_path_and_fix():
    view, _ = _view(fp.Access())
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.model: add it to stateaccess(Printer), e.g. fp.Write() "
        "at 'model' in the fp.Access tree that stateaccess returns."
    )):
        view.model = torch.nn.Linear(1, 1)


def test_write_inside_an_undeclared_namespace_names_the_full_path():
    view, learner = _view(fp.Access())
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.batch.loss: add it to stateaccess(Printer)"
    )):
        view.batch.loss = torch.tensor(2.0)
    assert learner.batch.loss.item() == 0.5


def test_write_under_read_is_denied_and_says_it_has_read_access():
    view, learner = _view(fp.Access(batch=fp.Access(loss=fp.Read())))
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.batch.loss: add it to stateaccess(Printer) (it has read "
        "access there), e.g. fp.Write() at 'batch.loss'"
    )):
        view.batch.loss = torch.tensor(2.0)
    assert learner.batch.loss.item() == 0.5


def test_write_below_a_read_namespace_is_denied():
    view, learner = _view(fp.Access(batch=fp.Read()))
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.batch.loss: add it to stateaccess(Printer) (it has read "
        "access there)"
    )):
        view.batch.loss = torch.tensor(2.0)
    assert learner.batch.loss.item() == 0.5


def test_replacing_a_partly_granted_namespace_is_denied():
    view, _ = _view(fp.Access(batch=fp.Access(loss=fp.Write())))
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.batch: add it to stateaccess(Printer) (it has access to "
        "parts of it only there)"
    )):
        view.batch = Batch()


def test_deleting_needs_write():
    view, learner = _view(fp.Access(batch=fp.Access(loss=fp.Read(), preds=fp.Write())))
    learner.batch.preds = torch.zeros(2)
    with pytest.raises(fp.ProtectedError, match=_msg("Printer may not write learner.batch.loss")):
        del view.batch.loss
    del view.batch.preds
    assert not hasattr(learner.batch, "preds")


def test_write_gives_the_raw_objects():
    view, learner = _view(fp.Access(batch=fp.Write()))
    assert view.batch is learner.batch
    assert view.batch.loss is learner.batch.loss


# -- read-only containers ------------------------------------------------------------------------


@pytest.fixture
def history_view():
    """A trained learner's history, seen by a callback that may only read it."""
    view, learner = _view(fp.Access(cbstate=fp.Access(history=fp.Read())), fp.Recorder())
    learner.fit(1)
    return view, learner


def test_read_only_history_dict_cannot_be_changed(history_view):
    view, learner = history_view
    history = view.cbstate.history
    assert isinstance(history, ReadOnlyMapping)
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.cbstate.history: add it to stateaccess(Printer) (it has "
        "read access there)"
    )):
        history[fp.TrainingPhase()] = None
    for mutate in (lambda: history.pop(fp.TrainingPhase()), history.clear,
                   lambda: history.update({}), lambda: history.setdefault(1, 2)):
        with pytest.raises(fp.ProtectedError):
            mutate()
    with pytest.raises(fp.ProtectedError):
        del history[fp.TrainingPhase()]
    assert set(learner.cbstate.history) == {fp.TrainingPhase(), fp.ValidationPhase()}


def test_read_only_history_objects_cannot_be_changed(history_view):
    view, learner = history_view
    record = view.cbstate.history[fp.TrainingPhase()]
    assert isinstance(record, ReadOnlyObject)
    assert record.epochs == 1
    assert record.steps == 16
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.cbstate.history[TrainingPhase].epochs"
    )):
        record.epochs = 10
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.cbstate.history[TrainingPhase].epoch_times"
    )):
        record.epoch_times.append(1.0)
    assert learner.cbstate.history[fp.TrainingPhase()].epochs == 1
    assert len(learner.cbstate.history[fp.TrainingPhase()].epoch_times) == 1


def test_read_only_history_values_and_items_stay_read_only(history_view):
    view, _ = history_view
    history = view.cbstate.history
    assert all(isinstance(h, ReadOnlyObject) for h in history.values())
    assert all(isinstance(h, ReadOnlyObject) for _, h in history.items())
    assert isinstance(history.get(fp.TrainingPhase()), ReadOnlyObject)


def test_read_only_list_cannot_be_changed(history_view):
    view, _ = history_view
    times = view.cbstate.history[fp.TrainingPhase()].epoch_times
    assert isinstance(times, ReadOnlySequence)
    assert len(times) == 1
    for mutate in (lambda: times.append(1), lambda: times.extend([1]), times.clear,
                   lambda: times.__setitem__(0, 1), times.pop, times.sort):
        with pytest.raises(fp.ProtectedError):
            mutate()


def test_deep_copy_of_read_only_state_is_a_detached_plain_copy(history_view):
    view, learner = history_view
    snapshot = copy.deepcopy(view.cbstate.history)
    assert type(snapshot) is type(learner.cbstate.history)  # the state's own type, not a view
    assert snapshot == learner.cbstate.history
    snapshot[fp.TrainingPhase()].epochs = 99
    assert learner.cbstate.history[fp.TrainingPhase()].epochs == 1


def test_deep_copy_of_a_read_only_object_is_a_plain_copy(history_view):
    view, learner = history_view
    record = copy.deepcopy(view.cbstate.history[fp.TrainingPhase()])
    assert type(record) is fp.History
    record.epoch_times.append(1.0)
    assert len(learner.cbstate.history[fp.TrainingPhase()].epoch_times) == 1


def test_shallow_copy_of_read_only_state_stays_read_only(history_view):
    view, _ = history_view
    record = copy.copy(view.cbstate.history[fp.TrainingPhase()])
    with pytest.raises(fp.ProtectedError):
        record.epochs = 2


def test_read_only_state_pickles_as_the_object_it_shows(history_view):
    view, learner = history_view
    record = pickle.loads(pickle.dumps(view.cbstate.history[fp.TrainingPhase()]))
    assert record == learner.cbstate.history[fp.TrainingPhase()]
    assert type(record) is fp.History


@attrs.define
class _Tracker:
    count: int = 0

    def bump(self):
        self.count += 1


def test_read_only_object_refuses_method_calls():
    view, learner = _view(fp.Access(cbstate=fp.Read()))
    learner.cbstate.tracker = _Tracker()
    assert view.cbstate.tracker.count == 0
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.cbstate.tracker.bump(): add it to stateaccess(Printer) "
        "(it has read access; methods may change the object there)"
    )):
        view.cbstate.tracker.bump()
    assert learner.cbstate.tracker.count == 0


def test_read_on_a_module_gives_the_module_itself():
    view, learner = _view(fp.Access(model=fp.Read()))
    assert view.model is learner.model
    assert list(view.model.parameters()) == list(learner.model.parameters())


def test_read_only_values_compare_equal_to_what_they_wrap():
    view, learner = _view(fp.Access(cbstate=fp.Access(history=fp.Read())), fp.Recorder())
    assert view.cbstate.history == learner.cbstate.history


# -- views -----------------------------------------------------------------------------------------


def test_view_is_built_once_per_callback():
    view, learner = _view(fp.Access(batch=fp.Read()))
    cb = learner.callbacks[0]
    assert isinstance(view, ProtectedObject)
    assert learner.view(cb) is view


def test_sub_view_is_live_and_shows_the_current_namespace():
    view, learner = _view(fp.Access(batch=fp.Access(loss=fp.Read())))
    batch = view.batch
    assert view.batch is batch
    learner.batch = Batch(loss=torch.tensor(1.0))
    assert view.batch is batch  # one view for the name, not one per object
    assert batch.loss.item() == 1.0
    del learner.batch
    with pytest.raises(AttributeError, match="'Learner' object has no attribute 'batch'"):
        _ = batch.loss


def test_views_keep_no_old_namespace_alive():
    import gc
    import weakref

    view, learner = _view(fp.Access(batch=fp.Access(loss=fp.Read())))
    old = learner.batch
    _ = view.batch.loss
    ref = weakref.ref(old)
    learner.batch = Batch(loss=torch.tensor(1.0))
    del old
    gc.collect()
    assert ref() is None


def test_handler_gets_the_protected_view_during_fit():
    class Peek(fp.Callback):
        pass

    @fp.stateaccess.dispatch
    def _peek_access(cb: Peek):
        return fp.Access(batch=fp.Access(loss=fp.Read()))

    @fp.on.dispatch
    def _peek_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Peek, learner):
        _ = learner.model

    with pytest.raises(fp.ProtectedError, match=_msg("Peek may not read learner.model")) as info:
        test_learner(Peek()).fit(1)
    assert any("raised by the handler of Peek for StepEnd in TrainingPhase" in note
               for note in info.value.__notes__)


def test_unsafe_callback_gets_the_raw_learner():
    class Debugger(fp.UnsafeCallback):
        pass

    seen = []

    @fp.on.dispatch
    def _debugger_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Debugger, learner):
        seen.append(learner)

    cb = Debugger()
    learner = test_learner(cb, n_batches=1)
    learner.fit(1)
    assert learner.view(cb) is learner
    assert seen == [learner]


def test_a_callable_read_under_read_is_itself_and_can_be_called():
    view, learner = _view(fp.Access(loss_fn=fp.Read()))
    assert view.loss_fn is learner.loss_fn
    assert view.loss_fn(torch.ones(2), torch.zeros(2)).item() == 1.0


def test_a_denied_write_into_a_container_suggests_the_attribute_to_grant():
    view, learner = _view(fp.Access(cbstate=fp.Access(history=fp.Read())), fp.Recorder())
    learner.fit(1)
    with pytest.raises(fp.ProtectedError, match=_msg("e.g. fp.Write() at 'cbstate.history' in")):
        view.cbstate.history[fp.TrainingPhase()].steps = 0


def test_leaf_getters_are_compiled_only_for_attribute_paths():
    from fluxpy.protect import _leaf_getter

    with pytest.raises(ValueError, match=r"'batch\.a b' is not a valid attribute path"):
        _leaf_getter("batch.a b", owner=None, root=None, write=False)
    learner = Batch(batch=Batch(loss=torch.tensor(2.0), log=[1]))
    assert _leaf_getter("batch.loss", None, learner, write=True)(None) is learner.batch.loss
    assert _leaf_getter("batch.loss", None, learner, write=False)(None) is learner.batch.loss
    assert isinstance(_leaf_getter("batch.log", None, learner, write=False)(None),
                      ReadOnlySequence)
