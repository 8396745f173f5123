"""`WandbBackend`: the logging callbacks' values as Weights & Biases runs.

    tracker = fp.WandbBackend(project="quadrants", mode="offline")
    callbacks = [fp.LogMetrics(tracker), fp.LogHyperParams(tracker)]

One run per `fit` (`wandb.init`, ended by `run.finish` with exit code 0, 1 after an error, 255
after Ctrl-C), with `fp.explain`'s text and the callback graph as files of the run under
`fluxpy/` (see `fluxpy.callbacks.tracking`). A resumed fit continues its run
(`wandb.init(id=..., resume="allow")`).

Keys are `name/phase` for epoch values and `name/phase/step` for step values, as in
`TensorBoardBackend`. W&B has one step counter per run, which must not go back, and the
callbacks log along several (each phase's epochs and steps), so each value is logged with its
own axis as a value, `phase/epoch` or `phase/step`, declared its x axis (`define_metric`):
charts of `loss/TrainingPhase` are against `TrainingPhase/epoch`. Histograms are
`wandb.Histogram`s against `phase/step`.

Needs the `wandb` extra: `pip install 'fluxpy[wandb]'`. `mode="offline"` (or
`WANDB_MODE=offline`) writes runs under `dir` only; `wandb sync` uploads them later.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .tracking import RunBackend

__all__ = ["WandbBackend"]

#: `run.finish` exit codes by run status (W&B marks a non-zero exit as failed).
EXIT_CODES = {"FINISHED": 0, "FAILED": 1, "KILLED": 255}


class WandbBackend(RunBackend):
    """Logs to W&B runs: one run per `fit` (exit code 0, 1 after an error, 255 after Ctrl-C),
    with `fp.explain`'s text and the callback graph under `fluxpy/` in its files. Values are
    `name/phase` per epoch and `name/phase/step` per step, each plotted against its own axis
    (`phase/epoch`, `phase/step`). See `fluxpy.callbacks.wandb_backend`.

    Args:
        project: the W&B project; `None`: W&B's default (`WANDB_PROJECT`, else "uncategorized").
        dir: the folder W&B writes its `wandb/` run folders into; `None`: the working directory.
        mode: "online", "offline" or "disabled"; `None`: W&B's default (`WANDB_MODE`).
        **init_kwargs: more arguments for `wandb.init` (`entity`, `name`, `config`, `tags`...).
    """

    def __init__(self, project: str | None = None, dir: str | os.PathLike | None = None,
                 mode: str | None = None, **init_kwargs: Any) -> None:
        super().__init__()
        self.project = project
        self.dir = None if dir is None else Path(dir)
        self.mode = mode
        self.init_kwargs = init_kwargs
        self.run: Any = None  # the `wandb.Run` being logged to
        self._axes: set[str] = set()  # keys whose x axis the run has been told

    def __repr__(self) -> str:
        return f"WandbBackend(project={self.project!r}, dir={self.dir!r}, mode={self.mode!r})"

    def log_scalar(self, name: str, value: float, *, step: int, phase: str, axis: str) -> None:
        key = f"{name}/{phase}" if axis == "epoch" else f"{name}/{phase}/{axis}"
        with self._lock:
            self._ensure_run()
            self._log(key, float(value), f"{phase}/{axis}", step)

    def log_histogram(self, name: str, values: torch.Tensor, *, step: int, phase: str) -> None:
        import wandb

        values = values.detach().float().flatten().cpu().numpy()
        with self._lock:
            self._ensure_run()
            self._log(name, wandb.Histogram(values), f"{phase}/step", step)

    def _log(self, key: str, value: Any, axis: str, step: int) -> None:
        if key not in self._axes:
            self.run.define_metric(key, step_metric=axis)
            self._axes.add(key)
        self.run.log({key: value, axis: step})

    def _open(self, run_id: str | None) -> str:
        try:
            import wandb
        except ImportError as exc:
            raise ImportError("WandbBackend needs the wandb package: "
                              "pip install 'fluxpy[wandb]'") from exc
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        resume = {} if run_id is None else {"id": run_id, "resume": "allow"}
        self.run = wandb.init(project=self.project, dir=self.dir, mode=self.mode,
                              reinit="create_new", **resume, **self.init_kwargs)
        self._axes = set()
        return self.run.id

    def _finish(self, status: str) -> None:
        run, self.run = self.run, None
        run.finish(exit_code=EXIT_CODES[status])

    def _log_file(self, path: str, data: bytes) -> None:
        file = Path(self.run.dir) / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
        self.run.save(str(file), base_path=self.run.dir, policy="now")
