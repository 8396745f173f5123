"""Multi-node training: two `torchrun` launchers, one process each, meet through c10d
rendezvous on 127.0.0.1 (two launchers on this machine stand in for two nodes) and train
`multinode_worker.py` with DDP over gloo; the results equal those of the same script with
two processes under one launcher.

The two-launcher run saves with `Checkpointer(async_save=True)`, the one-launcher run
synchronously, so the comparison also shows that rank 0's background writes hold what
synchronous ones hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from launch import finish, free_port, torchrun, two_ranks

WORKER = Path(__file__).with_name("multinode_worker.py")
TIMEOUT = 180


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("multinode")
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [torchrun("--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
                      f"--rdzv-endpoint={endpoint}", "--rdzv-id=fluxpy-test",
                      f"--node-rank={node}", str(WORKER), str(out / "nodes"), "async")
             for node in (0, 1)]
    one = torchrun(*two_ranks(WORKER, str(out / "one"), "sync"))
    launchers = [*nodes, one]
    for proc, output in zip(launchers, finish(launchers, TIMEOUT)):
        assert proc.returncode == 0, output[-6000:]
    return {run: [json.loads((out / run / f"rank{r}.json").read_text()) for r in (0, 1)]
            for run in ("nodes", "one")} | {"out": out}


def test_each_launcher_runs_one_rank_of_a_world_of_two(runs):
    seen = [(r["rank"], r["world_size"], r["local_rank"], r["model"]) for r in runs["nodes"]]
    assert seen == [(0, 2, 0, "DistributedDataParallel"), (1, 2, 0, "DistributedDataParallel")]
    assert sorted(r["node"] for r in runs["nodes"]) == [0, 1]  # one rank per launcher
    assert [r["node"] for r in runs["one"]] == [0, 0]


def test_two_launchers_train_the_weights_of_one_launcher_with_two_processes(runs):
    nodes, one = runs["nodes"], runs["one"]
    assert nodes[0]["weights"] == nodes[1]["weights"] == one[0]["weights"] == one[1]["weights"]
    assert len(nodes[0]["valid_loss"]) == 3
    assert nodes[0]["valid_loss"] == nodes[1]["valid_loss"] == one[0]["valid_loss"]


def test_rank_zero_writes_the_same_checkpoints_across_launchers(runs):
    nodes, one = runs["nodes"], runs["one"]
    # 48 samples, batches of 4, two ranks: 6 steps per epoch, 18 in all, a checkpoint every 4
    assert nodes[0]["files"] == one[0]["files"] == [
        "epoch-0000-step-000004.pt", "epoch-0001-step-000002.pt", "epoch-0001-step-000006.pt",
        "epoch-0002-step-000004.pt", "epoch-0003.pt"]
    for name in one[0]["files"]:
        a = torch.load(runs["out"] / "nodes" / "checkpoints" / name, weights_only=True)
        b = torch.load(runs["out"] / "one" / "checkpoints" / name, weights_only=True)
        for key, tensor in b["model"].items():
            assert torch.equal(a["model"][key], tensor), (name, key)
        for index, state in b["optimizer"]["state"].items():
            assert torch.equal(a["optimizer"]["state"][index]["momentum_buffer"],
                               state["momentum_buffer"]), (name, index)
