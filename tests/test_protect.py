"""The protected view: each handler sees the learner through its callback's `stateaccess`."""

import collections
import copy
import dataclasses
import datetime
import pathlib
import pickle
import re

import attrs
import numpy as np
import pytest
import torch

import fluxpy as fp
from fluxpy.callbacks.recorder import History
from fluxpy.core.protect import ProtectedObject
from fluxpy.core.readonly import ReadOnlyMapping, ReadOnlyObject, ReadOnlySequence
from fluxpy.core.state import Batch
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
    assert type(record) is History
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
    assert type(record) is History


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


# -- a name covered by a merged Read() base --------------------------------------------------------


def _merged_view():
    """`cbstate.x` writable, the rest of `cbstate` readable through the merged `Read()` base."""
    access = fp.Access(cbstate=fp.Access(x=fp.Write())) | fp.Access(cbstate=fp.Read())
    view, learner = _view(access)
    learner.cbstate.x = 1
    learner.cbstate.other = [1, 2]
    return view, learner


def test_a_name_covered_only_by_a_merged_read_base_can_be_read():
    view, _ = _merged_view()
    assert view.cbstate.other == [1, 2]
    assert view.cbstate.x == 1


def test_a_name_covered_only_by_a_merged_read_base_stays_read_only():
    view, learner = _merged_view()
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.cbstate.other.append(): add it to stateaccess(Printer)"
    )):
        view.cbstate.other.append(3)
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.cbstate.other: add it to stateaccess(Printer) (it has "
        "read access there)"
    )):
        view.cbstate.other = []
    view.cbstate.x = 2
    assert (learner.cbstate.x, learner.cbstate.other) == (2, [1, 2])


def test_a_missing_name_under_a_merged_read_base_is_the_objects_attribute_error():
    view, _ = _merged_view()
    with pytest.raises(AttributeError, match="'State' object has no attribute 'missing'"):
        _ = view.cbstate.missing


# -- callbacks read through the view ---------------------------------------------------------------


class _Keeper(fp.Callback):
    """Keeps the view it was given, as callbacks that need the learner outside handlers do."""

    def init(self, learner):
        self.learner = learner


@fp.stateaccess.dispatch
def _keeper_access(cb: _Keeper):
    return fp.Access(model=fp.Write())


class _Counter(fp.Callback):
    """A plain (non-attrs) callback with public state."""

    def __init__(self):
        self.count = 0
        self.seen = []


class _RawKeeper(fp.UnsafeCallback):
    def init(self, learner):
        self.learner = learner


def _callbacks_view(*others):
    return _view(fp.Access(callbacks=fp.Read()), *others, cls_name="Reader")


def test_a_view_another_callback_stored_is_not_reachable():
    view, learner = _callbacks_view(_Keeper())
    model = learner.model
    keeper = view.callbacks[0]
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Reader may not read learner.callbacks[0].learner: it is _Keeper's view of the learner, "
        "which has _Keeper's permissions; declare what Reader needs in stateaccess(Reader)"
    )):
        keeper.learner.model = torch.nn.Linear(1, 1)
    assert learner.model is model


def test_a_callbacks_own_stored_view_comes_back_to_it():
    class Reader(_Keeper):
        pass

    @fp.stateaccess.dispatch
    def _reader_access(cb: Reader):
        return fp.Access(callbacks=fp.Read())

    reader = Reader()
    learner = test_learner(reader)
    view = learner.view(reader)
    assert view.callbacks[0].learner is view


def test_a_plain_callback_comes_back_read_only_all_the_way_down():
    view, learner = _callbacks_view(_Counter())
    counter = view.callbacks[0]
    assert counter.count == 0
    assert isinstance(counter, _Counter)
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Reader may not write learner.callbacks[0].count: add it to stateaccess(Reader) (it "
        "has read access there)"
    )):
        counter.count = 99
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Reader may not write learner.callbacks[0].seen.append()"
    )):
        counter.seen.append(1)
    with pytest.raises(fp.ProtectedError):
        del counter.count
    assert (learner.callbacks[0].count, learner.callbacks[0].seen) == (0, [])


def test_methods_of_a_callback_read_through_the_view_are_refused():
    view, _ = _callbacks_view(_Counter())
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Reader may not write learner.callbacks[0].init(): add it to stateaccess(Reader) (it "
        "has read access; methods may change the object there)"
    )):
        view.callbacks[0].init(view)


