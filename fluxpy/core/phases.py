"""Phases: what the loop is doing while it fires events.

    Phase
    ├── AbstractTrainingPhase ── TrainingPhase
    └── AbstractValidationPhase ─┬─ ValidationPhase
                                 └─ PredictionPhase

`TrainingPhase` steps fire `StepBegin`, `LossBegin`, `BackwardBegin`, `BackwardEnd`, `StepEnd`;
`ValidationPhase` steps fire `StepBegin`, `LossBegin`, `StepEnd` and run under `model.eval()`
and `torch.inference_mode()`. Both are framed by `EpochBegin` / `EpochEnd`. `FitBegin` and
`FitEnd` are fired with a plain `Phase()`. `PredictionPhase` is what `learner.predict` and
`learner.evaluate` run in, outside `fit`: `FitBegin`, one epoch of validation steps, `FitEnd`,
all fired with `PredictionPhase()` (see `fluxpy.prediction`).

Phases are frozen attrs values, hashable and compared by type and fields, so
`learner.cbstate.history[fp.TrainingPhase()]` finds the training history.

Extending:
    Subclass `AbstractTrainingPhase` (or `AbstractValidationPhase`, or `Phase`) with
    `@attrs.frozen` and give it a step with `@fp.step.dispatch`; handlers written for the
    abstract parent fire in it. Train it with `learner.fit(n, phases=[(MyPhase(), data)])`.
"""

from __future__ import annotations

import attrs

__all__ = [
    "AbstractTrainingPhase",
    "AbstractValidationPhase",
    "Phase",
    "PredictionPhase",
    "TrainingPhase",
    "ValidationPhase",
]


@attrs.frozen(cache_hash=True)
class Phase:
    """Base of all phases; `FitBegin`/`FitEnd` are fired with an instance of it."""

    def __str__(self) -> str:
        return type(self).__name__


@attrs.frozen(cache_hash=True)
class AbstractTrainingPhase(Phase):
    """Phases that update the model; subclass it for custom training steps."""


@attrs.frozen(cache_hash=True)
class AbstractValidationPhase(Phase):
    """Phases that only evaluate the model."""


@attrs.frozen(cache_hash=True)
class TrainingPhase(AbstractTrainingPhase):
    """The built-in supervised training phase."""


@attrs.frozen(cache_hash=True)
class ValidationPhase(AbstractValidationPhase):
    """The built-in validation phase."""


@attrs.frozen(cache_hash=True)
class PredictionPhase(AbstractValidationPhase):
    """The phase of `learner.predict` and `learner.evaluate`: validation steps (a batch
    without targets computes no loss), under `model.eval()` and `torch.inference_mode()`.
    Handlers for `AbstractValidationPhase` (or `Phase`) fire in it; those for
    `ValidationPhase` do not, and the built-in callbacks that record training runs sit it out
    (`fluxpy.callbacks.prediction`)."""
