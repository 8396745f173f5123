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
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("multinode_worker.py")
TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def _finish(launchers: list[subprocess.Popen]) -> None:
    outputs = []
    try:
        for proc in launchers:
            outputs.append(proc.communicate(timeout=TIMEOUT)[0])
    except subprocess.TimeoutExpired:
        for proc in launchers:
            os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the launchers did not finish in {TIMEOUT} s (a hang)")
    for proc, output in zip(launchers, outputs):
        assert proc.returncode == 0, output[-6000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("multinode")
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [_torchrun("--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
                       f"--rdzv-endpoint={endpoint}", "--rdzv-id=fluxpy-test",
                       f"--node-rank={node}", str(WORKER), str(out / "nodes"), "async")
             for node in (0, 1)]
    one = _torchrun("--nproc_per_node=2", "--master_addr=127.0.0.1",
                    f"--master_port={_free_port()}", str(WORKER), str(out / "one"), "sync")
    _finish([*nodes, one])
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
