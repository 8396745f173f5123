"""The Learner: the forms its arguments take, default callbacks, groups, and changing callbacks."""

import re

import attrs
import pytest
import torch

import fluxpy as fp
from fluxpy.testing import CoeffModel, test_batches, test_learner

TRAIN, VALID = fp.TrainingPhase(), fp.ValidationPhase()
DATA = test_batches(2)


def learner_with(**kwargs):
    kwargs.setdefault("use_default_callbacks", False)
    return fp.Learner(CoeffModel(1.0), torch.nn.functional.l1_loss, **kwargs)


@attrs.define
class InitCount(fp.Callback):
    """Counts its `init` calls and the epochs it sees."""

    inits: int = 0
    epochs: int = 0

    def init(self, learner):
        self.inits += 1


@fp.on.dispatch
def _initcount_epoch_end(event: fp.EpochEnd, phase: fp.Phase, cb: InitCount, learner):
    cb.epochs += 1


@attrs.define
class Bundle(fp.Callback):
    """A group: its members are what `subcallbacks` returns."""

    members: list = attrs.Factory(list)

    def subcallbacks(self):
        return tuple(self.members)


@attrs.define
class CountingBundle(fp.Callback):
    """A group with a handler of its own."""

    inner: list = attrs.Factory(list)
    epochs: int = 0

    def subcallbacks(self):
        return tuple(self.inner)


@fp.on.dispatch
def _bundle_epoch_end(event: fp.EpochEnd, phase: fp.Phase, cb: CountingBundle, learner):
    cb.epochs += 1


class CountingExecutor(fp.SerialExecutor):
    """Serial, and remembers the name of every handler it ran."""

    def __init__(self):
        self.ran = []

    def run(self, event, phase, handlers):
        self.ran.extend(h.name for h in handlers)
        super().run(event, phase, handlers)


# -- data --------------------------------------------------------------------------------------


def test_data_as_a_pair():
    learner = learner_with(data=(DATA, None))
    assert learner.data.training is DATA
    assert learner.data.validation is None
    assert learner.fit(1).epochs == 1


def test_data_as_a_mapping():
    learner = learner_with(data={"training": DATA, "validation": DATA})
    assert (learner.data.training, learner.data.validation) == (DATA, DATA)


def test_data_as_an_object_with_training_and_validation():
    @attrs.define
    class Loaders:
        training: list
        validation: list

    learner = learner_with(data=Loaders(DATA, DATA[:1]))
    assert (learner.data.training, learner.data.validation) == (DATA, DATA[:1])


def test_data_given_to_fit_replaces_the_learners():
    learner = learner_with(callbacks=[fp.Recorder()], data=(DATA, DATA))
    learner.fit(1, data=(DATA[:1], None))
    assert learner.data.training == DATA[:1]
    assert learner.cbstate.history[TRAIN].steps == 1
    assert VALID not in learner.cbstate.history


def test_missing_data_is_a_clear_error_at_fit():
    with pytest.raises(ValueError, match=r"fit has no data: pass data=\(train, valid\)"):
        learner_with().fit(1)


def test_data_mapping_with_unknown_keys_is_an_error():
    with pytest.raises(TypeError, match=r"keys \['train'\]; expected 'training'"):
        learner_with(data={"train": DATA})


def test_data_of_an_unknown_kind_is_an_error():
    with pytest.raises(TypeError, match="data of type int is not understood"):
        learner_with(data=3)


# -- optimizer ---------------------------------------------------------------------------------


