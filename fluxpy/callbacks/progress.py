"""`ProgressPrinter`: a tqdm bar per phase and epoch with the running loss.

Each epoch's bar stays on screen when the epoch ends. In a terminal the bars are tqdm's text
bars; in a Jupyter notebook they are tqdm's widget bars (text bars when ipywidgets is not
installed). The loss shown is refreshed at most every `refresh_seconds` (reading a device
tensor is a host sync, so it happens at a bounded rate, never every step).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import attrs
from tqdm import tqdm

from ..core.access import Access, Read
from ..core.callback import Callback, on, stateaccess
from ..core.events import EpochBegin, EpochEnd, FitEnd, StepEnd
from ..core.phases import Phase
from ..support.distributed import RankZeroOnly
from ..support.notebook import in_notebook, notebook_bar

__all__ = ["ProgressPrinter"]


@attrs.define
class ProgressPrinter(RankZeroOnly, Callback):
    """Shows a progress bar per epoch of each phase (on rank 0 only under DDP).

    Args:
        enabled: `True` always, `False` never, `None` (default) only when the output is a
            terminal or a Jupyter notebook, so logs and CI output stay clean.
        refresh_seconds: the least time between two reads of the running loss.
        file: where the bars go (default `sys.stderr`, or the notebook's widget bars when
            running in Jupyter); a `file` given gets text bars, also in a notebook.
    """

    enabled: bool | None = None
    refresh_seconds: float = 0.5
    file: Any = None
    _bar: Any = attrs.field(default=None, init=False, repr=False)
    _epochs: dict = attrs.field(factory=dict, init=False, repr=False)
    _last: float = attrs.field(default=0.0, init=False, repr=False)

    def active(self) -> bool:
        if self.enabled is None:
            if self.file is None and in_notebook():
                return True
            stream = self.file or sys.stderr
            return bool(getattr(stream, "isatty", lambda: False)())
        return self.enabled

    def new_bar(self, total: int | None, desc: str) -> tqdm:
        """A bar that stays on screen when closed: a widget bar in a notebook, else text."""
        bar = notebook_bar() if self.file is None and in_notebook() else tqdm
        return bar(total=total, desc=desc, file=self.file or sys.stderr, leave=True,
                   dynamic_ncols=True, unit="step")


@stateaccess.dispatch
def _progress_access(cb: ProgressPrinter):
    return Access(data=Read(), cbstate=Access(metricsstep=Read()))


def _length(learner, phase: Phase) -> int | None:
    data = learner.data
    if data is None:
        return None
    name = type(phase).__name__
    source = {"TrainingPhase": data.training, "ValidationPhase": data.validation}.get(name)
    try:
        return len(source) if source is not None else None
    except TypeError:
        return None


@on.dispatch
def _progress_epoch_begin(event: EpochBegin, phase: Phase, cb: ProgressPrinter, learner):
    if not cb.active():
        return
    cb._epochs[phase] = cb._epochs.get(phase, 0) + 1
    cb._bar = cb.new_bar(_length(learner, phase), f"Epoch {cb._epochs[phase]} {phase}")
    cb._last = time.perf_counter()


@on.dispatch
def _progress_step_end(event: StepEnd, phase: Phase, cb: ProgressPrinter, learner):
    bar = cb._bar
    if bar is None:
        return
    bar.update(1)
    now = time.perf_counter()
    if now - cb._last >= cb.refresh_seconds:
        cb._last = now
        loss = learner.cbstate.metricsstep[phase].get("loss")
        if loss is not None:
            bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)


@on.dispatch
def _progress_epoch_end(event: EpochEnd, phase: Phase, cb: ProgressPrinter, learner):
    if cb._bar is not None:
        cb._bar.close()
        cb._bar = None


@on.dispatch
def _progress_fit_end(event: FitEnd, phase: Phase, cb: ProgressPrinter, learner):
    if cb._bar is not None:
        cb._bar.close()
        cb._bar = None
