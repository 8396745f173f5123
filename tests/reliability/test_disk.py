"""An unwritable checkpoint folder and a full disk: clear errors, no partial files, training
state intact."""

import errno
import io
import os
import tempfile

import pytest
import torch

import fluxpy as fp
import fluxpy.callbacks.checkpointer as checkpointer_module
from fluxpy.testing import test_learner


def test_a_folder_under_a_regular_file_is_an_error_at_construction(tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    folder = tmp_path / "file.txt" / "ckpts"
    with pytest.raises(fp.CheckpointError, match=r"ckpts: cannot hold checkpoints: Not a "
                                                 r"directory\. Give the Checkpointer a folder"):
        fp.Checkpointer(folder)


def _writes_despite_permissions(folder) -> bool:
    """Whether this process writes in a read-only folder anyway (root does)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except PermissionError:
        return False


def test_a_read_only_folder_is_an_error_at_construction(tmp_path, monkeypatch):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if _writes_despite_permissions(folder):
            # Running as root, which ignores the mode: fail the way the mode fails others.
            def denied(*args, **kwargs):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

            monkeypatch.setattr(checkpointer_module.tempfile, "mkstemp", denied)
        with pytest.raises(fp.CheckpointError, match=r"ckpts: cannot hold checkpoints: "
                                                     r"Permission denied"):
            fp.Checkpointer(folder)
    finally:
        folder.chmod(0o700)


class FullDisk(io.FileIO):
    """A file on a disk with `room` bytes left: the write that does not fit puts down what
    fits, then fails with ENOSPC, as write(2) does."""

    room = 300

    def write(self, data) -> int:
        left = self.room - self.tell()
        if len(data) > left:
            if left > 0:
                super().write(bytes(data)[:left])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def fill_the_disk(monkeypatch):
    """Files opened from descriptors (how checkpoints are written) are on a full disk."""
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *args, **kwargs: FullDisk(fd, "wb"))


def checkpointed(folder):
    return test_learner(fp.Recorder(), fp.Metrics(), fp.Checkpointer(folder), n_batches=4)


def test_a_full_disk_is_an_error_at_the_first_save_naming_the_file(tmp_path, monkeypatch):
    fill_the_disk(monkeypatch)
    learner = checkpointed(tmp_path)
    with pytest.raises(fp.CheckpointError, match=r"epoch-0001\.pt: could not be written: No "
                                                 r"space left on device\. No partial file") as info:
        learner.fit(3)
    assert info.value.path == str(tmp_path / "epoch-0001.pt")
    assert info.value.__cause__.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []


def test_a_full_disk_leaves_earlier_checkpoints_and_the_training_state_intact(tmp_path,
                                                                             monkeypatch):
    learner = checkpointed(tmp_path)
    learner.fit(1)
    fill_the_disk(monkeypatch)
    with pytest.raises(fp.CheckpointError, match=r"epoch-0002\.pt: could not be written"):
        learner.fit(1)
    assert os.listdir(tmp_path) == ["epoch-0001.pt"]
    expected = test_learner(fp.Recorder(), fp.Metrics(), n_batches=4)
    expected.fit(2)
    assert torch.equal(learner.model.coeff, expected.model.coeff)
    assert learner.cbstate.history[fp.TrainingPhase()].epochs == 2

    monkeypatch.undo()  # space freed: training and saving go on
    learner.fit(1)
    assert sorted(os.listdir(tmp_path)) == ["epoch-0001.pt", "epoch-0003.pt"]
    resumed = checkpointed(tmp_path / "elsewhere")
    assert fp.load_checkpoint(resumed, tmp_path).name == "epoch-0003.pt"


def test_a_full_disk_for_save_checkpoint_keeps_the_previous_file(tmp_path, monkeypatch):
    learner = test_learner()
    path = fp.save_checkpoint(learner, tmp_path / "model.pt")
    before = path.read_bytes()
    learner.fit(1)
    fill_the_disk(monkeypatch)
    with pytest.raises(fp.CheckpointError, match=r"model\.pt: could not be written"):
        fp.save_checkpoint(learner, path)
    assert os.listdir(tmp_path) == ["model.pt"]
    assert path.read_bytes() == before


def test_a_full_disk_while_a_resumed_run_rewrites_its_csv_log_leaves_the_log_whole(tmp_path,
                                                                                   monkeypatch):
    log = tmp_path / "log.csv"
    first = test_learner(fp.Recorder(), fp.Metrics(), fp.LogMetrics(fp.CSVBackend(log)),
                         n_batches=4)
    first.fit(2)
    path = fp.save_checkpoint(first, tmp_path / "one.pt")
    first.fit(1)  # epoch 3 logged, then the run "dies"
    before = log.read_bytes()
    resumed = test_learner(fp.Recorder(), fp.Metrics(), fp.LogMetrics(fp.CSVBackend(log)),
                           n_batches=4)
    fp.load_checkpoint(resumed, path)
    fill_the_disk(monkeypatch)
    monkeypatch.setattr(FullDisk, "room", 64)  # less than the log without epoch 3
    with pytest.raises(OSError, match="No space left on device"):
        resumed.fit(1)
    assert log.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["log.csv", "one.pt"]
