"""The demo behind `python -m fluxpy demo`: three interleaved spirals learned by a small MLP.

The data is generated with numpy (nothing is downloaded). The demo first shows what no other
training library does: two callbacks that both write the loss are refused before any training
step, with an error naming both and the fix; then it declares the fix (`resolveconflict`),
prints the callback plan (`fp.explain`), trains with progress bars and the metrics table,
shows the learned decision regions as text and a summary, and saves `history.png` and
`graph.png`.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from .callbacks import Metrics, MetricsPrinter, ProgressPrinter
from .core.errors import WriteConflictError
from .core.phases import TrainingPhase, ValidationPhase
from .demo_penalties import (
    ConfidencePenalty,
    L2Penalty,
    declare_penalties_commute,
    penalties_commute,
)
from .explain import explain
from .learner import Learner
from .plots import plot_graph, plot_history
from .support.seeding import seed_everything

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
             progress: Any = None, folder: str | os.PathLike = "fluxpy-demo") -> dict[str, float]:
    """Show a conflict caught before training, fix it, train; returns the final metrics.

    Args:
        epochs: epochs to train.
        n_per_class: points per spiral arm (a fifth of them are held out for validation).
        out: where the text goes (default `sys.stdout`).
        progress: where the progress bars go (default `sys.stderr`).
        folder: where `history.png` and `graph.png` are saved (created if needed).
    """
    out = out or sys.stdout
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains faster on one thread than on several
    try:
        return _train(epochs, n_per_class, out, progress, Path(folder))
    finally:
        torch.set_num_threads(threads)


def _train(epochs: int, n_per_class: int, out: TextIO, progress: Any,
           folder: Path) -> dict[str, float]:
    seed_everything(0)
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

    def make_learner() -> Learner:
        return Learner(
            model, torch.nn.functional.cross_entropy, data=(train, valid),
            optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
            callbacks=[L2Penalty(1e-5), ConfidencePenalty(0.02), Metrics(accuracy),
                       ProgressPrinter(enabled=True, file=progress), MetricsPrinter(file=out)],
            device="cpu",
        )

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    say("fluxpy demo: three interleaved spirals, classified by a small MLP")
    say(f"  data:  {cut} training and {len(labels) - cut} validation points "
        "(generated with numpy, seed 0)")
    say(f"  model: MLP 2 -> 64 -> 64 -> 3 ({n_params} parameters), cross-entropy loss, "
        "Adam lr 3e-3, batches of 32")
    say("  extra: L2Penalty(1e-5) adds the squared weights to the loss; ConfidencePenalty(0.02)")
    say("         subtracts the predictions' entropy. Both write learner.batch.loss.")
    say()
    say("1. A conflict, caught before training. fp.Learner(..., callbacks=[L2Penalty(1e-5),")
    say("   ConfidencePenalty(0.02), ...]) builds the callback graph and refuses it:")
    say()
    try:
        make_learner()
    except WriteConflictError as error:
        say(_indented(f"fp.WriteConflictError: {error}"))
    else:  # the fix was declared by an earlier run in this process
        say("   (no error: penalties_commute was declared by an earlier run in this process)")
    say()
    say("2. The fix: both add a term to the loss, so their order does not matter. Declared with")
    say("   fp.resolveconflict (fluxpy/demo_penalties.py):")
    say()
    say(_indented("@fp.resolveconflict.dispatch\n" + inspect.getsource(penalties_commute)))
    say()
    declare_penalties_commute()
    learner = make_learner()
    say("3. The callback plan (fp.explain(learner)):")
    say(explain(learner))
    say()
    say(f"4. Training for {epochs} epochs (the train loss includes the penalties):")
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
    say(_pictures(learner, folder))
    return final


def _pictures(learner: Learner, folder: Path) -> str:
    """Save the history and the graph as PNGs in `folder`; what was saved, and where."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        plot_history(learner, folder / "history.png")
        plot_graph(learner, folder / "graph.png")
    except ImportError as error:
        return f"Pictures: not drawn ({error})."
    where = folder.resolve()
    return (f"Pictures: {where / 'history.png'} (loss and accuracy per epoch, train and "
            f"valid)\n          {where / 'graph.png'} (the callback graph, fp.plot_graph)")


def _indented(text: str) -> str:
    return "\n".join(f"    {line}".rstrip() for line in text.rstrip().splitlines())


def _short(phase: Any) -> str:
    return {"TrainingPhase": "train", "ValidationPhase": "valid"}[type(phase).__name__]
