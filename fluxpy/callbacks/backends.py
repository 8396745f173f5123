"""Logging backends: where `LogMetrics`, `LogHyperParams` and `LogHistograms` send values.

A value is logged with its `name` (e.g. `"loss"`, `"lr"`, `"params/0.weight"`), its `phase`
(`"TrainingPhase"`, ...), its `step` and the `axis` that step counts along: `"epoch"` (epochs
of the phase, from 1) or `"step"` (the phase's steps, from 0, as schedules count them).

- `TensorBoardBackend(logdir)`: event files for TensorBoard (the `tensorboard` extra). Scalar
  tags are `name/phase` for epochs and `name/phase/step` for steps, so a metric's curves share
  a section; histograms are tagged `name`.
- `CSVBackend(path)`: one row per scalar, columns `axis,step,phase,name,value`; histograms are
  not written.

The logging callbacks call `flush()` at each epoch end and `close()` at `FitEnd`, which fires
also after an error or Ctrl-C. A closed backend opens again when it next logs (a later `fit`).

Extending:
    Subclass `fp.LogBackend` and implement `log_scalar` (and `log_histogram`, `flush`,
    `close` if they apply); pass instances to the logging callbacks. One backend may serve
    several callbacks, and calls may come from the threads of `ThreadedExecutor`.

        class PrintBackend(fp.LogBackend):
            def log_scalar(self, name, value, *, step, phase, axis):
                print(f"{phase} {axis} {step}: {name} = {value:.4g}")
"""

from __future__ import annotations

import csv
import os
import threading
from pathlib import Path
from typing import Any

import torch

__all__ = ["CSVBackend", "LogBackend", "TensorBoardBackend"]


class LogBackend:
    """The interface the logging callbacks use; subclass it for your own destination."""

    def log_scalar(self, name: str, value: float, *, step: int, phase: str, axis: str) -> None:
        """Record `value` of `name` at `step` (counted along `axis`: "epoch" or "step")."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_scalar")

    def log_histogram(self, name: str, values: torch.Tensor, *, step: int, phase: str) -> None:
        """Record the distribution of `values` (a detached tensor, maybe on a device)."""

    def flush(self) -> None:
        """Make what was logged so far durable (called at every epoch end)."""

    def close(self) -> None:
        """Release files; logging again must reopen them (called at `FitEnd`)."""


class TensorBoardBackend(LogBackend):
    """Writes TensorBoard event files to `logdir` with `torch.utils.tensorboard`.

    Args:
        logdir: the run's folder (created when the first value is logged).
    """

    def __init__(self, logdir: str | os.PathLike) -> None:
        self.logdir = Path(logdir)
        self._writer: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TensorBoardBackend({str(self.logdir)!r})"

    def _open(self) -> Any:
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ImportError("TensorBoardBackend needs the tensorboard package: "
                                  "pip install 'fluxpy[tensorboard]'") from exc
            self._writer = SummaryWriter(log_dir=str(self.logdir))
        return self._writer

    def log_scalar(self, name: str, value: float, *, step: int, phase: str, axis: str) -> None:
        tag = f"{name}/{phase}" if axis == "epoch" else f"{name}/{phase}/{axis}"
        with self._lock:
            self._open().add_scalar(tag, value, global_step=step)

    def log_histogram(self, name: str, values: torch.Tensor, *, step: int, phase: str) -> None:
        values = values.detach().float().cpu()
        with self._lock:
            self._open().add_histogram(name, values, global_step=step)

    def flush(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.flush()

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


class CSVBackend(LogBackend):
    """Appends one row per scalar to the CSV file `path`: `axis,step,phase,name,value`.

    The header is written once, when the file is new; an existing log is appended to (a
    resumed run continues it). Rows are flushed at every epoch end and on close.

    Args:
        path: the CSV file (its folder is created if needed).
    """

    HEADER = ("axis", "step", "phase", "name", "value")

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file: Any = None
        self._writer: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CSVBackend({str(self.path)!r})"

    def _open(self) -> Any:
        if self._writer is None:
            if self.path.exists() and self.path.stat().st_size > 0:
                with open(self.path, newline="") as existing:
                    header = next(csv.reader(existing), None)
                if tuple(header or ()) != self.HEADER:
                    raise ValueError(f"CSVBackend: {self.path} exists and is not a log with "
                                     f"columns {','.join(self.HEADER)}; choose another path")
                self._file = open(self.path, "a", newline="")  # noqa: SIM115 (closed in close)
                self._writer = csv.writer(self._file)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "w", newline="")  # noqa: SIM115
                self._writer = csv.writer(self._file)
                self._writer.writerow(self.HEADER)
        return self._writer

    def log_scalar(self, name: str, value: float, *, step: int, phase: str, axis: str) -> None:
        with self._lock:
            self._open().writerow((axis, step, phase, name, repr(float(value))))

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = self._writer = None
