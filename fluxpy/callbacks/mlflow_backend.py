"""`MLflowBackend`: the logging callbacks' values as metrics of MLflow runs.

    tracker = fp.MLflowBackend("sqlite:///mlflow.db", experiment="quadrants")
    callbacks = [fp.LogMetrics(tracker), fp.LogHyperParams(tracker)]

One run per `fit`, ended FINISHED, FAILED or KILLED, with `fp.explain`'s text and the callback
graph as artifacts (see `fluxpy.callbacks.tracking`). Metric keys are `name/phase` for epoch
values (step: the epoch, from 1) and `name/phase/step` for step values (step: the phase's step
index), as in `TensorBoardBackend`: `loss/TrainingPhase`, `lr/TrainingPhase/step`. MLflow has
no histograms: a histogram is logged as its `/mean`, `/std`, `/min` and `/max`.

It talks to MLflow through its own `MlflowClient`, not MLflow's global active run, so several
backends (and your own `mlflow.start_run`) do not interfere. Values are kept until `flush()`
(every epoch end) and the run's end, and then sent in batches (`log_batch`): training does not
wait for a tracking server at every step. Needs the `mlflow` extra:
`pip install 'fluxpy[mlflow]'`.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .tracking import RunBackend

__all__ = ["MLflowBackend"]

#: The most metric values MLflow takes in one `log_batch`.
BATCH = 1000


class MLflowBackend(RunBackend):
    """Logs to MLflow runs: one run per `fit`, ended FINISHED, FAILED or KILLED, with
    `fp.explain`'s text and the callback graph under `fluxpy/` in its artifacts. Metrics are
    `name/phase` per epoch and `name/phase/step` per step; a histogram is logged as its
    `/mean`, `/std`, `/min` and `/max`. See `fluxpy.callbacks.mlflow_backend`.

    Args:
        tracking_uri: where MLflow stores runs: a folder or `file:` URI (a local file store),
            `sqlite:///path.db`, or a tracking server's `http://host:port`; `None` uses
            MLflow's default (`MLFLOW_TRACKING_URI`, else its local default).
        experiment: the experiment's name, created if missing; `None`: MLflow's default one.
        run_name: each run's name; `None` lets MLflow pick one.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None,
                 run_name: str | None = None) -> None:
        super().__init__()
        self.tracking_uri = None if tracking_uri is None else str(tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self._client: Any = None
        self._pending: list[tuple[str, float, int, int]] = []  # (key, value, time in ms, step)

    def __repr__(self) -> str:
        return (f"MLflowBackend(tracking_uri={self.tracking_uri!r}, "
                f"experiment={self.experiment!r}, run_name={self.run_name!r})")

    def log_scalar(self, name: str, value: float, *, step: int, phase: str, axis: str) -> None:
        key = f"{name}/{phase}" if axis == "epoch" else f"{name}/{phase}/{axis}"
        with self._lock:
            self._ensure_run()
            self._pending.append((key, float(value), int(time.time() * 1000), step))

    def log_histogram(self, name: str, values: torch.Tensor, *, step: int, phase: str) -> None:
        values = values.detach().double().flatten().cpu()
        stats = torch.stack([values.mean(), values.std() if values.numel() > 1
                             else torch.zeros((), dtype=values.dtype),
                             values.min(), values.max()]).tolist()
        now = int(time.time() * 1000)
        with self._lock:
            self._ensure_run()
            self._pending += [(f"{name}/{stat}", value, now, step)
                              for stat, value in zip(("mean", "std", "min", "max"), stats)]

    def flush(self) -> None:
        """Send the values logged since the last flush."""
        with self._lock:
            if not self._pending:
                return
            from mlflow.entities import Metric

            pending, self._pending = self._pending, []
            for start in range(0, len(pending), BATCH):
                self._client.log_batch(self.run_id, [
                    Metric(key, value, timestamp, step)
                    for key, value, timestamp, step in pending[start:start + BATCH]])

    def _open(self, run_id: str | None) -> str:
        if self._client is None:
            try:
                from mlflow.tracking import MlflowClient
            except ImportError as exc:
                raise ImportError("MLflowBackend needs the mlflow package: "
                                  "pip install 'fluxpy[mlflow]'") from exc
            self._client = MlflowClient(self.tracking_uri)
        if run_id is not None:
            from mlflow.exceptions import MlflowException

            try:
                self._client.update_run(run_id, status="RUNNING")
            except MlflowException as exc:
                raise ValueError(
                    f"MLflowBackend: the loaded checkpoint continues run {run_id}, which "
                    f"tracking_uri={self.tracking_uri!r} does not hold ({exc.message}); give "
                    "the MLflowBackend the tracking_uri the run was logged to") from exc
            return run_id
        return self._client.create_run(self._experiment_id(), run_name=self.run_name).info.run_id

    def _experiment_id(self) -> str:
        name = self.experiment or "Default"
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        return self._client.create_experiment(name)

    def _finish(self, status: str) -> None:
        self.flush()
        self._client.set_terminated(self.run_id, status=status)

    def _log_file(self, path: str, data: bytes) -> None:
        with tempfile.TemporaryDirectory() as folder:
            file = Path(folder) / Path(path).name
            file.write_bytes(data)
            self._client.log_artifact(self.run_id, str(file), str(Path(path).parent))
