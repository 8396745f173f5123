"""What firing an event costs: `learner.handle` against calling plum for every callback.

Three measurements, each the median over repeats of `timeit` runs, in nanoseconds of CPU time
per call (process time, so other processes on a shared machine do not count):

1. `learner.handle(event, phase)` with 0, 2 and 8 handlers among 8 and 64 callbacks (the
   handlers do nothing, the other callbacks have only the no-op fallback), next to the naive
   loop that calls `fp.on(event, phase, callback, view)` through plum for every callback.
   Events are fired as pre-made instances, as `fluxpy/loop.py` does.
2. An attribute read through a callback's protected view, and through the plain reference
   view (`fluxpy.core.views_reference`, the specification it is tested against), against the
   same read on the raw learner.
3. The timing loop itself (`pass`), which every other number includes.

    python benchmarks/dispatch.py                 # prints the table, writes results/dispatch.md
    python benchmarks/dispatch.py --repeats 31
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import timeit
from importlib.metadata import version
from pathlib import Path

import torch

import fluxpy as fp
from fluxpy.core.state import Batch
from fluxpy.core.views_reference import reference_view
from fluxpy.engine.framing import STEP_END
from fluxpy.testing import test_learner

RESULTS = Path(__file__).parent / "results" / "dispatch.md"
PHASE = fp.TrainingPhase()
#: Seconds one timed run should last; `number` is chosen to fill it.
RUN_SECONDS = 0.02


class Handles(fp.Callback):
    """A callback with a (no-op) `StepEnd` handler."""


class Silent(fp.Callback):
    """A callback with no handler: only the fallback applies."""


class Reader(fp.Callback):
    """Declares reads and writes for the protected-view measurements."""


@fp.on.dispatch
def _handles_step_end(event: fp.StepEnd, phase: fp.TrainingPhase, cb: Handles, learner):
    pass


@fp.stateaccess.dispatch
def _reader_access(cb: Reader):
    return fp.Access(batch=fp.Access(loss=fp.Read()), model=fp.Write(),
                     optimizer=fp.Read(), cbstate=fp.Access(history=fp.Read()))


def ns_per_call(stmt: str, namespace: dict, repeats: int) -> float:
    """Median over `repeats` timed runs of the time per execution of `stmt`, in ns."""
    timer = timeit.Timer(stmt, timer=time.process_time, globals=namespace)
    number = 1
    while timer.timeit(number) < RUN_SECONDS / 4:  # find a `number` worth timing
        number *= 4
    number = max(1, int(number * RUN_SECONDS / max(timer.timeit(number), 1e-9)))
    runs = timer.repeat(repeat=repeats, number=number)
    return statistics.median(runs) / number * 1e9


def learner_with(n_callbacks: int, n_handlers: int):
    """A learner whose callbacks are `n_handlers` `Handles` spread among `Silent` ones."""
    step = n_callbacks // n_handlers if n_handlers else n_callbacks + 1
    callbacks = [Handles() if n_handlers and i % step == 0 and i // step < n_handlers
                 else Silent() for i in range(n_callbacks)]
    assert sum(isinstance(c, Handles) for c in callbacks) == n_handlers
    return test_learner(*callbacks, strict=False)  # the path training takes (strict is for tests)


def dispatch_rows(repeats: int) -> list[tuple[int, int, float, float]]:
    rows = []
    for n_callbacks in (8, 64):
        for n_handlers in (0, 2, 8):
            learner = learner_with(n_callbacks, n_handlers)
            learner.handle(STEP_END, PHASE)  # build the plan once, as the first step does
            pairs = [(cb, learner.view(cb)) for cb in learner.callbacks]
            namespace = {"handle": learner.handle, "on": fp.on, "ev": STEP_END, "ph": PHASE,
                         "pairs": pairs}
            planned = ns_per_call("handle(ev, ph)", namespace, repeats)
            naive = ns_per_call("for cb, v in pairs: on(ev, ph, cb, v)", namespace, repeats)
            rows.append((n_callbacks, n_handlers, planned, naive))
    return rows


class Fallback:
    """The floor for any `__getattr__` proxy: CPython first fails the normal lookup."""

    model = None

    def __getattr__(self, name):
        return None


def read_rows(repeats: int) -> list[tuple[str, float, float | None, float]]:
    cb = Reader()
    learner = test_learner(fp.Recorder(), cb, strict=False)
    learner.batch = Batch(loss=torch.tensor(0.5))
    namespace = {"view": learner.view(cb), "raw": learner, "proxy": Fallback(),
                 "reference": reference_view(learner, fp.stateaccess(cb), cb)}
    rows = [("floor: a class whose `__getattr__` returns `None` (`x.other` vs `x.model`)",
             ns_per_call("proxy.other", namespace, repeats), None,
             ns_per_call("proxy.model", namespace, repeats))]
    for what, path in [
        ("`Write()` on `model`", "model"),
        ("`Read()` on `optimizer`", "optimizer"),
        ("`Read()` on `batch.loss` (nested)", "batch.loss"),
        ("`Read()` on `cbstate.history` (read-only dict)", "cbstate.history"),
    ]:
        viewed = ns_per_call(f"view.{path}", namespace, repeats)
        reference = ns_per_call(f"reference.{path}", namespace, repeats)
        plain = ns_per_call(f"raw.{path}", namespace, repeats)
        rows.append((f"{what}: `learner.{path}`", viewed, reference, plain))
    return rows


def markdown(dispatch, reads, loop_ns: float, repeats: int) -> str:
    lines = [
        "# Dispatch overhead",
        "",
        f"`benchmarks/dispatch.py`: median of {repeats} `timeit` runs, ns of CPU time per call, "
        f"Python {platform.python_version()}, plum-dispatch {version('plum-dispatch')}, "
        f"torch {torch.__version__}, {os.cpu_count()} CPU(s), one thread.",
        "",
        "## Firing an event",
        "",
        "`learner.handle(StepEnd(), TrainingPhase())` with the plan cached, against calling "
        "`fp.on(event, phase, callback, view)` through plum for every callback.",
        "",
        "| callbacks | handlers | `learner.handle` (ns) | plum call per callback (ns) | speed-up |",
        "|----------:|---------:|----------------------:|----------------------------:|---------:|",
    ]
    for n_callbacks, n_handlers, planned, naive in dispatch:
        lines.append(f"| {n_callbacks} | {n_handlers} | {planned:,.0f} | {naive:,.0f} | "
                     f"{naive / planned:,.0f}x |")
    lines += [
        "",
        "## Reading state through a protected view",
        "",
        "The learner's view has the granted names as class attributes (`fluxpy/core/protect.py`);",
        "the reference view answers every read in `__getattr__`.",
        "",
        "| read | protected view (ns) | reference view (ns) | raw learner (ns) | ratio |",
        "|------|--------------------:|--------------------:|-----------------:|------:|",
    ]
    for what, viewed, reference, plain in reads:
        shown = "" if reference is None else f"{reference:,.0f}"
        lines.append(f"| {what} | {viewed:,.0f} | {shown} | {plain:,.0f} | "
                     f"{viewed / plain:.1f}x |")
    lines += ["", f"Every number includes the timing loop itself: {loop_ns:.0f} ns per `pass`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per measurement")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the table goes")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    loop_ns = ns_per_call("pass", {}, args.repeats)
    text = markdown(dispatch_rows(args.repeats), read_rows(args.repeats), loop_ns, args.repeats)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
