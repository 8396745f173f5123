"""`MixUp`: train on convex combinations of pairs of examples (Zhang et al., 2018).

A worked example of a callback that changes the computation through its permissions. It
declares exactly what it touches, random state included:

    fp.Access(batch=fp.Access(xs=fp.Write(), loss=fp.Write(), preds=fp.Read(), ys=fp.Read()),
              loss_fn=fp.Read(), rng=fp.Write())

- `StepBegin`: draw `lam ~ Beta(alpha, alpha)` and a permutation `perm` of the batch, and
  replace `batch.xs` with `lam * xs + (1 - lam) * xs[perm]`. The step re-reads `batch.xs`
  after the event, so the model sees the mixed inputs.
- `BackwardBegin`: replace `batch.loss` with
  `lam * loss_fn(preds, ys) + (1 - lam) * loss_fn(preds, ys[perm])`, which is what gets
  differentiated (and what `Metrics` reports as the training loss). `ys` are never mixed, so
  class-index targets work as they are.

Because it writes `batch.xs` and `batch.loss`, the graph runs it after `ToDevice` (the batch is
on the device before it is mixed), before `Metrics` and `StopOnNaNLoss` (they read the mixed
loss), and before `MixedPrecision` and `GradientAccumulation`, which scale the loss it made.
Its handlers are methods for `AbstractTrainingPhase` only: validation is untouched.

`lam` and `perm` come from torch's global random generator on the CPU, one draw each per
step (so `torch.manual_seed` makes a run repeatable and checkpoints that save the RNG resume
it); `perm` then goes to the batch's device without a sync. Drawing advances the generator,
so MixUp declares `rng=fp.Write()`: with another callback that draws random numbers, the
two are a write conflict until `resolveconflict` fixes their order, and with it every draw.
"""

from __future__ import annotations

import attrs
import torch

from ..core.access import Access, Read, Write
from ..core.callback import Callback, RunFirst, on, resolveconflict, stateaccess
from ..core.events import BackwardBegin, StepBegin
from ..core.phases import AbstractTrainingPhase
from .gradients import GradientAccumulation
from .precision import MixedPrecision
from .todevice import ToDevice

__all__ = ["MixUp"]


@attrs.define
class MixUp(Callback):
    """Mixes each training batch with a permutation of itself and the loss to match.

    Args:
        alpha: the concentration of the Beta distribution `lam` is drawn from; small values
            keep most mixes close to one of the two examples.

    Attributes:
        lam: the mixing weight of the current (last) training step.
        perm: its permutation of the batch.
    """

    alpha: float = 0.4
    lam: float | None = attrs.field(default=None, init=False)
    perm: torch.Tensor | None = attrs.field(default=None, init=False, repr=False)
    _beta: torch.distributions.Beta = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.alpha > 0:
            raise ValueError(f"MixUp(alpha={self.alpha!r}): need alpha > 0")
        alpha = torch.tensor(float(self.alpha))
        self._beta = torch.distributions.Beta(alpha, alpha)


@stateaccess.dispatch
def _mixup_access(cb: MixUp):
    return Access(batch=Access(xs=Write(), loss=Write(), preds=Read(), ys=Read()),
                  loss_fn=Read(), rng=Write())


@on.dispatch
def _mixup_step_begin(event: StepBegin, phase: AbstractTrainingPhase, cb: MixUp, learner):
    batch = learner.batch
    xs = batch.xs
    if not (isinstance(xs, torch.Tensor) and xs.is_floating_point()):
        what = f"a {xs.dtype} tensor" if isinstance(xs, torch.Tensor) else type(xs).__name__
        raise TypeError(f"MixUp mixes floating-point input tensors, but batch.xs is {what}; "
                        "mix such inputs in your own callback (e.g. after an embedding)")
    cb.lam = lam = float(cb._beta.sample())
    perm = torch.randperm(xs.shape[0])
    cb.perm = perm if xs.device.type == "cpu" else perm.to(xs.device, non_blocking=True)
    batch.xs = lam * xs + (1 - lam) * xs[cb.perm]


@on.dispatch
def _mixup_backward_begin(event: BackwardBegin, phase: AbstractTrainingPhase, cb: MixUp,
                          learner):
    batch = learner.batch
    loss_fn, preds, ys, lam = learner.loss_fn, batch.preds, batch.ys, cb.lam
    batch.loss = lam * loss_fn(preds, ys) + (1 - lam) * loss_fn(preds, ys[cb.perm])


@resolveconflict.dispatch
def _mixup_before_precision(a: MixUp, b: MixedPrecision):
    """MixUp makes the loss; MixedPrecision scales it."""
    return RunFirst(a)


@resolveconflict.dispatch
def _mixup_before_accumulation(a: MixUp, b: GradientAccumulation):
    """MixUp makes the loss; GradientAccumulation divides it."""
    return RunFirst(a)


@resolveconflict.dispatch
def _device_before_mixup(a: ToDevice, b: MixUp):
    return RunFirst(a)
