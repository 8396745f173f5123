"""Executors: how the handlers of one event are run.

The learner resolves each `(event, phase)` once into a plan: a tuple of `Handler`s in
topological order, holding only callbacks that have a real method for that pair. An executor
gets that plan for every fired event and must run every handler after the handlers in its
`.after`.

- `SerialExecutor` (default): in order, in the calling thread.
- `ThreadedExecutor(max_workers)`: each handler as soon as its `.after` are done. The graph
  puts an edge between any two callbacks whose declared state overlaps with a write, so
  concurrent handlers never touch the same state.

Any executor gives the serial result: the same values, random draws and errors as
`SerialExecutor`. For the threaded one that takes the calling thread's torch modes onto the
workers and waiting for every handler it started before `run` returns.

Extending:
    Subclass `Executor` and implement `run(event, phase, handlers)`; pass an instance as
    `fp.Learner(..., executor=MyExecutor())`. A handler is run by calling it: `handler()`.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Any

import attrs
import torch

from ..core.errors import CancelEpochException, CancelFitException, CancelStepException

__all__ = ["Executor", "Handler", "SerialExecutor", "ThreadedExecutor"]

_CONTROL_FLOW = (CancelStepException, CancelEpochException, CancelFitException)


class Handler:
    """One callback's method for one (event, phase), bound to the callback's protected view.

    Attributes:
        callback: the callback.
        name: its name in the graph (e.g. `Metrics` or `Metrics#2`).
        method: the `on` method that dispatch picked.
        after: the handlers of the same plan that must finish before this one starts.
    """

    __slots__ = ("after", "args", "callback", "event", "learner", "method", "name", "phase")

    def __init__(self, callback: Any, name: str, method: Callable[..., Any], event: Any,
                 phase: Any, learner: Any) -> None:
        self.callback = callback
        self.name = name
        self.method = method
        self.event = event
        self.phase = phase
        self.learner = learner
        # The method's arguments, packed once: `method(*args)` is the cheapest call per step.
        self.args = (event, phase, callback, learner)
        self.after: tuple[Handler, ...] = ()

    def __call__(self) -> None:
        try:
            self.method(*self.args)
        except _CONTROL_FLOW:
            raise
        except Exception as exc:
            self.note(exc)
            raise

    def note(self, exc: BaseException) -> None:
        """Add the PEP 678 note naming this handler's callback, event, phase and method."""
        exc.add_note(
            f"raised by the handler of {self.name} for {self.event} in {self.phase} "
            f"({self.method.__module__}.{self.method.__qualname__})"
        )

    def __repr__(self) -> str:
        return f"Handler({self.name} on {self.event} in {self.phase})"


class Executor:
    """Runs the handlers of one event; subclass it and implement `run`."""

    def run(self, event: Any, phase: Any, handlers: Sequence[Handler]) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must implement run(event, phase, handlers)"
        )

    def close(self) -> None:
        """Release resources (threads); called when the learner is done with the executor."""


class SerialExecutor(Executor):
    """Runs handlers one after the other in topological order."""

    def run(self, event: Any, phase: Any, handlers: Sequence[Handler]) -> None:
        for h in handlers:  # what `h()` does, without a call frame per handler
            try:
                h.method(*h.args)
            except _CONTROL_FLOW:
                raise
            except Exception as exc:
                h.note(exc)
                raise


class ThreadedExecutor(Executor):
    """Runs each handler on a thread pool as soon as the handlers it depends on are done.

    It gives the serial result:

    - Handlers run under the calling thread's torch modes (grad and inference mode, autocast,
      default device), which are per thread in torch.
    - A handler starts only after its `.after` are done, so ordered handlers never overlap and
      keep their plan order (draws from torch's global generator included).
    - `run` returns only when every handler it started has finished, also when one raised or
      Ctrl-C arrived while it waited; once that happened, no new handler starts. An error wins
      over a cancel exception, then plan order decides; the exception raised keeps its type,
      traceback and notes, and the others are added to it as notes.

    Args:
        max_workers: threads in the pool.
    """

    def __init__(self, max_workers: int = 4) -> None:
        if max_workers < 1:
            raise ValueError(f"ThreadedExecutor(max_workers={max_workers}): need at least 1 worker")
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def run(self, event: Any, phase: Any, handlers: Sequence[Handler]) -> None:
        if len(handlers) == 1:
            handlers[0]()
            return
        batch = _Batch(handlers, _TorchModes.capture())
        interrupt = None
        try:
            batch.run(self._ensure_pool())
        except BaseException as exc:  # Ctrl-C while it waited (or any error in this thread)
            interrupt = exc
            batch.stop_and_wait()
        raised = batch.exception(interrupt)
        if raised is not None:
            raise raised  # outside `except`: its traceback and context stay its own

    def _ensure_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_workers, thread_name_prefix="fluxpy")
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __getstate__(self) -> dict:
        return {"max_workers": self.max_workers}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_workers"])