def test_optimizer_instance_is_used_as_it_is():
    model = CoeffModel(1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    learner = fp.Learner(model, torch.nn.functional.l1_loss, optimizer=optimizer)
    assert learner.optimizer is optimizer


def test_optimizer_factory_gets_the_model_parameters():
    learner = learner_with(optimizer=lambda params: torch.optim.SGD(params, lr=0.25))
    assert isinstance(learner.optimizer, torch.optim.SGD)
    assert learner.optimizer.param_groups[0]["params"] == [learner.model.coeff]
    assert learner.optimizer.param_groups[0]["lr"] == 0.25


def test_optimizer_defaults_to_adam_with_lr_1e_3():
    learner = learner_with()
    assert type(learner.optimizer) is torch.optim.Adam
    assert learner.optimizer.param_groups[0]["lr"] == 1e-3


def test_optimizer_factory_returning_something_else_is_an_error():
    with pytest.raises(TypeError, match=r"factory returned list, not a torch\.optim\.Optimizer"):
        learner_with(optimizer=lambda params: list(params))


def test_optimizer_of_the_wrong_kind_is_an_error():
    with pytest.raises(TypeError, match="optimizer must be a torch Optimizer, a factory"):
        learner_with(optimizer="adam")


# -- device, model, loss, executor -------------------------------------------------------------


def test_device_none_picks_the_cpu_here_and_adds_no_todevice():
    learner = fp.Learner(CoeffModel(1.0), torch.nn.functional.l1_loss)
    assert learner.device == torch.device("cpu")
    assert learner.get_callback(fp.ToDevice) is None


def test_device_accepts_what_torch_device_accepts():
    assert learner_with(device=torch.device("cpu")).device == torch.device("cpu")
    assert learner_with(device="cpu").device == torch.device("cpu")


def test_model_that_is_not_a_module_is_an_error():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, not function"):
        fp.Learner(lambda x: x, torch.nn.functional.l1_loss)


def test_loss_that_is_not_callable_is_an_error():
    with pytest.raises(TypeError, match=r"loss_fn must be callable as loss_fn\(preds, ys\)"):
        fp.Learner(CoeffModel(1.0), "l1")


def test_executor_that_is_not_an_executor_is_an_error():
    with pytest.raises(TypeError, match=r"executor must be an fp.Executor .* not str"):
        learner_with(executor="threads")


# -- default callbacks -------------------------------------------------------------------------


DEFAULTS = [fp.Recorder, fp.Metrics, fp.ProgressPrinter, fp.MetricsPrinter, fp.StopOnNaNLoss]


def test_default_callbacks_are_added():
    learner = learner_with(use_default_callbacks=True)
    assert [type(c) for c in learner.callbacks] == DEFAULTS


def test_a_given_default_is_not_added_twice():
    metrics = fp.Metrics(lambda preds, ys: preds.mean())
    learner = learner_with(use_default_callbacks=True, callbacks=[metrics])
    assert [c for c in learner.callbacks if isinstance(c, fp.Metrics)] == [metrics]
    assert len(learner.callbacks) == 5


def test_no_defaults_when_turned_off():
    assert learner_with(use_default_callbacks=False).callbacks == ()


# -- callback groups ---------------------------------------------------------------------------


def test_groups_are_flattened_depth_first_after_the_group():
    recorder, metrics = fp.Recorder(), fp.Metrics()
    inner = CountingBundle([metrics])
    outer = Bundle([recorder, inner])
    learner = learner_with(callbacks=[outer])
    assert learner.callbacks == (outer, recorder, inner, metrics)


def test_groups_remember_where_each_callback_came_from():
    recorder, metrics = fp.Recorder(), fp.Metrics()
    inner = CountingBundle([metrics])
    outer = Bundle([recorder, inner])
    learner = learner_with(callbacks=[outer])
    assert learner.groups[id(recorder)] is outer
    assert learner.groups[id(inner)] is outer
    assert learner.groups[id(metrics)] is inner
    assert id(outer) not in learner.groups


def test_group_with_its_own_handler_runs_it_and_its_members():
    group = CountingBundle([fp.Recorder()])
    learner = learner_with(callbacks=[group], data=(DATA, DATA))
    learner.fit(2)
    assert group.epochs == 4
    assert learner.cbstate.history[TRAIN].epochs == 2


def test_group_members_get_init():
    member = InitCount()
    learner_with(callbacks=[Bundle([Bundle([member])])])
    assert member.inits == 1


def test_explain_shows_the_group_of_each_callback():
    learner = learner_with(callbacks=[Bundle([fp.Recorder(), CountingBundle([fp.Metrics()])])])
    lines = {line.split()[0]: line for line in str(fp.explain(learner)).splitlines()[1:5]}
    assert lines["Recorder"].endswith("from group Bundle")
    assert lines["CountingBundle"].endswith("from group Bundle")
    assert lines["Metrics"].endswith("from group CountingBundle")
    assert "from group" not in lines["Bundle"]


def test_group_member_counts_as_a_given_default():
    learner = learner_with(use_default_callbacks=True, callbacks=[Bundle([fp.Recorder()])])
    assert sum(isinstance(c, fp.Recorder) for c in learner.callbacks) == 1


def test_a_callbacks_attribute_does_not_make_a_group():
    @attrs.define
    class Notifier(fp.Callback):
        """Calls its `callbacks` (plain functions) at the end of each epoch."""

        callbacks: list = attrs.Factory(list)

    notifier = Notifier([print, len])
    learner = learner_with(callbacks=[notifier, fp.Recorder()])
    assert [type(c) for c in learner.callbacks] == [Notifier, fp.Recorder]
    assert learner.groups == {}


def test_a_callbacks_attribute_holding_callbacks_is_a_warning_naming_the_fix():
    @attrs.define
    class OldStyleGroup(fp.Callback):
        callbacks: list = attrs.Factory(list)

    with pytest.warns(UserWarning, match=re.escape(
        "OldStyleGroup has a `callbacks` attribute holding callbacks, which the learner does "
        "not add: to make OldStyleGroup a group, override subcallbacks() to return them."
    )):
        learner = learner_with(callbacks=[OldStyleGroup([fp.Recorder()])])
    assert [type(c) for c in learner.callbacks] == [OldStyleGroup]


def test_a_callback_has_no_subcallbacks_by_default():
    assert fp.Recorder().subcallbacks() == ()


def test_subcallbacks_that_is_not_a_tuple_or_list_is_an_error_naming_the_group():
    class Broken(fp.Callback):
        def subcallbacks(self):
            return None

    with pytest.raises(fp.CallbackDeclarationError, match=re.escape(
            "Broken.subcallbacks() returned None: return a tuple of the callbacks in the group")):
        learner_with(callbacks=[Broken()])


def test_non_callback_in_a_group_is_an_error_naming_the_group():
    with pytest.raises(fp.CallbackDeclarationError, match=r"'oops' is not a callback.*in Bundle"):
        learner_with(callbacks=[Bundle([fp.Recorder(), "oops"])])


def test_the_same_callback_twice_is_an_error():
    recorder = fp.Recorder()
    with pytest.raises(fp.CallbackDeclarationError, match="Recorder was given twice"):
        learner_with(callbacks=[recorder, Bundle([recorder])])


# -- changing callbacks on a built learner -----------------------------------------------------


def test_add_callback_inits_it_and_it_runs():
    learner = learner_with(data=(DATA, DATA))
    added = InitCount()
    learner.add_callback(added)
    learner.fit(1)
    assert (added.inits, added.epochs) == (1, 2)


def test_add_callback_does_not_init_the_others_again():
    first = InitCount()
    learner = learner_with(callbacks=[first])
    learner.add_callback(fp.Recorder())
    assert first.inits == 1


def test_set_callbacks_replaces_all_callbacks_at_once():
    kept, gone, new = InitCount(), fp.Recorder(), fp.Metrics()
    learner = learner_with(callbacks=[kept, gone])
    learner.set_callbacks([new, kept])
    assert learner.callbacks == (new, kept)
    assert learner.given_callbacks == (new, kept)
    assert kept.inits == 1


def test_set_callbacks_does_not_init_a_callback_the_learner_had_before():
    first = InitCount()
    learner = learner_with(callbacks=[first])
    learner.set_callbacks([fp.Recorder()])
    learner.set_callbacks([first])
    assert first.inits == 1


def test_set_callbacks_refused_by_the_graph_leaves_the_callbacks_as_they_were():
    recorder = fp.Recorder()
    learner = learner_with(callbacks=[recorder])
    with pytest.raises(fp.MissingStateError) as raised:
        learner.set_callbacks([fp.MetricsPrinter()])
    assert raised.value.__notes__ == [
        "set_callbacks(...) was refused; the learner's callbacks are as they were"]
    assert learner.callbacks == (recorder,)


def test_set_callbacks_during_fit_applies_at_the_next_epoch_boundary():
    log = Log()
    learner = learner_with(data=(DATA, DATA), callbacks=[
        Changer(fp.StepEnd, 1, lambda learner: learner.set_callbacks([log]))])
    learner.fit(1)
    assert log.seen[:3] == ["init", "FitBegin Phase", "EpochBegin ValidationPhase"]
    assert learner.callbacks == (log,)


def test_fit_counts_an_epoch_stopped_at_the_last_phases_epoch_end():
    stop = Changer(fp.EpochEnd, 2, lambda learner: _raise(fp.CancelFitException("done")))
    assert learner_with(data=(DATA, DATA), callbacks=[stop]).fit(3).epochs == 1
    stop = Changer(fp.EpochEnd, 1, lambda learner: _raise(fp.CancelFitException("done")))
    assert learner_with(data=(DATA, DATA), callbacks=[stop]).fit(3).epochs == 0


def _raise(exc):
    raise exc


def test_add_callback_adds_a_group_with_its_members():
    learner = learner_with(data=(DATA, DATA))
    member = InitCount()
    learner.add_callback(Bundle([member, fp.Recorder()]))
    learner.fit(1)
    assert member.inits == 1
    assert learner.cbstate.history[TRAIN].steps == 2


def test_add_callback_rechecks_the_graph_and_leaves_the_learner_unchanged_on_error():
    learner = learner_with(callbacks=[fp.Recorder()])
    with pytest.raises(fp.MissingStateError, match=r"MetricsPrinter reads cbstate\.metricsepoch"):
        learner.add_callback(fp.MetricsPrinter())
    assert [type(c) for c in learner.callbacks] == [fp.Recorder]


def test_add_callback_keeps_the_users_executor():
    executor = CountingExecutor()
    learner = learner_with(executor=executor, data=(DATA, None))
    learner.add_callback(fp.Recorder())
    learner.fit(1)
    assert learner.executor is executor
    assert "Recorder" in executor.ran


def test_remove_callback_by_object_removes_its_handlers():
    counter = InitCount()
    learner = learner_with(callbacks=[fp.Recorder(), counter], data=(DATA, DATA))
    assert learner.remove_callback(counter) is counter
    learner.fit(1)
    assert counter.epochs == 0
    assert "InitCount" not in fp.explain(learner)


def test_remove_callback_by_type_returns_it():
    recorder = fp.Recorder()
    learner = learner_with(callbacks=[recorder, InitCount()])
    assert learner.remove_callback(fp.Recorder) is recorder
    assert [type(c) for c in learner.callbacks] == [InitCount]


def test_removed_callback_is_gone_from_cached_plans():
    executor = CountingExecutor()
    counter = InitCount()
    learner = learner_with(callbacks=[counter], executor=executor, data=(DATA, None))
    learner.fit(1)
    assert "InitCount" in executor.ran
    learner.remove_callback(counter)
    executor.ran.clear()
    learner.fit(1)
    assert "InitCount" not in executor.ran


def test_remove_callback_that_others_need_is_an_error():
    learner = learner_with(use_default_callbacks=True)
    with pytest.raises(fp.MissingStateError, match=r"reads cbstate\.metricsstep"):
        learner.remove_callback(fp.Metrics)
    assert learner.get_callback(fp.Metrics) is not None


def test_remove_callback_that_is_not_there_lists_the_callbacks():
    learner = learner_with(callbacks=[fp.Recorder()])
    with pytest.raises(ValueError, match=r"no callback .*Metrics.* \(Recorder\)"):
        learner.remove_callback(fp.Metrics)


def test_replace_callback_keeps_the_position_and_inits_the_new_one():
    old, new = InitCount(), InitCount()
    recorder = fp.Recorder()
    learner = learner_with(callbacks=[old, recorder])
    assert learner.replace_callback(old, new) is old
    assert learner.callbacks == (new, recorder)
    assert (old.inits, new.inits) == (1, 1)


def test_replace_callback_by_type():
    learner = learner_with(use_default_callbacks=True)
    quiet = fp.ProgressPrinter(enabled=False)
    learner.replace_callback(fp.ProgressPrinter, quiet)
    assert learner.get_callback(fp.ProgressPrinter) is quiet
    assert len(learner.callbacks) == 5


# -- changing callbacks during fit: checked at the call, applied at the next epoch boundary ----


@attrs.define(eq=False)
class Log(fp.Callback):
    """Records `init` and every event it sees, as `"Event Phase"` strings."""

    seen: list = attrs.Factory(list)

    def init(self, learner):
        self.seen.append("init")


@fp.on.dispatch
def _log_event(event: fp.Event, phase: fp.Phase, cb: Log, learner):
    cb.seen.append(f"{type(event).__name__} {type(phase).__name__}")


@attrs.define(eq=False)
class Changer(fp.UnsafeCallback):
    """Calls `change(learner)` at the `at`-th firing of `event` (in any phase)."""

    event: type
    at: int
    change: object
    fired: int = 0
    error: Exception | None = None


@fp.on.dispatch
def _changer_event(event: fp.Event, phase: fp.Phase, cb: Changer, learner):
    if isinstance(event, cb.event):
        cb.fired += 1
        if cb.fired == cb.at:
            try:
                cb.change(learner)
            except fp.CallbackGraphError as error:
                cb.error = error


def test_metrics_added_mid_epoch_joins_at_the_next_epoch():
    metrics = fp.Metrics()
    learner = learner_with(data=(DATA, DATA), callbacks=[
        fp.Recorder(), Changer(fp.StepEnd, 1, lambda learner: learner.add_callback(metrics))])
    assert learner.fit(2).epochs == 2
    assert learner.get_callback(fp.Metrics) is metrics
    epochs = learner.cbstate.metricsepoch
    assert (len(epochs[TRAIN]["loss"]), len(epochs[VALID]["loss"])) == (1, 2)


def test_a_callback_added_during_fit_gets_init_fit_begin_and_whole_epochs():
    log = Log()
    learner = learner_with(data=(DATA, DATA), callbacks=[
        Changer(fp.StepBegin, 2, lambda learner: learner.add_callback(log))])
    learner.fit(1)
    assert log.seen[:3] == ["init", "FitBegin Phase", "EpochBegin ValidationPhase"]
    assert log.seen[-2:] == ["EpochEnd ValidationPhase", "FitEnd Phase"]
    assert log.seen.count("StepEnd ValidationPhase") == len(DATA)
    assert not any("TrainingPhase" in seen for seen in log.seen)


def test_a_callback_removed_during_fit_gets_fit_end_at_the_boundary_and_nothing_after():
    log = Log()
    learner = learner_with(data=(DATA, DATA), callbacks=[
        log, Changer(fp.StepEnd, 1, lambda learner: learner.remove_callback(log))])
    learner.fit(2)
    assert log.seen[-2:] == ["EpochEnd TrainingPhase", "FitEnd Phase"]
    assert log.seen.count("FitEnd Phase") == 1
    assert log not in learner.callbacks


def test_a_graph_error_from_a_change_during_fit_is_raised_at_the_call():
    changer = Changer(fp.StepEnd, 1, lambda learner: learner.add_callback(fp.MetricsPrinter()))
    learner = learner_with(data=(DATA, DATA), callbacks=[fp.Recorder(), changer])
    assert learner.fit(2).epochs == 2
    assert isinstance(changer.error, fp.MissingStateError)
    assert changer.error.__notes__ == [
        "add_callback(MetricsPrinter()) was refused; the learner's callbacks are as they were"]
    assert [type(c) for c in learner.callbacks] == [fp.Recorder, Changer]


def test_changes_during_fit_wait_for_the_boundary_and_compose_in_order():
    log, first, second = Log(), fp.Recorder(), fp.Recorder()

    def change(learner):
        learner.add_callback(log)
        learner.replace_callback(first, second)
        assert learner.callbacks == (first, changer)  # nothing applied yet
        learner.remove_callback(log)

    changer = Changer(fp.StepEnd, 1, change)
    learner = learner_with(data=(DATA, None), callbacks=[first, changer])
    learner.fit(2)
    assert learner.callbacks == (second, changer)
    assert log.seen == []
    assert learner.cbstate.history[TRAIN].epochs == 2


def test_a_change_at_the_last_epoch_end_applies_when_fit_ends_for_the_next_fit():
    log = Log()
    learner = learner_with(data=(DATA, None), callbacks=[
        Changer(fp.EpochEnd, 2, lambda learner: learner.add_callback(log))])
    learner.fit(2)
    assert log.seen == ["init"]
    assert log in learner.callbacks
    learner.fit(1)
    assert log.seen[1:3] == ["FitBegin Phase", "EpochBegin TrainingPhase"]


def test_a_change_before_an_error_is_still_applied():
    log = Log()

    def change_then_fail(learner):
        learner.add_callback(log)
        raise RuntimeError("boom")

    learner = learner_with(data=(DATA, None), callbacks=[
        Changer(fp.StepEnd, 1, change_then_fail)])
    with pytest.raises(RuntimeError, match="boom"):
        learner.fit(1)
    assert log in learner.callbacks
    assert log.seen == ["init"]


def test_a_failing_fit_end_still_ends_the_fit_for_changes():
    def fail(learner):
        raise RuntimeError("cannot close")

    log = Log()
    learner = learner_with(data=(DATA, None), callbacks=[
        Changer(fp.StepEnd, 1, lambda learner: learner.add_callback(log)),
        fp.CustomCallback(fail, fp.FitEnd)])
    with pytest.raises(RuntimeError, match="cannot close"):
        learner.fit(1)
    learner.remove_callback(log)  # applied at once: no fit is running
    assert log not in learner.callbacks


def test_get_callback_finds_group_members_and_returns_none_when_absent():
    metrics = fp.Metrics()
    learner = learner_with(callbacks=[Bundle([metrics])])
    assert learner.get_callback(fp.Metrics) is metrics
    assert learner.get_callback(fp.Recorder) is None


# -- fit ---------------------------------------------------------------------------------------


def test_fit_accumulates_history_over_calls():
    learner = test_learner(fp.Recorder())
    learner.fit(2)
    learner.fit(3)
    assert learner.cbstate.history[TRAIN].epochs == 5


@pytest.mark.parametrize("n", [-1, 1.5, True])
def test_fit_needs_a_nonnegative_int(n):
    with pytest.raises(ValueError, match=r"n_epochs must be an int >= 0"):
        test_learner().fit(n)


def test_fit_zero_epochs_fires_only_fit_begin_and_fit_end():
    seen = []
    test_learner(fp.CustomCallback(lambda learner: seen.append(1))).fit(0)
    assert seen == [1, 1]


def test_rng_is_a_declaration_and_reading_it_says_so():
    class Dice(fp.Callback):
        pass

    @fp.stateaccess.dispatch
    def _dice_access(cb: Dice):
        return fp.Access(rng=fp.Write())

    learner = learner_with(callbacks=[Dice()])
    message = re.escape("learner.rng holds nothing to read or set: `rng=fp.Write()` in "
                        "stateaccess declares that a callback draws random numbers")
    with pytest.raises(AttributeError, match=message):
        _ = learner.rng
    with pytest.raises(AttributeError, match=message):
        _ = learner.view(learner.get_callback(Dice)).rng
