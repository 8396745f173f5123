"""FSDP2 with two CPU processes (gloo), launched by torchrun, and its sharded checkpoints.

The two processes are started once for the module (`fsdp_worker.py` runs the scenarios in
turn, a second launch has rank 1 killed while it saves); each test reads what the ranks
wrote and checks it against DDP, one process, or the checkpoint folders, loaded here in this
plain process (no process group).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from launch import finish, free_port, load_worker, torchrun, two_ranks

import fluxpy as fp

WORKER = Path(__file__).with_name("fsdp_worker.py")
TIMEOUT = 180

worker = load_worker(WORKER)


def launch(out: Path, *scenarios: str, worker: Path = WORKER) -> subprocess.CompletedProcess:
    proc = torchrun(*two_ranks(worker, str(out), *scenarios))
    (output,) = finish([proc], TIMEOUT)
    return subprocess.CompletedProcess(proc.args, proc.returncode, output)


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fsdp")
    single = worker.learner(False, optimizer=worker.adam)
    single.fit(1)
    fp.save_checkpoint(single, folder / "single.pt")
    state = single.optimizer.state_dict()["state"]
    (folder / "single.json").write_text(json.dumps({
        "weights": worker.weights(single),
        "exp_avg": [state[i]["exp_avg"].flatten().tolist() for i in sorted(state)]}))
    _one_process_sharded_checkpoint(folder)
    done = launch(folder, "train", "resume", "load_single", "stop", "load_one_sharded",
                  "paths", "uneven", "cancelled")
    assert done.returncode == 0, done.stdout[-6000:]
    return folder


def _one_process_sharded_checkpoint(folder: Path) -> None:
    """An FSDP learner in a one-process gloo group (as `torchrun --nproc_per_node=1` gives)
    saves a sharded checkpoint, in this process."""
    dist.init_process_group("gloo", rank=0, world_size=1,
                            init_method=f"tcp://127.0.0.1:{free_port()}")
    try:
        learner = worker.learner(fp.FSDP(), [fp.Checkpointer(folder / "one-sharded")],
                                 optimizer=worker.adam)
        learner.fit(1)
        state = learner.optimizer.state_dict()["state"]
        (folder / "one-sharded.json").write_text(json.dumps({
            "weights": worker.weights(learner),
            "exp_avg": [state[i]["exp_avg"].full_tensor().flatten().tolist()
                        for i in sorted(state)]}))
    finally:
        dist.destroy_process_group()


def ranks(out: Path, scenario: str) -> list[dict]:
    return [json.loads((out / f"{scenario}-rank{r}.json").read_text()) for r in (0, 1)]


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """What the two ranks see at each step, as one batch: rank r gets batches r, r + 2, ..."""
    parts = worker.batches(8, seed=1)
    return [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]))
            for a, b in zip(parts[0::2], parts[1::2])]


def one_process(*extra: fp.Callback) -> fp.Learner:
    learner = fp.Learner(worker.model(), F.mse_loss, data=(global_batches(), worker.validation()),
                         optimizer=worker.sgd, use_default_callbacks=False, distributed=False,
                         callbacks=[fp.Recorder(), fp.Metrics(), fp.GradientClipping(0.5),
                                    *extra])
    learner.fit(2)
    return learner


@pytest.mark.parametrize("name", ["plain", "accumulate"])
def test_fsdp_trains_as_ddp_and_as_one_process_with_the_global_batch(out, name):
    rank0, rank1 = ranks(out, f"train-{name}")
    single = one_process(*([fp.GradientAccumulation(2)] if name == "accumulate" else []))
    expected = worker.weights(single)
    assert rank0["fsdp"]["weights"] == rank1["fsdp"]["weights"]
    assert rank0["fsdp"]["weights"] == pytest.approx(rank0["ddp"]["weights"], abs=1e-6)
    assert rank0["fsdp"]["weights"] == pytest.approx(expected, abs=1e-6)


def test_fsdp_validation_loss_is_the_full_sets_on_every_rank(out):
    rank0, rank1 = ranks(out, "train-plain")
    assert rank0["fsdp"]["valid"] == rank1["fsdp"]["valid"]
    single = one_process()
    assert rank0["fsdp"]["valid"] == pytest.approx(
        [float(v) for v in single.cbstate.metricsepoch[fp.ValidationPhase()]["loss"]], rel=1e-6)
    xs, ys = worker.regression(10, seed=99)
    with torch.no_grad():
        full = F.mse_loss(single.model(xs), ys).item()
    assert rank0["fsdp"]["valid"][-1] == pytest.approx(full, rel=1e-6)


def _model_with(weights: list[float]) -> torch.nn.Module:
    model = worker.model()
    flat = torch.tensor(weights)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(flat[:p.numel()].reshape(p.shape))
            flat = flat[p.numel():]
    return model.eval()


def test_fsdp_validation_with_more_batches_on_one_rank_ends_and_counts_each_example_once(out):
    # 13 examples in batches of 3: rank 0 validates 3 batches and rank 1 2; every forward is
    # a collective, so rank 1 runs one more to join rank 0's last (and counts nothing of it).
    rank0, rank1 = ranks(out, "uneven")
    assert rank0["weights"] == rank1["weights"]
    assert rank0["valid"] == rank1["valid"]
    xs, ys = worker.regression(13, seed=98)
    with torch.no_grad():
        full = F.mse_loss(_model_with(rank0["weights"])(xs), ys).item()
    assert rank0["valid"][-1] == pytest.approx(full, rel=1e-6)


def test_fsdp_predict_and_evaluate_take_each_ranks_own_data_of_any_length(out):
    model = _model_with(ranks(out, "uneven")[0]["weights"])
    everything = []
    for r, seen in enumerate(ranks(out, "uneven")):
        own = worker.batches(3 - r, seed=40 + r)
        xs, ys = torch.cat([b[0] for b in own]), torch.cat([b[1] for b in own])
        with torch.no_grad():
            assert seen["preds"] == pytest.approx(model(xs).flatten().tolist(), abs=1e-6)
        assert seen["ys"] == ys.flatten().tolist()
        everything.append((xs, ys))
    xs, ys = (torch.cat(parts) for parts in zip(*everything))
    with torch.no_grad():
        expected = F.mse_loss(model(xs), ys).item()
    for seen in ranks(out, "uneven"):  # the mean over both ranks' 20 examples, on each rank
        assert seen["evaluated"] == {"loss": pytest.approx(expected, rel=1e-6)}


def test_a_validation_step_cancelled_on_one_rank_before_its_forward_does_not_hang(out):
    # validation(): 10 examples in batches of 3, each rank 5 (batches of 3 and 2) by stride:
    # rank 1 has examples 1, 3, 5, 7, 9 and cancels the batch of its first three.
    rank0, rank1 = ranks(out, "cancelled")
    assert rank0["valid"] == rank1["valid"]
    xs, ys = worker.regression(10, seed=99)
    counted = [i for i in range(10) if i not in (1, 3, 5)]
    with torch.no_grad():
        expected = F.mse_loss(_model_with(rank0["weights"])(xs[counted]), ys[counted]).item()
    assert rank0["valid"] == [pytest.approx(expected, rel=1e-6)]


def test_a_rank_without_any_batch_is_an_error_not_a_hang(tmp_path):
    done = launch(tmp_path, "without_batches")
    assert done.returncode != 0
    assert "rank 1 has no batch in this epoch while another rank has some" in done.stdout
    assert "every rank needs at least one batch" in done.stdout


def test_explain_says_how_the_model_is_sharded(out):
    line = ranks(out, "train-plain")[0]["explain"][1]
    assert line == ("  FSDP over 2 ranks: fully_shard on 2 submodule(s) (0, 3), then the root; "
                    "each rank holds 1/2 of the parameters, gradients and optimizer state; "
                    "resharded after forward. Checkpoints are sharded folders "
                    "(torch.distributed.checkpoint), written by every rank.")


def test_a_sharded_mid_epoch_checkpoint_resumes_bit_exact_at_two_processes(out):
    for rank in ranks(out, "resume"):
        assert rank["loaded"] == rank["stopped_at"]
        assert rank["resumed"] == rank["whole"]  # exact: Adam, dropout, shuffled nothing
        assert rank["valid"][0] == rank["valid"][1]
    assert ranks(out, "resume")[0]["files"] == [
        "epoch-0000-step-000003.pt", "epoch-0001-step-000002.pt", "epoch-0001.pt",
        "epoch-0002-step-000001.pt", "epoch-0002-step-000004.pt", "epoch-0003-step-000003.pt",
        "epoch-0004.pt"]


def test_a_sharded_checkpoint_is_a_folder_every_rank_wrote(out):
    folder = out / "resumed" / "epoch-0004.pt"
    assert sorted(os.listdir(folder)) == [".metadata", "__0_0.distcp", "__1_0.distcp",
                                          "fluxpy.pt"]


def test_a_two_process_checkpoint_loads_in_one_plain_process_with_its_parameters(out):
    learner = worker.learner(False, optimizer=worker.adam, dropout=0.25)
    with pytest.warns(UserWarning, match=r"holds state for Recorder, Checkpointer, which this "
                                         r"learner does not have"):
        loaded = fp.load_checkpoint(learner, out / "whole")
    assert loaded == out / "whole" / "epoch-0004.pt"
    assert worker.weights(learner) == ranks(out, "resume")[0]["whole"]
    assert learner.optimizer.state_dict()["state"][0]["step"].item() == 16
    learner.fit(1)  # and trains on


def test_a_mid_epoch_sharded_checkpoint_needs_as_many_processes(out):
    learner = worker.learner(False, optimizer=worker.adam, dropout=0.25)
    with pytest.raises(fp.CheckpointError, match=r"middle of an epoch by 2 ranks, and this run "
                                                 r"has 1 rank"):
        fp.load_checkpoint(learner, out / "resumed" / "epoch-0003-step-000003.pt")


def test_a_one_process_checkpoint_loads_into_fsdp_at_two_processes(out):
    single = json.loads((out / "single.json").read_text())
    for rank in ranks(out, "load_single"):
        assert rank["weights"] == single["weights"]
        assert rank["exp_avg"] == single["exp_avg"]


def test_a_sharded_checkpoint_into_a_model_of_another_shape_is_refused(out):
    wide = fp.Learner(torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(),
                                          torch.nn.Dropout(0.25), torch.nn.Linear(16, 1)),
                      F.mse_loss, optimizer=worker.adam, use_default_callbacks=False)
    before = [p.detach().clone() for p in wide.model.parameters()]
    with pytest.raises(fp.CheckpointError, match=r"parameter '0.weight' has shape \(8, 3\) in "
                                                 r"the checkpoint and \(16, 3\) in this "
                                                 r"learner's model"):
        fp.load_checkpoint(wide, out / "whole")
    assert all(torch.equal(a, b) for a, b in zip(before, wide.model.parameters()))


@pytest.mark.parametrize("victim", [1, 0], ids=["rank 1 writing its shards",
                                                "rank 0 writing fluxpy.pt"])
def test_a_rank_killed_mid_save_leaves_the_previous_checkpoint_loadable(tmp_path, victim):
    check_killed(tmp_path, launch(tmp_path, "killed", str(victim)))


def check_killed(tmp_path: Path, done: subprocess.CompletedProcess) -> None:
    """A `killed` launch failed, leaving epoch 1's checkpoint, loadable in one process with
    the weights the ranks had after epoch 1, and epoch 2's unfinished folder."""
    assert done.returncode != 0
    assert not list(tmp_path.glob("killed-survived-*"))
    folder = tmp_path / "killed"
    assert sorted(os.listdir(folder)) == [".epoch-0002.pt.sharded.tmp", "epoch-0001.pt"]
    learner = worker.learner(False, optimizer=worker.adam)
    with pytest.warns(UserWarning, match="holds state for Checkpointer"):
        assert fp.load_checkpoint(learner, folder) == folder / "epoch-0001.pt"
    assert worker.weights(learner) == ranks(tmp_path, "killed")[0]["weights"]


