"""Generic functions: plum-backed, extended with `.dispatch`, observable, resolvable by type.

`on`, `stateaccess`, `runafter`, `resolveconflict`, `step` and `epoch` are `GenericFunction`s.
Each wraps its own `plum.Function` (never the global `plum.dispatch`, which merges functions by
bare name across packages) and adds what the training loop needs:

- `.dispatch` registers a method and returns the decorated function unchanged, so it stays
  importable, testable and picklable;
- `.registrations` counts registrations: the learner's plans remember the count of `on` and
  start again when it changes, and its graph is rebuilt at the next `fit` when the count of a
  declaration changes (plum itself has no hook);
- `.resolve(*types)` / `.which(*types)` say which method applies to argument types without
  calling it, which is how the loop builds its plans once instead of dispatching per call.

Fallbacks carry no return annotation: plum converts returns when one is present (~3 us a call).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import plum

from .errors import CallbackDeclarationError

__all__ = ["GenericFunction"]


class GenericFunction:
    """A function whose methods are picked by multiple dispatch over all argument types.

    Args:
        fallback: the method for the most general signature; it is what `which` reports as
            "no real method".
        arity: number of positional parameters every method must take (checked at
            registration), or `None` to skip the check.
        params: the parameter names shown in the arity error.
    """

    def __init__(self, fallback: Callable[..., Any], *, arity: int | None = None, params: str = ""):
        self.fallback = fallback
        self.arity = arity
        self.params = params
        self.registrations = 0
        self._function = plum.Function(fallback)
        self._function.register(fallback)
        self._cache: dict[tuple[type, ...], Callable[..., Any]] = {}
        self.__name__ = fallback.__name__.lstrip("_")
        self.__qualname__ = self.__name__
        self.__doc__ = fallback.__doc__
        self.__module__ = fallback.__module__

    def __call__(self, *args: Any) -> Any:
        return self._function(*args)

    def __repr__(self) -> str:
        return f"<generic function fluxpy.{self.__name__} with {len(self.methods)} method(s)>"

    def dispatch(self, method: Callable[..., Any] | None = None, *, precedence: int = 0):
        """Register `method` (used as a decorator, with or without `precedence=`).

        Returns the function unchanged.
        """
        if method is None:
            return lambda f: self.dispatch(f, precedence=precedence)
        self._check_arity(method)
        self._function.register(method, precedence=precedence)
        self.registrations += 1
        self._cache.clear()
        return method

    def dispatch_fallback(self, *types: type) -> None:
        """Make the fallback the method for arguments of `types`, so `which` reports no real
        method there. It is registered with precedence -1: more specific methods still win,
        and a method that fits as well (a subclass's) wins the tie instead of being ambiguous.
        """
        self._function.register(self.fallback, plum.Signature(*types, precedence=-1))
        self.registrations += 1
        self._cache.clear()

    def resolve(self, *types: type) -> Callable[..., Any]:
        """The implementation that a call with arguments of `types` would run.

        Raises plum's `AmbiguousLookupError` when two methods match equally well.
        """
        try:
            return self._cache[types]
        except KeyError:
            impl, _ = self._function.resolve_method(plum.Signature(*types))
            self._cache[types] = impl
            return impl

    def which(self, *types: type) -> Callable[..., Any] | None:
        """Like `resolve`, but `None` when only the fallback applies."""
        impl = self.resolve(*types)
        return None if impl is self.fallback else impl

    @property
    def methods(self) -> list:
        """The registered plum methods (signatures and implementations)."""
        return list(self._function.methods)

    def _check_arity(self, method: Callable[..., Any]) -> None:
        if self.arity is None:
            return
        params = inspect.signature(method).parameters.values()
        positional = [
            p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(positional) != self.arity or any(p.kind == p.VAR_POSITIONAL for p in params):
            name = getattr(method, "__qualname__", repr(method))
            raise CallbackDeclarationError(
                f"{self.__name__} methods take {self.arity} parameters ({self.params}), "
                f"but {name} takes {len(positional)}. Write it as "
                f"`def {getattr(method, '__name__', 'f')}({self.params}): ...`."
            )
