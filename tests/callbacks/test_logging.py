"""LogMetrics, LogHyperParams, LogHistograms and their TensorBoard and CSV backends."""

import csv
import re
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import fluxpy as fp
import fluxpy.callbacks.logging as logging_module
from fluxpy.testing import test_learner

TRAINING, VALIDATION = fp.TrainingPhase(), fp.ValidationPhase()


class ListBackend(fp.LogBackend):
    """Keeps every call, as a user's own backend would."""

    def __init__(self):
        self.scalars, self.histograms, self.calls = [], [], []

    def log_scalar(self, name, value, *, step, phase, axis):
        self.scalars.append((axis, step, phase, name, value))

    def log_histogram(self, name, values, *, step, phase):
        self.histograms.append((step, name, values.clone()))

    def flush(self):
        self.calls.append("flush")

    def close(self):
        self.calls.append("close")


def learner_with(*callbacks, **kwargs):
    return test_learner(*callbacks, fp.Recorder(), fp.Metrics(), **kwargs)


def events(logdir):
    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    accumulator.Reload()
    return accumulator


def rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def step_losses(into):
    return fp.CustomCallback(lambda lr: into.append(lr.batch.loss.item()), fp.StepEnd,
                             fp.TrainingPhase, access=fp.Access(batch=fp.Access(loss=fp.Read())))


# -- LogMetrics -----------------------------------------------------------------------------------


def test_tensorboard_event_files_hold_the_epoch_metrics(tmp_path):
    learner = learner_with(fp.LogMetrics(fp.TensorBoardBackend(tmp_path / "tb")))
    learner.fit(2)
    for phase in (TRAINING, VALIDATION):
        logged = events(tmp_path / "tb" / f"{phase}-epoch").Scalars(f"loss/{phase}")
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx(
            learner.cbstate.metricsepoch[phase]["loss"], rel=1e-6)


def test_csv_holds_the_epoch_metrics_with_a_header_once(tmp_path):
    learner = learner_with(fp.LogMetrics(fp.CSVBackend(tmp_path / "log.csv")))
    learner.fit(2)
    table = rows(tmp_path / "log.csv")
    assert table[0] == ["axis", "step", "phase", "name", "value"]
    train = learner.cbstate.metricsepoch[TRAINING]["loss"]
    valid = learner.cbstate.metricsepoch[VALIDATION]["loss"]
    assert table[1:] == [
        ["epoch", "1", "TrainingPhase", "loss", repr(train[0])],
        ["epoch", "1", "ValidationPhase", "loss", repr(valid[0])],
        ["epoch", "2", "TrainingPhase", "loss", repr(train[1])],
        ["epoch", "2", "ValidationPhase", "loss", repr(valid[1])],
    ]


def test_step_values_every_k_steps_are_the_step_losses(tmp_path):
    losses, backend = [], ListBackend()
    learner = learner_with(fp.LogMetrics(backend, every=4), step_losses(losses))
    learner.fit(2)
    logged = [(step, value) for axis, step, phase, name, value in backend.scalars
              if axis == "step" and phase == "TrainingPhase"]
    assert [step for step, _ in logged] == [0, 4, 8, 12, 16, 20, 24, 28]
    assert [value for _, value in logged] == pytest.approx(losses[::4], rel=1e-6)


def test_a_second_fit_logs_only_new_epochs_and_appends(tmp_path):
    backend = fp.CSVBackend(tmp_path / "log.csv")
    learner = learner_with(fp.LogMetrics(backend))
    learner.fit(1)
    learner.fit(1)
    table = rows(tmp_path / "log.csv")
    assert table.count(["axis", "step", "phase", "name", "value"]) == 1
    assert [(r[0], r[1], r[2]) for r in table[1:]] == [
        ("epoch", "1", "TrainingPhase"), ("epoch", "1", "ValidationPhase"),
        ("epoch", "2", "TrainingPhase"), ("epoch", "2", "ValidationPhase")]


def test_step_values_of_each_phase_go_to_their_own_tensorboard_run(tmp_path):
    learner_with(fp.LogMetrics(fp.TensorBoardBackend(tmp_path), every=4)).fit(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "TrainingPhase-epoch", "TrainingPhase-step", "ValidationPhase-epoch",
        "ValidationPhase-step"]
    logged = events(tmp_path / "ValidationPhase-step").Scalars("loss/ValidationPhase/step")
    assert [e.step for e in logged] == [0, 4, 8, 12]


