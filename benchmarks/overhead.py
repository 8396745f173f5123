"""Overhead of fluxpy (and of its peers, when installed) over a hand-written PyTorch loop.

The workload: MLPs of three sizes on pre-made in-memory batches (256 training batches of 64
examples, 64 validation batches, 10 classes), SGD, cross-entropy, one thread. Every variant
runs one training and one validation epoch per fit, from the same initial weights; only the
fit is timed (models, optimizers, learners and trainers are built before the clock starts).

Variants run interleaved, after warm-up fits: for the small models each variant's fit is
paired with a fit of the raw loop that calls `loss.item()` every step, and its time divided
by that fit's; the table shows the median of those ratios over the rounds and their spread
(min-max). CPU time is the primary measure (other processes on a shared machine do not
inflate it); wall-clock ratios are shown too.

    python benchmarks/overhead.py                 # all sizes, default repeats
    python benchmarks/overhead.py --sizes tiny --repeats 21
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
#: Timed rounds per size in the default run (one fit of every variant per round), and the
#: untimed rounds before them. The large model's fits take seconds each: fewer rounds there.
REPEATS = {"tiny": 61, "medium": 5, "large": 2}
WARMUP = {"tiny": 1, "medium": 1, "large": 0}
#: Whether each variant's fits are paired with baseline fits (see `measure`); the large
#: model's fits take long enough that the machine's drift matters little there.
PAIRED = {"tiny": True, "medium": True, "large": False}
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


def _fluxpy(w: Workload, callbacks: list, defaults: bool,
            strict: bool = False) -> Callable[[], None]:
    model, opt = model_and_optimizer(w)
    learner = fp.Learner(model, F.cross_entropy, data=(w.train, w.valid), optimizer=opt,
                         callbacks=callbacks, use_default_callbacks=defaults, device="cpu",
                         strict=strict)
    return lambda: learner.fit(1)


def fluxpy_alone(w: Workload) -> Callable[[], None]:
    """The loop with no callbacks: what any callbacks are added to."""
    return _fluxpy(w, [], defaults=False)


def fluxpy_minimal(w: Workload) -> Callable[[], None]:
    return _fluxpy(w, [fp.Recorder(), fp.Metrics()], defaults=False)


class UnsafeRecorder(fp.Recorder, fp.UnsafeCallback):
    """`Recorder` handed the raw learner instead of its protected view."""


class UnsafeMetrics(fp.Metrics, fp.UnsafeCallback):
    """`Metrics` handed the raw learner instead of its protected view."""


def fluxpy_minimal_unprotected(w: Workload) -> Callable[[], None]:
    """Recorder + Metrics as `UnsafeCallback`s: the same work without the protected views."""
    return _fluxpy(w, [UnsafeRecorder(), UnsafeMetrics()], defaults=False)


def fluxpy_minimal_strict(w: Workload) -> Callable[[], None]:
    """Strict mode (what `fluxpy.testing` turns on): every handler's reads compared after it."""
    return _fluxpy(w, [fp.Recorder(), fp.Metrics()], defaults=False, strict=True)


def _defaults_learner(w: Workload, extra: int = 0) -> fp.Learner:
    """The default callbacks, quiet, plus `extra` callbacks that handle only `EpochEnd`."""
    quiet = [fp.ProgressPrinter(enabled=False), fp.MetricsPrinter(file=io.StringIO())]
    model, opt = model_and_optimizer(w)
    return fp.Learner(model, F.cross_entropy, data=(w.train, w.valid), optimizer=opt,
                      callbacks=quiet + [EpochEndOnly() for _ in range(extra)],
                      use_default_callbacks=True, device="cpu")


def fluxpy_defaults(w: Workload) -> Callable[[], None]:
    learner = _defaults_learner(w)
    return lambda: learner.fit(1)


class EpochEndOnly(fp.Callback):
    """A callback with a handler for `EpochEnd` and nothing else."""

    def __init__(self) -> None:
        self.calls = 0


@fp.on.dispatch
def _epoch_end_only(event: fp.EpochEnd, phase: fp.Phase, cb: EpochEndOnly, learner):
    cb.calls += 1


def fluxpy_defaults_20(w: Workload) -> Callable[[], None]:
    learner = _defaults_learner(w, extra=20)
    return lambda: learner.fit(1)


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

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # no banners
        logging.getLogger(name).setLevel(logging.ERROR)
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
    Variant("fluxpy: no callbacks", fluxpy_alone),
    Variant("fluxpy: Recorder + Metrics", fluxpy_minimal),
    Variant("fluxpy: Recorder + Metrics, unprotected", fluxpy_minimal_unprotected),
    Variant("fluxpy: Recorder + Metrics, strict mode", fluxpy_minimal_strict),
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


