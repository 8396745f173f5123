"""Data-parallel training: the same script in one process or on several, unchanged.

    python examples/train_ddp.py
    torchrun --nproc_per_node=2 examples/train_ddp.py

Under torchrun every process is one rank. The learner joins the process group (gloo on the
CPU, NCCL on GPUs, one GPU per rank), wraps the model in DistributedDataParallel, gives each
rank its share of the data (a new DistributedSampler, reshuffled every epoch), averages the
metrics over all ranks at the end of each epoch and prints on rank 0 only.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import fluxpy as fp
from fluxpy.support import distributed


def dataset(n: int, seed: int) -> TensorDataset:
    """Two classes that a straight line cannot separate."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(n, 8, generator=g)
    ys = (xs[:, 0] * xs[:, 1] + 0.5 * xs[:, 2] > 0).long()
    return TensorDataset(xs, ys)


def accuracy(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    return (preds.argmax(dim=1) == ys).float().mean()


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))


def sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


def main() -> None:
    torch.manual_seed(0)
    train = DataLoader(dataset(2048, seed=1), batch_size=64, shuffle=True)
    valid = DataLoader(dataset(1000, seed=2), batch_size=250)
    learner = fp.Learner(model(), F.cross_entropy, data=(train, valid), optimizer=sgd,
                         callbacks=[fp.Metrics(accuracy)])
    say = fp.rank_zero_only(print)
    say(f"world size {distributed.world_size()}, device {learner.device}, "
        f"model {type(learner.model).__name__}")
    learner.fit(5)

    steps = learner.cbstate.history[fp.TrainingPhase()].steps_epoch
    say(f"{steps} training steps per epoch on each rank")
    checksums = distributed.all_gather_object(
        sum(p.double().sum().item() for p in learner.model.parameters()))
    say(f"weights identical on all ranks: {len(set(checksums)) == 1}")

    # Rank 0 writes the checkpoint (the plain model's state) while the others wait.
    path = Path(tempfile.gettempdir()) / "fluxpy-train-ddp.pt"
    fp.rank_zero_only(fp.save_checkpoint)(learner, path)
    distributed.barrier()
    reported = learner.cbstate.metricsepoch[fp.ValidationPhase()]["accuracy"][-1]
    say(f"valid accuracy reported (all ranks' samples): {reported:.4f}")
    if fp.is_rank_zero():  # one process, no DDP: the whole validation set at once
        plain = fp.Learner(model(), F.cross_entropy, optimizer=sgd,
                           callbacks=[fp.Metrics(accuracy)], distributed=False, device="cpu")
        fp.load_checkpoint(plain, path)
        xs, ys = valid.dataset.tensors
        with torch.no_grad():
            print(f"valid accuracy of the reloaded checkpoint in one process: "
                  f"{accuracy(plain.model(xs), ys).item():.4f}")


if __name__ == "__main__":
    main()
