"""`WeightAveraging`: an exponential moving average (EMA) or stochastic weight average (SWA) of
the model's weights, kept beside the model during training.

    ema = fp.WeightAveraging("ema", decay=0.999)           # after every parameter update
    swa = fp.WeightAveraging("swa", start=5)               # after every epoch from the 6th on
    learner = fp.Learner(..., callbacks=[ema])
    learner.fit(10)
    with ema.swapped(learner):                             # the model holds the average here
        learner.fit(1, phases=[(fp.ValidationPhase(), valid)])
    ema.copy_to(learner.model)                             # or keep it

The average is a `torch.optim.swa_utils.AveragedModel` (`averaging.averaged`; its `module` is
a network like the model). EMA updates it after each training step that updated the
parameters (as `ema.update_parameters(model)` after `optimizer.step()` in PyTorch's loop), SWA
at the end of each training epoch (a training epoch cut short by `fit(max_steps=...)` or
`max_time` is not averaged: the resumed run finishes it and averages it then); `interval`
changes either. The first `start` intervals are not averaged.

BatchNorm. An EMA averages the buffers too (BatchNorm's running statistics). A SWA averages
only the parameters, so its BatchNorm statistics are recomputed with
`torch.optim.swa_utils.update_bn` over the training data when `fit` ends (`update_bn=True`),
or on request with `averaging.update_batchnorm(data)`; that pass does not change the global
random state training draws from. A model without BatchNorm skips it.

The average is kept on the model's device (moved there at `FitBegin`), and its state (the
averaged weights, and how many intervals have passed) is saved in checkpoints, so a resumed run
averages exactly as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, get_swa_multi_avg_fn

from ..core.access import Access, Read
from ..core.callback import Callback, on, runafter, stateaccess
from ..core.events import EpochEnd, FitBegin, FitEnd, StepEnd
from ..core.phases import AbstractTrainingPhase, Phase
from ..support.checkpoint import unwrap_model
from .todevice import ToDevice

__all__ = ["WeightAveraging"]


def _check_kind(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in ("ema", "swa"):
        raise ValueError(f"WeightAveraging(kind={value!r}): kind is 'ema' (an exponential "
                         "moving average) or 'swa' (the mean of the weights)")


@attrs.define
class WeightAveraging(Callback):
    """Keeps an average of the model's weights during training.

    Args:
        kind: `"ema"`, an exponential moving average (`decay` of the average plus
            `1 - decay` of the weights at each update), or `"swa"`, the mean of the weights
            at each update.
        decay: the EMA's decay, in (0, 1); 0.999 by default (EMA only).
        interval: when the average takes the weights: `"step"` after each training step
            that updated the parameters, `"epoch"` after each training epoch; by default
            `"step"` for EMA and `"epoch"` for SWA.
        start: how many intervals (steps or epochs) pass before the first update.
        update_bn: recompute the average's BatchNorm statistics over the training data when
            `fit` ends (SWA only; an EMA averages them).

    `averaged` is the `AveragedModel` (built from the model when the learner adopts the
    callback), `count` the intervals seen so far.
    """

    kind: str = attrs.field(default="ema", validator=_check_kind)
    decay: float | None = None
    interval: str | None = None
    start: int = 0
    update_bn: bool = True
    averaged: AveragedModel | None = attrs.field(default=None, init=False, repr=False)
    count: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if self.kind == "swa" and self.decay is not None:
            raise ValueError("WeightAveraging(kind='swa', decay=...): a SWA is the plain mean "
                             "of the weights; decay is for kind='ema'")
        if self.kind == "ema":
            self.decay = 0.999 if self.decay is None else self.decay
            if isinstance(self.decay, bool) or not isinstance(self.decay, (int, float)) or not (
                    0 < self.decay < 1):
                raise ValueError(
                    f"WeightAveraging(decay={self.decay!r}): the EMA decay is a number in "
                    "(0, 1), e.g. 0.999: each update keeps decay of the average and adds "
                    "1 - decay of the weights")
        if self.interval is None:
            self.interval = "step" if self.kind == "ema" else "epoch"
        if self.interval not in ("step", "epoch"):
            raise ValueError(f"WeightAveraging(interval={self.interval!r}): 'step' (after each "
                             "parameter update) or 'epoch' (after each training epoch)")
        if not isinstance(self.start, int) or isinstance(self.start, bool) or self.start < 0:
            raise ValueError(f"WeightAveraging(start={self.start!r}): the number of "
                             f"{self.interval}s before the first update, an int >= 0")

    def init(self, learner) -> None:
        model = unwrap_model(learner.model)
        average = (get_ema_multi_avg_fn(self.decay) if self.kind == "ema"
                   else get_swa_multi_avg_fn())
        self.averaged = AveragedModel(model, multi_avg_fn=average,
                                      use_buffers=self.kind == "ema")

    @property
    def updates(self) -> int:
        """How many times the average has taken the weights (`averaged.n_averaged`, known
        here without reading the device)."""
        return max(0, self.count - self.start)

    def update(self, model: torch.nn.Module) -> None:
        """Count one interval and, from `start` on, add `model`'s weights to the average.

        What `AveragedModel.update_parameters` does, with the count of updates known on the
        host: that method tests `n_averaged`, a device tensor, which would wait for the device
        at every step.
        """
        self.count += 1
        if self.count <= self.start:
            return
        averaged, model = self.averaged, unwrap_model(model)
        pairs = list(zip(averaged.module.parameters(), model.parameters()))
        if averaged.use_buffers:
            pairs += zip(averaged.module.buffers(), model.buffers())
        groups: dict[tuple, tuple[list, list]] = {}
        for mine, theirs in pairs:
            group = groups.setdefault((mine.device, mine.dtype), ([], []))
            group[0].append(mine.detach())
            group[1].append(theirs.detach().to(mine.device))
        before = self.updates - 1
        with torch.no_grad():
            for mine, theirs in groups.values():
                if before == 0:
                    torch._foreach_copy_(mine, theirs)
                else:
                    averaged.multi_avg_fn(mine, theirs, before)
            if not averaged.use_buffers:  # a SWA keeps the model's buffers until update_bn
                for mine, theirs in zip(averaged.module.buffers(), model.buffers()):
                    mine.copy_(theirs.detach().to(mine.device))
            averaged.n_averaged += 1

    def copy_to(self, model: Any) -> None:
        """Load the averaged weights (and buffers) into `model` (or a learner's model)."""
        target = _model_of(model)
        if self.updates == 0:
            raise ValueError(
                f"WeightAveraging({self.kind!r}) has averaged no weights yet ({self.count} "
                f"{self.interval}s seen, start={self.start}): train past start first")
        target.load_state_dict(self.averaged.module.state_dict())

    @contextlib.contextmanager
    def swapped(self, model: Any) -> Iterator[torch.nn.Module]:
        """`with averaging.swapped(learner):` the model (of a learner, or a module) holds the
        averaged weights inside the block and its own again after it, whatever happens."""
        target = _model_of(model)
        own = {name: value.detach().clone() for name, value in target.state_dict().items()}
        self.copy_to(target)
        try:
            yield target
        finally:
            target.load_state_dict(own)

    def update_batchnorm(self, data: Iterable) -> None:
        """Recompute the average's BatchNorm statistics over `data` (batches `(xs, ys)` or
        `xs`); the global random state is as it was after."""
        averaged = self.averaged
        device = next(averaged.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            # built in here: `iter(data)` draws a shuffled loader's order from the random state
            inputs = (batch[0] if isinstance(batch, Sequence) else batch for batch in data)
            torch.optim.swa_utils.update_bn(inputs, averaged, device)

    def state_dict(self) -> dict:
        return {"averaged": self.averaged.state_dict(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state["averaged"])
        self.count = int(state["count"])


def _model_of(model_or_learner: Any) -> torch.nn.Module:
    """The plain module of a module (DDP unwrapped) or of a learner."""
    model = model_or_learner
    if not isinstance(model, torch.nn.Module):
        model = model.model
    return unwrap_model(model)


@stateaccess.dispatch
def _averaging_access(cb: WeightAveraging):
    # the model's weights, when the step updated them, whether a limit cut the epoch, and the
    # training data for SWA's BatchNorm pass
    return Access(model=Read(), batch=Access(update=Read()), budget=Read(), data=Read())


@runafter.dispatch
def _averaging_after(cb: WeightAveraging):
    return (ToDevice,)  # moves the model at FitBegin: the average follows it there


@on.dispatch
def _averaging_fit_begin(event: FitBegin, phase: Phase, cb: WeightAveraging, learner):
    device = next(unwrap_model(learner.model).parameters()).device
    cb.averaged.to(device)


@on.dispatch
def _averaging_step_end(event: StepEnd, phase: AbstractTrainingPhase, cb: WeightAveraging,
                        learner):
    if cb.interval == "step" and learner.batch.update:
        cb.update(learner.model)


@on.dispatch
def _averaging_epoch_end(event: EpochEnd, phase: AbstractTrainingPhase, cb: WeightAveraging,
                         learner):
    budget = learner.budget
    if cb.interval == "epoch" and (budget is None or not budget.cut_short):
        cb.update(learner.model)


@on.dispatch
def _averaging_fit_end(event: FitEnd, phase: Phase, cb: WeightAveraging, learner):
    data = learner.data
    if (cb.kind == "swa" and cb.update_bn and cb.updates > 0
            and data is not None and data.training is not None):
        cb.update_batchnorm(data.training)
