"""`learner.predict` and `learner.evaluate`: the model over new data, through the callbacks.

    preds = learner.predict(test_loader)                        # on the CPU, joined along dim 0
    preds, ys = learner.predict(test_loader, with_targets=True)
    learner.evaluate(test_loader)                               # {"loss": 0.31, "accuracy": 0.9}

Each call is a run of its own in `PredictionPhase`: `FitBegin`, one epoch of the built-in
validation step over `data` (under `model.eval()` and `torch.inference_mode()`), `FitEnd`
(also after an error). So the callbacks that shape the computation apply as in validation
(`ToDevice`, `MixedPrecision`, the user's), and those that record training runs sit it out
(see `fluxpy.callbacks.prediction`): the history, the metrics of training and validation,
logs and checkpoints stay as they were. Afterwards the model's train/eval mode, the grad
mode, `learner.batch` and the callbacks are as before.

`predict` keeps each step's outputs on the device (no host sync per step) and joins them at
the end, one transfer to the CPU per tensor; outputs that are tuples, lists or dicts of
tensors are joined leaf by leaf. Steps a handler cancels are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .callbacks.metrics import Metrics
from .callbacks.prediction import Predictions
from .core.callback import Callback
from .core.events import FitBegin, FitEnd
from .core.phases import PredictionPhase
from .engine.loop import epoch

__all__ = ["evaluate", "predict"]

PREDICTION = PredictionPhase()
_FIT_BEGIN, _FIT_END = FitBegin(), FitEnd()


def predict(learner: Any, data: Any, *, with_targets: bool = False) -> Any:
    """The model's outputs over `data`, joined along the first dimension, on the CPU; with
    `with_targets=True`, a `(preds, targets)` pair. See `Learner.predict`."""
    call = "learner.predict(with_targets=True)" if with_targets else "learner.predict"
    gather = Predictions(keep_preds=True, targets=call if with_targets else None)
    _run(learner, data, call, [gather])
    preds = _join(gather.preds, "outputs")
    return (preds, _join(gather.ys, "targets")) if with_targets else preds


def evaluate(learner: Any, data: Any) -> dict[str, float]:
    """The loss and the learner's metrics over `data`, as floats. See `Learner.evaluate`."""
    call = "learner.evaluate"
    extra: list[Callback] = [Predictions(keep_preds=False, targets=call)]
    if not any(isinstance(cb, Metrics) for cb in learner.callbacks):
        extra.append(Metrics())  # the loss, for a learner without Metrics
    results: dict[str, float] = {}

    def read() -> None:  # before FitEnd, which removes them
        metrics = learner.cbstate.metricsepoch.get(PREDICTION, {})
        results.update((name, values[-1]) for name, values in metrics.items())

    _run(learner, data, call, extra, read)
    if "loss" not in results:  # every step was cancelled by a handler
        raise ValueError(f"{call} completed no step over the data: handlers cancelled them all")
    return results


def _run(learner: Any, data: Any, call: str, extra: list[Callback],
         after: Callable[[], None] | None = None) -> None:
    """One run of `PredictionPhase` over `data` with `extra` callbacks added for it; puts
    back the callbacks, modes and `learner.batch` afterwards, also after an error."""
    if learner._fitting:
        raise RuntimeError(f"{call} was called during fit: it is a run of its own. Call it "
                           "after fit returns, or read learner.batch.preds in a StepEnd handler")
    if data is None:
        raise TypeError(f"{call} needs the data to run over: pass the batches, e.g. "
                        f"{call.split('(')[0]}(learner.data.validation) or a DataLoader")
    if hasattr(data, "__len__") and len(data) == 0:
        raise ValueError(f"{call} got data that yields no batches ({type(data).__name__} of "
                         "length 0): pass a DataLoader or a list holding at least one batch, "
                         "and check the dataset and the DataLoader's batch_size / drop_last")
    roots, model = learner.given_callbacks, learner.model
    training, grad = model.training, torch.is_grad_enabled()
    phases, batch = learner.epoch_phases, learner.batch
    learner.set_callbacks([*roots, *extra])
    try:
        learner.epoch_phases = (PREDICTION,)
        try:
            learner.handle(_FIT_BEGIN, PREDICTION)
            epoch(learner, PREDICTION, data if learner.ddp is None
                  else learner.ddp.in_step(learner, PREDICTION, data))
            if after is not None:
                after()
        except BaseException as exc:
            try:
                learner.handle(_FIT_END, PREDICTION)
            except Exception as end_exc:
                exc.add_note(f"FitEnd handlers also failed: {end_exc!r}")
            raise
        learner.handle(_FIT_END, PREDICTION)
    finally:
        learner.executor.close()
        learner.set_callbacks(roots)
        for cb in extra:  # not kept for a return: the learner adopts each callback once
            learner._adopted.pop(id(cb), None)
        learner.epoch_phases, learner.batch = phases, batch
        model.train(training)
        torch.set_grad_enabled(grad)


def _join(parts: Sequence[Any], what: str) -> Any:
    """`parts` (one per step) joined along dim 0, leaf by leaf, then moved to the CPU."""
    if not parts:
        raise ValueError(f"learner.predict completed no step over the data: handlers "
                         f"cancelled them all, so there are no {what} to return")
    leaves, spec = pytree.tree_flatten(parts[0])
    columns = [leaves]
    for k, part in enumerate(parts[1:], 1):
        leaves, other = pytree.tree_flatten(part)
        if other != spec:
            raise ValueError(f"learner.predict cannot join the {what}: batch {k}'s are "
                             f"{_structure(part)}, batch 0's {_structure(parts[0])}; return "
                             "the same structure for every batch")
        columns.append(leaves)
    joined = []
    for leaf in zip(*columns):
        bad = next((v for v in leaf if not isinstance(v, torch.Tensor) or v.ndim == 0), None)
        if bad is not None:
            got = (f"a tensor of shape {tuple(bad.shape)}" if isinstance(bad, torch.Tensor)
                   else type(bad).__name__)
            raise TypeError(f"learner.predict joins the {what} of each batch along the first "
                            f"dimension, but they hold {got}: return tensors with a batch "
                            "dimension (or tuples, lists or dicts of them) from the model")
        joined.append(torch.cat(leaf).cpu())
    return pytree.tree_unflatten(joined, spec)


def _structure(value: Any) -> str:
    """`a tensor`, or `a tuple of 2 leaves`: what an output is, for the error above."""
    if isinstance(value, torch.Tensor):
        return "a tensor"
    leaves = pytree.tree_leaves(value)
    return f"a {type(value).__name__} of {len(leaves)} leaves"
