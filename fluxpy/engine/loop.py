"""The training loop: `epoch`, `step`, and the helpers custom steps are written with.

`step(learner, phase, batch)` and `epoch(learner, phase, data)` are generic functions
dispatched on the phase, so a custom phase brings its own step. A custom step is written with

    @fp.step.dispatch
    def _(learner, phase: MyPhase, batch):
        xs, ys = batch
        with fp.run_step(learner, phase, xs=xs, ys=ys) as state:
            state.preds = learner.model(state.xs)
            learner.handle(MyEvent(), phase)
            ...

What fires under each kind of termination:

| raised                   | rest of step | `StepEnd` | `EpochEnd` | rest of fit | `FitEnd` |
|--------------------------|--------------|-----------|------------|-------------|----------|
| `CancelStepException`    | skipped      | no        | yes        | continues   | yes      |
| `CancelEpochException`   | skipped      | no        | yes        | continues   | yes      |
| `CancelFitException`     | skipped      | no        | no         | ends normally | yes    |
| any other error, Ctrl-C  | skipped      | no        | no         | propagates  | yes      |

Raised by a handler of the event that closes its scope (`StepEnd`, `EpochEnd`, `FitEnd`), a
cancel exception skips the remaining handlers of that event, and the loop goes on as above.

The hot path adds no host-device synchronisation: nothing here reads a tensor's value.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import torch

from ..core.dispatch import GenericFunction
from ..core.errors import BadBatchError, BadLossError, CancelEpochException, CancelStepException
from ..core.events import (
    BackwardBegin,
    BackwardEnd,
    EpochBegin,
    EpochEnd,
    Event,
    LossBegin,
    StepBegin,
    StepEnd,
)
from ..core.phases import AbstractTrainingPhase, AbstractValidationPhase, Phase
from ..core.state import Batch

__all__ = ["epoch", "run_epoch", "run_step", "step", "update_parameters"]

# One instance of each event: events are compared by type, and reusing them keeps the plan
# lookup a dictionary hit with a cached hash.
STEP_BEGIN, STEP_END, LOSS_BEGIN = StepBegin(), StepEnd(), LossBegin()
BACKWARD_BEGIN, BACKWARD_END = BackwardBegin(), BackwardEnd()
EPOCH_BEGIN, EPOCH_END = EpochBegin(), EpochEnd()


def _step(learner, phase: Phase, batch):
    """step(learner, phase, batch)

    One step of `phase` on `batch`. Built-in methods exist for `AbstractTrainingPhase`
    (forward, loss, backward, update) and `AbstractValidationPhase` (forward, loss).

    Extending:
        `@fp.step.dispatch` a method for your phase type; use `fp.run_step` inside it.
    """
    raise NotImplementedError(
        f"fluxpy has no step for {type(phase).__name__}: define one with\n"
        "    @fp.step.dispatch\n"
        f"    def _(learner, phase: {type(phase).__name__}, batch): ..."
    )


def _epoch(learner, phase: Phase, data):
    """epoch(learner, phase, data)

    One pass of `phase` over `data`, framed by `EpochBegin`/`EpochEnd`. Validation phases run
    under `model.eval()` and `torch.inference_mode()`; training phases under `model.train()`.
    """
    with run_epoch(learner, phase):
        _run_steps(learner, phase, data)


step = GenericFunction(_step, arity=3, params="learner, phase, batch")
epoch = GenericFunction(_epoch, arity=3, params="learner, phase, data")


def _run_steps(learner, phase: Phase, data) -> None:
    impl, impl_type = None, None
    in_step = False  # whether an error comes from the loop's body rather than from the data
    try:
        for batch in data:
            in_step = True
            if type(batch) is not impl_type:  # resolve once per epoch, not per step
                impl_type = type(batch)
                impl = step.resolve(type(learner), type(phase), impl_type)
            try:
                impl(learner, phase, batch)
            except CancelStepException:  # from a custom step's run_step, raised at StepBegin
                in_step = False
                continue
            in_step = False
    except Exception as exc:
        if not in_step:
            exc.add_note(f"raised by the data iterator of {phase} ({type(data).__name__})")
        raise
    if impl_type is None:
        raise ValueError(_no_batches(phase, data))


def _no_batches(phase: Phase, data: Any) -> str:
    hint = ("an iterator or generator is used up after one pass: pass a list, a DataLoader or "
            "another object that can be iterated again" if iter(data) is data else
            "check the dataset and the DataLoader's batch_size / drop_last")
    return f"the data for {phase} ({type(data).__name__}) yielded no batches: {hint}."


@epoch.dispatch
def _training_epoch(learner, phase: AbstractTrainingPhase, data):
    learner.model.train()
    try:
        _epoch(learner, phase, data)
    finally:
        learner._last_graph = None  # nothing of the steps outlives the epoch


@epoch.dispatch
def _validation_epoch(learner, phase: AbstractValidationPhase, data):
    model = learner.model
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            _epoch(learner, phase, data)
    finally:
        model.train(was_training)


@contextmanager
def run_epoch(learner, phase: Phase) -> Iterator[None]:
    """Frame an epoch: `EpochBegin`, the body, `EpochEnd` (also after `CancelEpochException`).

    A context manager cannot skip its body, so `CancelEpochException` raised at `EpochBegin`
    fires `EpochEnd` and then leaves the `with` statement; `Learner.fit` catches it.
    """
    try:
        learner.handle(EPOCH_BEGIN, phase)
    except CancelEpochException:
        _end_epoch(learner, phase)
        raise
    with suppress(CancelEpochException):
        yield
    _end_epoch(learner, phase)


def _end_epoch(learner, phase: Phase) -> None:
    # Remembered while EpochEnd runs, so a CancelFitException raised there (early stopping)
    # still counts the epoch as run in the FitResult.
    learner.closing_epoch = phase
    with suppress(CancelEpochException):  # raised at EpochEnd: skips its remaining handlers
        learner.handle(EPOCH_END, phase)
    learner.closing_epoch = None


@contextmanager
def run_step(learner, phase: Phase, **state: Any) -> Iterator[Batch]:
    """Frame a step: a fresh `learner.batch` from `state`, `StepBegin`, the body, `StepEnd`.

    `CancelStepException` raised in the body (or a handler) ends the step without `StepEnd`.
    Raised at `StepBegin`, it leaves the `with` statement (a context manager cannot skip its
    body): the built-in epoch catches it and goes on with the next batch; a custom epoch that
    calls `fp.step` itself does the same with `contextlib.suppress(fp.CancelStepException)`.
    """
    learner.batch = Batch(**state)
    learner.handle(STEP_BEGIN, phase)
    try:
        yield learner.batch
    except CancelStepException:
        return
    try:
        learner.handle(STEP_END, phase)
    except CancelStepException:  # raised at the closing event: skips its remaining handlers
        return


def update_parameters(learner) -> None:
    """The optimizer update of the built-in training step (through the gradient scaler if any).

    The update hook: the training step sets `learner.batch.update = True` when it starts and
    calls this after `BackwardEnd` only if `batch.update` is still true, so a handler skips the
    update by setting it false (`GradientAccumulation` does, except every n-th step, and
    updates pending gradients at `EpochEnd` by calling this itself); handlers at `BackwardEnd`
    read it to act only on gradients about to be used (`GradientClipping`, unscaling in
    `MixedPrecision`). With `learner.scaler` (a `torch.amp.GradScaler`, which `MixedPrecision`
    installs for float16) it is `scaler.step(optimizer); scaler.update()`, which skips the step
    on inf/NaN gradients. The gradients are always zeroed afterwards (`set_to_none=True`).
    """
    optimizer = learner.optimizer
    scaler = learner.scaler
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)


#: The events of the built-in steps, in the order they fire. The steps fire them through the
#: executor with the plans `Learner._step_plans` gives, skipping events without handlers, and
#: ask for the plans again after each event that ran handlers (a handler may register a
#: method; callbacks themselves change only between epochs).
TRAINING_STEP_EVENTS = (STEP_BEGIN, LOSS_BEGIN, BACKWARD_BEGIN, BACKWARD_END, STEP_END)
VALIDATION_STEP_EVENTS = (STEP_BEGIN, LOSS_BEGIN, STEP_END)
_TRAINING_KEY, _VALIDATION_KEY = id(TRAINING_STEP_EVENTS), id(VALIDATION_STEP_EVENTS)
_new_batch = object.__new__  # an empty Batch without the keyword-argument loop of __init__


def _fire(learner, event: Event, phase: Phase, plans: tuple, index: int,
          events: tuple[Event, ...]) -> tuple:
    """Run `plans[index]` for `event`; then the plans of `events`: the same unless the
    handlers changed them (a new method replaces the learner's plan cache)."""
    cache = learner._plans
    learner.executor.run(event, phase, plans[index])
    return plans if learner._plans is cache else learner._step_plans(phase, events)


# The two built-in steps share their first half (StepBegin, forward, LossBegin, loss) line for
# line rather than through a helper: it saves a call on every step.


@step.dispatch
def _training_step(learner, phase: AbstractTrainingPhase, batch):
    xs, ys = batch if type(batch) is tuple and len(batch) == 2 else _unpack(batch, phase)
    learner.batch = state = _new_batch(Batch)  # `Batch(xs=xs, ys=ys, update=True)`, inline
    state.xs, state.ys, state.update = xs, ys, True
    events = TRAINING_STEP_EVENTS
    entry = learner._plans.get((_TRAINING_KEY, id(phase)))  # `_step_plans`, inline
    plans = learner._step_plans(phase, events) if entry is None else entry[0]
    backward_done = False
    try:
        if plans[0]:
            plans = _fire(learner, STEP_BEGIN, phase, plans, 0, events)
            state = learner.batch
        state.preds = learner.model(state.xs)
        if plans[1]:
            plans = _fire(learner, LOSS_BEGIN, phase, plans, 1, events)
            state = learner.batch
        try:
            loss = learner.loss_fn(state.preds, state.ys)
        except Exception as exc:
            _loss_note(exc, state, phase)
            raise
        state.loss = loss if type(loss) is torch.Tensor and loss.ndim == 0 else _check_loss(
            loss, phase)
        if plans[2]:
            plans = _fire(learner, BACKWARD_BEGIN, phase, plans, 2, events)
            state = learner.batch
        differentiated = state.loss  # `loss` unless a BackwardBegin handler replaced it
        try:
            differentiated.backward()
        except RuntimeError as exc:
            _backward_failed(exc, learner, phase, loss, differentiated, plans[2])
            raise
        backward_done = True
        learner._last_graph = differentiated.grad_fn  # see Learner._last_graph
        if plans[3]:
            plans = _fire(learner, BACKWARD_END, phase, plans, 3, events)
            state = learner.batch
        if state.update:
            if learner.scaler is None:  # `update_parameters`, inline for the usual case
                optimizer = learner.optimizer
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            else:
                update_parameters(learner)
    except BaseException as exc:
        if backward_done:  # an unfinished step must not leak its gradients into the next update
            learner.optimizer.zero_grad(set_to_none=True)
        if isinstance(exc, CancelStepException):
            return
        raise
    if plans[4]:
        try:
            learner.executor.run(STEP_END, phase, plans[4])
        except CancelStepException:  # raised at the closing event: skips its remaining handlers
            return


@step.dispatch
def _validation_step(learner, phase: AbstractValidationPhase, batch):
    xs, ys = batch if type(batch) is tuple and len(batch) == 2 else _unpack(batch, phase)
    learner.batch = state = _new_batch(Batch)  # `Batch(xs=xs, ys=ys)`, inline
    state.xs, state.ys = xs, ys
    events = VALIDATION_STEP_EVENTS
    entry = learner._plans.get((_VALIDATION_KEY, id(phase)))  # `_step_plans`, inline
    plans = learner._step_plans(phase, events) if entry is None else entry[0]
    try:
        if plans[0]:
            plans = _fire(learner, STEP_BEGIN, phase, plans, 0, events)
            state = learner.batch
        state.preds = learner.model(state.xs)
        if plans[1]:
            plans = _fire(learner, LOSS_BEGIN, phase, plans, 1, events)
            state = learner.batch
        try:
            loss = learner.loss_fn(state.preds, state.ys)
        except Exception as exc:
            _loss_note(exc, state, phase)
            raise
        state.loss = loss if type(loss) is torch.Tensor and loss.ndim == 0 else _check_loss(
            loss, phase)
    except CancelStepException:
        return
    if plans[2]:
        try:
            learner.executor.run(STEP_END, phase, plans[2])
        except CancelStepException:  # raised at the closing event: skips its remaining handlers
            return


def _unpack(batch: Any, phase: Phase) -> Any:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch
    if isinstance(batch, (tuple, list)):
        what = f"a {type(batch).__name__} of {len(batch)} items"
    elif isinstance(batch, torch.Tensor):
        what = f"a tensor of shape {tuple(batch.shape)}"
    else:
        what = _a(type(batch).__name__)
    raise BadBatchError(
        f"{phase} got {what} as a batch; the built-in steps need (xs, ys) pairs (a tuple or "
        "list of two). Yield pairs from the data (e.g. a DataLoader over a TensorDataset(xs, "
        f"ys)), or give {type(phase).__name__} its own step with @fp.step.dispatch."
    )


def _loss_note(exc: BaseException, state: Batch, phase: Phase) -> None:
    """The note on an error of `loss_fn(preds, ys)`: what it was given."""
    exc.add_note(f"raised by loss_fn(preds, ys) in the {phase} step, with preds "
                 f"{_describe(state.preds)} and ys {_describe(state.ys)}: check that the "
                 "model's output fits the loss function and the labels")


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return _a(type(value).__name__)


def _a(noun: str) -> str:
    """`noun` with its indefinite article: "a float", "an int"."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _check_loss(loss: Any, phase: Phase) -> Any:
    if isinstance(loss, torch.Tensor) and loss.ndim == 0:
        return loss
    what = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor)
            else _a(type(loss).__name__))
    raise BadLossError(
        f"loss_fn returned {what} in {phase}; fluxpy needs a scalar tensor to differentiate "
        "and to average. Reduce it (e.g. reduction='mean', or .mean() at the end of loss_fn)."
    )


def _backward_failed(exc: RuntimeError, learner, phase: Phase, returned: Any,
                     differentiated: Any, handlers: tuple) -> None:
    """Say why `differentiated.backward()` failed, when fluxpy can tell: an integer loss is a
    `BadLossError`; a loss that does not require grad gets a note naming it and the likely
    cause (torch's own message says neither)."""
    if not isinstance(differentiated, torch.Tensor):
        return
    fn = learner.loss_fn
    source = f"what loss_fn {getattr(fn, '__name__', type(fn).__name__)} returned"
    if differentiated is not returned:
        names = ", ".join(h.name for h in handlers)
        source = f"batch.loss as the BackwardBegin handlers ({names}) left it"
    if not (differentiated.is_floating_point() or differentiated.is_complex()):
        raise BadLossError(
            f"the loss in {phase} is a {differentiated.dtype} tensor ({source}): gradients need "
            "a floating-point loss. Compute it from preds with float operations (counts and "
            "argmax have no gradient; report those with fp.Metrics)."
        ) from exc
    if differentiated.requires_grad:
        return  # another failure (a second backward, an in-place change): torch's message says
    if not any(p.requires_grad for p in learner.model.parameters()):
        cause = ("the model has no trainable parameters (requires_grad is False for all of "
                 "them): unfreeze some, or run only validation phases")
    elif differentiated is not returned and getattr(returned, "requires_grad", False):
        cause = ("a BackwardBegin handler replaced batch.loss with a value that does not "
                 "require grad: compute the replacement from batch.loss with torch operations")
    elif not getattr(learner.batch.preds, "requires_grad", True):
        cause = ("the model's output does not require grad: its forward cuts it off "
                 "(.detach(), .item(), torch.no_grad(), a tensor rebuilt from values)")
    else:
        cause = ("loss_fn cut it off from the model's output (.detach(), .item(), a new tensor "
                 "made from values, or torch.no_grad()): compute it from preds with torch "
                 "operations")
    exc.add_note(f"loss.backward() failed in {phase}: the loss, {differentiated!r}, does not "
                 "require grad, so nothing connects it to the model's parameters. It is "
                 f"{source}. Likely cause: {cause}.")
