"""The built-in callbacks in `PredictionPhase`, and `Predictions`, which gathers its outputs.

`learner.predict` and `learner.evaluate` fire `FitBegin`, one epoch of validation steps and
`FitEnd`, all in `PredictionPhase` (a subclass of `AbstractValidationPhase`). A callback's
methods for `Phase` or `AbstractValidationPhase` apply there unless it says otherwise. What
the built-in ones do:

Taking part:
- `ToDevice`: the model to the device at `FitBegin`, each batch at `StepBegin`.
- `MixedPrecision`: autocast from `FitBegin` to `FitEnd`.
- `Metrics`: the metrics of validation, removed again at `FitEnd` (`evaluate` reads them
  first).
- `ProgressPrinter`: a bar for the epoch.
- `CustomCallback`, `ConditionalCallback`: as their phase and the wrapped callback say.

Sitting out (`fp.sit_out`):
- `Recorder`: the history counts the epochs and steps of training runs.
- `MetricsPrinter`: its rows are a fit's epochs; `evaluate` returns its metrics instead.
- `LogMetrics`, `LogHyperParams`, `LogHistograms`: logs are a training run's.
- `Checkpointer`: nothing to resume; a prediction run changes no state.
- `EarlyStopping`, `Scheduler` (PyTorch's schedulers too): they act on training runs.
- `WeightAveraging`: it averages the weights training reaches (and recomputes BatchNorm
  statistics when a fit ends); predict with the average inside `swapped(learner)`.
- `StopOnNaNLoss`: a NaN loss on new data is a result to report, not a reason to stop.
- `SanityCheck`, `ActivationStats`: they check and watch training.

The other built-in callbacks have handlers for training phases only.

Extending:
    Your callback's handlers for `Phase` or `AbstractValidationPhase` run in predictions too;
    leave it out with `fp.sit_out(MyCallback, fp.PredictionPhase)`, or write a method for
    `PredictionPhase` to do something else there.
"""

from __future__ import annotations

import attrs

from ..core.access import Access, Read
from ..core.callback import UnsafeCallback, on, sit_out, stateaccess
from ..core.events import StepEnd
from ..core.phases import PredictionPhase
from .activations import ActivationStats
from .averaging import WeightAveraging
from .checkpointer import Checkpointer
from .earlystopping import EarlyStopping
from .logging import LogHistograms, LogHyperParams, LogMetrics
from .nan import StopOnNaNLoss
from .printer import MetricsPrinter
from .recorder import Recorder
from .sanity import SanityCheck
from .scheduler import Scheduler
from .torchschedulers import TorchScheduler

__all__ = ["Predictions"]

for _callback in (Recorder, MetricsPrinter, LogMetrics, LogHyperParams, LogHistograms,
                  Checkpointer, EarlyStopping, Scheduler, TorchScheduler, StopOnNaNLoss,
                  SanityCheck, ActivationStats, WeightAveraging):
    sit_out(_callback, PredictionPhase)


@attrs.define
class Predictions(UnsafeCallback):
    """Keeps each step's `preds` (and `ys`) in `PredictionPhase`, where they are: on the
    device, as references, so gathering them costs no host sync. `learner.predict` adds one
    for its run and joins what it kept.

    It gets the raw learner (an `UnsafeCallback`) to keep the outputs as the model returned
    them: through a view, a dict or tuple of tensors comes back read-only. Its declared reads
    still order it after the callbacks that write `preds` or `ys`.

    Args:
        keep_preds: keep `batch.preds` (and, with `targets`, `batch.ys`) of each step.
        targets: what needs the targets (e.g. `"learner.evaluate"`), or `None`: then a batch
            of inputs alone (which has no loss) is a `ValueError` naming it.
    """

    keep_preds: bool = True
    targets: str | None = None
    preds: list = attrs.field(factory=list, init=False, repr=False)
    ys: list = attrs.field(factory=list, init=False, repr=False)
    _steps: int = attrs.field(default=0, init=False, repr=False)


@stateaccess.dispatch
def _predictions_access(cb: Predictions):
    return Access(batch=Access(preds=Read(), ys=Read(), loss=Read()))


@on.dispatch
def _predictions_step_end(event: StepEnd, phase: PredictionPhase, cb: Predictions, learner):
    batch = learner.batch
    if cb.targets is not None and batch.loss is None:
        raise ValueError(
            f"{cb.targets} needs (xs, ys) batches, but batch {cb._steps} holds inputs alone: "
            "yield (xs, ys) pairs (e.g. a DataLoader over TensorDataset(xs, ys)), or call "
            "learner.predict(data) for the outputs of inputs alone")
    cb._steps += 1
    if cb.keep_preds:
        cb.preds.append(batch.preds)
        if cb.targets is not None:
            cb.ys.append(batch.ys)
