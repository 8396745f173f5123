"""The `Learner`: model, loss, optimizer, data, callbacks, and the loop that ties them.

    learner = fp.Learner(model, loss_fn, data=(train, valid), callbacks=[fp.ToDevice("cuda")])
    learner.fit(10)

Building a learner flattens callback groups, adds the default callbacks that were not given,
builds the dependency graph (raising every `fp.CallbackGraphError` now, not at the first
event), makes each callback's protected view once and calls each callback's `init`.

State a handler may be granted through `stateaccess`: `model`, `optimizer`, `loss_fn`,
`data` (`training`, `validation`), `batch` (`xs`, `ys`, `preds`, `loss`, `update`; a fresh
namespace each step), `cbstate` (state callbacks share), `callbacks`, `device`, `scaler`,
`epoch_phases` (the phases of one epoch of the current `fit`, in order).

How an event reaches a handler: `fit` runs `fp.epoch` for each phase, which runs `fp.step`
for each batch (`fluxpy.engine.loop`); each event is fired through `learner.handle` or, in
the built-in step, through the step's plan (`fluxpy.engine.framing`); `learner.plans`
(`fluxpy.engine.plans`) knows which handlers an event runs, and the executor
(`fluxpy.engine.executors`) runs them.

Extending:
    Pass your own `executor=`; add phases with `fit(n, phases=[(phase, data), ...])`; change
    callbacks on a built learner with `add_callback`, `remove_callback`, `replace_callback`
    or `set_callbacks` (called by a handler during `fit`, they apply at the next epoch
    boundary; see `fit`); fire your own events with `handle` (from a custom step, or from a
    handler whose callback declares them with `fp.fires`).
"""

from __future__ import annotations

import datetime
import itertools
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from typing import Any

import attrs
import torch

from . import prediction
from .arguments import flatten_callbacks, make_optimizer, missing_defaults
from .core.access import Access, Read
from .core.callback import Callback, UnsafeCallback, resolveconflict, runafter, stateaccess
from .core.errors import (
    CallbackDeclarationError,
    CallbackGraphError,
    CancelEpochException,
    CancelFitException,
    CheckpointError,
)
from .core.events import BUILTIN_EVENTS, Event, FitBegin, FitEnd
from .core.every import Every
from .core.graph import CallbackGraph, build_graph
from .core.phases import (
    AbstractTrainingPhase,
    Phase,
    PredictionPhase,
    TrainingPhase,
    ValidationPhase,
)
from .core.protect import protect
from .core.state import Batch, Data, State, as_data
from .core.strict import checked
from .ddp import DistributedTraining
from .engine.budget import Budget, make_budget
from .engine.executors import Executor, SerialExecutor
from .engine.firing import check_fire, fires, firing, firing_callback
from .engine.loop import epoch
from .engine.plans import Plans, method_for
from .engine.position import Position, mismatch
from .explain import GraphReport, graph_report
from .support.compiling import compile_model
from .support.devices import resolve_device
from .support.distributed import runs_on_this_rank
from .support.strategies import DDP, FSDP

__all__ = ["FitResult", "Learner"]

_FIT_PHASE = Phase()
_FIT_BEGIN, _FIT_END = FitBegin(), FitEnd()
_TRAINING, _VALIDATION = TrainingPhase(), ValidationPhase()
#: Runs the handlers of an event fired from a handler: in the firing handler's thread.
_NESTED = SerialExecutor()
#: The declarations the graph is built from: a method added to one rebuilds it at the next fit.
_DECLARATIONS = (stateaccess, runafter, resolveconflict, fires)


@attrs.frozen
class FitResult:
    """What `Learner.fit` returns: the rounds of epochs completed, and why it stopped early
    (a `CancelFitException`'s message, or the limit reached, e.g. "max_steps=10 reached")."""

    epochs: int
    stop_reason: str | None = None

    @property
    def stopped_early(self) -> bool:
        return self.stop_reason is not None


