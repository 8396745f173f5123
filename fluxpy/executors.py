"""Executors: how the handlers of one event are run.

The learner resolves each `(event, phase)` once into a plan: a tuple of `Handler`s in
topological order, holding only callbacks that have a real method for that pair. An executor
gets that plan for every fired event and must run every handler after the handlers in its
`.after`.

- `SerialExecutor` (default): in order, in the calling thread.
- `ThreadedExecutor(max_workers)`: each handler as soon as its `.after` are done. The graph
  puts an edge between any two callbacks whose declared reads and writes overlap (or marks
  them exclusive), so concurrent handlers never touch the same state.

Extending:
    Subclass `Executor` and implement `run(event, phase, handlers)`; pass an instance as
    `fp.Learner(..., executor=MyExecutor())`. A handler is run by calling it: `handler()`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from .errors import CancelEpochException, CancelFitException, CancelStepException

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

    One event completes before the next starts. If handlers raise, the running ones are
    allowed to finish, no new ones start, and the first exception (in plan order) is raised in
    the calling thread with its original type, traceback and note.

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
        pool = self._ensure_pool()
        position = {id(h): k for k, h in enumerate(handlers)}
        done: set[int] = set()
        running: dict[Future, Handler] = {}
        pending = list(handlers)
        errors: list[tuple[int, BaseException]] = []
        while pending or running:
            if not errors:
                for h in list(pending):
                    if all(id(a) in done for a in h.after):
                        pending.remove(h)
                        running[pool.submit(h)] = h
            else:
                pending.clear()
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                h = running.pop(future)
                exc = future.exception()
                if exc is not None:
                    errors.append((position[id(h)], exc))
                done.add(id(h))
        if errors:
            raise min(errors, key=lambda e: e[0])[1]

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
