"""MLflowBackend against real MLflow: a local file store, and a `mlflow server` this module
starts on 127.0.0.1 (sqlite backend store, artifacts in tmp), both read back with MlflowClient."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import matplotlib.image
import pytest
import torch
from mlflow.tracking import MlflowClient

import fluxpy as fp
from fluxpy.testing import test_learner

TRAINING, VALIDATION = fp.TrainingPhase(), fp.ValidationPhase()
#: No telemetry: nothing leaves the machine.
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


@pytest.fixture(autouse=True)
def quiet(monkeypatch):
    for name, value in QUIET.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def file_store(tmp_path, monkeypatch):
    """A local file store (MLflow 3 asks for an opt-in to use one)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return str(tmp_path / "mlruns")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlflow server` on a free port of 127.0.0.1, stopped when the module's tests end."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        env={**os.environ, **QUIET}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n"
                                   f"{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=60)
        log.close()


def learner_with(*callbacks, **kwargs):
    return test_learner(*callbacks, fp.Recorder(), fp.Metrics(), **kwargs)


def runs(uri, experiment):
    """The experiment's runs, oldest first."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def history(uri, run, key):
    """`[(step, value)]` of a run's metric, by step."""
    return sorted((m.step, m.value) for m in
                  MlflowClient(uri).get_metric_history(run.info.run_id, key))


def artifact(uri, run, path):
    return MlflowClient(uri).download_artifacts(run.info.run_id, path)


def check_run(uri, run, learner, epochs):
    """A finished run holding loss per epoch, the learning rate, explain's text and the graph."""
    losses = learner.cbstate.metricsepoch
    assert run.info.status == "FINISHED"
    assert history(uri, run, "loss/TrainingPhase") == [
        (epoch, pytest.approx(losses[TRAINING]["loss"][epoch - 1])) for epoch in epochs]
    assert history(uri, run, "loss/ValidationPhase") == [
        (epoch, pytest.approx(losses[VALIDATION]["loss"][epoch - 1])) for epoch in epochs]
    assert history(uri, run, "lr/TrainingPhase/step") == [
        (16 * epoch - 1, pytest.approx(0.01)) for epoch in epochs]
    explanation = fp.explain(learner)
    with open(artifact(uri, run, "fluxpy/explain.txt")) as f:
        assert f.read() == str(explanation)
    with open(artifact(uri, run, "fluxpy/graph.mmd")) as f:
        assert f.read() == explanation.to_mermaid()
    with open(artifact(uri, run, "fluxpy/graph.dot")) as f:
        assert f.read() == explanation.to_dot()
    assert_png(artifact(uri, run, "fluxpy/graph.png"))


def assert_png(path):
    """`path` is a PNG picture of a graph (an image of some size, not blank)."""
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image.min() < image.max()


def test_file_store_gets_one_run_per_fit(file_store):
    tracker = fp.MLflowBackend(file_store, experiment="quadrants", run_name="sgd")
    learner = learner_with(fp.LogMetrics(tracker),
                           fp.LogHyperParams(tracker, every=fp.Every(epochs=1)), lr=0.01)
    learner.fit(2)
    first = runs(file_store, "quadrants")
    assert len(first) == 1 and first[0].info.run_name == "sgd"
    check_run(file_store, first[0], learner, epochs=[1, 2])
    learner.fit(1)  # a second fit of the same learner: a run of its own, epochs counted on
    both = runs(file_store, "quadrants")
    assert [r.info.run_id for r in both][:1] == [first[0].info.run_id]
    assert len(both) == 2
    check_run(file_store, both[1], learner, epochs=[3])


def test_server_run_holds_losses_lr_graph_and_finished_status(server):
    tracker = fp.MLflowBackend(server, experiment="served")
    learner = learner_with(fp.LogMetrics(tracker),
                           fp.LogHyperParams(tracker, every=fp.Every(epochs=1)), lr=0.01)
    learner.fit(2)
    (run,) = runs(server, "served")
    check_run(server, run, learner, epochs=[1, 2])


def fails_in(epoch, error):
    """A callback raising `error` at the first training step of `epoch` (from 1)."""
    def fail(learner):
        if learner.cbstate.history[TRAINING].epochs == epoch - 1:
            raise error
    return fp.CustomCallback(fail, fp.StepBegin, fp.TrainingPhase,
                             access=fp.Access(cbstate=fp.Access(history=fp.Read())))


def test_a_fit_that_raises_ends_its_run_failed(server):
    tracker = fp.MLflowBackend(server, experiment="failing")
    learner = learner_with(fp.LogMetrics(tracker), fails_in(2, ValueError("bad batch")))
    with pytest.raises(ValueError, match="bad batch"):
        learner.fit(3)
    (run,) = runs(server, "failing")
    assert run.info.status == "FAILED"
    assert history(server, run, "loss/TrainingPhase") == [
        (1, pytest.approx(learner.cbstate.metricsepoch[TRAINING]["loss"][0]))]
    assert isinstance(learner.fit_error, ValueError)


def test_ctrl_c_ends_its_run_killed(file_store):
    tracker = fp.MLflowBackend(file_store, experiment="interrupted")
    interrupt = fails_in(1, KeyboardInterrupt())
    learner = learner_with(fp.LogMetrics(tracker), fp.LogHyperParams(tracker), interrupt)
    with pytest.raises(KeyboardInterrupt):
        learner.fit(2)
    (run,) = runs(file_store, "interrupted")
    assert run.info.status == "KILLED"
    assert isinstance(learner.fit_error, KeyboardInterrupt)
    interrupt.fn = lambda learner: None  # the next fit runs, in a run of its own
    learner.fit(1)
    assert [r.info.status for r in runs(file_store, "interrupted")] == ["KILLED", "FINISHED"]
    assert learner.fit_error is None


def test_three_callbacks_sharing_a_tracker_share_one_run(file_store):
    tracker = fp.MLflowBackend(file_store, experiment="shared")
    learner = learner_with(fp.LogMetrics(tracker), fp.LogHyperParams(tracker, every=8),
                           fp.LogHistograms(tracker, every=fp.Every(epochs=1)), lr=0.01,
                           executor=fp.ThreadedExecutor(4))
    learner.fit(1)
    (run,) = runs(file_store, "shared")
    assert run.info.status == "FINISHED"
    assert history(file_store, run, "lr/TrainingPhase/step") == [(0, 0.01), (8, 0.01)]
    coeff = learner.model.coeff.item()  # one value: its histogram's mean, min and max
    for stat in ("mean", "min", "max"):
        assert history(file_store, run, f"params/coeff/{stat}") == [(15, pytest.approx(coeff))]
    assert history(file_store, run, "params/coeff/std") == [(15, 0.0)]


def test_a_resumed_fit_continues_the_checkpoints_run(file_store, tmp_path):
    def learner_logging_to(tracker):
        return learner_with(fp.LogMetrics(tracker), fp.Checkpointer(tmp_path / "checkpoints"),
                            fp.LogHyperParams(tracker, every=fp.Every(epochs=1)), lr=0.01)

    first = learner_logging_to(fp.MLflowBackend(file_store, experiment="resumed"))
    first.fit(1)
    (run,) = runs(file_store, "resumed")
    assert run.info.status == "FINISHED"
    # Another process would do this: a new learner and backend, the checkpoint, one more epoch.
    learner = learner_logging_to(fp.MLflowBackend(file_store, experiment="resumed"))
    fp.load_checkpoint(learner, tmp_path / "checkpoints")
    learner.fit(1)
    (resumed,) = runs(file_store, "resumed")
    assert resumed.info.run_id == run.info.run_id
    check_run(file_store, resumed, learner, epochs=[1, 2])


def test_a_checkpoint_with_a_tracker_run_refuses_a_callback_without_tracker(file_store,
                                                                             tmp_path):
    tracked = learner_with(fp.LogMetrics(fp.MLflowBackend(file_store, experiment="x")))
    tracked.fit(1)
    fp.save_checkpoint(tracked, tmp_path / "run.pt")
    plain = learner_with(fp.LogMetrics(fp.CSVBackend(tmp_path / "log.csv")))
    with pytest.raises(fp.CheckpointError,
                       match=r"LogMetrics has 0 tracker backends .* the checkpoint has runs of "
                             r"1; give it the backends it was saved with"):
        fp.load_checkpoint(plain, tmp_path / "run.pt")


def test_the_graph_report_is_read_through_a_declaration():
    tracker = fp.MLflowBackend("unused")
    assert fp.stateaccess(fp.LogMetrics(tracker)) == fp.Access(
        cbstate=fp.Access(metricsepoch=fp.Read()), graph_report=fp.Read(), fit_error=fp.Read())
    assert fp.stateaccess(fp.LogMetrics(fp.CSVBackend("unused.csv"))) == fp.Access(
        cbstate=fp.Access(metricsepoch=fp.Read()))
    learner = learner_with(fp.LogMetrics(tracker))
    report = learner.graph_report
    assert report.explanation == str(fp.explain(learner))
    assert (report.mermaid, report.dot) == (fp.explain(learner).to_mermaid(),
                                           fp.explain(learner).to_dot())
    assert report.picture.startswith(b"\x89PNG\r\n\x1a\n")


def test_a_backend_used_by_hand_logs_to_a_run_of_its_own(file_store):
    tracker = fp.MLflowBackend(file_store, experiment="by hand")
    tracker.log_scalar("loss", 2.5, step=1, phase="TrainingPhase", axis="epoch")
    tracker.log_histogram("w", torch.tensor([1.0, 3.0]), step=4, phase="TrainingPhase")
    for step in range(2100):  # sent in batches of at most 1000 values
        tracker.log_scalar("lr", step / 1000, step=step, phase="TrainingPhase", axis="step")
    tracker.close()
    (run,) = runs(file_store, "by hand")
    assert run.info.status == "FINISHED"
    assert history(file_store, run, "loss/TrainingPhase") == [(1, 2.5)]
    assert history(file_store, run, "w/mean") == [(4, 2.0)]
    assert history(file_store, run, "w/std") == [(4, pytest.approx(2 ** 0.5))]
    assert history(file_store, run, "lr/TrainingPhase/step") == [
        (step, step / 1000) for step in range(2100)]


KILLED_RUN = """
import os, signal, sys
import fluxpy as fp
from fluxpy.testing import test_learner

def die(learner):
    if learner.cbstate.history[fp.TrainingPhase()].epochs == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does, mid-epoch

tracker = fp.MLflowBackend(sys.argv[1], experiment="killed")
learner = test_learner(fp.LogMetrics(tracker), fp.Checkpointer(sys.argv[2]), fp.Recorder(),
                       fp.Metrics(), fp.CustomCallback(die, fp.StepBegin, fp.TrainingPhase,
                       access=fp.Access(cbstate=fp.Access(history=fp.Read()))))
learner.fit(3)
"""


def test_a_run_killed_with_sigkill_is_continued_by_the_resumed_fit(file_store, tmp_path):
    store = file_store
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, store, str(tmp_path / "ckpt")],
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    (run,) = runs(store, "killed")
    assert run.info.status == "RUNNING"  # nobody ended it
    tracker = fp.MLflowBackend(store, experiment="killed")
    learner = learner_with(fp.LogMetrics(tracker), fp.Checkpointer(tmp_path / "ckpt"))
    fp.load_checkpoint(learner, tmp_path / "ckpt")
    learner.fit(2)
    (resumed,) = runs(store, "killed")
    assert (resumed.info.run_id, resumed.info.status) == (run.info.run_id, "FINISHED")
    losses = learner.cbstate.metricsepoch[TRAINING]["loss"]
    assert history(store, resumed, "loss/TrainingPhase") == [
        (epoch, pytest.approx(losses[epoch - 1])) for epoch in (1, 2, 3)]


def test_a_checkpoints_run_missing_from_the_store_is_an_error(file_store, tmp_path):
    logged = learner_with(fp.LogMetrics(fp.MLflowBackend(file_store, experiment="here")))
    logged.fit(1)
    fp.save_checkpoint(logged, tmp_path / "run.pt")
    elsewhere = str(tmp_path / "other-store")
    learner = learner_with(fp.LogMetrics(fp.MLflowBackend(elsewhere, experiment="here")))
    fp.load_checkpoint(learner, tmp_path / "run.pt")
    run_id = runs(file_store, "here")[0].info.run_id
    with pytest.raises(ValueError, match=(
            rf"MLflowBackend: the loaded checkpoint continues run {run_id}, which "
            rf"tracking_uri='{re.escape(elsewhere)}' does not hold \(.*\); give the "
            r"MLflowBackend the tracking_uri the run was logged to")):
        learner.fit(1)