def test_step_values_need_the_recorder():
    with pytest.raises(fp.MissingStateError, match=r"reads cbstate.history.*add Recorder\(\)"):
        test_learner(fp.LogMetrics(ListBackend(), every=2), fp.Metrics())


# -- LogHyperParams -------------------------------------------------------------------------------


def test_hyperparameters_are_logged_as_the_update_used_them():
    backend = ListBackend()

    steps = []

    def set_lr(learner):  # a hand-made schedule: lr = 0.01 * (step + 1)
        steps.append(1)
        for group in learner.optimizer.param_groups:
            group["lr"] = 0.01 * len(steps)

    schedule = fp.CustomCallback(set_lr, fp.StepBegin, fp.TrainingPhase,
                                 access=fp.Access(optimizer=fp.Write()))
    learner = learner_with(fp.LogHyperParams(backend, every=2), schedule, n_batches=4,
                           optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9,
                                                                weight_decay=1e-4))
    learner.fit(1)
    assert backend.scalars == [
        ("step", 0, "TrainingPhase", "lr", 0.01), ("step", 0, "TrainingPhase", "momentum", 0.9),
        ("step", 0, "TrainingPhase", "weight_decay", 1e-4),
        ("step", 2, "TrainingPhase", "lr", 0.03), ("step", 2, "TrainingPhase", "momentum", 0.9),
        ("step", 2, "TrainingPhase", "weight_decay", 1e-4),
    ]


def test_adam_betas_and_several_groups_are_named_apart():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    optimizer = torch.optim.Adam([{"params": model[0].parameters(), "lr": 1e-3},
                                  {"params": model[1].parameters(), "lr": 1e-4}],
                                 betas=(0.8, 0.99))
    assert logging_module.hyperparameters(optimizer.param_groups) == {
        "lr/group0": 1e-3, "beta1/group0": 0.8, "beta2/group0": 0.99, "weight_decay/group0": 0.0,
        "lr/group1": 1e-4, "beta1/group1": 0.8, "beta2/group1": 0.99, "weight_decay/group1": 0.0,
    }


def test_every_none_logs_hyperparameters_once_per_training_epoch():
    backend = ListBackend()
    learner = learner_with(fp.LogHyperParams(backend, every=None), n_batches=4)
    learner.fit(2)
    assert [(step, name) for _, step, _, name, _ in backend.scalars] == [
        (3, "lr"), (3, "momentum"), (3, "weight_decay"),
        (7, "lr"), (7, "momentum"), (7, "weight_decay")]


# -- LogHistograms --------------------------------------------------------------------------------


def test_histograms_of_the_parameters_every_k_training_steps(tmp_path):
    coeffs = []
    seen = fp.CustomCallback(lambda lr: coeffs.append(lr.model.coeff.item()), fp.StepEnd,
                             fp.TrainingPhase, access=fp.Access(model=fp.Read()))
    learner = learner_with(fp.LogHistograms(fp.TensorBoardBackend(tmp_path), every=4), seen,
                           n_batches=8)
    learner.fit(1)
    logged = events(tmp_path / "TrainingPhase-step").Histograms("params/coeff")
    assert [e.step for e in logged] == [0, 4]
    assert [e.histogram_value.max for e in logged] == pytest.approx(coeffs[::4], rel=1e-6)


# -- backends -------------------------------------------------------------------------------------


def test_backends_are_flushed_each_epoch_and_closed_at_fit_end():
    backend = ListBackend()
    learner = learner_with(fp.LogMetrics(backend))
    learner.fit(2)
    assert backend.calls == ["flush"] * 4 + ["close"]


def test_backends_are_closed_when_fit_fails(tmp_path):
    calls = []

    def loss_fn(preds, ys):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("loss failed")
        return torch.nn.functional.l1_loss(preds, ys)

    backend, csv_backend = ListBackend(), fp.CSVBackend(tmp_path / "log.csv")
    learner = learner_with(fp.LogMetrics(backend, csv_backend, every=1))
    learner.loss_fn = loss_fn
    with pytest.raises(RuntimeError, match="loss failed"):
        learner.fit(1)
    assert backend.calls == ["close"]
    assert [s[:2] for s in backend.scalars] == [("step", 0), ("step", 1)]  # the steps done
    assert csv_backend._file is None
    assert [r[:2] for r in rows(tmp_path / "log.csv")[1:]] == [["step", "0"], ["step", "1"]]