#: Device types whose autocast state a worker thread takes over from the calling thread.
_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")


@attrs.frozen
class _TorchModes:
    """The torch modes that are per thread, read in one thread and entered in another.

    The default dtype is not here: `torch.set_default_dtype` sets it for every thread.
    """

    grad: bool
    inference: bool
    autocast: tuple[tuple[str, torch.dtype], ...]  # (device type, dtype) of each one enabled
    default_device: torch.device

    @classmethod
    def capture(cls) -> _TorchModes:
        autocast = tuple((device_type, torch.get_autocast_dtype(device_type))
                         for device_type in _AUTOCAST_DEVICE_TYPES
                         if torch.is_autocast_enabled(device_type))
        return cls(torch.is_grad_enabled(), torch.is_inference_mode_enabled(), autocast,
                   torch.get_default_device())

    @contextmanager
    def entered(self) -> Iterator[None]:
        """Run the body under these modes (a pool thread starts with torch's defaults and is
        left with them)."""
        with ExitStack() as stack:
            if self.inference:
                stack.enter_context(torch.inference_mode())
            # After inference mode, which turns grad mode off: `enable_grad` inside
            # `inference_mode` is a state of its own.
            if torch.is_grad_enabled() != self.grad:
                stack.enter_context(torch.set_grad_enabled(self.grad))
            for device_type, dtype in self.autocast:
                stack.enter_context(torch.autocast(device_type, dtype=dtype))
            if torch.get_default_device() != self.default_device:
                stack.enter_context(torch.device(self.default_device))
            yield


class _Batch:
    """One `ThreadedExecutor.run`: what is left to start and what the workers report.

    The calling thread and the workers share it under one condition, so a worker never starts
    a handler once the batch is stopped, and the calling thread sees every report.
    """

    def __init__(self, handlers: Sequence[Handler], modes: _TorchModes) -> None:
        self.position = {id(h): k for k, h in enumerate(handlers)}
        self.pending = list(handlers)
        self.modes = modes
        self.changed = threading.Condition()
        self.stopped = False  # set by the first exception: nothing starts after it
        self.submitted = 0  # handed to the pool, not yet finished or skipped
        self.running = 0  # started on a worker, not yet finished
        self.done: set[int] = set()
        self.errors: list[tuple[Handler, BaseException]] = []

    def run(self, pool: ThreadPoolExecutor) -> None:
        """Submit each handler once its `.after` are done; return when all have finished, or
        when one raised and those already started have finished."""
        with self.changed:
            while not self.stopped and (self.pending or self.submitted):
                for h in [h for h in self.pending if all(id(a) in self.done for a in h.after)]:
                    self.pending.remove(h)
                    self.submitted += 1
                    pool.submit(self._call, h)
                self.changed.wait()
            while self.running:
                self.changed.wait()

    def _call(self, handler: Handler) -> None:
        """Run `handler` on a worker, unless the batch was stopped while it was queued."""
        with self.changed:
            if self.stopped:
                self.submitted -= 1
                return
            self.running += 1
        error = None
        try:
            with self.modes.entered():
                handler()
        except BaseException as exc:
            error = exc
        with self.changed:
            self.running -= 1
            self.submitted -= 1
            self.done.add(id(handler))
            if error is not None:
                self.errors.append((handler, error))
                self.stopped = True
            self.changed.notify_all()

    def stop_and_wait(self) -> None:
        """Start nothing more, and wait until the handlers already started have finished."""
        while True:
            try:
                with self.changed:
                    self.stopped = True
                    while self.running:
                        self.changed.wait()
                return
            except KeyboardInterrupt:
                # A second Ctrl-C does not abandon running handlers: the process could not
                # exit before they end anyway (the pool's threads are joined at exit), and
                # what runs after `run` (FitEnd closing files) must not run beside them.
                continue

    def exception(self, interrupt: BaseException | None) -> BaseException | None:
        """What to raise, with every other exception added to it as a note: `interrupt`
        (raised in the calling thread), else the first error in plan order, else the first
        cancel exception (the loop catches those: an error raised beside one must not be lost).
        """
        found = sorted(self.errors, key=lambda e: (isinstance(e[1], _CONTROL_FLOW),
                                                   self.position[id(e[0])]))
        if interrupt is not None:
            found.insert(0, (None, interrupt))
        if not found:
            return None
        (_, raised), *others = found
        for handler, exc in others:
            raised.add_note(
                f"{handler.name}'s handler for {handler.event} in {handler.phase} also raised:\n"
                + "".join(traceback.format_exception(exc)).rstrip()
            )
        return raised