def measure(size: str, repeats: int, warmup: int, paired: bool,
            variants: list[Variant]) -> dict[str, Times]:
    """CPU and wall seconds per fit of each variant, and of the baseline fit it is compared
    with. Paired: each variant runs right next to a fit of the baseline (which goes first
    alternates by round), so a slow spell of the machine hits both. Otherwise one fit of each
    variant per round, in an order rotated every round, compared with that round's baseline."""
    w = make_workload(SIZES[size])
    base = next(v for v in variants if v.name == BASELINE)
    times = {v.name: Times() for v in variants}
    for _ in range(warmup):  # allocator, plum caches, lazy imports
        for v in variants:
            v.prepare(w)()
    for r in range(repeats):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        if paired:
            for v in order:
                if v is base:
                    continue
                first, second = (base, v) if r % 2 == 0 else (v, base)
                got = {first.name: _fit_seconds(first, w), second.name: _fit_seconds(second, w)}
                times[v.name].add(got[v.name], got[base.name])
                times[base.name].add(got[base.name], got[base.name])
        else:
            got = {v.name: _fit_seconds(v, w) for v in order}
            for v in variants:
                times[v.name].add(got[v.name], got[base.name])
        print(f"  {size}: round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    return times


def _fit_seconds(variant: Variant, w: Workload) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one fit; building the model and learner is not timed."""
    fit = variant.prepare(w)
    wall, cpu = time.perf_counter(), time.process_time()
    fit()
    return time.process_time() - cpu, time.perf_counter() - wall


@dataclass
class Times:
    """Seconds of a variant's fits, and of the baseline fits they are compared with."""

    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    base_cpu: list[float] = field(default_factory=list)
    base_wall: list[float] = field(default_factory=list)

    def add(self, own: tuple[float, float], base: tuple[float, float]) -> None:
        self.cpu.append(own[0])
        self.wall.append(own[1])
        self.base_cpu.append(base[0])
        self.base_wall.append(base[1])


@dataclass(frozen=True)
class Spread:
    """The median of per-round ratios to the baseline, and their min and max."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, times: list[float], base: list[float]) -> Spread:
        ratios = [t / b for t, b in zip(times, base)]
        return cls(statistics.median(ratios), min(ratios), max(ratios))

    def __str__(self) -> str:
        return f"{self.median:.3f} ({self.low:.2f}-{self.high:.2f})"


@dataclass(frozen=True)
class Row:
    size: str
    variant: str
    seconds: float  # median CPU seconds per fit
    cpu: Spread  # ratio of CPU times
    wall: Spread  # ratio of wall-clock times
    rounds: int


def summarize(size: str, rounds: int, times: dict[str, Times]) -> list[Row]:
    return [Row(size, name, statistics.median(t.cpu), Spread.of(t.cpu, t.base_cpu),
                Spread.of(t.wall, t.base_wall), rounds) for name, t in times.items()]


@dataclass(frozen=True)
class StepTimes:
    """Median training-step seconds of two learners run in lockstep, and the median and
    spread (min-max over rounds) of the per-step ratio of the second to the first."""

    plain: float
    extra: float
    ratio: Spread
    steps: int


def step_times(size: str, rounds: int) -> StepTimes:
    """Training steps of the defaults without and with 20 `EpochEnd`-only callbacks, in
    lockstep: two learners take every batch one right after the other, so both meet the
    machine in the same state, and each step's time is compared with its partner's.

    One learner's `fit` takes the batches from a `_Lockstep` iterable, which runs the other
    learner's step on each batch before handing it on; the roles swap every round, so the
    iterable's own cost falls on both alike. Each round's ratio is the median of its per-step
    ratios; the result is the median of the rounds and their spread."""
    w = make_workload(SIZES[size])
    plain, extra = _defaults_learner(w), _defaults_learner(w, extra=20)
    for learner in (plain, extra):
        learner.fit(1)  # warm-up
    times: dict[int, list[float]] = {id(plain): [], id(extra): []}
    round_ratios = []
    for r in range(rounds):
        driver, other = (plain, extra) if r % 2 == 0 else (extra, plain)
        mine: list[float] = []
        theirs: list[float] = []
        driver.fit(1, (_Lockstep(w.train, other, mine, theirs), None))
        pairs = dict(zip((id(driver), id(other)), (mine, theirs)))
        a, b = pairs[id(plain)], pairs[id(extra)]
        times[id(plain)] += a
        times[id(extra)] += b
        round_ratios.append(statistics.median(y / x for x, y in zip(a, b)))
    return StepTimes(statistics.median(times[id(plain)]), statistics.median(times[id(extra)]),
                     Spread(statistics.median(round_ratios), min(round_ratios),
                            max(round_ratios)), len(times[id(plain)]))


class _Lockstep:
    """Training batches for one learner's fit that first give each batch to `other`'s
    training step, timing both: `other`'s step directly, the fit's from handing the batch on
    to being asked for the next one."""

    def __init__(self, batches: list, other: fp.Learner, mine: list[float],
                 theirs: list[float]) -> None:
        self.batches, self.other, self.mine, self.theirs = batches, other, mine, theirs

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        phase = fp.TrainingPhase()
        step = fp.step.resolve(fp.Learner, fp.TrainingPhase, tuple)
        clock = time.perf_counter
        self.other.model.train()
        with fp.run_epoch(self.other, phase):
            for batch in self.batches:
                start = clock()
                step(self.other, phase, batch)
                self.theirs.append(clock() - start)
                start = clock()
                yield batch
                self.mine.append(clock() - start)


@dataclass
class Results:
    rows: list[Row]
    skipped: list[str]
    steps: StepTimes  # training steps of the defaults, without and with 20 more callbacks
    load: tuple[float, float]  # 1-minute load average before and after


def run(sizes: list[str], repeats: dict[str, int], step_rounds: int = 20) -> Results:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    load = os.getloadavg()[0]
    variants, skipped = available_variants()
    rows: list[Row] = []
    for size in sizes:
        times = measure(size, repeats[size], WARMUP[size], PAIRED[size], variants)
        rows += summarize(size, repeats[size], times)
    steps = step_times("tiny", step_rounds)
    return Results(rows, skipped, steps, (load, os.getloadavg()[0]))


def markdown(res: Results) -> str:
    paired = ", ".join(s for s in SIZES if PAIRED[s])
    lines = [
        "# fluxpy overhead over a raw PyTorch loop",
        "",
        f"MLPs on in-memory batches ({N_TRAIN} training and {N_VALID} validation batches of "
        f"{BATCH}, {CLASSES} classes), SGD, cross-entropy, `torch.set_num_threads(1)`, CPU "
        f"({os.cpu_count()} cores), Python {platform.python_version()}, torch "
        f"{torch.__version__}. One training + one validation epoch per fit; only the fit is "
        "timed. Each fit's time is divided by the time of a fit of the raw loop that calls "
        f"`loss.item()` every step, run next to it ({paired}: each variant's fit paired with "
        "a baseline fit, which one goes first alternating by round; otherwise one fit of each "
        "variant per round, order rotated every round). The table gives the median of those "
        "ratios over the rounds and, in brackets, their min-max. CPU time (process time) is "
        "not inflated when other processes share the machine; wall-clock time is shown "
        "beside it. 1.000 is the raw loop; lower is better. Load average: "
        f"{res.load[0]:.1f} at the start, {res.load[1]:.1f} at the end.",
        "",
        "| model | variant | CPU s/fit | ratio, CPU time | ratio, wall clock | rounds |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in res.rows:
        dims = "-".join(map(str, SIZES[r.size]))
        lines.append(f"| {r.size} {dims} | {r.variant} | {r.seconds:.3f} | {r.cpu} | "
                     f"{r.wall} | {r.rounds} |")
    st = res.steps
    lines += [
        "",
        f"- 20 callbacks that handle only `EpochEnd`: median training step (tiny MLP) "
        f"{st.plain * 1e6:.1f} us with the defaults, {st.extra * 1e6:.1f} us with the 20 "
        f"added, run in lockstep ({st.steps} steps each: two learners take every batch one "
        f"right after the other, roles swapped every round); per-step ratio, median of the "
        f"rounds (min-max): {st.ratio} ({100 * (st.ratio.median - 1):+.2f}%).",
        "- Warm-up before the timed rounds: " + ", ".join(
            f"{WARMUP[s]} round(s) for {s}" for s in SIZES) + ".",
    ]
    if res.skipped:
        lines.append(f"- Not installed, skipped: {', '.join(res.skipped)} "
                     "(`pip install -e .[bench]` adds them).")
    return "\n".join(lines) + "\n"


def to_json(res: Results) -> dict:
    st = res.steps
    return {
        "sizes": {s: list(d) for s, d in SIZES.items()},
        "baseline": BASELINE,
        "steps_per_fit": N_TRAIN + N_VALID,
        "rows": [{"size": r.size, "variant": r.variant, "cpu_seconds": r.seconds,
                  "ratio": r.cpu.median, "low": r.cpu.low, "high": r.cpu.high,
                  "wall_ratio": r.wall.median, "rounds": r.rounds} for r in res.rows],
        "skipped": res.skipped,
        "steps": {"plain_seconds": st.plain, "extra_seconds": st.extra, "steps": st.steps,
                  "ratio": st.ratio.median, "low": st.ratio.low, "high": st.ratio.high},
        "load": res.load,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed rounds for every size (default: " +
                        ", ".join(f"{k} {v}" for k, v in REPEATS.items()) + ")")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    repeats = {s: args.repeats or REPEATS[s] for s in args.sizes}
    res = run(args.sizes, repeats)
    text = markdown(res)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(to_json(res), indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
