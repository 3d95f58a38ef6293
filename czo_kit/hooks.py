"""``HookRegistry``: before / after / on_error interception of named operations.

``run(name, ctx, operation)`` calls the before hooks (which may replace or mutate the context),
then the operation, then the after hooks in reverse order (onion style: the first before hook
is the last after hook), which may replace the result. When anything raises, the error hooks
run in the same reverse order; the first to return a value other than ``None`` recovers,
otherwise the original error is re-raised unchanged.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar, overload

from czo_kit.plugins import Contributions

__all__ = ["HookName", "HookRegistry", "Unsubscribe"]

log = logging.getLogger(__name__)

C = TypeVar("C")
R = TypeVar("R")

Unsubscribe = Callable[[], None]


class HookName(Generic[C, R]):
    """A hook name that carries its context and result types, so mypy checks handlers.

    ``ITEM_CREATE: HookName[MutationContext, Item] = HookName("item.create")``
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a hook name must be a non-empty string, got {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"HookName({self.name!r})"

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HookName):
            return self.name == other.name
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)


class _Entry:
    __slots__ = ("fn", "priority", "seq")

    def __init__(self, fn: Callable[..., Any], priority: int, seq: int) -> None:
        self.fn = fn
        self.priority = priority
        self.seq = seq


class _Chain:
    """The hooks of one name, kept as sorted tuples so ``run`` reads them without a lock."""

    __slots__ = ("after", "before", "error")

    def __init__(self) -> None:
        self.before: tuple[_Entry, ...] = ()
        self.after: tuple[_Entry, ...] = ()
        self.error: tuple[_Entry, ...] = ()

    def empty(self) -> bool:
        return not (self.before or self.after or self.error)


def _name_of(name: str | HookName[Any, Any]) -> str:
    if isinstance(name, HookName):
        return name.name
    if isinstance(name, str) and name:
        return name
    raise ValueError(f"a hook name must be a non-empty string or HookName, got {name!r}")


class HookRegistry:
    """Named interception points. Thread-safe; registration order breaks priority ties."""

    def __init__(self) -> None:
        self._chains: dict[str, _Chain] = {}
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._contributions = Contributions()

    # -- registration -------------------------------------------------------------------

    @overload
    def before(
        self, name: HookName[C, R], fn: Callable[[C], C | None], *, priority: int = 0
    ) -> Unsubscribe: ...

    @overload
    def before(
        self, name: str, fn: Callable[[Any], Any], *, priority: int = 0
    ) -> Unsubscribe: ...

    def before(
        self, name: str | HookName[Any, Any], fn: Callable[[Any], Any], *, priority: int = 0
    ) -> Unsubscribe:
        """``fn(ctx)`` runs before the operation; returning a value replaces ``ctx``.

        Higher ``priority`` runs first (and its after hook last).
        """
        return self._add(name, "before", fn, priority)

    @overload
    def after(
        self, name: HookName[C, R], fn: Callable[[R, C], R | None], *, priority: int = 0
    ) -> Unsubscribe: ...

    @overload
    def after(
        self, name: str, fn: Callable[[Any, Any], Any], *, priority: int = 0
    ) -> Unsubscribe: ...

    def after(
        self, name: str | HookName[Any, Any], fn: Callable[[Any, Any], Any], *, priority: int = 0
    ) -> Unsubscribe:
        """``fn(result, ctx)`` runs after a successful operation; returning a value replaces it."""
        return self._add(name, "after", fn, priority)

    @overload
    def on_error(
        self, name: HookName[C, R], fn: Callable[[BaseException, C], R | None], *, priority: int = 0
    ) -> Unsubscribe: ...

    @overload
    def on_error(
        self, name: str, fn: Callable[[BaseException, Any], Any], *, priority: int = 0
    ) -> Unsubscribe: ...

    def on_error(
        self,
        name: str | HookName[Any, Any],
        fn: Callable[[BaseException, Any], Any],
        *,
        priority: int = 0,
    ) -> Unsubscribe:
        """``fn(error, ctx)`` runs when a before hook, the operation or an after hook raised.

        Return a recovery value to use as the result, or ``None`` to let the error propagate.
        """
        return self._add(name, "error", fn, priority)

    def _add(
        self, name: str | HookName[Any, Any], kind: str, fn: Callable[..., Any], priority: int
    ) -> Unsubscribe:
        key = _name_of(name)
        if not callable(fn):
            raise TypeError(f"hook handler for {key!r} must be callable, got {fn!r}")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise TypeError(f"priority must be an int, got {priority!r}")
        entry = _Entry(fn, priority, next(self._seq))
        with self._lock:
            chain = self._chains.get(key)
            if chain is None:
                chain = self._chains[key] = _Chain()
            entries = (*getattr(chain, kind), entry)
            if kind == "before":
                ordered = sorted(entries, key=lambda e: (-e.priority, e.seq))
            else:
                # Reverse of the before order: lower priority first, later registration first.
                ordered = sorted(entries, key=lambda e: (e.priority, -e.seq))
            setattr(chain, kind, tuple(ordered))
        self._contributions.record(f"{'on_error' if kind == 'error' else kind} {key}")

        def unsubscribe() -> None:
            with self._lock:
                current = self._chains.get(key)
                if current is None:
                    return
                setattr(current, kind, tuple(e for e in getattr(current, kind) if e is not entry))
                if current.empty():
                    del self._chains[key]

        return unsubscribe

    # -- inspection ---------------------------------------------------------------------

    def contributions(self) -> dict[str, list[str]]:
        """Plugin name -> the hooks it added in ``czo_register_hooks`` (``"before item.create"``)."""
        return self._contributions.contributions()

    def has(self, name: str | HookName[Any, Any]) -> bool:
        """Whether any hook is registered for ``name``."""
        return _name_of(name) in self._chains

    def names(self) -> list[str]:
        """Every hook name with at least one handler."""
        return sorted(self._chains)

    def clear(self, name: str | HookName[Any, Any] | None = None) -> None:
        """Remove every handler of ``name``, or of every name."""
        with self._lock:
            if name is None:
                self._chains.clear()
            else:
                self._chains.pop(_name_of(name), None)

    # -- running ------------------------------------------------------------------------

    @overload
    def run(self, name: HookName[C, R], ctx: C, operation: Callable[[C], R]) -> R: ...

    @overload
    def run(self, name: str, ctx: C, operation: Callable[[C], R]) -> R: ...

    def run(self, name: str | HookName[Any, Any], ctx: Any, operation: Callable[[Any], Any]) -> Any:
        """Run ``operation(ctx)`` wrapped in the hooks registered for ``name``."""
        chain = self._chains.get(name if type(name) is str and name else _name_of(name))
        if chain is None:
            return operation(ctx)
        try:
            for entry in chain.before:
                replaced = entry.fn(ctx)
                if replaced is not None:
                    ctx = replaced
            result = operation(ctx)
            for entry in chain.after:
                replaced = entry.fn(result, ctx)
                if replaced is not None:
                    result = replaced
            return result
        except Exception as error:
            for entry in chain.error:
                try:
                    recovery = entry.fn(error, ctx)
                except Exception:
                    log.exception("error hook %r for %r failed", entry.fn, _name_of(name))
                    continue
                if recovery is not None:
                    return recovery
            raise
