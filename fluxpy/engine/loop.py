"""The training loop: `epoch`, `step`, and the framing every step is written with.

`Learner.fit` runs `epoch(learner, phase, data)` for each phase, which runs
`step(learner, phase, batch)` for each batch. Both are generic functions dispatched on the
phase, so a custom phase brings its own step. The built-in step serves training and
validation alike and is written as a custom step is, with `run_step`:

| in order       | the step                        | `learner.batch` holds afterwards       |
|----------------|---------------------------------|----------------------------------------|
| `StepBegin`    | a fresh batch from the data     | `xs`, `ys` (and `update=True` in training) |
| forward        | `preds = model(xs)`             | + `preds`                              |
| `LossBegin`    |                                 |                                        |
| loss           | `loss = loss_fn(preds, ys)`     | + `loss`                               |
| `BackwardBegin`| (training only)                 | `loss` may have been replaced          |
| backward       | `loss.backward()` (training)    | gradients on the parameters            |
| `BackwardEnd`  | (training only)                 |                                        |
| update         | `update_parameters` if `update` | (training only)                        |
| `StepEnd`      |                                 | everything above                       |

Validation runs under `model.eval()` and `torch.inference_mode()`, training under
`model.train()`. `PredictionPhase` (`learner.predict`, `learner.evaluate`) runs the validation
step; a batch of inputs alone (a tensor, or a tuple or list of one) gets `ys = None` and
`loss = None`, and its step ends after the forward pass (no `LossBegin`). Each value is read
from `learner.batch` after the event before it, so a handler may replace `xs`, `preds` or
`loss` (a `BackwardBegin` handler scaling the loss). The hot path adds no host-device
synchronisation: nothing here reads a tensor's value.
What fires when a handler cancels or an error is raised: see `fluxpy.engine.framing`.

Extending:
    A custom phase's step, with its own events:

        @fp.step.dispatch
        def _(learner, phase: MyPhase, batch):
            xs, ys = batch
            with fp.run_step(learner, phase, xs=xs, ys=ys) as state:
                state.preds = learner.model(state.xs)
                learner.handle(MyEvent(), phase)
                ...

    `fp.run_epoch(learner, phase)` frames a custom epoch the same way.
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.dispatch import GenericFunction
from ..core.errors import CancelStepException
from ..core.events import BackwardBegin, BackwardEnd, LossBegin
from ..core.phases import AbstractTrainingPhase, AbstractValidationPhase, Phase
from .budget import Budget
from .diagnose import backward_failed, check_loss, loss_note, unpack
from .framing import run_epoch, run_step

__all__ = ["epoch", "run_epoch", "run_step", "step", "update_parameters"]

LOSS_BEGIN, BACKWARD_BEGIN, BACKWARD_END = LossBegin(), BackwardBegin(), BackwardEnd()


def _step(learner, phase: Phase, batch):
    """step(learner, phase, batch)

    One step of `phase` on `batch`. The built-in method covers `AbstractTrainingPhase` and
    `AbstractValidationPhase` (see the module docstring).

    Extending:
        `@fp.step.dispatch` a method for your phase type; use `fp.run_step` inside it.
    """
    raise NotImplementedError(
        f"fluxpy has no step for {type(phase).__name__}: define one with\n"
        "    @fp.step.dispatch\n"
        f"    def _(learner, phase: {type(phase).__name__}, batch): ..."
    )


def _epoch(learner, phase: Phase, data, budget: Budget | None = None, resumed: bool = False):
    """epoch(learner, phase, data)

    One pass of `phase` over `data`, framed by `EpochBegin`/`EpochEnd`. Validation phases run
    under `model.eval()` and `torch.inference_mode()`; training phases under `model.train()`.
    A training epoch of a `fit` with limits or `validate_every` (`learner.budget`) tells the
    budget of each step, and ends early when a limit is reached (`fluxpy.engine.budget`).
    """
    with run_epoch(learner, phase, begin=not resumed):
        if type(data) is not _Steps:
            _run_steps(learner, phase, data, budget)
            return
        try:
            _run_steps(learner, phase, data, budget)
        finally:  # before EpochEnd: a checkpoint there is an epoch-end one
            data.position.end_steps()


step = GenericFunction(_step, arity=3, params="learner, phase, batch")
epoch = GenericFunction(_epoch, arity=3, params="learner, phase, data")


@epoch.dispatch
def _training_epoch(learner, phase: AbstractTrainingPhase, data):
    learner.model.train()
    budget = getattr(learner, "budget", None)
    position = getattr(learner, "position", None)
    if position is None:  # a learner-like object without one
        if budget is not None:
            budget.begin_epoch(data)
        _epoch(learner, phase, data, budget)
        return
    # A resumed epoch began before its checkpoint: no `EpochBegin`, the callbacks' state of
    # the epoch so far comes from the checkpoint (`fluxpy.engine.position`).
    pending = position.pending
    if budget is not None:  # the steps this epoch runs, to tell a cut epoch from a whole one
        budget.begin_epoch(data if pending is None or not hasattr(data, "__len__")
                           else range(len(data) - pending["steps"]))
    _epoch(learner, phase, _Steps(position, data), budget, pending is not None)


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


def _run_steps(learner, phase: Phase, data, budget: Budget | None) -> None:
    impl, impl_type = None, None
    in_step = False  # whether an error comes from the loop's body rather than from the data
    try:
        for batch in data:
            in_step = True
            if type(batch) is not impl_type:  # dispatch once per batch type, not per step
                impl_type = type(batch)
                impl = step.resolve(type(learner), type(phase), impl_type)
            try:  # noqa: SIM105 (a `suppress` would cost 0.2 us a step)
                impl(learner, phase, batch)
            except CancelStepException:  # raised at StepBegin, which runs no body
                pass
            if budget is not None and budget.after_step():  # a limit: the epoch ends here
                if budget.cut_short:
                    for hook in getattr(learner, "position", _NO_POSITION).on_cut:
                        hook()
                break
            in_step = False
    except Exception as exc:
        if not in_step:
            name = type(data.data if isinstance(data, _Steps) else data).__name__
            exc.add_note(f"raised by the data iterator of {phase} ({name})")
        raise
    if impl_type is None and not (type(data) is _Steps and data.position.resumed_at_end):
        raise ValueError(_no_batches(phase, data))


class _Steps:
    """A training epoch's data, iterated through `learner.position` (which keeps the iterator)."""

    __slots__ = ("data", "position")

    def __init__(self, position, data) -> None:
        self.position, self.data = position, data

    def __iter__(self):  # after `EpochBegin`, as `iter(data)` always was
        return self.position.start_epoch(self.data)


