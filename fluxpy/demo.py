"""The demo behind `python -m fluxpy demo`: three interleaved spirals learned by a small MLP.

The data is generated with numpy (nothing is downloaded). The demo prints the callback plan
(`fp.explain`), trains with progress bars and the metrics table, then shows the learned
decision regions as text and a summary.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import numpy as np
import torch

from .callbacks import Metrics, MetricsPrinter, ProgressPrinter
from .core.phases import TrainingPhase, ValidationPhase
from .explain import explain
from .learner import Learner

__all__ = ["accuracy", "run_demo", "spirals"]

_MARKS = "ox+"  # one character per class, for points and regions


def spirals(n_per_class: int, classes: int = 3, turns: float = 2.0, noise: float = 0.3,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`classes` spiral arms of `n_per_class` noisy 2-D points each: `(points, labels)`.

    Each arm winds `turns` times around the origin; `noise` jitters the angle (radians).
    """
    rng = np.random.default_rng(seed)
    radius = np.tile(np.linspace(0.05, 1.0, n_per_class), classes)
    labels = np.repeat(np.arange(classes), n_per_class)
    angle = (radius * turns * 2 * np.pi + labels * 2 * np.pi / classes
             + rng.normal(0.0, noise, radius.shape))
    points = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)
    order = rng.permutation(len(labels))
    return points[order].astype(np.float32), labels[order]


def accuracy(preds: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """The fraction of rows whose highest score is the label's."""
    return (preds.argmax(dim=1) == ys).float().mean()


def _loader(points: np.ndarray, labels: np.ndarray, shuffle: bool, seed: int):
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(points), torch.from_numpy(labels))
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=shuffle,
                                       generator=generator)


def _regions(model: torch.nn.Module, points: np.ndarray, labels: np.ndarray,
             width: int = 64, height: int = 24) -> str:
    """The model's class per cell as `. - :`, with a sample of the points on top."""
    xs = np.linspace(-1.1, 1.1, width, dtype=np.float32)
    ys = np.linspace(1.1, -1.1, height, dtype=np.float32)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    with torch.inference_mode():
        cells = model(torch.from_numpy(grid)).argmax(dim=1).reshape(height, width).numpy()
    rows = [[".-:"[c] for c in row] for row in cells]
    for (x, y), label in zip(points[:300], labels[:300]):
        col = round((x + 1.1) / 2.2 * (width - 1))
        row = round((1.1 - y) / 2.2 * (height - 1))
        rows[row][col] = _MARKS[label]
    return "\n".join("    " + "".join(row) for row in rows)


def run_demo(epochs: int = 15, n_per_class: int = 3000, out: TextIO | None = None,
             progress: Any = None) -> dict[str, float]:
    """Train the spiral classifier, printing as it goes; returns the final metrics.

    Args:
        epochs: epochs to train.
        n_per_class: points per spiral arm (a fifth of them are held out for validation).
        out: where the text goes (default `sys.stdout`).
        progress: where the progress bars go (default `sys.stderr`).
    """
    out = out or sys.stdout
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread than on several
    try:
        return _train(epochs, n_per_class, out, progress)
    finally:
        torch.set_num_threads(threads)


def _train(epochs: int, n_per_class: int, out: TextIO, progress: Any) -> dict[str, float]:
    torch.manual_seed(0)
    points, labels = spirals(n_per_class)
    cut = len(labels) * 4 // 5
    train = _loader(points[:cut], labels[:cut], shuffle=True, seed=0)
    valid = _loader(points[cut:], labels[cut:], shuffle=False, seed=0)
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 64), torch.nn.ReLU(),
        torch.nn.Linear(64, 3),
    )
    n_params = sum(p.numel() for p in model.parameters())
    learner = Learner(
        model, torch.nn.functional.cross_entropy, data=(train, valid),
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
        callbacks=[Metrics(accuracy), ProgressPrinter(enabled=True, file=progress),
                   MetricsPrinter(file=out)],
        device="cpu",
    )

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say("fluxpy demo: three interleaved spirals, classified by a small MLP")
    say(f"  data:  {cut} training and {len(labels) - cut} validation points "
        "(generated with numpy, seed 0)")
    say(f"  model: MLP 2 -> 64 -> 64 -> 3 ({n_params} parameters), cross-entropy loss, "
        "Adam lr 3e-3, batches of 32")
    say()
    say("The callback plan (fp.explain(learner)):")
    say(explain(learner))
    say()
    say(f"Training for {epochs} epochs:")
    start = time.perf_counter()
    result = learner.fit(epochs)
    seconds = time.perf_counter() - start

    metrics = learner.cbstate.metricsepoch
    final = {f"{_short(phase)} {name}": series[-1]
             for phase in (TrainingPhase(), ValidationPhase())
             for name, series in metrics.get(phase, {}).items()}
    say()
    say("Final metrics: " + ", ".join(f"{name} {value:.4f}" for name, value in final.items()))
    say()
    say("What the model learned (regions . - : per class, validation points o x +):")
    say(_regions(model.eval(), points[cut:], labels[cut:]))
    say()
    steps = learner.cbstate.history[TrainingPhase()].steps
    say(f"Summary: {result.epochs} epochs, {steps} training steps, valid accuracy "
        f"{final.get('valid accuracy', float('nan')):.1%} (chance: 33.3%), "
        f"trained in {seconds:.1f} s" + (f"; stopped early: {result.stop_reason}"
                                         if result.stopped_early else ""))
    return final


def _short(phase: Any) -> str:
    return {"TrainingPhase": "train", "ValidationPhase": "valid"}[type(phase).__name__]
