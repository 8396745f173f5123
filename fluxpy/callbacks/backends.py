"""Logging backends: where `LogMetrics`, `LogHyperParams` and `LogHistograms` send values.

A value is logged with its `name` (e.g. `"loss"`, `"lr"`, `"params/0.weight"`), its `phase`
(`"TrainingPhase"`, ...), its `step` and the `axis` that step counts along: `"epoch"` (epochs
of the phase, from 1) or `"step"` (the phase's steps, from 0, as schedules count them).

- `TensorBoardBackend(logdir)`: event files for TensorBoard (the `tensorboard` extra), one
  run (a subfolder) per phase and axis: `logdir/TrainingPhase-epoch`,
  `logdir/TrainingPhase-step`, ... Scalar tags are `name/phase` for epochs and
  `name/phase/step` for steps, so a metric's curves share a section; histograms are tagged
  `name`, in the run of their phase's steps.
- `CSVBackend(path)`: one row per scalar, columns `axis,step,phase,name,value`; histograms are
  not written.
- Experiment trackers, one run per `fit`: `MLflowBackend` and `WandbBackend`, in modules of
  their own (`fluxpy.callbacks.tracking` says what they share).

The logging callbacks call `purge(step, phase=, axis=)` at `FitBegin` with the step each phase
and axis continues from, `flush()` at each epoch end and `close()` at `FitEnd`, which fires
also after an error or Ctrl-C. A closed backend opens again when it next logs (a later `fit`).

Why `purge`: a run killed after an epoch was logged but before its checkpoint was written
resumes from the checkpoint before, and logs that epoch again. What lies past the step it
resumes from was logged by a run that no longer counts, so it is dropped (TensorBoard's
`purge_step`, which is why each axis has a run of its own: TensorBoard purges a whole run
from one step on; the CSV's rows past it).

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
import io
import os
import threading
from pathlib import Path
from typing import Any

import torch

from ..support.checkpoint import replaced_atomically

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

    def purge(self, step: int, *, phase: str, axis: str) -> None:
        """Drop what was logged for `phase` along `axis` at `step` or later: logging resumes
        there (called at `FitBegin`; a backend that cannot drop values may ignore it)."""


class TensorBoardBackend(LogBackend):
    """Writes TensorBoard event files to `logdir` with `torch.utils.tensorboard`.

    Args:
        logdir: the run's folder (created when the first value is logged).
    """

    def __init__(self, logdir: str | os.PathLike) -> None:
        self.logdir = Path(logdir)
        self._writers: dict[str, Any] = {}  # run folder name -> SummaryWriter
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TensorBoardBackend({str(self.logdir)!r})"

    def _open(self, phase: str, axis: str, purge_step: int | None = None) -> Any:
        run = f"{phase}-{axis}"
        if run not in self._writers:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ImportError("TensorBoardBackend needs the tensorboard package: "
                                  "pip install 'fluxpy[tensorboard]'") from exc
            self._writers[run] = SummaryWriter(log_dir=str(self.logdir / run),
                                               purge_step=purge_step)
        return self._writers[run]

    def log_scalar(self, name: str, value: float, *, step: int, phase: str, axis: str) -> None:
        tag = f"{name}/{phase}" if axis == "epoch" else f"{name}/{phase}/{axis}"
        with self._lock:
            self._open(phase, axis).add_scalar(tag, value, global_step=step)

    def log_histogram(self, name: str, values: torch.Tensor, *, step: int, phase: str) -> None:
        values = values.detach().float().cpu()
        with self._lock:
            self._open(phase, "step").add_histogram(name, values, global_step=step)

    def purge(self, step: int, *, phase: str, axis: str) -> None:
        """A writer opened with `purge_step` marks the run's restart: TensorBoard then ignores
        what the run logged before at `step` or later."""
        with self._lock:
            if not (self.logdir / f"{phase}-{axis}").is_dir():
                return  # nothing logged there yet
            old = self._writers.pop(f"{phase}-{axis}", None)
            if old is not None:
                old.close()
            self._open(phase, axis, purge_step=step)

    def flush(self) -> None:
        with self._lock:
            for writer in self._writers.values():
                writer.flush()

    def close(self) -> None:
        with self._lock:
            writers, self._writers = self._writers, {}
            for writer in writers.values():
                writer.close()


class CSVBackend(LogBackend):
    """Appends one row per scalar to the CSV file `path`: `axis,step,phase,name,value`.

    The header is written once, when the file is new; an existing log is appended to (a
    resumed run continues it, after `purge` rewrote it without the rows past the resumed
    step). Rows are flushed at every epoch end and on close.

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

    def purge(self, step: int, *, phase: str, axis: str) -> None:
        """Rewrite the file, atomically, without the rows of `phase` along `axis` from `step`
        on (only when there are such rows)."""
        with self._lock:
            if not self.path.exists():
                return
            self._close()
            with open(self.path, newline="") as f:
                table = list(csv.reader(f))
            if not table or tuple(table[0]) != self.HEADER:
                return  # not a log: logging to it says so
            kept = [row for row in table[1:] if not (
                row[0] == axis and row[2] == phase and int(row[1]) >= step)]
            if len(kept) == len(table) - 1:
                return
            text = io.StringIO()
            csv.writer(text).writerows([table[0], *kept])
            with replaced_atomically(self.path) as f:
                f.write(text.getvalue().encode())

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None