class _NoPosition:
    on_cut = ()


_NO_POSITION = _NoPosition()


def _no_batches(phase: Phase, data: Any) -> str:
    if isinstance(data, _Steps):
        data = data.data
    hint = ("an iterator or generator is used up after one pass: pass a list, a DataLoader or "
            "another object that can be iterated again" if iter(data) is data else
            "check the dataset and the DataLoader's batch_size / drop_last")
    return f"the data for {phase} ({type(data).__name__}) yielded no batches: {hint}."


@step.dispatch
def _supervised_step(learner, phase: AbstractTrainingPhase | AbstractValidationPhase, batch):
    """The built-in step of training and validation phases (see the module docstring)."""
    xs, ys = unpack(batch, phase)
    training = isinstance(phase, AbstractTrainingPhase)
    if training:
        frame = run_step(learner, phase, xs=xs, ys=ys, update=True)
    else:
        frame = run_step(learner, phase, xs=xs, ys=ys)
    plan = frame.plan
    with frame as state:
        state.preds = learner.model(state.xs)
        if state.ys is None and not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            state.loss = None  # inputs alone, in PredictionPhase (`unpack`): no loss
            return
        if plan.loss_begin:  # an event without handlers costs this test, not a call
            state = frame.fire(LOSS_BEGIN, plan.loss_begin)
        try:
            loss = learner.loss_fn(state.preds, state.ys)
        except Exception as exc:
            loss_note(exc, state, phase)
            raise
        state.loss = check_loss(loss, phase)
        if not training:
            return
        if plan.backward_begin:
            state = frame.fire(BACKWARD_BEGIN, plan.backward_begin)
        differentiated = state.loss
        try:
            differentiated.backward()
        except RuntimeError as exc:
            backward_failed(exc, learner, phase, loss, differentiated, plan.backward_begin)
            raise
        try:
            if plan.backward_end:
                state = frame.fire(BACKWARD_END, plan.backward_end)
            if state.update:
                update_parameters(learner)
        except BaseException:  # an unfinished step must not leak its gradients into the next
            learner.optimizer.zero_grad(set_to_none=True)
            raise


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
