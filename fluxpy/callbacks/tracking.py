"""Experiment trackers: backends that log to runs (`fp.MLflowBackend`, `fp.WandbBackend`).

A `RunBackend` is a `LogBackend` whose values go to a run of an experiment tracker. What the
logging callbacks (`LogMetrics`, `LogHyperParams`, `LogHistograms`) do with one, on rank 0:

- at `FitBegin` each calls `start_fit(report)`: the first call of a fit starts a run (or
  continues the one a loaded checkpoint names) and stores `report` with it as artifacts under
  `fluxpy/`: `explain.txt` (`fp.explain`'s text), `graph.mmd` (Mermaid), `graph.dot` (DOT)
  and `graph.png` (the picture), so the run records which callbacks ran, in which order and
  why;
- at `FitEnd` (which fires also after an error or Ctrl-C) each calls `end_fit(error)`; the
  last one ends the run: FINISHED, FAILED after an error, KILLED after `KeyboardInterrupt`.

So callbacks sharing a backend share its run: one run per `fit`. The report and the error come
from the learner through declared state (`graph_report=fp.Read()`, `fit_error=fp.Read()`,
which the logging callbacks declare when they have a `RunBackend`): callbacks cannot import
`fp.explain`, which sits above them (see `fluxpy.explain.GraphReport`).

Resuming: `state_dict()` is the run's id, saved in checkpoints with the logging callbacks'
state; after `load_checkpoint` the next fit continues that run instead of starting one. A
tracker keeps every value it is given, so an epoch logged again after a resume from an
earlier checkpoint appears twice at its step (`purge` cannot drop it).

Used on its own (no callback), a `RunBackend` starts a run when it first logs and `close()`
ends it.

Extending:
    Subclass `RunBackend` and implement `_open(run_id)` (start a run, or continue `run_id`;
    return its id), `_finish(status)`, `_log_file(path, data)`, `log_scalar` and, if the
    tracker has them, `log_histogram`; call them only through the public methods, which hold
    the lock (several callbacks and threads may share one backend).
"""

from __future__ import annotations

import threading
from typing import Any

from .backends import LogBackend

__all__ = ["RunBackend", "run_status"]


def run_status(error: BaseException | None) -> str:
    """How a fit that ended with `error` (`None`: normally) ends its run."""
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"


class RunBackend(LogBackend):
    """A backend logging to runs of an experiment tracker: the logging callbacks that share
    it start one run per `fit` (`start_fit`) and the last to end it (`end_fit`) ends the run,
    with the status its error calls for; its id is saved in checkpoints (`state_dict`), so a
    resumed fit continues it. Subclasses implement `_open`, `_finish`, `_log_file` and the
    logging methods; see `fluxpy.callbacks.tracking`.

    Attributes:
        run_id: the id of the run being logged to, or of the last one (`None` before any).
    """

    def __init__(self) -> None:
        self.run_id: str | None = None
        self._running = False  # a run is started and not yet ended
        self._users = 0  # logging callbacks that started this fit's run and have not ended it
        self._resume: str | None = None  # the run a loaded checkpoint names, for the next fit
        self._lock = threading.RLock()

    # -- what the logging callbacks call -------------------------------------------------------

    def start_fit(self, report: Any) -> None:
        """A logging callback begins a fit: the first starts the run and stores `report`
        (a `fluxpy.explain.GraphReport`)."""
        with self._lock:
            if not self._running:
                self._start(self._resume)
                self._resume = None
                self._log_file("fluxpy/explain.txt", report.explanation.encode())
                self._log_file("fluxpy/graph.mmd", report.mermaid.encode())
                self._log_file("fluxpy/graph.dot", report.dot.encode())
                self._log_file("fluxpy/graph.png", report.picture)
            self._users += 1  # (not when starting failed: then no FitEnd ends its run)

    def end_fit(self, error: BaseException | None) -> None:
        """A logging callback ends its fit (`error`: what ended it); the last ends the run."""
        with self._lock:
            self._users = max(self._users - 1, 0)
            if self._users == 0 and self._running:
                self._end(run_status(error))

    def close(self) -> None:
        """Flushes; ends a run started by logging outside a fit (a fit's run ends with
        `end_fit`)."""
        with self._lock:
            if self._running:
                self.flush()
                if self._users == 0:
                    self._end("FINISHED")

    def state_dict(self) -> dict:
        return {} if self.run_id is None else {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self._resume = state.get("run_id")

    # -- for subclasses ------------------------------------------------------------------------

    def _ensure_run(self) -> None:
        """Start a run if none is running (a value logged outside a fit); call with the lock."""
        if not self._running:
            self._start(None)

    def _start(self, run_id: str | None) -> None:
        self.run_id = self._open(run_id)
        self._running = True

    def _end(self, status: str) -> None:
        self._running = False
        self._finish(status)

    def _open(self, run_id: str | None) -> str:
        raise NotImplementedError(f"{type(self).__name__} must implement _open")

    def _finish(self, status: str) -> None:
        """End the run (after sending what is still buffered) with `status`."""
        raise NotImplementedError(f"{type(self).__name__} must implement _finish")

    def _log_file(self, path: str, data: bytes) -> None:
        """Store `data` with the run as the file `path` (e.g. "fluxpy/graph.png")."""
        raise NotImplementedError(f"{type(self).__name__} must implement _log_file")