class Learner:
    """Holds everything training needs and runs the loop.

    Args:
        model: a `torch.nn.Module`.
        loss_fn: `loss_fn(preds, ys) -> scalar tensor`.
        data: `(train, valid)`, a mapping or object with `training`/`validation`, or `None`
            (then give it to `fit`).
        optimizer: an `Optimizer` over the model's parameters, a factory
            `params -> Optimizer`, or `None` for Adam with lr 1e-3.
        callbacks: callbacks and callback groups.
        use_default_callbacks: add `Recorder`, `Metrics`, `ProgressPrinter`, `MetricsPrinter`
            and `StopOnNaNLoss` when no callback of that type was given.
        executor: runs the handlers of each event; `SerialExecutor()` by default.
        device: where to train; `None` picks CUDA when available, else the CPU. On a
            non-CPU device a `ToDevice` callback is added unless one was given.
        distributed: DistributedDataParallel (see `fluxpy.ddp`): `None` turns it on under
            `torchrun` with more than one process, `True` requires it, `False` leaves it to
            you. Under DDP `device=None` means `cuda:LOCAL_RANK` (or the CPU), `learner.model`
            is the DDP wrapper (`learner.model.module` the plain model) and `learner.ddp` is
            set (else `None`). `fp.DDP(**options)` gives DDP options; `fp.FSDP(...)` shards
            the model with FSDP2 instead (`fluxpy.support.strategies`; the optimizer must then
            be a factory) and checkpoints become sharded folders.
        strict: check that no handler changes, in place, a tensor, module or optimizer its
            callback may only read (see `fluxpy.core.strict`); a change is an `fp.ProtectedError`
            naming the callback, the handler and the path. Costs a copy of what each handler
            reads, so it is meant for tests (`fluxpy.testing.test_learner` turns it on).
        compile: `True` compiles the model with `torch.compile` once, here; a dict gives
            torch.compile's options (`{"mode": "max-autotune"}`). `learner.model` is then the
            compiled wrapper and `fp.unwrap_model(learner.model)` the model; checkpoints hold
            the model's own keys (see `fluxpy.support.compiling`).

    Attributes:
        plans: the handlers each event runs (`fluxpy.engine.plans.Plans`), for executors,
            `fp.explain` and tests; `plans.handlers(event, phase)` shows one plan.
        position: where the running training epoch is (`fluxpy.engine.position.Position`):
            what a checkpoint in the middle of an epoch saves, and, after `load_checkpoint`
            of one, the step the next `fit` resumes that epoch at.
        fit_error: the exception that ended the last `fit` (set before `FitEnd` fires, so
            its handlers can tell a failed or interrupted fit: trackers mark the run so);
            `None` while a fit runs and after one that ended normally.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[Any, Any], torch.Tensor],
        *,
        data: Any = None,
        optimizer: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
        callbacks: Iterable[Callback] = (),
        use_default_callbacks: bool = True,
        executor: Executor | None = None,
        device: Any = None,
        distributed: bool | DDP | FSDP | None = None,
        strict: bool = False,
        compile: bool | dict = False,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(preds, ys), got {loss_fn!r}")
        if executor is not None and not isinstance(executor, Executor):
            raise TypeError(
                f"executor must be an fp.Executor (with run(event, phase, handlers)), "
                f"not {type(executor).__name__}"
            )
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be True or False, not {strict!r}")
        self.strict = strict  # read where methods are prepared for the plans (`_prepare`)
        self.model = model
        self.loss_fn = loss_fn
        self.device = resolve_device(device)
        self.data: Data | None = as_data(data)
        if compile is not False:  # the compiled wrapper trains the same parameter tensors
            self.model = compile_model(model, compile, self.device)
        self.ddp = DistributedTraining.setup(self, distributed, device, optimizer)
        self.optimizer = make_optimizer(optimizer, self.model)  # after FSDP replaced parameters
        self.executor: Executor = executor if executor is not None else SerialExecutor()
        self.batch = Batch()
        self.cbstate = State()
        self.scaler = None
        self.epoch_phases: tuple[Phase, ...] = ()
        self.budget: Budget | None = None  # the limits of the running fit (fluxpy.engine.budget)
        self.position = Position()  # where a training epoch is (fluxpy.engine.position)
        self.fit_error: BaseException | None = None
        self._fitting = False  # while true, changes of callbacks wait for an epoch boundary
        self._queued: list[Callback] | None = None  # the roots a change during fit asked for
        # Every callback this learner has adopted (by id, kept alive so ids stay unique): each
        # gets `init` once, also when it comes back (lr_find puts the callbacks back).
        self._adopted: dict[int, Callback] = {}
        roots = list(callbacks)
        if use_default_callbacks:
            roots += missing_defaults(roots)
        if self.device.type != "cpu":
            from .callbacks.todevice import ToDevice

            if not any(isinstance(c, ToDevice) for c in flatten_callbacks(roots)[0]):
                roots.append(ToDevice(self.device))
        self._roots: list[Callback] = []
        self._install(roots)

    # -- the loop ------------------------------------------------------------------------------

    def fit(self, n_epochs: int | None = None, data: Any = None,
            phases: Sequence[tuple[Phase, Any]] | None = None, *,
            max_steps: int | None = None, max_time: float | datetime.timedelta | None = None,
            validate_every: Every | None = None) -> FitResult:
        """Train for `n_epochs` more epochs of (training, validation), or of `phases`, or until
        another limit: at least one of `n_epochs`, `max_steps`, `max_time` must be given.

        Args:
            n_epochs: rounds of the phase plan (an epoch of each phase, training first).
            max_steps: training steps (batches of the training phases), counted from this call.
            max_time: seconds (or a `datetime.timedelta`) from this call, checked after each
                training step.
            validate_every: when the validation phases (every non-training phase of the plan)
                run: `fp.Every(epochs=k)` after every k-th training epoch,
                `fp.Every(steps=n)` after every n-th training step, in the middle of training
                epochs and not at their end (unless a multiple of n falls there),
                `fp.Every(seconds=s)` at the first training step that ends s seconds after
                the fit began or the previous validation ended. `None`: after every epoch.
                After `load_checkpoint` the schedule goes on where the checkpoint was taken
                (steps, epochs and seconds are counted since the last validation, not from
                this call), when this fit has the same `validate_every`.

        Reaching `max_steps` or `max_time` ends the fit normally after the current training
        step: the training epoch ends as a cancelled one does (`EpochEnd` fires, so the
        metrics of the steps it ran are recorded as an epoch), the rest of that round is
        skipped unless the step was the epoch's last, `FitEnd` fires, and `stop_reason` says
        which limit, e.g. "max_steps=1000 reached"; `FitResult.epochs` counts whole rounds.

        `FitBegin` fires first and `FitEnd` always fires last, also after an error or Ctrl-C.
        `CancelFitException` ends the fit normally; its message is the `stop_reason`.

        Callbacks changed during the fit (`add_callback`, `remove_callback`, `replace_callback`
        from a handler) are checked at the call and applied at the next epoch boundary, so
        every callback sees whole epochs: one that leaves gets `FitEnd` there, one that joins
        gets `init` and `FitBegin`. Changes asked for during the last epoch or at `FitEnd`
        apply when the fit ends (also after an error), for the next fit.
        """
        budget = make_budget(n_epochs, max_steps, max_time, validate_every,
                             distributed=self.ddp is not None)
        if data is not None:
            self.data = as_data(data)
        schedule = self._phases(phases)
        if budget is not None and (max_steps is not None or max_time is not None) and not any(
                isinstance(phase, AbstractTrainingPhase) for phase, _ in schedule):
            limit = "max_steps=" if max_steps is not None else "max_time="
            raise ValueError(f"{limit} counts training steps: the phases of this fit have no "
                             "training phase; give n_epochs instead")
        run_epoch = epoch if self.ddp is None else self.ddp.epoch
        if self.ddp is not None:
            schedule = self.ddp.begin_fit(self, schedule)
        self.epoch_phases = tuple(phase for phase, _ in schedule)
        if self._declared != _declarations():
            self._install(self._roots)
        rounds = range(n_epochs) if n_epochs is not None else itertools.count()
        validation = [(p, d) for p, d in schedule if not isinstance(p, AbstractTrainingPhase)]
        if budget is not None:
            budget.validate = lambda: self._validate(run_epoch, validation)
            if budget.validate_every is not None:
                schedule = [(p, d) for p, d in schedule if isinstance(p, AbstractTrainingPhase)]
        first = _resumed_phase(self.position, schedule)
        # the validate_every schedule a loaded checkpoint saved (used by this fit only)
        schedule_state, self.position.schedule = self.position.schedule, None
        epochs, reason = 0, None
        self._fitting = True
        self.fit_error = None
        self.budget = budget
        try:
            self.handle(_FIT_BEGIN, _FIT_PHASE)
            if budget is not None and budget.start(schedule_state):
                self._apply_queued(boundary=True)  # due when the checkpoint was taken
                budget.validate_due()
            for _ in rounds:
                for k, (phase, phase_data) in enumerate(schedule):
                    if k < first:  # ran before the mid-epoch checkpoint this fit resumes
                        continue
                    self.position.phase = k
                    self._apply_queued(boundary=True)
                    try:
                        run_epoch(self, phase, phase_data)
                    except CancelEpochException:  # raised at EpochBegin, after EpochEnd
                        pass
                    except CancelFitException as stop:  # at the round's last EpochEnd: it ran
                        if k == len(schedule) - 1 and getattr(stop, "epoch_ended", False):
                            epochs += 1
                        raise
                    if budget is not None and budget.cut_short:
                        raise CancelFitException(budget.stop_reason)
                epochs += 1
                first = 0
                if budget is not None:
                    if budget.round_ended():
                        self._apply_queued(boundary=True)
                        budget.validate()
                    if budget.stop_reason is not None:
                        raise CancelFitException(budget.stop_reason)
        except CancelFitException as stop:
            reason = str(stop) or "CancelFitException"
        except BaseException as exc:
            self.fit_error = exc
            try:
                self.handle(_FIT_END, _FIT_PHASE)
            except Exception as end_exc:
                exc.add_note(f"FitEnd handlers also failed: {end_exc!r}")
            finally:
                self.budget = None
                self.executor.close()
                self._end_fit(exc)
            raise
        try:
            self.handle(_FIT_END, _FIT_PHASE)
        except CancelFitException as stop:  # raised at FitEnd: skips its remaining handlers
            reason = reason or str(stop) or "CancelFitException"
        finally:
            self.budget = None
            self.executor.close()  # threads are not kept between fits; a pool restarts lazily
            self._end_fit()
        return FitResult(epochs, reason)

    def _validate(self, run_epoch: Callable[..., None],
                  validation: list[tuple[Phase, Any]]) -> None:
        """Run an epoch of each validation phase (for `validate_every`); the model is back in
        training mode afterwards and the training epoch goes on where it was."""
        for phase, phase_data in validation:
            try:
                with suppress(CancelEpochException):  # raised at EpochBegin, after EpochEnd
                    run_epoch(self, phase, phase_data)
            except CancelFitException as stop:  # e.g. early stopping: the training epoch,
                stop.epoch_ended = False  # which this validation interrupts, did not end
                raise
        self.model.train()

    def predict(self, data: Any, *, with_targets: bool = False) -> Any:
        """The model's outputs over `data`, joined along the first dimension, on the CPU.

        `data` yields `(xs, ys)` pairs or inputs alone (a tensor, or a tuple or list of one).
        It runs in `fp.PredictionPhase` through the learner's callbacks, as validation does
        (device, mixed precision, the user's), and leaves the history, metrics, callbacks and
        the model's train/eval and grad modes as they were (see `fluxpy.prediction`).
        Outputs stay on the device until the end; tuples, lists and dicts of tensors are
        joined leaf by leaf. With `with_targets=True`, returns `(preds, targets)`.
        """
        return prediction.predict(self, data, with_targets=with_targets)

    def evaluate(self, data: Any) -> dict[str, float]:
        """The loss and the metrics of the learner's `Metrics` over `data` (`(xs, ys)`
        batches), as `{"loss": ..., "accuracy": ...}`: means weighted by batch size, computed
        as in validation (`PredictionPhase`), without touching the training history."""
        return prediction.evaluate(self, data)

    def handle(self, event: Event, phase: Phase) -> None:
        """Fire `event` in `phase`: run the handlers of every callback that has one.

        From a handler (through its view), the callback must declare the event in `fp.fires`;
        the handlers it sets off run then, in the handler's thread, before `handle` returns.
        """
        firer = firing_callback()
        if firer is not None:
            check_fire(firer, event)
        handlers = self.plans.handlers(event, phase)
        if handlers:
            (self.executor if firer is None else _NESTED).run(event, phase, handlers)

    # -- callbacks -----------------------------------------------------------------------------

    @property
    def rng(self) -> Any:
        """`rng` is a declaration, not a value: see the AttributeError's message."""
        raise AttributeError(
            "learner.rng holds nothing to read or set: `rng=fp.Write()` in stateaccess declares "
            "that a callback draws random numbers (from torch, numpy or random directly), so "
            "the graph orders it against other callbacks that do.")

    @property
    def callbacks(self) -> tuple[Callback, ...]:
        """All callbacks (groups flattened), in the order they were given."""
        return self.graph.callbacks

    @property
    def graph_report(self) -> GraphReport:
        """`fp.explain(self)`'s text and the callback graph as Mermaid, DOT and a PNG picture,
        as plain values (made when read): what a handler declaring `graph_report=fp.Read()`
        can read of the graph, e.g. to store it with an experiment tracker's run."""
        return graph_report(self)

    # Each change is checked at once: a graph error (or a failing `init`) is raised at the call
    # and leaves the learner as it was. During `fit` it is applied at the next epoch boundary
    # (see `fit`); until then `callbacks` lists the callbacks as they are.

    def set_callbacks(self, callbacks: Iterable[Callback]) -> None:
        """Make `callbacks` (and groups) the learner's callbacks, all at once; `init` the ones
        it has not had before. Checked like `add_callback`, and all or nothing."""
        self._change(list(callbacks), "set_callbacks(...)")

    @property
    def given_callbacks(self) -> tuple[Callback, ...]:
        """The callbacks as given (groups not flattened), for `set_callbacks` to put back."""
        return tuple(self._wanted())

    def add_callback(self, callback: Callback) -> None:
        """Add a callback (or group), re-check the graph and `init` it."""
        self._change([*self._wanted(), callback], f"add_callback({_short(callback)})")

    def remove_callback(self, callback: Callback | type) -> Callback:
        """Remove a top-level callback given as the object or its type; returns it."""
        roots = self._wanted()
        index = self._root_index(roots, callback)
        self._change(roots[:index] + roots[index + 1:], f"remove_callback({_short(callback)})")
        return roots[index]

    def replace_callback(self, old: Callback | type, new: Callback) -> Callback:
        """Put `new` where `old` (an object or type) was; returns `old`."""
        roots = self._wanted()
        index = self._root_index(roots, old)
        self._change([*roots[:index], new, *roots[index + 1:]],
                     f"replace_callback({_short(old)}, {_short(new)})")
        return roots[index]

    def get_callback(self, kind: type) -> Callback | None:
        """The first callback that is an instance of `kind`, or `None`."""
        return next((c for c in self.callbacks if isinstance(c, kind)), None)

    def view(self, callback: Callback) -> Any:
        """The protected view `callback`'s handlers get (the raw learner for `UnsafeCallback`)."""
        for cb, v in zip(self.graph.callbacks, self._views):
            if cb is callback:
                return v
        raise ValueError(f"{type(callback).__name__} is not a callback of this learner")

    @staticmethod
    def _root_index(roots: list[Callback], callback: Callback | type) -> int:
        for i, cb in enumerate(roots):
            if cb is callback or (isinstance(callback, type) and isinstance(cb, callback)):
                return i
        names = ", ".join(type(c).__name__ for c in roots)
        raise ValueError(f"no callback {callback!r} among the learner's callbacks ({names})")

    def _wanted(self) -> list[Callback]:
        """The top-level callbacks with the changes asked for so far (applied or not)."""
        return list(self._roots if self._queued is None else self._queued)

    def _change(self, roots: list[Callback], call: str) -> None:
        try:
            if self._fitting:
                self._build(roots)  # only checked: applied at the next epoch boundary
                self._queued = roots
            else:
                self._install(roots)
        except CallbackGraphError as exc:
            exc.add_note(f"{call} was refused; the learner's callbacks are as they were")
            raise

    def _apply_queued(self, boundary: bool) -> None:
        """Make the callbacks asked for during `fit` the learner's. At an epoch boundary,
        those that leave get `FitEnd` and those that join `FitBegin` (after `init`)."""
        roots, self._queued = self._queued, None
        if roots is None:
            return
        before = self.graph.callbacks
        if boundary:
            staying = {id(cb) for cb in flatten_callbacks(roots)[0]}
            self._fire_for(_FIT_END, lambda cb: id(cb) not in staying)
        self._install(roots)
        if boundary:
            self._fire_for(_FIT_BEGIN, lambda cb: all(cb is not old for old in before))

    def _fire_for(self, event: Event, chosen: Callable[[Callback], bool]) -> None:
        """Run the handlers of `event` of the `chosen` callbacks only, in plan order. They run
        one by one, not through the executor: their `.after` name handlers left out."""
        for handler in self.plans.handlers(event, _FIT_PHASE):
            if chosen(handler.callback):
                handler()

    def _end_fit(self, error: BaseException | None = None) -> None:
        """After `FitEnd`: the changes still waiting apply now, for the next fit. When the fit
        ends with `error`, a failure to apply them becomes a note on it."""
        self._fitting = False
        try:
            self._apply_queued(boundary=False)
        except Exception as exc:
            if error is None:
                raise
            error.add_note(f"a change of callbacks asked for during fit failed: {exc!r}")

    def _build(self, roots: list[Callback]) -> tuple[CallbackGraph, tuple[Any, ...], dict]:
        """The graph, views and groups of `roots`; raises every `CallbackGraphError` now."""
        flat, groups = flatten_callbacks(roots)
        graph = build_graph(flat)
        views = tuple(self._view(cb, access) for cb, access in zip(graph.callbacks, graph.access))
        _check_ambiguity(graph)
        return graph, views, groups

    def _view(self, cb: Callback, access: Access) -> Any:
        """What `cb`'s handlers get: the raw learner if unsafe, else its protected view, with
        `handle` for a callback that declares `fp.fires`."""
        if isinstance(cb, UnsafeCallback):
            return self
        if access.get("handle") is not None:
            name = type(cb).__name__
            raise CallbackDeclarationError(
                f"stateaccess({name}) grants learner.handle: declare the events {name} fires "
                f"instead, with @fp.fires.dispatch def _(cb: {name}): return (MyEvent,)"
            )
        return protect(self, access | Access(handle=Read()) if fires(cb) else access, cb)

    def _install(self, roots: list[Callback]) -> None:
        """Make `roots` the learner's callbacks and `init` those it has not adopted before. If
        a check or an `init` fails, the learner is left as it was (callbacks, graph, plans)."""
        graph, views, groups = self._build(roots)
        saved = (getattr(self, "graph", None), getattr(self, "_views", ()),
                 getattr(self, "groups", {}), getattr(self, "plans", None), self._roots,
                 getattr(self, "_declared", None))
        self.graph, self._views, self.groups = graph, views, groups
        self.plans = Plans(graph, views, self._prepare)
        self._roots = list(roots)
        self._declared = _declarations()
        adopted = {}
        try:
            # With the new graph in place: an `init` may look at `learner.callbacks`.
            for name, cb, view in zip(graph.names, graph.callbacks, views):
                if id(cb) not in self._adopted and runs_on_this_rank(cb):
                    _init(cb, name, view, groups)
                    adopted[id(cb)] = cb
        except BaseException:
            (self.graph, self._views, self.groups, self.plans, self._roots,
             self._declared) = saved
            raise
        self._adopted.update(adopted)

    def _prepare(self, i: int, method: Any) -> Any:
        """Callback `i`'s method as its plans run it (see `fluxpy.engine.plans.Prepare`)."""
        cb = self.graph.callbacks[i]
        if not runs_on_this_rank(cb):
            return None
        if self.strict and not isinstance(cb, UnsafeCallback):
            method = checked(method, cb, self.graph.access[i])
        if fires(cb):
            method = firing(method, cb)
        if self.ddp is not None:
            method = self.ddp.deferring_stops(method)
        return method

    def _phases(self, phases: Sequence[tuple[Phase, Any]] | None) -> list[tuple[Phase, Any]]:
        if phases is None:
            if self.data is None or self.data.training is None:
                raise ValueError(
                    "fit has no data: pass data=(train, valid) to fp.Learner(...) or to fit(...), "
                    "or phases=[(phase, data), ...]."
                )
            plan = [(_TRAINING, self.data.training)]
            if self.data.validation is not None:
                plan.append((_VALIDATION, self.data.validation))
        else:
            plan = []
            for item in phases:
                if not (isinstance(item, (tuple, list)) and len(item) == 2
                        and isinstance(item[0], Phase)):
                    raise TypeError(
                        f"fit(phases=...) takes (phase, data) pairs with phase an fp.Phase "
                        f"instance, got {item!r}"
                    )
                plan.append((item[0], item[1]))
            if not plan:
                raise ValueError("fit(phases=[]) has no phases to run: pass (phase, data) pairs, "
                                 "e.g. phases=[(fp.TrainingPhase(), train_data)].")
        for phase, data in plan:
            if hasattr(data, "__len__") and len(data) == 0:
                raise ValueError(
                    f"the data for {phase} is empty (len 0): an epoch would do nothing. Check "
                    "the dataset and the DataLoader's batch_size / drop_last."
                )
        return plan


