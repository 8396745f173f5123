"""`MetricsPrinter`: one table row per epoch, training and validation side by side.

In a terminal (or any `file`) the rows are text; in a Jupyter notebook the table is an HTML
table, one per `fit`, updated in place after each epoch.
"""

from __future__ import annotations

import html
import math
import sys
from typing import Any

import attrs
from tqdm import tqdm

from ..core.access import Access, Read
from ..core.callback import Callback, on, stateaccess
from ..core.events import EpochBegin, EpochEnd, FitBegin, FitEnd
from ..core.phases import Phase
from ..support.distributed import RankZeroOnly
from ..support.notebook import in_notebook

__all__ = ["MetricsPrinter"]

_SHORT = {"TrainingPhase": "train", "ValidationPhase": "valid"}


@attrs.define
class MetricsPrinter(RankZeroOnly, Callback):
    """Prints, when each epoch ends, a row with each phase's epoch metrics (on rank 0 only
    under DDP; the metrics are those of all ranks).

        epoch │ train loss │ valid loss │ valid accuracy
        ──────┼────────────┼────────────┼───────────────
            1 │     0.6931 │     0.6812 │         0.5123

    Epochs are integers and keep counting over several `fit` calls. A row is printed at the
    end of the last phase of the epoch (`learner.epoch_phases`); when that phase does not run
    in a round (`fit(validate_every=...)`), when the next round begins.

    Args:
        file: where rows go (default `sys.stdout`, or an HTML table in a Jupyter notebook).
    """

    file: Any = None
    _row: dict = attrs.field(factory=dict, init=False, repr=False)
    _first: Any = attrs.field(default=None, init=False, repr=False)
    _first_ended: bool = attrs.field(default=False, init=False, repr=False)
    _epoch: int = attrs.field(default=0, init=False, repr=False)
    _columns: list = attrs.field(factory=list, init=False, repr=False)
    _table: Any = attrs.field(default=None, init=False, repr=False)


@stateaccess.dispatch
def _printer_access(cb: MetricsPrinter):
    return Access(cbstate=Access(metricsepoch=Read()), epoch_phases=Read())


@on.dispatch
def _printer_fit_begin(event: FitBegin, phase: Phase, cb: MetricsPrinter, learner):
    cb._first = None
    cb._row = {}
    cb._first_ended = False
    cb._table = HTMLTable() if cb.file is None and in_notebook() else None


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
    if phase == cb._first:
        cb._first_ended = True
        if len(values.get("loss", ())):
            # The epoch number comes from the recorded metrics, so it keeps counting after a
            # checkpoint is loaded into a new learner.
            cb._epoch = len(values["loss"]) - 1
    phases = learner.epoch_phases
    if cb._first_ended and phases and phase == phases[-1]:
        _flush(cb)


@on.dispatch
def _printer_fit_end(event: FitEnd, phase: Phase, cb: MetricsPrinter, learner):
    if cb._row:
        _flush(cb)


def _flush(cb: MetricsPrinter) -> None:
    cb._epoch += 1
    if cb._table is not None:
        cb._table.add(cb._epoch, cb._row)
    else:
        _write_row(cb)
    cb._row = {}
    cb._first_ended = False


def _write_row(cb: MetricsPrinter) -> None:
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


@attrs.define
class HTMLTable:
    """The rows of one `fit` as an HTML table in the notebook, displayed at the first row
    and updated in place (`display_id`) at the next; frontends without HTML show text."""

    rows: list = attrs.field(factory=list)
    _handle: Any = None

    def add(self, epoch: int, row: dict) -> None:
        from IPython.display import display

        self.rows.append((epoch, dict(row)))
        bundle = {"text/html": self.html(), "text/plain": self.text()}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)

    def columns(self) -> list[str]:
        return list(dict.fromkeys(c for _, row in self.rows for c in row))

    def html(self) -> str:
        columns = self.columns()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in ["epoch", *columns])
        body = "".join(
            "<tr>" + f"<td>{epoch}</td>"
            + "".join(f"<td>{_fmt(row[c]) if c in row else ''}</td>" for c in columns) + "</tr>"
            for epoch, row in self.rows)
        return (f'<table class="fluxpy-metrics"><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")

    def text(self) -> str:
        columns = self.columns()
        lines = [" │ ".join(["epoch", *(f"{c:>10}" for c in columns)])]
        lines.append("─" * len(lines[0]))
        for epoch, row in self.rows:
            cells = [f"{_fmt(row[c]) if c in row else '':>{max(10, len(c))}}" for c in columns]
            lines.append(" │ ".join([f"{epoch:>5}", *cells]))
        return "\n".join(lines)


def _fmt(value: float) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
