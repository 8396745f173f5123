"""WandbBackend against real W&B in offline mode: the run files it writes, read back.

wandb (0.31) has no Python reader of its `.wandb` run files any more, so `records` reads the
format (LevelDB's log format behind a `:W&B` header) and parses each record with wandb's own
protobuf `Record`.
"""

import json
import struct
from pathlib import Path

import matplotlib.image
import pytest
import wandb
from wandb.proto import wandb_internal_pb2

import fluxpy as fp
from fluxpy.testing import test_learner

TRAINING, VALIDATION = fp.TrainingPhase(), fp.ValidationPhase()


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Offline, silent, no error reports, nothing written outside tmp_path."""
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true",
                        "WANDB_ERROR_REPORTING": "false", "WANDB_DISABLE_GIT": "true",
                        "WANDB_DISABLE_CODE": "true", "WANDB_CONSOLE": "off",
                        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
                        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
                        "WANDB_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(name, value)
    for name in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_PROJECT", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


BLOCK = 32768  # LevelDB log blocks; a record header is crc32, length, type (full/first/.../last)
HEADER = struct.Struct("<IHB")


def records(path):
    """The `wandb_internal_pb2.Record`s of a `.wandb` file."""
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    found, parts, pos = [], b"", 7
    while pos + HEADER.size <= len(data):
        if BLOCK - pos % BLOCK < HEADER.size:  # a block's tail too short for a header
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = HEADER.unpack_from(data, pos)
        parts += data[pos + HEADER.size:pos + HEADER.size + length]
        pos += HEADER.size + length
        if kind in (1, 4) and parts:  # a whole record, or the last part of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            found.append(record)
            parts = b""
    return found


def run_folders(root):
    """The offline runs under `root`, oldest first, once W&B has written them: a finished
    run's last records are written by W&B's service process, which `wandb.teardown()` waits
    for."""
    wandb.teardown()
    return sorted((Path(root) / "wandb").glob("offline-run-*"))


def logged(folder):
    """The run's history rows as dicts, and its exit code (None: no exit record)."""
    rows, exit_code = [], None
    for record in records(next(folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return rows, exit_code


def run_of(folder):
    """The id in the run record of the run files in `folder`."""
    return next(record.run.run_id for record in records(next(folder.glob("run-*.wandb")))
                if record.WhichOneof("record_type") == "run")


def series(rows, key, axis):
    """`[(axis value, value)]` of `key` in the history rows."""
    return [(row[axis], row[key]) for row in rows if key in row]


def learner_with(*callbacks, **kwargs):
    return test_learner(*callbacks, fp.Recorder(), fp.Metrics(), **kwargs)


def test_offline_runs_hold_the_metrics_and_the_graph(tmp_path):
    tracker = fp.WandbBackend(project="quadrants", dir=tmp_path, mode="offline")
    learner = learner_with(fp.LogMetrics(tracker),
                           fp.LogHyperParams(tracker, every=fp.Every(epochs=1)),
                           fp.LogHistograms(tracker, every=fp.Every(epochs=1)), lr=0.01)
    learner.fit(2)
    learner.fit(1)  # a second fit: a run of its own
    first, second = run_folders(tmp_path)
    losses = learner.cbstate.metricsepoch
    rows, exit_code = logged(first)
    assert exit_code == 0
    assert series(rows, "loss/TrainingPhase", "TrainingPhase/epoch") == [
        (1, pytest.approx(losses[TRAINING]["loss"][0])),
        (2, pytest.approx(losses[TRAINING]["loss"][1]))]
    assert series(rows, "loss/ValidationPhase", "ValidationPhase/epoch") == [
        (1, pytest.approx(losses[VALIDATION]["loss"][0])),
        (2, pytest.approx(losses[VALIDATION]["loss"][1]))]
    assert series(rows, "lr/TrainingPhase/step", "TrainingPhase/step") == [(15, 0.01),
                                                                            (31, 0.01)]
    assert [(step, kind) for step, kind in series(rows, "params/coeff/_type",
                                                  "TrainingPhase/step")] == [
        (15, "histogram"), (31, "histogram")]
    explanation = fp.explain(learner)
    files = first / "files" / "fluxpy"
    assert (files / "explain.txt").read_text() == str(explanation)
    assert (files / "graph.mmd").read_text() == explanation.to_mermaid()
    assert (files / "graph.dot").read_text() == explanation.to_dot()
    image = matplotlib.image.imread(files / "graph.png")
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.min() < image.max()
    rows, exit_code = logged(second)
    assert exit_code == 0
    assert series(rows, "loss/TrainingPhase", "TrainingPhase/epoch") == [
        (3, pytest.approx(losses[TRAINING]["loss"][2]))]
    assert second.name.split("-")[-1] == tracker.run_id != first.name.split("-")[-1]


@pytest.mark.parametrize(("error", "exit_code"), [(ValueError("bad batch"), 1),
                                                 (KeyboardInterrupt(), 255)])
def test_a_fit_ended_by_an_error_or_ctrl_c_exits_its_run_failed(tmp_path, error, exit_code):
    def fail(learner):
        if learner.cbstate.history[TRAINING].epochs == 1:
            raise error

    tracker = fp.WandbBackend(project="failing", dir=tmp_path)
    learner = learner_with(fp.LogMetrics(tracker), fp.CustomCallback(
        fail, fp.StepBegin, fp.TrainingPhase,
        access=fp.Access(cbstate=fp.Access(history=fp.Read()))))
    with pytest.raises(type(error)):
        learner.fit(3)
    (folder,) = run_folders(tmp_path)
    rows, logged_exit_code = logged(folder)
    assert logged_exit_code == exit_code
    assert series(rows, "loss/TrainingPhase", "TrainingPhase/epoch") == [
        (1, pytest.approx(learner.cbstate.metricsepoch[TRAINING]["loss"][0]))]


def test_a_resumed_fit_continues_the_checkpoints_run(tmp_path):
    def learner_logging_to(tracker):
        return learner_with(fp.LogMetrics(tracker), fp.Checkpointer(tmp_path / "checkpoints"))

    first = learner_logging_to(fp.WandbBackend(project="resumed", dir=tmp_path))
    first.fit(1)
    run_id = first.callbacks[0].backends[0].run_id
    learner = learner_logging_to(tracker := fp.WandbBackend(project="resumed", dir=tmp_path))
    fp.load_checkpoint(learner, tmp_path / "checkpoints")
    learner.fit(1)
    assert tracker.run_id == run_id
    assert [run_of(folder) for folder in run_folders(tmp_path)] == [run_id, run_id]
    epochs = [epoch for folder in run_folders(tmp_path)
              for epoch, _ in series(logged(folder)[0], "loss/TrainingPhase",
                                     "TrainingPhase/epoch")]
    assert sorted(epochs) == [1, 2]