def test_a_stop_on_one_rank_ends_fsdp_training_on_both_at_the_same_step(out):
    rank0, rank1 = ranks(out, "stop")
    assert rank0 == rank1  # the same weights, updates and reason on both ranks
    assert rank0["updates"] == 3  # asked at step 3's StepEnd: step 4 applies no update
    assert rank0["reason"] == "rank 1 asked to stop (rank 1)"


def test_a_one_process_sharded_checkpoint_loads_at_two_processes(out):
    saved = json.loads((out / "one-sharded.json").read_text())
    for rank in ranks(out, "load_one_sharded"):
        assert rank == saved


def test_a_damaged_shard_is_a_checkpoint_error_that_changes_nothing(out, tmp_path):
    folder = tmp_path / "epoch-0004.pt"
    shutil.copytree(out / "whole" / "epoch-0004.pt", folder)
    shard = folder / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:40])
    learner = worker.learner(False, optimizer=worker.adam, dropout=0.25)
    before = worker.weights(learner)
    with pytest.raises(fp.CheckpointError, match=r"could not be loaded: torch.distributed."
                                                 r"checkpoint failed with EOFError on rank 0: "
                                                 r"a shard is missing or damaged. The learner "
                                                 r"is unchanged"):
        fp.load_checkpoint(learner, folder)
    assert worker.weights(learner) == before
    assert learner.optimizer.state_dict()["state"] == {}


def test_the_fsdp_example_prints_what_the_tutorial_shows(tmp_path):
    root = Path(__file__).parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run",
           *two_ranks(root / "examples" / "train_fsdp.py", str(tmp_path / "checkpoints"))]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout == (root / "examples" / "outputs" / "fsdp-2proc.txt").read_text()


def test_ranks_saving_to_different_paths_is_an_error_that_writes_nothing(out):
    for rank, seen in enumerate(ranks(out, "paths")):
        assert seen["files"] == []
        assert seen["error"] == (
            f"{out / f'rank{rank}.pt'}: is not where every rank saves: the ranks gave "
            f"['{out / 'rank0.pt'}', '{out / 'rank1.pt'}']. A sharded checkpoint is one folder "
            "that every rank writes its shards into: give every rank the same path.")
