"""`Checkpointer(async_save=True)` with a model sharded by `fp.FSDP`, at two CPU processes
(gloo) launched by torchrun: each rank's shards are copied on the training thread and written
by its own thread; rank 0 renames the folder into place once every rank's are written.

The ranks run async_fsdp_worker.py's scenarios once for the module (further launches kill a
rank in the middle of a background write); each test reads what the ranks wrote.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from test_fsdp import WORKER, check_killed, launch, ranks, worker
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.utils._pytree import keystr, tree_flatten_with_path

import fluxpy as fp

ASYNC_WORKER = WORKER.with_name("async_fsdp_worker.py")


def launch_async(out: Path, *scenarios: str):
    return launch(out, *scenarios, worker=ASYNC_WORKER)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("async_fsdp")
    done = launch_async(folder, "same", "resume", "overlap", "failed",
                          "failed_shards")
    assert done.returncode == 0, done.stdout[-6000:]
    return folder


def shards(folder: Path, tmp_path: Path) -> dict[str, object]:
    """Everything DCP wrote into a checkpoint folder, read in this plain process, by its
    path (e.g. "['model']['0.weight']")."""
    dcp_to_torch_save(folder, tmp_path / "shards.pt")
    saved = torch.load(tmp_path / "shards.pt", weights_only=True)
    return {keystr(path): value for path, value in tree_flatten_with_path(saved)[0]}


def test_async_sharded_checkpoints_hold_what_synchronous_ones_hold(out, tmp_path):
    names = sorted(os.listdir(out / "sync"))
    assert names == ["epoch-0000-step-000003.pt", "epoch-0001-step-000002.pt", "epoch-0002.pt"]
    assert sorted(os.listdir(out / "async")) == names
    for name in names:
        assert sorted(os.listdir(out / "async" / name)) == [".metadata", "__0_0.distcp",
                                                            "__1_0.distcp", "fluxpy.pt"]
        expected, written = shards(out / "sync" / name, tmp_path), shards(out / "async" / name,
                                                                          tmp_path)
        assert written.keys() == expected.keys()
        assert "['optimizer']['state']['3.weight']['exp_avg']" in written
        for key, value in expected.items():
            same = torch.equal if isinstance(value, torch.Tensor) else (lambda a, b: a == b)
            assert same(written[key], value), (name, key)
    loaded = []
    for kind in ("sync", "async"):
        learner = worker.learner(False, optimizer=worker.adam, dropout=0.25)
        with pytest.warns(UserWarning, match="holds state for Recorder, Checkpointer"):
            fp.load_checkpoint(learner, out / kind / "epoch-0002.pt")
        loaded.append(worker.weights(learner))
    assert loaded[0] == loaded[1]


def test_a_resume_from_async_sharded_checkpoints_is_bit_exact(out):
    for rank in ranks(out, "resume"):
        assert rank["loaded"] == rank["stopped_at"]
        assert rank["resumed"] == rank["whole"]  # the whole run saved synchronously
    assert ranks(out, "resume")[0]["files"] == [
        "epoch-0000-step-000003.pt", "epoch-0001-step-000002.pt", "epoch-0001.pt",
        "epoch-0002-step-000001.pt", "epoch-0002-step-000004.pt", "epoch-0003-step-000003.pt",
        "epoch-0004.pt"]


def test_training_steps_run_while_the_shards_are_written(out):
    for rank in ranks(out, "overlap"):
        assert rank["steps"] == 2  # steps 1 and 2 of epoch 2 ended while the write was held
        # not renamed into place before every shard is written
        assert rank["seen"] == [[".epoch-0001.pt.sharded.tmp"]] * 2
        assert rank["threads"] == ["fluxpy writer of epoch-0001.pt"]
        assert rank["files"] == ["epoch-0001.pt", "epoch-0002.pt"]


def test_a_background_write_that_fails_on_one_rank_is_raised_on_every_rank(out):
    zero, one = ranks(out, "failed")
    folder = out / "failed"
    assert zero["error"] == "OSError: [Errno 28] No space left on device"
    assert (f"Checkpointer(folder={str(folder)!r}, async_save=True): the background write of "
            f"{folder / 'epoch-0002.pt'} failed.") in "\n".join(zero["notes"])
    assert one["error"] == (
        f"CheckpointError: {folder / 'epoch-0002.pt'}: was not written: the background write "
        f"failed on rank 0 (its error is raised there). Checkpointer(folder={str(folder)!r}, "
        "async_save=True) stops here, on every rank; the checkpoints written before it are as "
        "they were.")
    for rank in (zero, one):  # raised by the epoch-3 save, on both ranks
        assert rank["epochs"] == 3
        assert any("EpochEnd" in note for note in rank["notes"])
        assert rank["files"] == [".epoch-0002.pt.sharded.tmp", "epoch-0001.pt"]


def test_a_shard_write_that_fails_on_one_rank_is_raised_on_every_rank(out):
    folder = out / "failed_shards"
    for rank in ranks(out, "failed_shards"):
        assert rank["error"] == (
            f"{folder / 'epoch-0002.pt'}: could not be written: torch.distributed.checkpoint "
            "failed with OSError on rank 1: [Errno 28] No space left on device. The previous "
            "checkpoints are unchanged.")
        assert rank["epochs"] == 3
        assert rank["files"] == [".epoch-0002.pt.sharded.tmp", "epoch-0001.pt"]


@pytest.mark.parametrize("victim", [1, 0], ids=["rank 1 writing its shards",
                                                "rank 0 writing fluxpy.pt"])
def test_a_rank_killed_in_a_background_write_leaves_the_previous_checkpoint(tmp_path, victim):
    check_killed(tmp_path, launch_async(tmp_path, "killed", str(victim)))