def test_csv_refuses_to_append_to_a_foreign_file(tmp_path):
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    backend = fp.CSVBackend(tmp_path / "other.csv")
    with pytest.raises(ValueError, match=r"other.csv exists and is not a log with columns "
                                         r"axis,step,phase,name,value; choose another path"):
        backend.log_scalar("loss", 1.0, step=1, phase="TrainingPhase", axis="epoch")


def test_loggers_need_logging_backends():
    with pytest.raises(TypeError, match=r"LogMetrics: 'runs' is not a logging backend"):
        fp.LogMetrics("runs")
    with pytest.raises(ValueError, match=r"LogHistograms\(\) needs at least one backend"):
        fp.LogHistograms()


def test_only_rank_zero_logs(monkeypatch, tmp_path):
    monkeypatch.setattr(logging_module, "is_rank_zero", lambda: False)
    backend = ListBackend()
    learner = learner_with(fp.LogMetrics(backend, every=1), fp.LogHyperParams(backend),
                           fp.LogHistograms(fp.TensorBoardBackend(tmp_path / "tb"), every=1))
    learner.fit(1)
    assert backend.scalars == [] and backend.calls == ["close", "close"]
    assert not (tmp_path / "tb").exists()


def test_step_logging_reads_values_once_per_epoch(host_reads):
    counts = []
    for n_batches in (4, 12):
        learner = learner_with(fp.LogMetrics(ListBackend(), every=1),
                               fp.LogHyperParams(ListBackend()), n_batches=n_batches)
        host_reads.clear()
        learner.fit(1)
        counts.append(len(host_reads))
    assert counts[0] == counts[1]


# -- resuming from a checkpoint: what was logged past it is dropped -------------------------


def resumable(folder, logs):
    tb, table = fp.TensorBoardBackend(logs / "tb"), fp.CSVBackend(logs / "log.csv")
    return test_learner(fp.Recorder(), fp.Metrics(), fp.LogMetrics(tb, table, every=4),
                        fp.LogHyperParams(tb, table, every=4), fp.LogHistograms(tb, every=4),
                        fp.Checkpointer(folder), n_batches=8)


@pytest.fixture(scope="module")
def resumed_logs(tmp_path_factory):
    """Epochs 1-3 logged, the run killed before epoch 3's checkpoint (so epoch 3 was trained
    differently: another learning rate), resumed from epoch 2 for epochs 3 and 4."""
    folder, logs = tmp_path_factory.mktemp("ckpt"), tmp_path_factory.mktemp("logs")
    first = resumable(folder, logs)
    first.fit(2)
    first.optimizer.param_groups[0]["lr"] = 0.5
    first.fit(1)
    (folder / "epoch-0003.pt").unlink()
    # TensorBoard reads a run's event files in the order of their names, which begin with the
    # second they were created in: a resumed run is a later process, so let a second pass.
    started = int(time.time())
    while int(time.time()) == started:
        time.sleep(0.05)
    second = resumable(folder, logs)
    fp.load_checkpoint(second, folder)
    second.fit(2)
    return logs, second


def test_a_resumed_csv_log_holds_each_epoch_and_step_once_with_the_resumed_values(resumed_logs):
    logs, learner = resumed_logs
    table = rows(logs / "log.csv")[1:]
    epochs = [(phase, int(step), float(value)) for axis, step, phase, name, value in table
              if axis == "epoch" and name == "loss"]
    assert epochs == [(str(phase), epoch + 1, value)
                      for epoch in range(4) for phase in (TRAINING, VALIDATION)
                      for value in [learner.cbstate.metricsepoch[phase]["loss"][epoch]]]
    for phase, steps in (("TrainingPhase", 32), ("ValidationPhase", 32)):
        logged = [int(step) for axis, step, p, name, _ in table
                  if axis == "step" and p == phase and name == "loss"]
        assert logged == list(range(0, steps, 4)), phase
    lrs = [(int(step), float(value)) for axis, step, _, name, value in table if name == "lr"]
    assert lrs == [(step, 1e-3) for step in range(0, 32, 4)]  # none of the killed run's 0.5


def test_a_resumed_tensorboard_log_holds_each_epoch_and_step_once(resumed_logs):
    logs, learner = resumed_logs
    for phase in (TRAINING, VALIDATION):
        logged = events(logs / "tb" / f"{phase}-epoch").Scalars(f"loss/{phase}")
        assert [e.step for e in logged] == [1, 2, 3, 4]
        assert [e.value for e in logged] == pytest.approx(
            learner.cbstate.metricsepoch[phase]["loss"], rel=1e-6)
        steps = events(logs / "tb" / f"{phase}-step").Scalars(f"loss/{phase}/step")
        assert [e.step for e in steps] == list(range(0, 32, 4))
    training = events(logs / "tb" / "TrainingPhase-step")
    assert [(e.step, e.value) for e in training.Scalars("lr/TrainingPhase/step")] == [
        (step, pytest.approx(1e-3)) for step in range(0, 32, 4)]
    assert [e.step for e in training.Histograms("params/coeff")] == list(range(0, 32, 4))


