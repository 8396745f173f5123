"""Overhead of fluxpy (and of its peers, when installed) over a hand-written PyTorch loop.

The workload: MLPs of three sizes on pre-made in-memory batches (256 training batches of 64
examples, 64 validation batches, 10 classes), SGD, cross-entropy, one thread. Every variant
runs one training and one validation epoch per fit, from the same initial weights; only the
fit is timed (models, optimizers, learners and trainers are built before the clock starts).

Variants run interleaved, in a rotated order each repeat, after one warm-up fit each. Each
repeat's time is divided by the time of the raw loop that calls `loss.item()` every step in
the same repeat; the table shows the median of those ratios and their spread (min-max).

    python benchmarks/overhead.py                 # all sizes, default repeats
    python benchmarks/overhead.py --sizes tiny --repeats 21
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import fluxpy as fp

N_TRAIN, N_VALID, BATCH, CLASSES = 256, 64, 64, 10
LR = 0.01
SIZES: dict[str, tuple[int, ...]] = {
    "tiny": (32, 64, 10),
    "medium": (128, 512, 512, 10),
    "large": (512, 2048, 2048, 10),
}
#: Timed repeats per size in the default run (after one warm-up fit of every variant).
REPEATS = {"tiny": 21, "medium": 7, "large": 3}
BASELINE = "raw (.item() per step)"


@dataclass
class Workload:
    sizes: tuple[int, ...]
    train: list[tuple[torch.Tensor, torch.Tensor]]
    valid: list[tuple[torch.Tensor, torch.Tensor]]
    state: dict[str, torch.Tensor]


def make_workload(sizes: tuple[int, ...], seed: int = 0) -> Workload:
    gen = torch.Generator().manual_seed(seed)

    def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.randn(BATCH, sizes[0], generator=gen),
                 torch.randint(0, CLASSES, (BATCH,), generator=gen)) for _ in range(n)]

    torch.manual_seed(seed)
    state = {k: v.clone() for k, v in _mlp(sizes).state_dict().items()}
    return Workload(sizes, batches(N_TRAIN), batches(N_VALID), state)


def _mlp(sizes: tuple[int, ...]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def model_and_optimizer(w: Workload) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = _mlp(w.sizes)
    model.load_state_dict(w.state)
    return model, torch.optim.SGD(model.parameters(), lr=LR)


# -- variants: each builds what it needs and returns the fit to time -------------------------

def raw_item(w: Workload) -> Callable[[], None]:
    """The hand-written loop most people write: the loss read with `.item()` every step."""
    model, opt = model_and_optimizer(w)

    def fit() -> None:
        model.train()
        total = 0.0
        for xs, ys in w.train:
            loss = F.cross_entropy(model(xs), ys)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            total += loss.item()
        model.eval()
        total = 0.0
        with torch.inference_mode():
            for xs, ys in w.valid:
                total += F.cross_entropy(model(xs), ys).item()

    return fit


def raw_device(w: Workload) -> Callable[[], None]:
    """The same loop with the losses kept on the device and averaged at epoch end."""
    model, opt = model_and_optimizer(w)

    def fit() -> None:
        model.train()
        losses = []
        for xs, ys in w.train:
            loss = F.cross_entropy(model(xs), ys)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        torch.stack(losses).mean().item()
        model.eval()
        losses = []
        with torch.inference_mode():
            for xs, ys in w.valid:
                losses.append(F.cross_entropy(model(xs), ys))
        torch.stack(losses).mean().item()

    return fit


def _fluxpy(w: Workload, callbacks: list, defaults: bool) -> Callable[[], None]:
    model, opt = model_and_optimizer(w)
    learner = fp.Learner(model, F.cross_entropy, data=(w.train, w.valid), optimizer=opt,
                         callbacks=callbacks, use_default_callbacks=defaults, device="cpu")
    return lambda: learner.fit(1)


def fluxpy_minimal(w: Workload) -> Callable[[], None]:
    return _fluxpy(w, [fp.Recorder(), fp.Metrics()], defaults=False)


def fluxpy_defaults(w: Workload) -> Callable[[], None]:
    quiet = [fp.ProgressPrinter(enabled=False), fp.MetricsPrinter(file=io.StringIO())]
    return _fluxpy(w, quiet, defaults=True)


class EpochEndOnly(fp.Callback):
    """A callback with a handler for `EpochEnd` and nothing else."""

    def __init__(self) -> None:
        self.calls = 0


@fp.on.dispatch
def _epoch_end_only(event: fp.EpochEnd, phase: fp.Phase, cb: EpochEndOnly, learner):
    cb.calls += 1


def fluxpy_defaults_20(w: Workload) -> Callable[[], None]:
    quiet = [fp.ProgressPrinter(enabled=False), fp.MetricsPrinter(file=io.StringIO())]
    return _fluxpy(w, quiet + [EpochEndOnly() for _ in range(20)], defaults=True)


def ignite(w: Workload) -> Callable[[], None]:
    """Ignite's supervised trainer, with an evaluator computing the loss after each epoch."""
    from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer
    from ignite.metrics import Loss

    model, opt = model_and_optimizer(w)
    trainer = create_supervised_trainer(model, opt, F.cross_entropy)
    evaluator = create_supervised_evaluator(model, metrics={"loss": Loss(F.cross_entropy)})
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(w.valid))
    return lambda: trainer.run(w.train, max_epochs=1)


