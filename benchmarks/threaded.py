"""Epoch-end callbacks that do I/O, under `SerialExecutor` and `ThreadedExecutor`.

Each `SlowWriter` appends a line to its own file at `EpochEnd` and then waits 20 ms (standing
in for a slow disk, a network logger or an upload). The writers read `cbstate.history` and
write nothing on the learner, so the graph puts no edge between them and the threaded
executor may run them at the same time. The time of each `EpochEnd` event is taken by an
executor that wraps the one under test (`fp.Executor` is the extension point for that).

    python benchmarks/threaded.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import attrs
import torch

import fluxpy as fp
from fluxpy.testing import test_learner

SLEEP = 0.020
EPOCHS = 10


@attrs.define
class SlowWriter(fp.Callback):
    """Appends `epoch <n>` to `path` at every epoch end, then waits `SLEEP` seconds."""

    path: Path


@fp.stateaccess.dispatch
def _slow_writer_access(cb: SlowWriter):
    return fp.Access(cbstate=fp.Access(history=fp.Read()))


@fp.on.dispatch
def _slow_writer_epoch_end(event: fp.EpochEnd, phase: fp.TrainingPhase, cb: SlowWriter, learner):
    epochs = learner.cbstate.history[phase].epochs
    with open(cb.path, "a", encoding="utf-8") as f:
        f.write(f"epoch {epochs}\n")
        f.flush()
    time.sleep(SLEEP)


class EpochEndTimer(fp.Executor):
    """Runs handlers with `inner` and records how long each training `EpochEnd` took."""

    def __init__(self, inner: fp.Executor) -> None:
        self.inner = inner
        self.seconds: list[float] = []

    def run(self, event, phase, handlers) -> None:
        start = time.perf_counter()
        self.inner.run(event, phase, handlers)
        if isinstance(event, fp.EpochEnd) and isinstance(phase, fp.TrainingPhase):
            self.seconds.append(time.perf_counter() - start)

    def close(self) -> None:
        self.inner.close()


def measure(n_writers: int, threaded: bool, folder: Path) -> list[float]:
    """Seconds per training `EpochEnd` over `EPOCHS` epochs with `n_writers` writers."""
    inner = fp.ThreadedExecutor(max_workers=max(n_writers, 1)) if threaded else \
        fp.SerialExecutor()
    timer = EpochEndTimer(inner)
    kind = "threaded" if threaded else "serial"
    writers = [SlowWriter(folder / f"{kind}-{n_writers}-{i}.log") for i in range(n_writers)]
    learner = test_learner(fp.Recorder(), *writers, n_batches=4, executor=timer,
                           strict=False)
    try:
        learner.fit(EPOCHS, phases=[(fp.TrainingPhase(), learner.data.training)])
    finally:
        timer.close()
    lines = [len(w.path.read_text().splitlines()) for w in writers]
    if lines != [EPOCHS] * n_writers:
        raise RuntimeError(f"each writer should have written {EPOCHS} lines, got {lines}")
    return timer.seconds


@attrs.frozen
class Row:
    writers: int
    serial_ms: float
    threaded_ms: float


def run(writer_counts: tuple[int, ...] = (1, 2, 4)) -> list[Row]:
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in writer_counts:
            serial = statistics.median(measure(n, False, Path(tmp))) * 1e3
            threaded = statistics.median(measure(n, True, Path(tmp))) * 1e3
            rows.append(Row(n, serial, threaded))
    return rows


def markdown(rows: list[Row]) -> str:
    lines = [
        "# Epoch-end I/O: serial and threaded executors",
        "",
        f"Each writer appends a line to its own file at `EpochEnd` and then waits "
        f"{SLEEP * 1e3:.0f} ms; the writers are independent in the callback graph. Median "
        f"time of the training `EpochEnd` event over {EPOCHS} epochs "
        "(`ThreadedExecutor(max_workers=writers)`).",
        "",
        "| writers | SerialExecutor (ms) | ThreadedExecutor (ms) | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r.writers} | {r.serial_ms:.1f} | {r.threaded_ms:.1f} | "
                     f"{r.serial_ms / r.threaded_ms:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    text = markdown(run())
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
