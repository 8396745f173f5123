"""Memory per rank, FSDP against DDP, for a model large enough to show the sharding.

    .venv/bin/python benchmarks/fsdp_memory.py [--out benchmarks/results/fsdp_memory.md]

Launches `torchrun --nproc_per_node=2` (gloo on the CPU, NCCL on GPUs) once with
`distributed=fp.DDP()` and once with `fp.FSDP(shard=(Block,))` on the same model: eight
residual blocks of a 2048x2048 linear layer (33.6 M parameters, 134 MB in float32), Adam.
Each rank reports:
- held: the bytes of the parameters and optimizer state it holds after training (its shards
  under FSDP), counted from the tensors (the gradients are freed after each update);
- peak: the most memory the process used during `fit` (CUDA: `max_memory_allocated`; CPU:
  the resident set's high-water mark, reset before `fit` through `/proc/self/clear_refs`),
  above what it used before `fit`, when the model was already built (and sharded).
DDP holds every parameter, gradient and Adam moment on each rank; FSDP holds half of each,
and gathers one block's parameters at a time for its forward and backward.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import fluxpy as fp
from fluxpy.support.distributed import rank as distributed_rank

WIDTH, BLOCKS, BATCH, STEPS = 2048, 8, 16, 4
#: glibc raises its mmap threshold when a large block is freed, after which blocks such as a
#: gathered 16 MB layer come from the heap and stay in the resident set when freed: the CPU
#: high-water mark would measure the allocator, not the tensors. A fixed threshold (128 KiB,
#: glibc's default) returns every large block to the system when it is freed.
ENVIRONMENT = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}


class Block(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.linear(x))


def _local_bytes(tensor: torch.Tensor | None) -> int:
    if not isinstance(tensor, torch.Tensor):
        return 0
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor's shard
    return local.numel() * local.element_size()


def _rss_high_water() -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def worker(strategy: str, out: Path) -> None:
    """One rank: build, train `STEPS` steps, report."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(*[Block(WIDTH) for _ in range(BLOCKS)])
    distributed = fp.FSDP(shard=(Block,)) if strategy == "fsdp" else fp.DDP()
    xs = torch.randn(BATCH, WIDTH)
    data = [(xs, xs)] * STEPS
    learner = fp.Learner(model, torch.nn.functional.mse_loss,
                         optimizer=lambda params: torch.optim.Adam(params, lr=1e-4),
                         distributed=distributed, use_default_callbacks=False)
    cuda = learner.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # the high-water mark restarts here
        before = _rss()
    learner.fit(phases=[(fp.TrainingPhase(), data)], n_epochs=1)
    peak = (torch.cuda.max_memory_allocated() if cuda else _rss_high_water()) - before
    params = list(learner.model.parameters())
    held = {
        "parameters": sum(_local_bytes(p) for p in params),
        "optimizer": sum(_local_bytes(v) for state in learner.optimizer.state.values()
                         for v in state.values()),
    }
    report = {"rank": distributed_rank(), "device": learner.device.type,
              "held": held, "peak": peak}
    (out / f"{strategy}-rank{report['rank']}.json").write_text(json.dumps(report))
    torch.distributed.destroy_process_group()
    # Skip the interpreter's teardown: torch's C++ destructors at exit abort now and then
    # ("terminate called without an active exception") after the report was written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", nargs=2, metavar=("STRATEGY", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in ("ddp", "fsdp"):
            subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                            "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
                            __file__, "--worker", strategy, tmp],
                           check=True, env={**os.environ, **ENVIRONMENT})
        reports = {(s, r): json.loads((Path(tmp) / f"{s}-rank{r}.json").read_text())
                   for s in ("ddp", "fsdp") for r in (0, 1)}
    mb = 1e6
    rows = [f"| {s.upper()} | {r} | {rep['held']['parameters'] / mb:.0f} | "
            f"{rep['held']['optimizer'] / mb:.0f} | "
            f"{sum(rep['held'].values()) / mb:.0f} | {rep['peak'] / mb:.0f} |"
            for (s, r), rep in reports.items()]
    device = reports["ddp", 0]["device"]
    text = "\n".join([
        "# Memory per rank: FSDP against DDP",
        "",
        f"`benchmarks/fsdp_memory.py`: Python {platform.python_version()}, torch "
        f"{torch.__version__}, two ranks on {device}. {BLOCKS} residual blocks of a "
        f"{WIDTH}x{WIDTH} linear layer (134 MB of float32 parameters), Adam, {STEPS} training "
        f"steps of batch {BATCH}. MB = 10^6 bytes.",
        "",
        "| strategy | rank | parameters (MB) | Adam state (MB) | "
        "held (MB) | peak in fit above its start (MB) |",
        "|---|--:|--:|--:|--:|--:|",
        *rows,
        "",
    ])
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