def test_csv_purge_drops_only_that_phase_and_axis_from_the_step_on(tmp_path):
    backend = fp.CSVBackend(tmp_path / "log.csv")
    for step in range(3):
        for phase in ("TrainingPhase", "ValidationPhase"):
            backend.log_scalar("loss", float(step), step=step, phase=phase, axis="step")
            backend.log_scalar("loss", float(step), step=step + 1, phase=phase, axis="epoch")
    backend.purge(1, phase="TrainingPhase", axis="step")
    backend.close()
    assert [r[:3] for r in rows(tmp_path / "log.csv")[1:]] == [
        ["step", "0", "TrainingPhase"], ["epoch", "1", "TrainingPhase"],
        ["step", "0", "ValidationPhase"], ["epoch", "1", "ValidationPhase"],
        ["epoch", "2", "TrainingPhase"],
        ["step", "1", "ValidationPhase"], ["epoch", "2", "ValidationPhase"],
        ["epoch", "3", "TrainingPhase"],
        ["step", "2", "ValidationPhase"], ["epoch", "3", "ValidationPhase"]]
    assert [p.name for p in tmp_path.iterdir()] == ["log.csv"]  # no temporary file left


# -- every=fp.Every(...): which steps and epochs are logged ---------------------------------------


def logged_steps(path, name, phase="TrainingPhase"):
    """The steps at which `name` was logged for `phase`, read back from a CSV log."""
    return [int(step) for axis, step, p, n, _ in rows(path)[1:]
            if axis == "step" and p == phase and n == name]


class FakeClock:
    """Returns the given times, one a call: the clock `Every(seconds=...)` reads."""

    def __init__(self, *times):
        self.times = iter(times)

    def __call__(self):
        return next(self.times)


# Read once per training step: logged at 0.0, then at the first step >= 1 s after the last.
STEP_TIMES = (0.0, 0.4, 1.1, 1.5, 2.2, 2.3, 2.4, 3.3)
SECONDS_LOGGED = [0, 2, 4, 7]


def training_only(learner):
    return [(TRAINING, learner.data.training)]


def test_log_metrics_every_steps_logs_every_kth_step_of_each_phase(tmp_path):
    logger = fp.LogMetrics(fp.CSVBackend(tmp_path / "log.csv"), every=fp.Every(steps=5))
    learner_with(logger, n_batches=8).fit(2)
    assert logger.every == fp.Every(steps=5) and str(logger.every) == "every 5 steps"
    for phase in ("TrainingPhase", "ValidationPhase"):
        assert logged_steps(tmp_path / "log.csv", "loss", phase) == [0, 5, 10, 15]
    epochs = [(r[1], r[2]) for r in rows(tmp_path / "log.csv")[1:] if r[0] == "epoch"]
    assert epochs == [("1", "TrainingPhase"), ("1", "ValidationPhase"),
                      ("2", "TrainingPhase"), ("2", "ValidationPhase")]


def test_log_metrics_every_seconds_logs_the_first_step_after_each_period(tmp_path):
    logger = fp.LogMetrics(fp.CSVBackend(tmp_path / "log.csv"), every=fp.Every(seconds=1))
    logger.clock = FakeClock(*STEP_TIMES)
    learner = learner_with(logger, n_batches=8)
    learner.fit(1, phases=training_only(learner))
    assert logged_steps(tmp_path / "log.csv", "loss") == SECONDS_LOGGED


@pytest.mark.parametrize("every", [4, fp.Every(steps=4)])
def test_a_plain_int_is_every_that_many_steps(every):
    for logger in (fp.LogMetrics(ListBackend(), every=every),
                   fp.LogHyperParams(ListBackend(), every=every),
                   fp.LogHistograms(ListBackend(), every=every)):
        assert logger.every == fp.Every(steps=4)


def test_defaults_are_every_values():
    assert fp.LogMetrics(ListBackend()).every is None  # epoch values only
    assert fp.LogHyperParams(ListBackend()).every == fp.Every(steps=1)
    assert fp.LogHyperParams(ListBackend(), every=None).every == fp.Every(epochs=1)
    assert fp.LogHistograms(ListBackend()).every == fp.Every(steps=100)


