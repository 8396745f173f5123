"""How long a training step is blocked by a checkpoint of a ~200 MB state: synchronous saves
against `Checkpointer(async_save=True)`.

    .venv/bin/python benchmarks/checkpoint_async.py [--out benchmarks/results/checkpoint_async.md]

The model is four 2048x2048 linear layers (16.8 M parameters, 67 MB) trained with Adam (two
more tensors per parameter): the checkpoint file is about 200 MB. A `Checkpointer` saves
every `--every` training steps into a temporary folder on the same disk as `/tmp`. An
executor times every handler: "blocked" is how long the Checkpointer's `StepEnd` handler
takes at a step that saves (synchronous: the whole write, digest and fsync included; async:
the copy of the state to host memory, plus any wait for the previous write, which the
spacing of the saves is chosen to avoid). The steps between saves are timed too: with async
saves the write runs beside them and competes for the CPU and the disk. The two modes
alternate, `--rounds` fits each; medians over all saves. Not part of `make bench` (it writes
a few GB).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import fluxpy as fp

WIDTH, LAYERS, BATCH = 2048, 4, 16


class TimingExecutor(fp.Executor):
    """Runs handlers in order and keeps, per training step, when its `StepEnd` handlers
    ended and how long the Checkpointer's took."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, float]] = []  # (end of StepEnd, checkpointer seconds)

    def run(self, event, phase, handlers) -> None:
        checkpointer = 0.0
        for handler in handlers:
            start = time.perf_counter()
            handler()
            if isinstance(handler.callback, fp.Checkpointer):
                checkpointer = time.perf_counter() - start
        if isinstance(phase, fp.TrainingPhase) and isinstance(event, fp.StepEnd):
            self.steps.append((time.perf_counter(), checkpointer))


def fit(async_save: bool, every: int, saves: int, folder: Path) -> tuple[list, list, float]:
    """One fit of `saves * every` steps; (blocked seconds per save, seconds of the other
    steps, file size in MB)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])
    xs = torch.randn(BATCH, WIDTH)
    data = [(xs, xs)] * (every * saves)
    executor = TimingExecutor()
    learner = fp.Learner(model, torch.nn.functional.mse_loss,
                         callbacks=[fp.Checkpointer(folder, every=fp.Every(steps=every),
                                                    keep_last=1, async_save=async_save)],
                         use_default_callbacks=False, device="cpu", executor=executor)
    learner.fit(phases=[(fp.TrainingPhase(), data)], n_epochs=1)
    blocked = [cp for k, (_, cp) in enumerate(executor.steps, 1) if k % every == 0]
    ends = [end for end, _ in executor.steps]
    # a step from the end of the previous one: forward, backward, update, StepEnd handlers
    between = [ends[k] - ends[k - 1] for k in range(1, len(ends)) if (k + 1) % every]
    size = max(p.stat().st_size for p in folder.iterdir()) / 1e6
    return blocked, between, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--every", type=int, default=30, help="training steps between saves")
    parser.add_argument("--saves", type=int, default=3, help="saves per fit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    results = {False: ([], []), True: ([], [])}
    with tempfile.TemporaryDirectory() as tmp:
        fit(False, 2, 1, Path(tmp) / "warm-up")
        for r in range(args.rounds):
            for async_save in (False, True):
                folder = Path(tmp) / f"{r}-{async_save}"
                blocked, between, size = fit(async_save, args.every, args.saves, folder)
                results[async_save][0].extend(blocked)
                results[async_save][1].extend(between)
                print(f"round {r} async_save={async_save}: blocked "
                      f"{[round(b * 1e3, 1) for b in blocked]} ms", flush=True)
    rows = []
    for async_save in (False, True):
        blocked, between = results[async_save]
        rows.append((async_save, statistics.median(blocked), min(blocked), max(blocked),
                     statistics.median(between)))
    ratio = rows[1][1] / rows[0][1]
    text = "\n".join([
        "# A training step blocked by a checkpoint: synchronous vs async saves",
        "",
        f"`benchmarks/checkpoint_async.py`: Python {platform.python_version()}, torch "
        f"{torch.__version__}, one thread, CPU. {LAYERS} linear layers {WIDTH}x{WIDTH} with "
        f"Adam: a checkpoint file of {size:.0f} MB, written to the disk under `/tmp`. A save "
        f"every {args.every} training steps (batch {BATCH}), {args.saves} per fit, "
        f"{args.rounds} fits per mode, alternating; medians over all "
        f"{len(results[False][0])} saves of a mode. The machine's load average was "
        f"{load:.1f} at the start and {os.getloadavg()[0]:.1f} at the end "
        f"({os.cpu_count()} cores): other processes shared the CPU and the disk, hence the "
        "wide min-max.",
        "",
        "| saves | step blocked by the save (ms, median) | min-max (ms) | "
        "other steps (ms, median) |",
        "|---|--:|--:|--:|",
        *(f"| {'async_save=True' if a else 'synchronous'} | {m * 1e3:.1f} | "
          f"{lo * 1e3:.1f}-{hi * 1e3:.1f} | {s * 1e3:.1f} |" for a, m, lo, hi, s in rows),
        "",
        f"Async blocks for {ratio:.3f} of the synchronous time (target: below 0.2). It is the "
        "copy of the state to host memory; the write (serialisation, sha256 digest, fsync, "
        "rename) runs beside the following steps, which is why they can be slower than "
        "between synchronous saves.",
        "",
    ])
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
