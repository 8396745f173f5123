"""Every exception fluxpy raises on purpose, in one place.

Each class refines the builtin it resembles and keeps the parties as attributes, so code can
inspect them and people can read the message: what failed, who did what, and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AmbiguousHandlerError",
    "BadBatchError",
    "BadLossError",
    "CallbackDeclarationError",
    "CallbackGraphError",
    "CancelEpochException",
    "CancelFitException",
    "CancelStepException",
    "CheckpointError",
    "CycleError",
    "MissingStateError",
    "ProtectedError",
    "SanityCheckError",
    "UnresolvableConflictError",
    "WriteConflictError",
]


# -- control flow ------------------------------------------------------------------------------


class CancelStepException(Exception):
    """Raise in a handler to abandon the current step; `StepEnd` does not fire for it."""


class CancelEpochException(Exception):
    """Raise in a handler to end the current epoch early; `EpochEnd` still fires."""


class CancelFitException(Exception):
    """Raise in a handler to end `fit` normally; the message is kept as the stop reason."""


# -- permissions -------------------------------------------------------------------------------


class ProtectedError(PermissionError):
    """A handler read or wrote learner state its callback did not declare in `stateaccess`.

    Deliberately not an `AttributeError`: `getattr(learner, name, default)` must not hide it.

    Args:
        callback: the callback whose handler tried.
        path: the full path, e.g. `batch.loss` or `callbacks[0].count`.
        mode: `"read"` or `"write"`.
        granted: what the callback has there, if anything (`"read access"`).
        reason: why no declaration can grant it (a private attribute, another callback's
            view); replaces the usual fix, which names the declaration to add.
        detail: a sentence added at the end (strict mode: which handler changed what).
        grant: where in the `Access` tree to grant it, when that is not `path` (strict mode
            reports `model.coeff` of a callback that declared `model`).
    """

    def __init__(self, callback: object, path: str, mode: str, granted: str | None = None,
                 reason: str | None = None, detail: str | None = None,
                 grant: str | None = None):
        self.callback = callback
        self.path = path
        self.mode = mode
        self.granted = granted
        self.reason = reason
        self.detail = detail
        self.grant = grant
        name = _name(callback)
        verb = "write" if mode == "write" else "read"
        if reason is not None:
            msg = f"{name} may not {verb} learner.{path}: {reason}."
        else:
            perm = "fp.Write()" if mode == "write" else "fp.Read()"
            msg = f"{name} may not {verb} learner.{path}: add it to stateaccess({name})"
            if granted:
                msg += f" (it has {granted} there)"
            msg += (f", e.g. {perm} at {grant or _grant_point(path)!r} in the fp.Access tree "
                    "that stateaccess returns.")
        if detail:
            msg += f" {detail}"
        super().__init__(msg)

    def __reduce__(self):
        return (type(self), (self.callback, self.path, self.mode, self.granted, self.reason,
                             self.detail, self.grant))


# -- the callback graph ------------------------------------------------------------------------


class CallbackGraphError(ValueError):
    """Base of every error found while building the callback dependency graph."""


class CallbackDeclarationError(CallbackGraphError, TypeError):
    """Malformed declarations: `stateaccess`, `runafter`, `resolveconflict` or an `on` method."""


class WriteConflictError(CallbackGraphError):
    """Two callbacks write overlapping state and nothing says which goes first."""

    def __init__(self, first: object, second: object, paths: Sequence[tuple[str, str]],
                 names: tuple[str, str] | None = None):
        self.callbacks = (first, second)
        self.paths = tuple(paths)
        a, b = names or (_name(first), _name(second))
        ta, tb = type(first).__name__, type(second).__name__
        lines = [f"Write conflict between {a} and {b}:"]
        for pa, pb in self.paths:
            lines.append(f"  - {a} writes learner.{pa}")
            lines.append(f"  - {b} writes learner.{pb}")
        lines.append(
            "To resolve it, implement\n"
            "    @fp.resolveconflict.dispatch\n"
            f"    def _(a: {ta}, b: {tb}):\n"
            "        return fp.RunFirst(a)  # or fp.RunFirst(b), fp.NoConflict(), fp.Unresolvable()"
        )
        super().__init__("\n".join(lines))


class UnresolvableConflictError(CallbackGraphError):
    """`resolveconflict` said two callbacks cannot be used together."""

    def __init__(self, first: object, second: object, paths: Sequence[tuple[str, str]],
                 names: tuple[str, str] | None = None):
        self.callbacks = (first, second)
        self.paths = tuple(paths)
        a, b = names or (_name(first), _name(second))
        shared = ", ".join(dict.fromkeys(f"learner.{p}" for pair in self.paths for p in pair))
        super().__init__(
            f"{a} and {b} cannot be used together: resolveconflict says fp.Unresolvable() "
            f"for the state they share ({shared}). Remove one of them."
        )


class MissingStateError(CallbackGraphError):
    """A callback reads `cbstate.X` and no callback writes it."""

    def __init__(self, reader: object, path: str, hint: str | None = None):
        self.callback = reader
        self.path = path
        key = path.split(".", 1)[1] if "." in path else path
        fix = hint or f"add the callback that writes {path}"
        super().__init__(f"{_name(reader)} reads {path}, which no callback writes: {fix}.")
        self.key = key


class CycleError(CallbackGraphError):
    """The ordering constraints between callbacks form a cycle."""

    def __init__(self, cycle: Sequence[object], reasons: Sequence[str],
                 names: Sequence[str] | None = None):
        self.cycle = tuple(cycle)
        self.reasons = tuple(reasons)
        labels = list(names) if names is not None else [_name(c) for c in self.cycle]
        names = " -> ".join([*labels, labels[0]])
        lines = [f"The callbacks' ordering constraints form a cycle: {names}"]
        lines += [f"  - {r}" for r in self.reasons]
        lines.append("Break it: drop a runafter entry or change a resolveconflict answer.")
        super().__init__("\n".join(lines))


class AmbiguousHandlerError(CallbackGraphError):
    """Two `on` methods match an (event, phase, callback) equally well."""

    def __init__(self, event: type, phase: type, callback: object, candidates: Sequence[str]):
        self.event, self.phase, self.callback = event, phase, callback
        self.candidates = tuple(candidates)
        lines = [
            f"on({event.__name__}(), {phase.__name__}(), {_name(callback)}, learner) is "
            "ambiguous: these methods match equally well:"
        ]
        lines += [f"  - {c}" for c in self.candidates]
        lines.append("Add a method for the more specific pair, or narrow one of them.")
        super().__init__("\n".join(lines))


# -- data and loss -----------------------------------------------------------------------------


class BadBatchError(TypeError):
    """A data iterator yielded something the built-in steps cannot unpack."""


class BadLossError(TypeError):
    """The loss function returned something that is not a scalar tensor."""


class SanityCheckError(ValueError):
    """`SanityCheck` found problems with the data, the model or the loss; `problems` lists
    each with its fix."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        lines = [f"SanityCheck found {len(self.problems)} problem(s) before the first step:"]
        lines += [f"  {i}. {p}" for i, p in enumerate(self.problems, 1)]
        super().__init__("\n".join(lines))

    def __reduce__(self):
        return (type(self), (self.problems,))


class CheckpointError(ValueError):
    """A checkpoint file or folder is missing, damaged, foreign, from a newer format, from
    another model or optimizer, holds a class checkpoints do not build, or cannot be written.
    `path` names it, `part` the part of the file at fault ("model", "optimizer", "rng",
    "callbacks.Scheduler", "cbstate.history", "digest", "file", ...) or None, and `problem`
    says what is wrong and what to do."""

    def __init__(self, path: object, problem: str, part: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.part = part
        super().__init__(f"{path} [{part}]: {problem}" if part else f"{path}: {problem}")

    def __reduce__(self):
        return (type(self), (self.path, self.problem, self.part))


def _grant_point(path: str) -> str:
    """The attribute path an Access tree grants `path` at: trees name attributes, not the
    items of containers (`cbstate.history[TrainingPhase].steps` -> `cbstate.history`) nor
    methods (`cbstate.history.clear()` -> `cbstate.history`)."""
    path = path.split("[", 1)[0]
    if path.endswith("()"):
        path = path[:-2].rpartition(".")[0] or path[:-2]
    return path


def _name(obj: Any) -> str:
    """How a callback is named in messages: its class name (with its group, if any)."""
    if isinstance(obj, type):
        return obj.__name__
    return type(obj).__name__
