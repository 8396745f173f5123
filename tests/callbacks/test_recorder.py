"""Recorder: epochs, steps and wall time per phase in learner.cbstate.history."""

import fluxpy as fp
from fluxpy.callbacks.recorder import History
from fluxpy.testing import test_batches, test_learner

TRAIN, VALID = fp.TrainingPhase(), fp.ValidationPhase()


def cancel(learner):
    raise fp.CancelStepException()


def test_history_is_there_from_init():
    learner = test_learner(fp.Recorder())
    assert learner.cbstate.history == {}


def test_counts_epochs_and_steps_per_phase():
    learner = test_learner(fp.Recorder(), n_batches=4)
    learner.fit(3, data=(test_batches(4), test_batches(2)))
    train, valid = learner.cbstate.history[TRAIN], learner.cbstate.history[VALID]
    assert (train.epochs, train.steps, train.steps_epoch) == (3, 12, 4)
    assert (valid.epochs, valid.steps, valid.steps_epoch) == (3, 6, 2)


def test_keeps_one_wall_time_per_completed_epoch():
    learner = test_learner(fp.Recorder(), n_batches=2)
    learner.fit(2)
    times = learner.cbstate.history[TRAIN].epoch_times
    assert len(times) == 2
    assert all(t >= 0 for t in times)


def test_history_accumulates_over_fit_calls_and_steps_epoch_restarts():
    learner = test_learner(fp.Recorder(), n_batches=4)
    learner.fit(1)
    learner.fit(2, data=(test_batches(3), None))
    train = learner.cbstate.history[TRAIN]
    assert (train.epochs, train.steps, train.steps_epoch) == (3, 10, 3)


def test_cancelled_steps_are_not_counted():
    learner = test_learner(fp.Recorder(), n_batches=4)
    cancel_all = fp.CustomCallback(cancel, fp.StepBegin, fp.ValidationPhase)
    learner.add_callback(cancel_all)
    learner.fit(2)
    valid = learner.cbstate.history[VALID]
    assert (valid.epochs, valid.steps, valid.steps_epoch) == (2, 0, 0)
    assert learner.cbstate.history[TRAIN].steps == 8


def test_epoch_cut_short_counts_as_an_epoch_with_its_steps():
    def stop_epoch(learner):
        raise fp.CancelEpochException()

    learner = test_learner(fp.Recorder(), fp.throttle(
        fp.CustomCallback(stop_epoch, fp.StepEnd, fp.TrainingPhase), fp.StepEnd, every=3))
    learner.fit(1)
    train = learner.cbstate.history[TRAIN]
    assert (train.epochs, train.steps, train.steps_epoch) == (1, 3, 3)


def test_declares_that_it_writes_history():
    assert fp.stateaccess(fp.Recorder()) == fp.Access(cbstate=fp.Access(history=fp.Write()))


def test_a_phase_that_has_not_run_reads_as_an_empty_history_and_is_not_added():
    learner = test_learner(fp.Recorder(), n_batches=2)
    assert learner.cbstate.history[TRAIN] == History(epochs=0, steps=0, steps_epoch=0)
    learner.fit(1, data=(test_batches(2), None))
    history = learner.cbstate.history
    valid = history[VALID]
    assert (valid.epochs, valid.steps, valid.steps_epoch, valid.epoch_times) == (0, 0, 0, [])
    assert VALID not in history
    assert list(history) == [TRAIN]
    assert history.get(VALID) is None


class ReadsHistory(fp.Callback):
    """Reads the validation history at FitEnd through its view."""

    seen = None


@fp.on.dispatch
def _reads_history_fit_end(event: fp.FitEnd, phase: fp.Phase, cb: ReadsHistory, learner):
    history = learner.cbstate.history
    cb.seen = (history[VALID].steps, VALID in history, history.get(VALID), len(history))


@fp.stateaccess.dispatch
def _reads_history_access(cb: ReadsHistory):
    return fp.Access(cbstate=fp.Access(history=fp.Read()))


def test_a_phase_that_has_not_run_reads_as_empty_through_a_read_only_view():
    reader = ReadsHistory()
    learner = test_learner(fp.Recorder(), reader, n_batches=2)
    learner.fit(1, data=(test_batches(2), None))
    assert reader.seen == (0, False, None, 1)


def test_an_empty_history_read_is_a_copy_that_records_nothing():
    learner = test_learner(fp.Recorder())
    learner.cbstate.history[VALID].steps += 5
    assert learner.cbstate.history[VALID].steps == 0
    assert VALID not in learner.cbstate.history


def test_a_loaded_history_still_reads_unrun_phases_as_empty(tmp_path):
    learner = test_learner(fp.Recorder(), n_batches=2)
    learner.fit(1, data=(test_batches(2), None))
    fp.save_checkpoint(learner, tmp_path / "c.pt")
    resumed = test_learner(fp.Recorder(), n_batches=2)
    fp.load_checkpoint(resumed, tmp_path / "c.pt")
    assert resumed.cbstate.history[TRAIN].epochs == 1
    assert resumed.cbstate.history[VALID].epochs == 0