def test_private_attributes_of_another_callback_are_not_readable():
    view, learner = _callbacks_view(fp.Recorder())
    learner.fit(1)
    recorder = view.callbacks[0]
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Reader may not read learner.callbacks[0]._histories: it is private to Recorder (a "
        "leading underscore); to share state, a callback publishes it in learner.cbstate, "
        "and Reader declares it in stateaccess(Reader)"
    )):
        _ = recorder._histories
    with pytest.raises(fp.ProtectedError):
        getattr(recorder, "_current", None)


def test_the_raw_learner_reached_through_another_object_is_not_reachable():
    view, learner = _callbacks_view(_RawKeeper())
    assert learner.callbacks[0].learner is learner
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Reader may not read learner.callbacks[0].learner: it is the learner itself, "
        "unprotected; declare what Reader needs in stateaccess(Reader)"
    )):
        _ = view.callbacks[0].learner


def test_a_view_stored_in_shared_state_is_not_reachable():
    keeper = _Keeper()
    view, learner = _view(fp.Access(cbstate=fp.Read()), keeper)
    learner.cbstate.handle = {"view": learner.view(keeper)}
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not read learner.cbstate.handle[view]: it is _Keeper's view"
    )):
        _ = view.cbstate.handle["view"]
    with pytest.raises(fp.ProtectedError):
        list(view.cbstate.handle.values())


def test_copies_of_a_callback_read_through_the_view_hold_no_working_view():
    view, _ = _callbacks_view(_Keeper())
    keeper = view.callbacks[0]
    assert copy.copy(keeper) is keeper
    with pytest.raises(TypeError, match="a protected view is live and cannot be copied"):
        copy.deepcopy(keeper)
    with pytest.raises(TypeError, match="a protected view is live and cannot be copied"):
        pickle.dumps(keeper)


def test_only_names_that_say_so_lead_from_a_view_or_read_only_value_to_raw_state():
    view, learner = _callbacks_view(_Counter())
    for name in dir(type(view)):
        if not name.startswith("__") and getattr(view, name) is learner:
            assert name.endswith("_do_not_use"), name
    counter = view.callbacks[0]
    raw = learner.callbacks[0]
    for cls in type(counter).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if getattr(counter, name) is raw:
                assert name.endswith("_do_not_use"), name
    assert not hasattr(counter, "_fp_obj")
    assert not hasattr(view, "_fp_root")
    reduced = counter.__reduce__()
    assert raw not in reduced[1]


def test_getattr_vars_dir_and_dict_do_not_reach_around_the_view():
    view, _ = _callbacks_view(_Counter())
    counter = view.callbacks[0]
    with pytest.raises(TypeError):
        vars(view)
    with pytest.raises(TypeError):
        vars(counter)
    with pytest.raises(AttributeError):
        _ = view.__dict__
    with pytest.raises(AttributeError):
        _ = counter.__dict__
    assert dir(view) == ["callbacks"]
    with pytest.raises(fp.ProtectedError):
        getattr(view, "model", None)


# -- containers of any kind under Read() -----------------------------------------------------------


@dataclasses.dataclass
class _Config:
    n: int = 1
    items: list = dataclasses.field(default_factory=list)


class _Plain:
    def __init__(self):
        self.n = 1


