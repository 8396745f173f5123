"""One rank of `test_multinode.py`: trains a small model under DDP with a checkpoint every 4
training steps, then writes what it saw to `OUT/rank<R>.json`.

    torchrun ... tests/distributed/multinode_worker.py OUT sync|async
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from worker_common import exit_rank

import fluxpy as fp
from fluxpy.support import distributed


def main(out: Path, async_save: bool) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    xs = torch.randn(64, 4, generator=generator)
    ys = xs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(64, 1,
                                                                            generator=generator)
    train = DataLoader(TensorDataset(xs[:48], ys[:48]), batch_size=4, shuffle=True)
    valid = DataLoader(TensorDataset(xs[48:], ys[48:]), batch_size=5)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    checkpointer = fp.Checkpointer(out / "checkpoints", every=fp.Every(steps=4), keep_last=None,
                                   async_save=async_save)
    learner = fp.Learner(model, F.mse_loss, data=(train, valid),
                         optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
                         callbacks=[fp.Recorder(), fp.Metrics(), checkpointer],
                         use_default_callbacks=False)
    learner.fit(3)
    rank = distributed.rank()
    seen = {
        "rank": rank,
        "world_size": distributed.world_size(),
        "node": int(os.environ["GROUP_RANK"]),  # torchrun's rank of this launcher
        "local_rank": distributed.local_rank(),
        "model": type(learner.model).__name__,
        "weights": [p.detach().double().flatten().tolist() for p in learner.model.parameters()],
        "valid_loss": learner.cbstate.metricsepoch[fp.ValidationPhase()]["loss"],
        "files": sorted(p.name for p in (out / "checkpoints").iterdir()),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(seen))
    distributed.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] == "async")
    exit_rank()
