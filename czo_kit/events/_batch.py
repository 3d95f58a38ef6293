"""The watch over a worker's batches: a batch of claimed deliveries runs on one worker thread
while its handlers are quick; once it has run for ``budget`` seconds, what it has not started
yet goes back to the queue, one deliver task each, so that other workers share slow handlers
(and a handler waiting for another delivery does not wait behind it).

One thread per process watches every batch of that process; it sleeps until the earliest
deadline and starts with the first batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from czo_kit._fork import reset_in_children

__all__ = ["Batch", "BatchWatch"]

log = logging.getLogger("czo_kit.events")


class Batch:
    """Deliveries one worker thread runs in turn: ``take()`` before starting each one."""

    __slots__ = ("deadline", "items", "lock", "next", "released")

    def __init__(self, items: list[Any], deadline: float) -> None:
        self.items = items
        self.deadline = deadline
        self.next = 0  # items before this one are taken (started or finished) by the worker
        self.released = False  # the rest went back to the queue
        self.lock = threading.Lock()

    def take(self, index: int) -> bool:
        """Whether the worker may start item ``index`` (False: the rest were handed back)."""
        with self.lock:
            if self.released:
                return False
            self.next = index + 1
            return True

    def finish(self) -> None:
        """The worker is done with the batch: nothing is left to hand back."""
        with self.lock:
            self.next = len(self.items)


class BatchWatch:
    """Hands back the rest of a batch past its deadline through ``release(items)``."""

    def __init__(self, release: Callable[[list[Any]], None], *, after: Callable[[], None] = lambda: None) -> None:
        self.release = release
        self.after = after  # run after each hand-back (the watch's connection goes back to the pool)
        reset_in_children(self)
        self._after_fork()

    def _after_fork(self) -> None:
        self._batches: set[Batch] = set()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None

    def watch(self, batch: Batch) -> None:
        with self._cond:
            self._batches.add(batch)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="czo-event-batches", daemon=True)
                self._thread.start()
            self._cond.notify()

    def unwatch(self, batch: Batch) -> None:
        with self._cond:
            self._batches.discard(batch)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [b for b in self._batches if b.deadline <= now]
                for batch in due:
                    self._batches.discard(batch)
                if not due:
                    wait = min((b.deadline for b in self._batches), default=now + 60.0) - now
                    self._cond.wait(max(0.001, wait))
                    continue
            for batch in due:
                with batch.lock:
                    if batch.released or batch.next >= len(batch.items):
                        continue
                    batch.released = True
                    rest = batch.items[batch.next :]
                try:
                    self.release(rest)
                except Exception:  # they stay claimed: the sweep runs them once their lease runs out
                    log.warning("could not hand %d delivery(ies) of a slow batch back to the queue; they run "
                                "when their lease runs out", len(rest), exc_info=True)
                finally:
                    self.after()
