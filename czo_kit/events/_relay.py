"""The relay: hands committed work to the queue on a thread of its own, then marks it
``queued``; rides out queue outages with one log line each way, and stops by a deadline.

``emit_async`` returns once its outbox row is written; the queue's round trip happens here,
in commit order. Losing what this holds (a crash, an outage, a shutdown past its deadline)
loses no event: the rows stay ``pending`` and the sweep queues them. The ``queued`` mark only
tells the sweep "already handed to the queue"; it is written in batches, and losing it costs
a harmless duplicate dispatch.

The webhook dispatcher runs a relay of its own for its deliveries (``what`` names them in the
log): an item is any tuple, ``relay(*item)`` hands it over and ``mark`` gets the first
elements of those handed over. Given ``relay_many``, the relay hands over up to ``many``
items alike after their first element at once (``relay_many(items)``, all taken or none), so
that one queue task can carry many of them.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from czo_kit import metrics as _metrics
from czo_kit._fork import reset_in_children

__all__ = ["Relay"]

log = logging.getLogger("czo_kit.events")

_Relayed = tuple[Any, ...]  # for the outbox: event id, delay, priority
_Held = tuple[_Relayed, float]  # an item, and when it was committed (monotonic)


class Relay:
    """``relay(*item)`` raises when the queue did not take the item (for the outbox,
    ``relay(event_id, delay, priority)``); ``mark`` gets the first element of each item taken.

    ``what`` names the items in the log (``logger``), ``kept`` says where they are safe
    meanwhile.
    """

    meter: object = None  # set by czo_kit.metrics.attach: observe commit-to-queued lag

    def __init__(
        self,
        relay: Callable[..., None],
        mark: Callable[[list[Any]], None],
        *,
        shutdown_timeout: float = 3.0,
        mark_interval: float = 0.2,
        batch: int = 500,
        retry_max: float = 5.0,
        max_held: int = 100_000,
        what: str = "event(s)",
        kept: str = "the outbox",
        thread_name: str = "czo-outbox-relay",
        logger: logging.Logger = log,
        relay_many: Callable[[list[Any]], None] | None = None,
        many: int = 1,
        linger: float = 0.0,
    ) -> None:
        self.relay = relay
        self.relay_many = relay_many
        """Hands over several items at once (all or none; raises if not taken): items held
        together whose elements after the first are equal, up to ``many`` of them."""
        self.many = max(1, many)
        self.linger = linger
        """Seconds between two hand-offs at most as often (with ``relay_many``): an item
        committed right after a hand-off waits for the rest of it, so that a burst goes to the
        queue in batches that grow with its rate; an item after a quiet spell goes at once."""
        self.mark = mark
        self.what = what
        self.kept = kept
        self.thread_name = thread_name
        self.log = logger
        self.shutdown_timeout = shutdown_timeout
        self.mark_interval = mark_interval
        self.batch = batch
        self.retry_max = retry_max
        self.max_held = max_held
        _relays.add(self)  # handed over at exit
        reset_in_children(self)
        self._after_fork()

    def _after_fork(self) -> None:
        # Also the initial state: a forked child starts without the parent's thread and work.
        self._todo: list[_Held] = []
        self._taken = 0  # of those a relaying pass took from _todo, the ones not handed over yet
        self._calling_since: float | None = None  # when the call to the queue under way started
        self._marks: list[Any] = []
        self._lock = threading.Lock()
        self._relay_lock = threading.Lock()  # one relaying pass at a time keeps commit order
        self._mark_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None  # set by close(): no hand-off starts after it
        self._abandoned = False  # close() gave up waiting: do nothing more, not even marks
        # The current outage: when it started, failed attempts, events left to the sweep.
        self._down_since: float | None = None
        self._failures = 0
        self._dropped = 0
        self._retry_in = 0.0
        self._next_try = 0.0

    def add(self, item: _Relayed) -> None:
        with self._lock:
            # Limited while the queue fails, or hangs: a call to it that has not returned for
            # longer than the back-off's cap (no call fails then). Counted with what the pass
            # in that call holds.
            calling = self._calling_since
            stalled = self._down_since is not None or (
                calling is not None and time.monotonic() - calling > self.retry_max
            )
            if stalled and len(self._todo) + self._taken >= self.max_held:
                if not self._dropped and self._down_since is None:
                    self.log.warning(
                        "the queue has not answered for %.1fs; holding %d committed %s, more are left "
                        "pending in %s until it does, and the sweep queues them",
                        time.monotonic() - (calling or 0.0), self.max_held, self.what, self.kept,
                    )
                self._dropped += 1  # pending in the outbox: the sweep queues it
                return
            self._todo.append((item, time.monotonic()))  # added on commit: the lag starts here
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._abandoned = False
                self._deadline = None
                self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        last_mark = time.monotonic()
        last_handoff = 0.0
        while not self._stop.is_set():
            down = self._down_since is not None
            self._wake.wait(max(0.0, self._next_try - time.monotonic()) if down else self.mark_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self.linger > 0 and not down and self._todo:
                rest = last_handoff + self.linger - time.monotonic()
                if rest > 0 and self._stop.wait(rest):
                    break
                last_handoff = time.monotonic()
            self._relay_pending()
            now = time.monotonic()
            if self._marks and (len(self._marks) >= self.batch or now - last_mark >= self.mark_interval):
                self._mark()
                last_mark = now
        # Stopping: one last pass, tried even during an outage, until close()'s deadline.
        self._relay_pending(force=True)
        self._mark()

    def _relay_pending(self, *, force: bool = False) -> None:
        with self._relay_lock:
            with self._lock:
                todo, self._todo = self._todo, []
                self._taken = len(todo)
            done = 0
            try:
                while done < len(todo):
                    if self._abandoned or (self._deadline is not None and time.monotonic() >= self._deadline):
                        break
                    if self._down_since is not None and not force and time.monotonic() < self._next_try:
                        break
                    group = self._group(todo, done)
                    self._calling_since = time.monotonic()
                    try:
                        if len(group) == 1:
                            self.relay(*group[0][0])
                        else:
                            assert self.relay_many is not None
                            self.relay_many([item for item, _ in group])
                    except Exception as exc:
                        self._failed(exc, len(todo) - done + len(self._todo))
                        break
                    for item, committed in group:
                        _metrics.outbox_relayed(self, committed)
                    if self._down_since is not None or self._dropped:
                        self._recovered(len(todo) - done)
                    self._marks.extend(item[0] for item, _ in group)
                    done += len(group)
                    with self._lock:
                        self._taken = len(todo) - done
            finally:
                self._calling_since = None
                with self._lock:
                    self._taken = 0
                    if done < len(todo):  # back in front of what was added meanwhile: commit order
                        self._todo[:0] = todo[done:]

    def _group(self, todo: list[_Held], start: int) -> list[_Held]:
        """The items from ``start`` that go to the queue together: one without
        ``relay_many``, else the next ones alike after their first element (for the outbox:
        same delay and priority), commit order kept."""
        if self.relay_many is None or self.many == 1:
            return todo[start : start + 1]
        tail = todo[start][0][1:]
        end = start + 1
        while end < len(todo) and end - start < self.many and todo[end][0][1:] == tail:
            end += 1
        return todo[start:end]

    def _failed(self, exc: Exception, held: int) -> None:
        if self._abandoned:
            return  # a call that outlived close(): its events are already reported as left
        now = time.monotonic()
        if self._down_since is None:
            # (_dropped may count some already: a hang before the first failure.)
            self._down_since, self._failures, self._retry_in = now, 0, 0.25
            # One line per outage, not a traceback per event: the events are safe in the outbox.
            self.log.warning(
                "the queue is unreachable (%s: %s); holding %d committed %s and trying again "
                "with back-off; they are safe in %s, and the sweep queues any left behind",
                type(exc).__name__, exc, held, self.what, self.kept,
            )
        self._failures += 1
        self._retry_in = min(self.retry_max, self._retry_in * 2)
        self._next_try = now + self._retry_in

    def _recovered(self, held: int) -> None:
        if self._down_since is None:  # it hung without failing, and some were left to the sweep
            self.log.warning(
                "the queue takes %s again; %d committed while it did not answer stay pending for the sweep",
                self.what, self._dropped,
            )
            self._dropped = 0
            return
        down_for = time.monotonic() - self._down_since
        self.log.warning(
            "the queue is reachable again after %.1fs and %d failed attempt(s); handing over %d held "
            "%s%s",
            down_for, self._failures, held, self.what,
            f"; {self._dropped} more stay pending for the sweep" if self._dropped else "",
        )
        self._down_since = None
        self._dropped = 0

    def _mark(self) -> None:
        # One marking at a time: a flush() waits for the relay thread's marks under way, so
        # that what it relayed is marked when flush() returns.
        with self._mark_lock:
            with self._relay_lock:
                ids, self._marks = self._marks, []
            if ids and not self._abandoned:
                try:
                    self.mark(ids)
                except Exception as exc:
                    self.log.warning(
                        "could not mark %d relayed %s (%r); the sweep may queue them twice", len(ids), self.what, exc
                    )

    def flush(self, *, mark: bool = True) -> None:
        """Relay (and mark) everything held, in the calling thread, even during an outage."""
        self._relay_pending(force=True)
        if mark:
            self._mark()

    def close(self, *, deadline: float | None = None) -> None:
        """Hand over what is held until ``deadline`` (monotonic; default: ``shutdown_timeout``
        from now), then stop; what is still held stays pending for the sweep."""
        if self._abandoned:
            return  # an earlier close() gave up on it already: one deadline, not one per call
        if deadline is None:
            deadline = time.monotonic() + self.shutdown_timeout
        self._deadline = deadline
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread() and thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                self._abandoned = True  # stuck in the queue's client: leave it be
        elif self._todo:
            self.flush()  # no thread: hand over in this one, by the same deadline
        left = len(self._todo) + (1 if self._abandoned else 0)
        if left:
            self.log.warning(
                "the queue did not take %d committed %s within %gs of shutdown; they are left "
                "pending in %s and the sweep queues them",
                left, self.what, self.shutdown_timeout, self.kept,
            )


_relays: weakref.WeakSet[Relay] = weakref.WeakSet()


def _close_relays() -> None:
    # A script that emits and exits without closing its kit still hands its events over, by
    # one deadline for all its kits.
    relays = list(_relays)
    if not relays:
        return
    deadline = time.monotonic() + max(relay.shutdown_timeout for relay in relays)
    for relay in relays:
        try:
            relay.close(deadline=deadline)
        except Exception:  # pragma: no cover - interpreter shutdown
            log.warning("could not relay %s at exit; the sweep will queue them", relay.what, exc_info=True)


atexit.register(_close_relays)