class _Stateful:
    """A callable object with state, e.g. a loss that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        return x * 2


def _state_view(**entries):
    view, learner = _view(fp.Access(cbstate=fp.Read()))
    for name, value in entries.items():
        setattr(learner.cbstate, name, value)
    return view.cbstate, learner.cbstate


def test_a_dataclass_under_read_is_read_only():
    seen, raw = _state_view(config=_Config(items=[1]))
    assert seen.config.n == 1
    assert list(seen.config.items) == [1]
    assert isinstance(seen.config, _Config)
    with pytest.raises(fp.ProtectedError,
                       match=_msg("Printer may not write learner.cbstate.config.n")):
        seen.config.n = 5
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.cbstate.config.items.append()"
    )):
        seen.config.items.append(2)
    assert raw.config == _Config(n=1, items=[1])


def test_a_deque_under_read_is_read_only():
    seen, raw = _state_view(queue=collections.deque([[1], [2]], maxlen=5))
    queue = seen.queue
    assert len(queue) == 2 and list(queue) == [[1], [2]] and queue.maxlen == 5
    for mutate in (lambda: queue.append([3]), lambda: queue.appendleft([0]),
                   lambda: queue.popleft(), lambda: queue.rotate(1),
                   lambda: queue.__setitem__(0, 7), lambda: queue.clear()):
        with pytest.raises(fp.ProtectedError,
                           match=_msg("Printer may not write learner.cbstate.queue")):
            mutate()
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.cbstate.queue[0].append()"
    )):
        queue[0].append(7)
    assert raw.queue == collections.deque([[1], [2]])


def test_a_numpy_array_under_read_is_a_read_only_view():
    array = np.arange(3)
    seen, _ = _state_view(array=array)
    assert seen.array.tolist() == [0, 1, 2]
    assert np.shares_memory(seen.array, array)  # a view: no copy
    with pytest.raises(ValueError, match="read-only"):
        seen.array[0] = 7
    with pytest.raises(ValueError, match="read-only"):
        seen.array += 1
    with pytest.raises(ValueError, match="read-only"):
        np.add(seen.array, 1, out=seen.array)
    assert array.tolist() == [0, 1, 2]
    assert array.flags.writeable


def test_a_numpy_array_of_objects_cannot_be_handed_out_read_only():
    seen, _ = _state_view(objects=np.array([_Plain()], dtype=object))
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not read learner.cbstate.objects: a numpy array of Python objects cannot "
        "be made read-only (its items could still be changed); keep such state in a list, or "
        "declare fp.Write() for it"
    )):
        _ = seen.objects


def test_a_bytearray_under_read_is_an_immutable_copy():
    seen, raw = _state_view(data=bytearray(b"abc"))
    assert seen.data == b"abc"
    with pytest.raises(TypeError):
        seen.data[0] = 7
    assert raw.data == bytearray(b"abc")


def test_a_set_under_read_is_frozen_and_its_items_read_only():
    seen, raw = _state_view(tags={"a", "b"}, objects={_Plain()})
    assert seen.tags == frozenset({"a", "b"}) and "a" in seen.tags
    with pytest.raises(AttributeError):
        seen.tags.add("c")
    (item,) = seen.objects
    with pytest.raises(fp.ProtectedError,
                       match=_msg("Printer may not write learner.cbstate.objects")):
        item.n = 5
    assert raw.tags == {"a", "b"} and next(iter(raw.objects)).n == 1


def test_a_set_of_tuples_under_read_stays_usable():
    seen, _ = _state_view(pairs={(1, 2), (3, 4)})
    assert (1, 2) in seen.pairs
    assert sorted(tuple(p) for p in seen.pairs) == [(1, 2), (3, 4)]


def test_a_plain_object_under_read_is_read_only():
    seen, raw = _state_view(thing=_Plain())
    assert seen.thing.n == 1
    with pytest.raises(fp.ProtectedError,
                       match=_msg("Printer may not write learner.cbstate.thing.n")):
        seen.thing.n = 5
    assert raw.thing.n == 1


def test_a_callable_object_under_read_can_be_called_but_not_changed():
    seen, raw = _state_view(double=_Stateful())
    assert seen.double(2) == 4
    with pytest.raises(fp.ProtectedError, match=_msg("may not write learner.cbstate.double.calls")):
        seen.double.calls = 99
    assert raw.double.calls == 0


def test_a_defaultdict_under_read_is_not_filled_by_reading():
    seen, raw = _state_view(counts=collections.defaultdict(list, a=[1]))
    assert list(seen.counts["b"]) == []
    assert "b" not in raw.counts
    with pytest.raises(fp.ProtectedError):
        seen.counts["a"].append(2)
    assert dict(raw.counts) == {"a": [1]}


def test_an_iterator_under_read_cannot_be_advanced():
    iterator = iter([1, 2])
    seen, _ = _state_view(iterator=iterator)
    with pytest.raises(fp.ProtectedError, match=_msg(
        "Printer may not write learner.cbstate.iterator: add it to stateaccess(Printer) (it has "
        "read access; advancing an iterator changes it there)"
    )):
        next(seen.iterator)
    assert next(iterator) == 1


def test_a_data_loader_under_read_can_be_measured_and_iterated():
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(4.0)),
                                         batch_size=2)
    seen, _ = _state_view(loader=loader)
    assert len(seen.loader) == 2
    assert [b[0].tolist() for b in seen.loader] == [[0.0, 1.0], [2.0, 3.0]]
    with pytest.raises(fp.ProtectedError):
        seen.loader.batch_size = 3


def test_immutable_values_under_read_come_back_as_they_are():
    path, device, when = pathlib.Path("a"), torch.device("cpu"), datetime.timedelta(1)
    seen, _ = _state_view(path=path, device=device, when=when, number=np.float32(1.5),
                          pair=("a", 1), shape=torch.Size([2, 3]))
    assert seen.path is path and seen.device is device and seen.when is when
    assert seen.number == np.float32(1.5)
    assert seen.shape == torch.Size([2, 3]) and type(seen.shape) is torch.Size
    assert hash(seen.pair) == hash(("a", 1))
