"""Compiled vs eager training of a small ConvNet on the CPU: the time per training step, and
the time the first compiled fit spends compiling; beside them, PyTorch's own loop over the
same batches, eager and compiled, so a difference can be told from fluxpy's.

    .venv/bin/python benchmarks/compile.py [--out benchmarks/results/compile.md] [--rounds 5]

Both learners train the same model from the same weights on the same batches (1x28x28
images, batch 32, 40 steps an epoch, SGD, no validation, no printing callbacks), with one
torch thread. The compiled learner's first `fit(1)` compiles (inductor, with an empty
cache folder, so the time is a first compilation's, not a cached one's); its compile time
is that first epoch minus 40 steady compiled steps. Then `rounds` rounds each time one epoch
of each learner and of each raw loop, in turn; a step's time is an epoch's divided by its
steps (median and min-max over the rounds), in CPU time of this process (the machine may be
shared); the first compiled fit in wall-clock time, as inductor compiles in worker processes.
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

STEPS, BATCH = 40, 32


def convnet() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 10))


def batches() -> list:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(BATCH, 1, 28, 28, generator=generator),
             torch.randint(0, 10, (BATCH,), generator=generator)) for _ in range(STEPS)]


def learner(compile: bool) -> fp.Learner:
    torch.manual_seed(0)
    return fp.Learner(convnet(), torch.nn.functional.cross_entropy, data=(batches(), None),
                      optimizer=lambda ps: torch.optim.SGD(ps, lr=0.01), compile=compile,
                      callbacks=[fp.Recorder(), fp.Metrics()], use_default_callbacks=False,
                      device="cpu")


def epoch_seconds(lrn: fp.Learner, clock=time.process_time) -> float:
    started = clock()
    lrn.fit(1)
    return clock() - started


def raw_loop(compile: bool):
    """PyTorch's loop over the same batches: one call is an epoch, returning its seconds."""
    torch.manual_seed(0)
    model = convnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    forward = torch.compile(model) if compile else model
    data = batches()

    def run() -> float:
        started = time.process_time()
        for xs, ys in data:
            loss = torch.nn.functional.cross_entropy(forward(xs), ys)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        return time.process_time() - started

    return run


def measure(rounds: int) -> dict:
    eager, compiled = learner(False), learner(True)
    first_compiled = epoch_seconds(compiled, time.perf_counter)  # compile workers included
    runs = {"fluxpy, eager": lambda: epoch_seconds(eager),
            "fluxpy, compile=True": lambda: epoch_seconds(compiled),
            "PyTorch loop, eager": raw_loop(False),
            "PyTorch loop, torch.compile": raw_loop(True)}
    for run in runs.values():  # warm up (and compile the raw loop's model)
        run()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(run() / STEPS)
    step = {name: statistics.median(values) for name, values in times.items()}
    return {"times": times, "step": step, "first_compiled": first_compiled,
            "compile": first_compiled - STEPS * step["fluxpy, compile=True"]}


def report(numbers: dict, rounds: int) -> str:
    step, times = numbers["step"], numbers["times"]
    eager, compiled = step["fluxpy, eager"], step["fluxpy, compile=True"]
    raw = step["PyTorch loop, eager"] / step["PyTorch loop, torch.compile"]
    ratio = eager / compiled
    verdict = (f"compiled steps are {ratio:.2f}x as fast as eager ones" if ratio >= 1.05 else
               f"compiled steps are not faster (eager / compiled = {ratio:.2f})")
    pays_after = numbers["compile"] / (eager - compiled) if eager > compiled else None
    rows = [f"| {name} | {1e3 * step[name]:.2f} ({1e3 * min(times[name]):.2f}-"
            f"{1e3 * max(times[name]):.2f}) |" for name in times]
    return "\n".join([
        "# torch.compile: compiled vs eager fit",
        "",
        f"`benchmarks/compile.py`: Python {platform.python_version()}, torch {torch.__version__}, "
        f"one thread, on the CPU. A small ConvNet (two 3x3 convolutions with pooling, two "
        f"linear layers; 1x28x28 inputs, batch {BATCH}, {STEPS} steps an epoch, SGD, training "
        f"only), `fp.Learner(..., compile=True)` against the same learner without it; median "
        f"of {rounds} epochs each, taken in turn (min-max in brackets).",
        "",
        "| training | CPU time per training step (ms) |",
        "|---|--:|",
        *rows,
        "",
        f"First compiled fit: {numbers['first_compiled']:.1f} s (wall clock) for {STEPS} "
        "steps, of which "
        f"about {numbers['compile']:.1f} s compiling (inductor, empty cache).",
        "",
        f"Result: {verdict}"
        + (f"; the compilation pays for itself after about {pays_after:,.0f} steps."
           if pays_after is not None and ratio >= 1.05 else ".")
        + f" PyTorch's own loop over the same batches: eager / compiled = {raw:.2f}"
        + ("; the same, so the difference is torch.compile's on this model and machine, not "
           "fluxpy's." if abs(raw - ratio) < 0.1 else "."),
        "",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" /
                        "compile.md")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    # an empty inductor cache (read when inductor first compiles): it compiles everything
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="fluxpy-inductor-"))
    torch.set_num_threads(1)
    text = report(measure(args.rounds), args.rounds)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
