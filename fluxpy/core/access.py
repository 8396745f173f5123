"""Permission trees: what learner state a callback may read and write.

    fp.Access(batch=fp.Access(loss=fp.Read()), cbstate=fp.Access(history=fp.Write()))

A permission at a node covers its whole subtree; anything not named is not accessible.
`Write` implies `Read`. Trees merge with `|` (the stronger permission wins) and list their
paths, which the callback graph compares: two paths overlap when one is a prefix of the other.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterator
from typing import Union

import attrs

__all__ = ["Access", "Path", "Read", "Write", "overlaps", "render_path"]

Path = tuple[str, ...]


@attrs.frozen
class Read:
    """Permission to read a node and everything below it."""

    def __repr__(self) -> str:
        return "Read()"


@attrs.frozen
class Write(Read):
    """Permission to read and write a node and everything below it."""

    def __repr__(self) -> str:
        return "Write()"


Node = Union["Access", Read]


@attrs.frozen(init=False, repr=False)
class Access:
    """An attrs-frozen tree of permissions, built from keyword arguments.

    Children are `Read()`, `Write()` or nested `Access(...)`. `base` is the permission that
    covers children not named (only merges produce one: `Read() | Access(x=Write())`).
    """

    items: tuple[tuple[str, Node], ...]
    base: Read | None

    def __init__(self, **children: Node) -> None:
        for name, child in children.items():
            _check_child(name, child)
        self.__attrs_init__(tuple(sorted(children.items())), None)

    @classmethod
    def _make(cls, children: dict[str, Node], base: Read | None) -> Access:
        tree = cls.__new__(cls)
        tree.__attrs_init__(tuple(sorted(children.items())), base)
        return tree

    @property
    def children(self) -> dict[str, Node]:
        return dict(self.items)

    def get(self, name: str) -> Node | None:
        """The permission (or subtree) for child `name`, or `None` if it is not accessible."""
        for key, child in self.items:
            if key == name:
                return child
        return self.base

    def permission(self, path: Path | str) -> Read | None:
        """`Write()`, `Read()` or `None` for a full path such as `("batch", "loss")`."""
        parts = tuple(path.split(".")) if isinstance(path, str) else path
        node: Node | None = self
        for part in parts:
            if not isinstance(node, Access):
                return node
            node = node.get(part)
            if node is None:
                return None
        return node if not isinstance(node, Access) else None

    def __or__(self, other: Access) -> Access:
        if not isinstance(other, Access):
            return NotImplemented
        merged = _merge(self, other)
        assert isinstance(merged, Access)
        return merged

    def __bool__(self) -> bool:
        return bool(self.items) or self.base is not None

    def reads(self) -> list[Path]:
        """Paths granted `Read()` only (writes are listed by `writes`)."""
        return [p for p, perm in self._leaves(()) if not isinstance(perm, Write)]

    def writes(self) -> list[Path]:
        """Paths granted `Write()`."""
        return [p for p, perm in self._leaves(()) if isinstance(perm, Write)]

    def _leaves(self, prefix: Path) -> Iterator[tuple[Path, Read]]:
        if self.base is not None:
            yield prefix, self.base
        for name, child in self.items:
            if isinstance(child, Access):
                yield from child._leaves((*prefix, name))
            elif not _covered(self.base, child):
                yield (*prefix, name), child

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.items)
        if self.base is not None:
            inner = f"{self.base!r} for the rest" + (f", {inner}" if inner else "")
        return f"Access({inner})"


def _covered(base: Read | None, child: Read) -> bool:
    """Whether `base` already grants what `child` grants (so `child` adds no path)."""
    return isinstance(base, Write) or (base is not None and type(child) is Read)


def overlaps(p: Path, q: Path) -> bool:
    """Two paths overlap when one is a prefix of the other (`batch` and `batch.loss`)."""
    n = min(len(p), len(q))
    return p[:n] == q[:n]


def render_path(path: Path) -> str:
    return ".".join(path)


def _merge(a: Node | None, b: Node | None) -> Node | None:
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, Write) or isinstance(b, Write):
        return Write()
    if not isinstance(a, Access) and not isinstance(b, Access):
        return Read()
    if not isinstance(a, Access):
        a, b = b, a
    assert isinstance(a, Access)
    if not isinstance(b, Access):  # a plain Read over a tree: reads everything, keeps its writes
        return Access._make(a.children, _merge(a.base, b))
    children = a.children
    for name, child in b.items:
        children[name] = _merge(children.get(name), child)
    return Access._make(children, _merge(a.base, b.base))


def is_attribute_name(name: str) -> bool:
    """Whether `name` can follow a dot: an identifier that is not a keyword."""
    return name.isidentifier() and not keyword.iskeyword(name)


def _check_child(name: str, child: object) -> None:
    if not is_attribute_name(name):
        raise TypeError(
            f"Access({name!r}=...): {name!r} is not an attribute name; learner state is read "
            "as learner.<name>, so each name must be a Python identifier (and not a keyword)."
        )
    if name.startswith(("__", "_fp_")):
        raise TypeError(
            f"Access({name}=...): names starting with '__' or '_fp_' belong to the protected "
            "view itself and cannot be granted; learner state has ordinary names."
        )
    if isinstance(child, (Access, Read)):
        return
    if isinstance(child, type) and issubclass(child, (Access, Read)):
        raise TypeError(
            f"Access({name}={child.__name__}): permissions are instances; "
            f"write {name}={child.__name__}() instead."
        )
    raise TypeError(
        f"Access({name}={child!r}): {name!r} must be fp.Read(), fp.Write() or a nested "
        f"fp.Access(...), not {type(child).__name__}."
    )
