"""`MetricsPrinter`: one table row per epoch, training and validation side by side."""

from __future__ import annotations

import math
import sys
from typing import Any

import attrs
from tqdm.auto import tqdm

from ..core.access import Access, Read
from ..core.callback import Callback, on, stateaccess
from ..core.events import EpochBegin, EpochEnd, FitBegin, FitEnd
from ..core.phases import Phase
from ..support.distributed import RankZeroOnly

__all__ = ["MetricsPrinter"]

_SHORT = {"TrainingPhase": "train", "ValidationPhase": "valid"}


@attrs.define
class MetricsPrinter(RankZeroOnly, Callback):
    """Prints, after every epoch, a row with each phase's epoch metrics (on rank 0 only
    under DDP; the metrics are those of all ranks).

        epoch │ train loss │ valid loss │ valid accuracy
        ──────┼────────────┼────────────┼───────────────
            1 │     0.6931 │     0.6812 │         0.5123

    Epochs are integers and keep counting over several `fit` calls.

    Args:
        file: where rows go (default `sys.stdout`).
    """

    file: Any = None
    _row: dict = attrs.field(factory=dict, init=False, repr=False)
    _first: Any = attrs.field(default=None, init=False, repr=False)
    _epoch: int = attrs.field(default=0, init=False, repr=False)
    _columns: list = attrs.field(factory=list, init=False, repr=False)


@stateaccess.dispatch
def _printer_access(cb: MetricsPrinter):
    return Access(cbstate=Access(metricsepoch=Read()))


@on.dispatch
def _printer_fit_begin(event: FitBegin, phase: Phase, cb: MetricsPrinter, learner):
    cb._first = None
    cb._row = {}


@on.dispatch
def _printer_epoch_begin(event: EpochBegin, phase: Phase, cb: MetricsPrinter, learner):
    if cb._first is None:
        cb._first = phase
    elif phase == cb._first and cb._row:
        _flush(cb)


@on.dispatch
def _printer_epoch_end(event: EpochEnd, phase: Phase, cb: MetricsPrinter, learner):
    values = learner.cbstate.metricsepoch.get(phase, {})
    label = _SHORT.get(type(phase).__name__, type(phase).__name__)
    for name, series in values.items():
        if len(series):
            cb._row[f"{label} {name}"] = series[-1]
    if phase == cb._first and len(values.get("loss", ())):
        # The epoch number comes from the recorded metrics, so it keeps counting after a
        # checkpoint is loaded into a new learner.
        cb._epoch = len(values["loss"]) - 1


@on.dispatch
def _printer_fit_end(event: FitEnd, phase: Phase, cb: MetricsPrinter, learner):
    if cb._row:
        _flush(cb)


def _flush(cb: MetricsPrinter) -> None:
    cb._epoch += 1
    out = cb.file or sys.stdout
    columns = list(cb._row)
    if columns != cb._columns:
        cb._columns = columns
        header = " │ ".join(["epoch", *(f"{c:>10}" for c in columns)])
        tqdm.write(header, file=out)
        tqdm.write("─" * len(header), file=out)
    cells = [f"{cb._epoch:>5}"] + [
        f"{_fmt(cb._row[c]):>{max(10, len(c))}}" for c in columns
    ]
    tqdm.write(" │ ".join(cells), file=out)
    cb._row = {}


def _fmt(value: float) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
