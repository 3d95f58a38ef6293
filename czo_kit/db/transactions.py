"""Transactions that nest as savepoints, with ``on_commit`` callbacks that respect savepoints.

Peewee's ``after_commit`` keeps a callback registered inside a savepoint even when that
savepoint rolls back. Here each ``atomic()`` block keeps its own list: a committed savepoint
hands its callbacks to the enclosing block, a rolled-back one drops them, and only the
outermost commit runs them. An explicit ``rollback()`` of a transaction or savepoint (the
handle ``atomic()``, ``transaction()`` or ``savepoint()`` gives) drops the callbacks
registered since it began, too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import peewee

__all__ = ["TransactionalDatabaseMixin", "in_transaction", "on_commit", "transaction"]

log = logging.getLogger(__name__)

Callback = Callable[[], Any]


class TransactionalDatabaseMixin(peewee.Database):
    """Put first in the bases of a Peewee database class to get savepoint-aware ``on_commit``.

    The kit's SQLite and PostgreSQL backends use it; a third-party backend should too:
    ``class MyDatabase(TransactionalDatabaseMixin, peewee.MySQLDatabase)``.
    """

    czo_secret_key: bytes | None = None
    """Key that signs pagination cursors, set by the kit from ``CZO_SECRET_KEY``."""

    czo_cache: Any = None
    """The kit's ``CacheManager``, set by the kit: what ``repo.cache`` is without ``cache=``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._czo_local = threading.local()

    def _czo_frames(self) -> list[list[Callback]]:
        frames: list[list[Callback]] | None = getattr(self._czo_local, "frames", None)
        if frames is None:
            frames = self._czo_local.frames = []
        return frames

    def atomic(self, *args: Any, **kwargs: Any) -> peewee._atomic:
        """A transaction, or a savepoint when one is open; a context manager or decorator."""
        return _Atomic(self, *args, **kwargs)

    def transaction(self, *args: Any, **kwargs: Any) -> peewee._transaction:
        return _Transaction(self, *args, **kwargs)

    def savepoint(self) -> peewee._savepoint:
        return _Savepoint(self)

    def on_commit(self, fn: Callback) -> Callback:
        """Run ``fn`` after the outermost transaction commits; at once outside a transaction.

        Dropped if the ``atomic()`` block it was registered in (or any enclosing one) rolls back.
        """
        frames = self._czo_frames()
        if frames:
            frames[-1].append(fn)
        elif self.in_transaction():
            # A bare db.transaction()/manual block: fall back to peewee's own list.
            self.after_commit(fn)
        else:
            fn()
        return fn

    def czo_in_atomic(self) -> bool:
        """Whether the calling thread is inside an ``atomic()`` block of this database."""
        return bool(self._czo_frames())


class _Atomic(peewee._atomic):
    """Peewee's atomic block, plus a frame of on_commit callbacks that follows its fate."""

    db: TransactionalDatabaseMixin

    def __enter__(self) -> Any:
        handle = super().__enter__()
        self.db._czo_frames().append([])
        return handle

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        frames = self.db._czo_frames()
        callbacks = frames.pop()
        suppressed = super().__exit__(exc_type, exc, tb)  # raises if COMMIT fails: drop all
        if exc_type is not None and not suppressed:
            return suppressed  # rolled back: this block's callbacks are dropped
        if frames:
            frames[-1].extend(callbacks)
        else:
            _run_callbacks(callbacks)
        return suppressed


class _Transaction(peewee._transaction):
    def rollback(self, begin: bool = True) -> None:
        # The whole transaction is undone (Peewee drops its own callbacks): so are ours.
        for frame in self.db._czo_frames():
            frame.clear()
        super().rollback(begin)


class _Savepoint(peewee._savepoint):
    def _begin(self) -> None:
        super()._begin()  # type: ignore[misc]
        # Where the callbacks registered from now on start: this frame, at this length.
        frames = self.db._czo_frames()
        self._czo_mark = (len(frames), len(frames[-1]) if frames else 0, len(self.db._state.commit_callbacks))

    def rollback(self, begin: bool = True) -> None:
        # Before re-beginning, which marks again: what is registered afterwards is kept.
        depth, length, bare = self._czo_mark
        frames = self.db._czo_frames()
        for frame in frames[depth:]:
            frame.clear()
        if depth and len(frames) >= depth:
            del frames[depth - 1][length:]
        del self.db._state.commit_callbacks[bare:]  # a bare transaction's (on_commit's fallback)
        super().rollback(begin)


def _run_callbacks(callbacks: list[Callback]) -> None:
    # The data is committed: a failing callback must not stop the others from running.
    for fn in callbacks:
        try:
            fn()
        except Exception:
            log.exception("on_commit callback %r failed", fn)


def transaction(db: peewee.Database) -> Any:
    """``db.atomic()``: a transaction, or a savepoint inside one."""
    return db.atomic()


def on_commit(db: peewee.Database, fn: Callback) -> Callback:
    """Run ``fn`` after ``db``'s outermost transaction commits (at once when none is open).

    Works with any Peewee database; savepoint rollbacks are honoured on databases that use
    ``TransactionalDatabaseMixin`` (every built-in backend).
    """
    if isinstance(db, TransactionalDatabaseMixin):
        return db.on_commit(fn)
    if db.in_transaction():
        db.after_commit(fn)
    else:
        fn()
    return fn


def in_transaction(db: peewee.Database) -> bool:
    """Whether the calling thread has a transaction open on ``db``."""
    return bool(db.in_transaction())
