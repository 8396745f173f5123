"""Sharded training with FSDP2, and its sharded checkpoints.

    torchrun --nproc_per_node=2 examples/train_fsdp.py CHECKPOINT_FOLDER

Each rank holds half of every Block's parameters, gradients and optimizer state; a Block's
parameters are gathered for its forward and backward only. Every rank writes its shards into
each checkpoint (a folder), from a copy in host memory, on a thread of its own while training
goes on (`async_save=True`); the folder then loads at two ranks and in one plain process.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import fluxpy as fp


class Block(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.linear(x))


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 32), Block(32), Block(32),
                               torch.nn.Linear(32, 2))


def dataset(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, 8, generator=g)
    return TensorDataset(xs, (xs[:, 0] * xs[:, 1] + 0.5 * xs[:, 2] > 0).long())


def adamw(params) -> torch.optim.Optimizer:  # a factory: FSDP builds it from the shards
    return torch.optim.AdamW(params, lr=1e-2)


def learner(folder: str, distributed) -> fp.Learner:
    train = DataLoader(dataset(1024, seed=1), batch_size=64, shuffle=True)
    valid = DataLoader(dataset(500, seed=2), batch_size=100)
    return fp.Learner(model(), F.cross_entropy, data=(train, valid), optimizer=adamw,
                      callbacks=[fp.Checkpointer(folder, async_save=True)],
                      distributed=distributed)


def main(folder: str) -> None:
    torch.manual_seed(0)
    sharded = learner(folder, fp.FSDP(shard=(Block,)))
    sharded.fit(2)
    say = fp.rank_zero_only(print)
    say(str(fp.explain(sharded)).split("Distributed")[1].splitlines()[1].strip())
    say(f"a parameter on this rank: {tuple(sharded.model[1].linear.weight.to_local().shape)} "
        f"of {tuple(sharded.model[1].linear.weight.shape)}")
    resumed = learner(folder, fp.FSDP(shard=(Block,)))
    say(f"loaded {fp.load_checkpoint(resumed, folder).name} at 2 ranks")
    resumed.fit(1)
    dist.destroy_process_group()
    if fp.is_rank_zero():  # one plain process, no process group: the full parameters
        plain = learner(folder, distributed=False)
        print(f"loaded {fp.load_checkpoint(plain, folder).name} in one process: "
              f"{tuple(plain.model[1].linear.weight.shape)}")


if __name__ == "__main__":
    main(sys.argv[1])