@pytest.mark.parametrize(("every", "logged"), [
    (fp.Every(steps=3), [0, 3, 6, 9, 12, 15]),
    (fp.Every(epochs=2), [15, 31]),
])
def test_log_hyperparams_every_steps_or_epochs(tmp_path, every, logged):
    learner = learner_with(fp.LogHyperParams(fp.CSVBackend(tmp_path / "log.csv"), every=every),
                           n_batches=8)
    learner.fit(4 if every.epochs else 2)
    assert logged_steps(tmp_path / "log.csv", "lr") == logged


def test_log_hyperparams_every_seconds(tmp_path):
    logger = fp.LogHyperParams(fp.CSVBackend(tmp_path / "log.csv"), every=fp.Every(seconds=1))
    logger.clock = FakeClock(*STEP_TIMES)
    learner = learner_with(logger, n_batches=8)
    learner.fit(1, phases=training_only(learner))
    assert logged_steps(tmp_path / "log.csv", "lr") == SECONDS_LOGGED


@pytest.mark.parametrize(("every", "logged"), [
    (fp.Every(steps=3), [0, 3, 6, 9, 12, 15]),
    (fp.Every(epochs=2), [15, 31]),
    (fp.Every(seconds=1), SECONDS_LOGGED),
])
def test_log_histograms_every_steps_epochs_or_seconds(every, logged):
    backend = ListBackend()
    logger = fp.LogHistograms(backend, every=every)
    logger.clock = FakeClock(*STEP_TIMES)
    learner = learner_with(logger, n_batches=8)
    learner.fit(1 if every.seconds else 4 if every.epochs else 2,
                phases=training_only(learner))
    assert [step for step, _, _ in backend.histograms] == logged


@pytest.mark.parametrize("every", [fp.Every(steps=3), fp.Every(epochs=2)])
def test_a_resumed_run_keeps_the_period(tmp_path, every):
    """One epoch, a checkpoint, a new learner loads it and trains the second: the steps logged
    are those of an uninterrupted run (the period counts from the checkpointed history)."""
    def run(log):
        backend = fp.CSVBackend(log)
        return learner_with(fp.LogHyperParams(backend, every=every),
                            fp.LogHistograms(ListBackend(), every=every), n_batches=8)

    straight = run(tmp_path / "straight.csv")
    straight.fit(2)
    first = run(tmp_path / "resumed.csv")
    first.fit(1)
    path = fp.save_checkpoint(first, tmp_path / "c.pt")
    second = run(tmp_path / "resumed.csv")
    fp.load_checkpoint(second, path)
    second.fit(1)
    expected = logged_steps(tmp_path / "straight.csv", "lr")
    assert expected == ([0, 3, 6, 9, 12, 15] if every.steps else [15])
    assert logged_steps(tmp_path / "resumed.csv", "lr") == expected
    histograms = second.get_callback(fp.LogHistograms).backends[0].histograms
    assert [step for step, _, _ in histograms] == [s for s in expected if s >= 8]


EVERY_KINDS = "fp.Every(steps=100) or fp.Every(epochs=1) or fp.Every(seconds=60)"


@pytest.mark.parametrize(("make", "every", "message"), [
    (fp.LogMetrics, fp.Every(epochs=2),
     "LogMetrics(every=fp.Every(epochs=2)): LogMetrics logs every epoch's values already; "
     "every= says when it also logs step values; use fp.Every(steps=100) or "
     "fp.Every(seconds=60)"),
    (fp.LogMetrics, "10", "LogMetrics(every='10'): every is an fp.Every (fp.Every(steps=100) "
                          "or fp.Every(seconds=60)) or a whole number of steps >= 1"),
    (fp.LogHyperParams, 0, f"LogHyperParams(every=0): every is an fp.Every ({EVERY_KINDS}) "
                           "or a whole number of steps >= 1"),
    (fp.LogHistograms, -3, f"LogHistograms(every=-3): every is an fp.Every ({EVERY_KINDS}) "
                           "or a whole number of steps >= 1"),
    (fp.LogHistograms, 2.5, "LogHistograms(every=2.5): every is an fp.Every"),
    (fp.LogHistograms, True, "LogHistograms(every=True): every is an fp.Every"),
    (fp.LogHistograms, None, "LogHistograms(every=None): every is an fp.Every"),
])
def test_a_wrong_every_is_an_error_naming_the_callback_and_the_fix(make, every, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make(ListBackend(), every=every)
