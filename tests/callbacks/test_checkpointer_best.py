"""Checkpointer: the best checkpoint (best_path, load_checkpoint(which="best")), overwriting a
folder, and what fit(n) means after a resume."""

import itertools
import os

import pytest
import torch

import fluxpy as fp
from fluxpy.testing import test_learner


def names(folder) -> list[str]:
    return sorted(os.listdir(folder))


def scored_metric(values):
    """A validation metric whose epoch means are `values` (two validation steps per epoch)."""
    stream = itertools.chain.from_iterable((v, v) for v in values)
    return fp.Metric(lambda preds, ys: torch.tensor(float(next(stream))), name="score",
                     phase=fp.ValidationPhase)


def scored_learner(folder, values, **options):
    return test_learner(fp.Recorder(), fp.Metrics(scored_metric(values)),
                        fp.Checkpointer(folder, **options), n_batches=2)


def plain_learner(folder=None, **options):
    callbacks = [fp.Checkpointer(folder, **options)] if folder is not None else []
    return test_learner(fp.Recorder(), fp.Metrics(), *callbacks, n_batches=2)


def load_plain(learner, folder, **options):
    """`fp.load_checkpoint` into a learner without a Checkpointer (as for inference): the
    Checkpointer's state in the file is left out, with a warning."""
    with pytest.warns(UserWarning, match="holds state for Checkpointer, which this learner "
                      "does not have"):
        return fp.load_checkpoint(learner, folder, **options)


@pytest.mark.parametrize(("mode", "best"), [("min", "epoch-0002.pt"), ("max", "epoch-0004.pt")])
def test_best_path_and_load_which_best_give_the_best_monitored_checkpoint(tmp_path, mode, best):
    learner = scored_learner(tmp_path, [3, 1, 2, 5], keep_last=1, monitor="score", mode=mode,
                             keep_best=1)
    learner.fit(4)
    checkpointer = learner.get_callback(fp.Checkpointer)
    assert checkpointer.best_path == tmp_path / best
    assert set(names(tmp_path)) == {best, "epoch-0004.pt"}

    fresh = plain_learner()
    assert load_plain(fresh, tmp_path, which="best") == tmp_path / best
    saved = torch.load(tmp_path / best, weights_only=True)["model"]
    assert torch.equal(fresh.model.coeff.detach(), saved["coeff"])
    assert load_plain(fresh, tmp_path) == tmp_path / "epoch-0004.pt"  # the latest


def test_ties_go_to_the_earlier_epoch(tmp_path):
    learner = scored_learner(tmp_path, [2, 1, 1], keep_last=1, monitor="score", keep_best=2)
    learner.fit(3)
    assert learner.get_callback(fp.Checkpointer).best_path == tmp_path / "epoch-0002.pt"
    assert load_plain(plain_learner(), tmp_path, which="best").name == "epoch-0002.pt"


def test_the_best_is_among_the_files_written_with_every(tmp_path):
    # epoch 1 has the best score but is never written (every=2 saves epochs 2 and 4)
    learner = scored_learner(tmp_path, [1, 3, 2, 5], every=2, keep_last=1, monitor="score",
                             keep_best=1)
    learner.fit(4)
    assert names(tmp_path) == ["epoch-0002.pt", "epoch-0004.pt"]
    assert learner.get_callback(fp.Checkpointer).best_path == tmp_path / "epoch-0002.pt"
    assert load_plain(plain_learner(), tmp_path, which="best").name == "epoch-0002.pt"


def test_no_best_without_a_monitor(tmp_path):
    learner = plain_learner(tmp_path)
    assert learner.get_callback(fp.Checkpointer).best_path is None
    learner.fit(2)
    assert learner.get_callback(fp.Checkpointer).best_path is None
    fresh = plain_learner()
    before = fresh.model.coeff.detach().clone()
    with pytest.raises(fp.CheckpointError, match=r"has no checkpoint ranked by a monitored "
                       r"metric: the Checkpointer that wrote it had no monitor\. Save with "
                       r"fp\.Checkpointer\(folder, monitor='loss', keep_best=1\), or load the "
                       r"latest with which='latest'"):
        fp.load_checkpoint(fresh, tmp_path, which="best")
    assert torch.equal(fresh.model.coeff.detach(), before)


def test_which_is_checked(tmp_path):
    plain_learner(tmp_path).fit(1)
    with pytest.raises(ValueError, match=r"which='newest'\): 'latest' .* or 'best'"):
        fp.load_checkpoint(plain_learner(), tmp_path, which="newest")
    with pytest.raises(fp.CheckpointError, match=r"epoch-0001\.pt: is not a folder: "
                       r"which='best' picks among the files of a Checkpointer's folder"):
        fp.load_checkpoint(plain_learner(), tmp_path / "epoch-0001.pt", which="best")
    (tmp_path / "empty").mkdir()
    with pytest.raises(fp.CheckpointError, match="holds no checkpoint"):
        fp.load_checkpoint(plain_learner(), tmp_path / "empty", which="best")


def test_a_folder_of_another_run_names_overwrite_in_its_error(tmp_path):
    plain_learner(tmp_path).fit(3)
    fresh = plain_learner(tmp_path)
    with pytest.raises(fp.CheckpointError, match=r"another run's\. .* or "
                       r"Checkpointer\(folder, overwrite=True\) to delete them"):
        fresh.fit(1)
    assert names(tmp_path) == ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"]


def test_overwrite_deletes_another_runs_checkpoints_when_fit_begins(tmp_path):
    plain_learner(tmp_path).fit(3)
    fresh = plain_learner(tmp_path, overwrite=True)
    assert names(tmp_path) == ["epoch-0001.pt", "epoch-0002.pt", "epoch-0003.pt"]  # not yet
    fresh.fit(1)
    assert names(tmp_path) == ["epoch-0001.pt"]
    saved = torch.load(tmp_path / "epoch-0001.pt", weights_only=True)["model"]
    assert torch.equal(saved["coeff"], fresh.model.coeff.detach())


def test_overwrite_after_resuming_an_earlier_checkpoint_replaces_the_later_ones(tmp_path):
    plain_learner(tmp_path, keep_last=None).fit(3)
    first = torch.load(tmp_path / "epoch-0001.pt", weights_only=True)["digest"]
    branch = plain_learner(tmp_path, keep_last=None, overwrite=True)
    fp.load_checkpoint(branch, tmp_path / "epoch-0001.pt")
    branch.fit(1)
    assert names(tmp_path) == ["epoch-0001.pt", "epoch-0002.pt"]
    assert torch.load(tmp_path / "epoch-0001.pt", weights_only=True)["digest"] == first


def test_fit_n_after_a_resume_runs_n_more_epochs(tmp_path):
    plain_learner(tmp_path).fit(2)
    resumed = plain_learner(tmp_path)
    fp.load_checkpoint(resumed, tmp_path)
    assert resumed.fit(3).epochs == 3
    assert resumed.get_callback(fp.Checkpointer).epoch == 5
    assert resumed.cbstate.history[fp.TrainingPhase()].epochs == 5
    assert names(tmp_path) == ["epoch-0003.pt", "epoch-0004.pt", "epoch-0005.pt"]


def test_overwrite_is_true_or_false(tmp_path):
    with pytest.raises(TypeError, match=r"Checkpointer\(overwrite='yes'\): True or False"):
        fp.Checkpointer(tmp_path, overwrite="yes")
