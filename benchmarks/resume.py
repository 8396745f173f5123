"""Time to the first resumed step after a mid-epoch checkpoint at step k, for k = 10 and
k = 10,000, on a map-style dataset; against skipping k batches by iterating the DataLoader.

    .venv/bin/python benchmarks/resume.py [--out benchmarks/results/resume.md]

For each k: a run stops with `fit(max_steps=k)` (its `Checkpointer` writes the step); a fresh
learner then loads the folder and `fit(1)` runs until the first `StepEnd`, which stops the
fit. Timed: `load_checkpoint` + the fit up to that step (median of 5), and the order of the
epoch drawn again (`Position.start_epoch` and its first batch). The naive way, iterating the
DataLoader past k batches, reads k * batch_size items: it is timed for comparison. Not part
of `make bench` (the k = 10,000 run trains 10,000 steps first).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

import fluxpy as fp
from fluxpy.core.callback import on

N_ITEMS, BATCH = 80_000, 4  # 20,000 batches an epoch


class Items(Dataset):
    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.xs = torch.randn(N_ITEMS, 8, generator=generator)
        self.ys = self.xs.sum(1, keepdim=True)

    def __len__(self) -> int:
        return N_ITEMS

    def __getitem__(self, i):
        return self.xs[i], self.ys[i]


class FirstStep(fp.Callback):
    """Notes when the first step ends, and stops the fit there."""

    seconds: float | None = None


@on.dispatch
def _first_step(event: fp.StepEnd, phase: fp.TrainingPhase, cb: FirstStep, learner):
    cb.seconds = time.perf_counter()
    raise fp.CancelFitException("first step")


def make(folder, *callbacks):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    loader = DataLoader(Items(), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(1))
    return fp.Learner(model, torch.nn.functional.mse_loss, data=(loader, None),
                      optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
                      callbacks=[fp.Checkpointer(folder), *callbacks],
                      use_default_callbacks=False, device="cpu")


def time_to_first_step(folder: Path) -> float:
    first = FirstStep()
    learner = make(folder.parent / "resumed", first)
    started = time.perf_counter()
    fp.load_checkpoint(learner, folder)
    learner.fit(1)
    return first.seconds - started


def naive_skip(k: int) -> float:
    loader = make(Path(tempfile.mkdtemp())).data.training
    started = time.perf_counter()
    iterator = iter(loader)
    for _ in range(k + 1):
        next(iterator)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for k in (10, 10_000):
        root = Path(tempfile.mkdtemp())
        make(root / "run").fit(1, max_steps=k)
        resumed = statistics.median(time_to_first_step(root / "run") for _ in range(5))
        naive = statistics.median(naive_skip(k) for _ in range(3))
        rows.append((k, resumed, naive))
        print(f"k={k}: resumed first step {resumed * 1e3:.1f} ms, iterating past k batches "
              f"{naive * 1e3:.1f} ms")
    lines = [
        "# Time to the first resumed step",
        "",
        f"`benchmarks/resume.py`: Python {platform.python_version()}, torch "
        f"{torch.__version__}, one thread. A shuffled DataLoader (seeded generator) over a "
        f"map-style dataset of {N_ITEMS:,} items, batch size {BATCH} "
        f"({N_ITEMS // BATCH:,} batches an epoch). Resumed: `load_checkpoint` of the "
        "checkpoint at step k, then `fit(1)` up to the first `StepEnd` (median of 5); the "
        "epoch's order is drawn again (one `randperm` of the dataset) and cut at "
        "k * batch_size, reading no skipped item. Naive: iterating the DataLoader past k "
        "batches (median of 3).",
        "",
        "| k | resumed: to the first step (ms) | naive: iterate past k batches (ms) |",
        "|--:|--------------------------------:|-----------------------------------:|",
        *(f"| {k:,} | {r * 1e3:.1f} | {n * 1e3:.1f} |" for k, r, n in rows),
        "",
        "The resumed time does not grow with k: it is the checkpoint's load and one pass "
        "over the sampler's indices (the dataset's length), as at the start of any epoch.",
        "",
    ]
    if args.out:
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
