"""Objects whose threads, locks and sockets belong to the process that made them.

A forked child inherits them in whatever state the parent's threads left them (a lock held,
a socket shared with the parent). ``reset_in_children(obj)`` has ``obj._after_fork()`` called
in every child forked after it, so that the child starts afresh.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["reset_in_children"]


class _Resettable(Protocol):
    def _after_fork(self) -> None: ...


_objects: weakref.WeakSet[_Resettable] = weakref.WeakSet()


def reset_in_children(obj: _Resettable) -> None:
    _objects.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_objects):
        obj._after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