def _init(cb: Callback, name: str, view: Any, groups: dict[int, Callback]) -> None:
    try:
        cb.init(view)
    except Exception as exc:
        group = groups.get(id(cb))
        where = f" (in the group {type(group).__name__})" if group is not None else ""
        exc.add_note(f"raised by {name}.init(learner){where}, when the learner adopted {name}; "
                     "the learner's callbacks are as they were")
        raise


def _resumed_phase(position: Position, schedule: Sequence[tuple[Phase, Any]]) -> int:
    """The phase of the first round a pending mid-epoch position resumes at (0 if none),
    checked against this fit's phases and data before anything runs."""
    pending = position.pending
    if pending is None:
        return 0
    k = pending["phase"]
    if k >= len(schedule) or not isinstance(schedule[k][0], AbstractTrainingPhase):
        raise CheckpointError("the checkpoint", f"was taken in the training epoch of phase {k} "
                              "of a round; this fit's phases have no training phase there. "
                              "Resume with the phases it was trained with.", "position")
    problem = mismatch(pending, schedule[k][1])
    if problem:
        raise CheckpointError("the checkpoint", problem, "position")
    return k


def _short(callback: Callback | type) -> str:
    """`Metrics()` for a callback, `Metrics` for a type: how a change names it."""
    return callback.__name__ if isinstance(callback, type) else f"{type(callback).__name__}()"


def _declarations() -> int:
    """How many methods the declarations the graph is built from have had registered."""
    return sum(fn.registrations for fn in _DECLARATIONS)


def _check_ambiguity(graph: CallbackGraph) -> None:
    """Resolve every built-in (event, phase) pair now, so ambiguity fails at build time."""
    for cb in graph.callbacks:
        for event in BUILTIN_EVENTS:
            phases = ((Phase, PredictionPhase) if event in (FitBegin, FitEnd)
                      else (TrainingPhase, ValidationPhase, PredictionPhase))
            for phase in phases:
                method_for(event, phase, cb)
