"""`ActivationStats`: how each layer's activations evolve during training.

    stats = fp.ActivationStats()
    learner = fp.Learner(model, loss_fn, data=data, callbacks=[stats])
    learner.fit(3)
    stats.plot("stats.png")                 # mean, std and near-zero share per layer
    stats.plot_histograms("hist.png")       # the "colourful dimension" view

Forward hooks (installed at `FitBegin`, removed at `FitEnd`) compute, for each hooked module's
output in the training steps `every` picks (`fp.Every(steps=k)`: steps 0, k, 2k, ... counted
over the fits of this `ActivationStats`; `fp.Every(seconds=s)`: the first step, then the first
step that begins at least `s` seconds after the last one recorded), its mean, standard
deviation, the share of values with `|a| < eps`, and a `torch.histc` histogram over
`hist_range`. All of it stays on the device: a step's records are stacked into one tensor,
and a training epoch's steps are moved to the host once, at `EpochEnd`, so recording adds no
per-step host sync.

Which modules: by default every leaf module that has parameters of its own (`Linear`,
`Conv*`, normalisation layers, embeddings), as fastai does; pass `modules` (modules or their
names in `model.named_modules()`) to hook others, e.g. the activation functions, to see how
many units a ReLU switches off. The default histogram range is symmetric, `(-10, 10)`,
because the outputs of those layers are signed; for post-ReLU outputs `(0, 10)` shows more.
Values outside the range are not counted. A module called several times in a step is
recorded at its first call.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch

from ..core.access import Access, Read
from ..core.callback import Callback, on, stateaccess
from ..core.events import EpochEnd, FitBegin, FitEnd, StepBegin, StepEnd
from ..core.every import Every
from ..core.phases import AbstractTrainingPhase, Phase
from ..support.checkpoint import unwrap_model
from .periodic import as_every, due_after_step

__all__ = ["ActivationStats"]


def _every(value: object) -> Every:
    return as_every("ActivationStats", value, ("steps", "seconds"),
                    why="ActivationStats records a step from its beginning, when it is not "
                        "known to end an epoch")


@attrs.define
class ActivationStats(Callback):
    """Records per-layer activation statistics and histograms during training.

    Args:
        modules: the modules to hook (objects or names); `None`: every leaf module with
            parameters.
        every: which training steps to record: `fp.Every(steps=k)` (one in every `k`; a plain
            int `k` means the same) or `fp.Every(seconds=s)`. `fp.Every(epochs=...)` is an
            error: a step is recorded from its beginning, when it is not known to end an epoch.
        eps: activations with `|a| < eps` count as near zero.
        bins: histogram bins.
        hist_range: the `(min, max)` the histograms cover.

    Results (on the CPU, steps in rows): `steps` (the training step of each record),
    `layers` (names), `mean`, `std`, `near_zero` (each `records x layers`) and `histograms`
    (`layers x records x bins`). A layer not called in a recorded step has NaN statistics.
    """

    modules: Sequence[torch.nn.Module | str] | None = None
    every: Every = attrs.field(default=Every(steps=1), converter=_every)
    eps: float = 1e-3
    bins: int = 40
    hist_range: tuple[float, float] = (-10.0, 10.0)
    layers: tuple[str, ...] = attrs.field(default=(), init=False)
    steps: list[int] = attrs.field(factory=list, init=False)
    #: What `Every(seconds=...)` reads: `time.monotonic`; a test may put a fake clock here.
    clock: Callable[[], float] = attrs.field(default=time.monotonic, init=False, repr=False)
    _last: dict = attrs.field(factory=dict, init=False, repr=False)
    _step: int = attrs.field(default=0, init=False, repr=False)
    _recording: bool = attrs.field(default=False, init=False, repr=False)
    _current: dict = attrs.field(factory=dict, init=False, repr=False)
    _pending: list = attrs.field(factory=list, init=False, repr=False)
    _records: list = attrs.field(factory=list, init=False, repr=False)
    _handles: list = attrs.field(factory=list, init=False, repr=False)

    def _record(self, index: int, output: Any) -> None:
        if not self._recording or index in self._current:
            return
        if isinstance(output, (tuple, list)):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            return
        with torch.no_grad():
            a = output.detach().float()
            lo, hi = self.hist_range
            self._current[index] = torch.cat([
                torch.stack([a.mean(), a.std(), (a.abs() < self.eps).float().mean()]),
                torch.histc(a, self.bins, lo, hi),
            ])

    def _flush(self) -> None:
        if self._pending:
            self._records.append(torch.stack(self._pending).cpu())
            self._pending = []

    def _table(self) -> torch.Tensor:
        """`records x layers x (3 + bins)` on the CPU."""
        self._flush()
        if not self._records:
            return torch.empty(0, len(self.layers), 3 + self.bins)
        return torch.cat(self._records)

    @property
    def mean(self) -> torch.Tensor:
        return self._table()[:, :, 0]

    @property
    def std(self) -> torch.Tensor:
        return self._table()[:, :, 1]

    @property
    def near_zero(self) -> torch.Tensor:
        return self._table()[:, :, 2]

    @property
    def histograms(self) -> torch.Tensor:
        return self._table()[:, :, 3:].permute(1, 0, 2)

    def plot(self, path: str | os.PathLike | None = None) -> Any:
        """Mean, std and near-zero share over the recorded steps, one line per layer."""
        from ..support.figures import new_figure, save_figure

        fig, axes = new_figure(1, 3, width=4.5)
        table = self._table()
        titles = ("mean", "std", f"share with |a| < {self.eps:g}")
        for k, (ax, title) in enumerate(zip(axes, titles)):
            for j, name in enumerate(self.layers):
                ax.plot(self.steps, table[:, j, k].numpy(), label=name)
            ax.set_title(title)
            ax.set_xlabel("training step")
        axes[0].legend()
        save_figure(fig, path)
        return fig

    def plot_histograms(self, path: str | os.PathLike | None = None) -> Any:
        """Per layer, the histogram of each recorded step as a column (`log(1 + count)`),
        steps left to right, values bottom to top."""
        from ..support.figures import new_figure, save_figure

        hists = self.histograms
        fig, axes = new_figure(1, max(1, len(self.layers)), width=4.0, squeeze=False)
        first, last = (self.steps[0], self.steps[-1]) if self.steps else (0, 1)
        for ax, name, hist in zip(axes[0], self.layers, hists):
            ax.imshow(torch.log1p(hist).T.numpy(), origin="lower", aspect="auto",
                      extent=(first, last, *self.hist_range), cmap="viridis")
            ax.set_title(name)
            ax.set_xlabel("training step")
        save_figure(fig, path)
        return fig


def _hooked(model: torch.nn.Module, modules: Sequence[Any] | None) -> list[tuple[str, Any]]:
    named = dict(model.named_modules())
    if modules is None:
        return [(name or type(m).__name__, m) for name, m in named.items()
                if next(m.children(), None) is None
                and next(m.parameters(recurse=False), None) is not None]
    names = {id(m): name for name, m in named.items()}
    chosen = []
    for m in modules:
        if isinstance(m, str):
            if m not in named:
                raise ValueError(f"ActivationStats: the model has no module named {m!r}; "
                                 f"names: {[n for n in named if n]}")
            chosen.append((m, named[m]))
        elif id(m) in names:
            chosen.append((names[id(m)] or type(m).__name__, m))
        else:
            raise ValueError(f"ActivationStats: {type(m).__name__} is not a module of the "
                             "learner's model")
    return chosen


@stateaccess.dispatch
def _activations_access(cb: ActivationStats):
    return Access(model=Read())


@on.dispatch
def _activations_fit_begin(event: FitBegin, phase: Phase, cb: ActivationStats, learner):
    hooked = _hooked(unwrap_model(learner.model), cb.modules)
    if cb.layers and cb.layers != tuple(name for name, _ in hooked):
        raise ValueError(f"ActivationStats: the hooked layers changed between fits "
                         f"({cb.layers} before); use a new ActivationStats")
    cb.layers = tuple(name for name, _ in hooked)
    cb._handles = [
        module.register_forward_hook(lambda _m, _i, out, k=k: cb._record(k, out))
        for k, (_, module) in enumerate(hooked)
    ]


@on.dispatch
def _activations_step_begin(event: StepBegin, phase: AbstractTrainingPhase,
                            cb: ActivationStats, learner):
    cb._current = {}
    cb._recording = due_after_step(cb.every, cb._step, cb.clock, cb._last)
    cb._step += 1


@on.dispatch
def _activations_step_end(event: StepEnd, phase: AbstractTrainingPhase, cb: ActivationStats,
                          learner):
    rows = [cb._current.get(k) for k in range(len(cb.layers))] if cb._recording else []
    present = next((row for row in rows if row is not None), None)
    if present is not None:  # at least one hooked layer ran in this step
        if any(row is None for row in rows):
            nan = torch.full_like(present, float("nan"))
            rows = [nan if row is None else row for row in rows]
        cb._pending.append(torch.stack(rows))
        cb.steps.append(cb._step - 1)
    cb._recording = False
    cb._current = {}


@on.dispatch
def _activations_epoch_end(event: EpochEnd, phase: AbstractTrainingPhase, cb: ActivationStats,
                           learner):
    cb._flush()


@on.dispatch
def _activations_fit_end(event: FitEnd, phase: Phase, cb: ActivationStats, learner):
    for handle in cb._handles:
        handle.remove()
    cb._handles = []
    cb._recording = False
