"""Two callbacks for the demo that both change the loss: a real write conflict, and its fix.

`L2Penalty` adds the squared weights to the loss (weight decay written as a loss term);
`ConfidencePenalty` subtracts the predictions' entropy, so over-confident predictions cost
something (Pereyra et al., 2017). Both write `learner.batch.loss` at `BackwardBegin`, and
nothing says which goes first, so a learner given both is refused before training. Both add
a term, and sums do not depend on their order: `penalties_commute` says so, with
`fp.NoConflict()`. It is a plain function, registered when the demo comes to the fix
(methods cannot be taken back, so registering it at import would hide the conflict).

Written as user code is, against the public names (`import fluxpy as fp`).
"""

from __future__ import annotations

import attrs
import torch

import fluxpy as fp

__all__ = ["ConfidencePenalty", "L2Penalty", "declare_penalties_commute", "penalties_commute"]


@attrs.define
class L2Penalty(fp.Callback):
    """Adds `weight` times the sum of the squared parameters to the training loss."""

    weight: float


@attrs.define
class ConfidencePenalty(fp.Callback):
    """Subtracts `beta` times the mean entropy of the predicted class probabilities."""

    beta: float


@fp.stateaccess.dispatch
def _l2_access(cb: L2Penalty):
    return fp.Access(model=fp.Read(), batch=fp.Access(loss=fp.Write()))


@fp.stateaccess.dispatch
def _confidence_access(cb: ConfidencePenalty):
    return fp.Access(batch=fp.Access(preds=fp.Read(), loss=fp.Write()))


@fp.on.dispatch
def _l2(event: fp.BackwardBegin, phase: fp.AbstractTrainingPhase, cb: L2Penalty, learner):
    squares = sum((p * p).sum() for p in learner.model.parameters())
    learner.batch.loss = learner.batch.loss + cb.weight * squares


@fp.on.dispatch
def _confidence(event: fp.BackwardBegin, phase: fp.AbstractTrainingPhase, cb: ConfidencePenalty,
                learner):
    log_probs = torch.log_softmax(learner.batch.preds, dim=1)
    entropy = -(log_probs.exp() * log_probs).sum(dim=1).mean()
    learner.batch.loss = learner.batch.loss - cb.beta * entropy


def penalties_commute(a: L2Penalty, b: ConfidencePenalty):
    """Both add a term to the loss: either order gives the same sum."""
    return fp.NoConflict()


def declare_penalties_commute() -> None:
    """Register `penalties_commute` as a method of `fp.resolveconflict` (once)."""
    if fp.resolveconflict.which(L2Penalty, ConfidencePenalty) is not penalties_commute:
        fp.resolveconflict.dispatch(penalties_commute)