def lightning(w: Workload) -> Callable[[], None]:
    """`Trainer.fit` with the progress bar, logger, checkpointing and summary off."""
    import lightning as L

    model, opt = model_and_optimizer(w)

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def training_step(self, batch, _index):
            xs, ys = batch
            loss = F.cross_entropy(self.model(xs), ys)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def validation_step(self, batch, _index):
            xs, ys = batch
            self.log("valid_loss", F.cross_entropy(self.model(xs), ys))

        def configure_optimizers(self):
            return opt

    class Batches:  # one loader (Lightning reads a bare list as a list of loaders)
        def __init__(self, items):
            self.items = items

        def __iter__(self):
            return iter(self.items)

        def __len__(self) -> int:
            return len(self.items)

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    module = Module()
    return lambda: trainer.fit(module, Batches(w.train), Batches(w.valid))


@dataclass(frozen=True)
class Variant:
    name: str
    prepare: Callable[[Workload], Callable[[], None]]
    needs: str | None = None  # an optional package


VARIANTS = (
    Variant(BASELINE, raw_item),
    Variant("raw (loss kept on device)", raw_device),
    Variant("fluxpy: Recorder + Metrics", fluxpy_minimal),
    Variant("fluxpy: defaults, no progress bar", fluxpy_defaults),
    Variant("fluxpy: defaults + 20 EpochEnd-only", fluxpy_defaults_20),
    Variant("ignite", ignite, needs="ignite"),
    Variant("lightning", lightning, needs="lightning"),
)


def available_variants() -> tuple[list[Variant], list[str]]:
    """The variants whose packages are installed, and the names of those skipped."""
    have = [v for v in VARIANTS if v.needs is None or importlib.util.find_spec(v.needs)]
    skipped = [v.name for v in VARIANTS if v not in have]
    return have, skipped


def measure(size: str, repeats: int, variants: list[Variant]) -> dict[str, list[float]]:
    """Seconds per fit of each variant: one warm-up each, then `repeats` interleaved rounds."""
    w = make_workload(SIZES[size])
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for v in variants:  # warm-up: allocator, plum caches, lazy imports
        v.prepare(w)()
    for r in range(repeats):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            fit = v.prepare(w)
            start = time.perf_counter()
            fit()
            times[v.name].append(time.perf_counter() - start)
    return times


@dataclass(frozen=True)
class Row:
    size: str
    variant: str
    seconds: float  # median seconds per fit
    ratio: float  # median of the per-repeat ratios to the baseline
    low: float  # min and max of those ratios
    high: float
    repeats: int


def summarize(size: str, times: dict[str, list[float]]) -> list[Row]:
    base = times[BASELINE]
    rows = []
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, base)]
        rows.append(Row(size, name, statistics.median(ts), statistics.median(ratios),
                        min(ratios), max(ratios), len(ts)))
    return rows


def run(sizes: list[str], repeats: dict[str, int]) -> tuple[list[Row], list[str]]:
    torch.set_num_threads(1)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    variants, skipped = available_variants()
    rows: list[Row] = []
    for size in sizes:
        rows += summarize(size, measure(size, repeats[size], variants))
    return rows, skipped


def step_overhead_of_callbacks(rows: list[Row]) -> dict[str, float]:
    """Per size: how much the 20 EpochEnd-only callbacks add to the defaults' fit time."""
    out = {}
    for size in dict.fromkeys(r.size for r in rows):
        by = {r.variant: r for r in rows if r.size == size}
        out[size] = by["fluxpy: defaults + 20 EpochEnd-only"].ratio / \
            by["fluxpy: defaults, no progress bar"].ratio - 1
    return out


def markdown(rows: list[Row], skipped: list[str]) -> str:
    lines = [
        "# fluxpy overhead over a raw PyTorch loop",
        "",
        f"MLPs on in-memory batches ({N_TRAIN} training and {N_VALID} validation batches of "
        f"{BATCH}), SGD, cross-entropy, `torch.set_num_threads(1)`, CPU, torch "
        f"{torch.__version__}. One training + one validation epoch per fit. Ratio: fit time "
        f"divided by the time of the raw loop with `loss.item()` every step, measured in the "
        "same round; median over rounds, spread min-max. Lower is better; 1.00 is the raw loop.",
        "",
        "| model | variant | median s/fit | ratio (median) | spread (min-max) | repeats |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        dims = "-".join(map(str, SIZES[r.size]))
        lines.append(f"| {r.size} {dims} | {r.variant} | {r.seconds:.4f} | {r.ratio:.3f} | "
                     f"{r.low:.3f}-{r.high:.3f} | {r.repeats} |")
    lines.append("")
    for size, extra in step_overhead_of_callbacks(rows).items():
        lines.append(f"- {size}: 20 callbacks that only handle `EpochEnd` change the defaults' "
                     f"fit time by {100 * extra:+.2f}% (median ratio against median ratio).")
    if skipped:
        lines.append(f"- Not installed, skipped: {', '.join(skipped)} "
                     "(`pip install -e .[bench]` adds them).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats for every size (default: " +
                        ", ".join(f"{k} {v}" for k, v in REPEATS.items()) + ")")
    args = parser.parse_args(argv)
    repeats = {s: args.repeats or REPEATS[s] for s in args.sizes}
    rows, skipped = run(args.sizes, repeats)
    print(markdown(rows, skipped))


if __name__ == "__main__":
    main()
