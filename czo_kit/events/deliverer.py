"""The in-process deliverer: what runs async event deliveries and webhook deliveries when the kit
has no queue (``CZO_QUEUE_URL=""``), with the retries, backoff, dead letters and circuit
breaker of the queued path, because it drives the same code (``Outbox.deliver``,
``WebhookDispatcher.deliver``).

What it holds in memory is only a schedule: every delivery is a row (outbox, deliveries,
webhook deliveries), so a process that stops loses nothing. The next one to start a
deliverer schedules what is still due (``recover``), and every deliverer sweeps like a
worker. Each process that emits runs one: work is shared by whoever is alive, and a delivery
is only run by the thread that claims its row.

An event without a delay still has its first attempt run in the thread that commits it
(``committed``), as ``emit_async`` always did without a queue; its retries, delayed events
and webhooks run on the deliverer's threads.
"""

from __future__ import annotations

import atexit
import datetime as dt
import heapq
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from czo_kit._fork import reset_in_children
from czo_kit.db.model import utcnow
from czo_kit.events._models import DELIVERY_LIVE, OUTBOX_LIVE, EventDelivery, EventOutbox
from czo_kit.events.outbox import Enqueuer

if TYPE_CHECKING:
    from czo_kit.events.outbox import Outbox

__all__ = ["InProcessDeliverer"]

log = logging.getLogger("czo_kit.events")

_Task = tuple[float, int, int, str, Any]  # due (monotonic), -priority, sequence, kind, id

RECOVER_LIMIT = 10_000
"""Most rows of each kind a starting deliverer schedules at once; the sweep finds the rest."""


class _WebhookTasks:
    """The webhook dispatcher's queue (``WebhookEnqueuer``), served by the deliverer."""

    def __init__(self, deliverer: InProcessDeliverer) -> None:
        self.deliverer = deliverer

    def deliver(self, delivery_id: int, *, delay: float) -> None:
        self.deliverer.push("webhook", int(delivery_id), delay=delay, priority=60)

    def pending(self) -> int:
        return self.deliverer.pending()


class InProcessDeliverer(Enqueuer):
    """A schedule and ``workers`` threads that run what the schedule says is due.

    ``outbox`` and ``webhooks`` are attached by the kit. Threads start on first use (or
    ``start()``); ``close()`` waits up to ``shutdown_timeout`` for the tasks that are running.
    """

    inline = True

    def __init__(
        self,
        *,
        workers: int = 4,
        sweep_interval: float = 30.0,
        shutdown_timeout: float = 3.0,
        maintenance: Callable[[], Any] | None = None,
    ) -> None:
        self.workers = workers
        self.sweep_interval = sweep_interval
        self.shutdown_timeout = shutdown_timeout
        self.outbox: Outbox | None = None
        self.webhooks: Any = None
        self.webhook_queue = _WebhookTasks(self)
        self.make_sweeper = maintenance
        """Builds the sweeper that runs with the threads (the kit's: sweep, prune, heartbeat)."""
        _deliverers.add(self)
        reset_in_children(self)
        self._after_fork()

    def _after_fork(self) -> None:
        # Also the initial state: a forked child starts with no schedule and no threads.
        self._heap: list[_Task] = []
        self._seq = itertools.count()
        self._cond = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._sweeper: Any = None
        self._running = 0
        self._known: dict[tuple[str, Any], int] = {}  # tasks scheduled or running, by key
        self._deadline = 0.0
        self._started_at = utcnow()
        self._started = False
        self._stopping = False

    # -- what the outbox and the webhook dispatcher call ---------------------------------

    def dispatch(self, event_id: str, *, delay: float, priority: int) -> None:
        self.push("dispatch", event_id, delay=delay, priority=priority)

    def deliver(self, delivery_id: int, *, delay: float, priority: int) -> None:
        self.push("deliver", int(delivery_id), delay=delay, priority=priority)

    def pending(self) -> int:
        """Tasks due and not yet taken (not those scheduled for later: a queue's count)."""
        now = time.monotonic()
        with self._cond:
            return sum(1 for task in self._heap if task[0] <= now)

    def committed(self, event_id: str, *, delay: float, priority: int, background: bool = False) -> None:
        """After the commit of an event: run its first attempts now, in this thread, or
        schedule it for its delay (or, ``background``, for the deliverer's threads now)."""
        self.start()
        outbox = self._outbox()
        if delay > 0 or background:
            self.dispatch(event_id, delay=delay, priority=priority)
            outbox._mark_queued([event_id])  # as the relay does: the sweep leaves it be
            return
        try:
            outbox.dispatch(event_id, inline=True)
        except Exception as exc:
            # The database failed us after the commit: the row is pending; try again soon.
            log.warning("event %s could not be dispatched now (%r); it is queued for another try", event_id, exc)
            self.dispatch(event_id, delay=outbox.settings.retry_base, priority=priority)

    def push(self, kind: str, key: Any, *, delay: float, priority: int, unless_known: bool = False) -> bool:
        """Schedule ``kind`` (dispatch, deliver, webhook) of ``key`` in ``delay`` seconds;
        ``unless_known`` leaves alone a key already scheduled or running here. Whether it
        was scheduled."""
        task = (time.monotonic() + max(0.0, delay), -priority, next(self._seq), kind, key)
        with self._cond:
            if self._stopping and (delay > 0 or time.monotonic() >= self._deadline):
                return False  # its row stays due: the next process's deliverer takes it
            if unless_known and self._known.get((kind, key)):
                return False
            heapq.heappush(self._heap, task)
            self._known[(kind, key)] = self._known.get((kind, key), 0) + 1
            self._cond.notify()
        self.start()  # after the push: the recovery that starting runs then knows this task
        return True

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the threads and the sweeper (once); the first sweep schedules what an earlier
        process left due."""
        if self._started:
            return
        with self._cond:
            if self._started or self._stopping:
                return
            self._started = True
            self._started_at = utcnow()  # recover() takes only what is older (by a grace)
            for n in range(self.workers):
                thread = threading.Thread(target=self._work, name=f"czo-deliverer-{n + 1}", daemon=True)
                self._threads.append(thread)
                thread.start()
            # Under the lock: a close() racing this start either comes first (and nothing
            # starts) or finds the sweeper started, never one half made that outlives it.
            if self.make_sweeper is not None:
                self._sweeper = self.make_sweeper()
                self._sweeper.start()

    def _next(self) -> _Task | None:
        with self._cond:
            while True:
                now = time.monotonic()
                due = bool(self._heap) and self._heap[0][0] <= now
                if self._stopping:
                    # Closing: finish what is due by the deadline (a command's replay, say),
                    # leave what is scheduled for later to the tables.
                    if due and now < self._deadline:
                        self._running += 1
                        return heapq.heappop(self._heap)
                    return None
                if due:
                    self._running += 1
                    return heapq.heappop(self._heap)
                if self._heap:
                    self._cond.wait(self._heap[0][0] - now)
                else:
                    self._release_connection()
                    self._cond.wait()

    def _work(self) -> None:
        while True:
            task = self._next()
            if task is None:
                self._release_connection()
                return
            _, _, _, kind, key = task
            try:
                self._run(kind, key)
            except Exception:
                log.warning("in-process %s of %s failed; its row stays due and the sweep retries it",
                            kind, key, exc_info=True)
            finally:
                with self._cond:
                    self._running -= 1
                    left = self._known.get((kind, key), 1) - 1
                    if left > 0:
                        self._known[(kind, key)] = left
                    else:
                        self._known.pop((kind, key), None)
                    self._cond.notify_all()

    def _run(self, kind: str, key: Any) -> None:
        if kind == "dispatch":
            self._outbox().dispatch(str(key))
        elif kind == "deliver":
            self._outbox().deliver(int(key))
        elif self.webhooks is not None:
            self.webhooks.deliver(int(key))

    def _release_connection(self) -> None:
        # Idle: give this thread's connection back (a pooled one to its pool).
        outbox = self.outbox
        if outbox is not None and not outbox.db.is_closed() and not outbox.db.in_transaction():
            try:
                outbox.db.close()
            except Exception:  # closing must never stop a worker
                log.debug("could not release a deliverer's database connection", exc_info=True)

    def _outbox(self) -> Outbox:
        if self.outbox is None:
            raise RuntimeError("the in-process deliverer is not attached to an outbox")
        return self.outbox

    def recover(self) -> int:
        """Schedule what an earlier process left due in the tables: queued deliveries now,
        retries at their time, events not yet dispatched at theirs, webhook deliveries alike.
        Run by the sweeper before its first sweep; returns how many it scheduled.

        Only rows untouched for ``relay_grace`` before this deliverer started: younger ones
        may be on their way in a live process (this one's own commit included) and a second
        task would make a retry run early. The sweep finds those if they were lost."""
        outbox = self._outbox()
        outbox.ensure_tables()
        now = utcnow()
        before = self._started_at - dt.timedelta(seconds=outbox.settings.relay_grace)
        scheduled: list[tuple[str, Any, float, int]] = []
        due = (
            EventDelivery.select(EventDelivery.id, EventDelivery.priority, EventDelivery.next_attempt_at)
            .where(
                DELIVERY_LIVE & EventDelivery.state.in_(("queued", "retry", "waiting"))
                & (EventDelivery.updated_at < before)
            )
            .limit(RECOVER_LIMIT)
            .tuples()
            .execute(outbox.db)
        )
        for delivery_id, priority, next_attempt_at in due:
            scheduled.append(("deliver", int(delivery_id), _seconds_until(next_attempt_at, now), priority))
        events = (
            EventOutbox.select(EventOutbox.event_id, EventOutbox.priority, EventOutbox.deliver_at)
            .where(OUTBOX_LIVE & (EventOutbox.updated_at < before))
            .limit(RECOVER_LIMIT)
            .tuples()
            .execute(outbox.db)
        )
        for event_id, priority, deliver_at in events:
            scheduled.append(("dispatch", str(event_id), _seconds_until(deliver_at, now), priority))
        if self.webhooks is not None:
            for state in ("queued", "retry"):
                for delivery in self.webhooks.deliveries(state=state, limit=RECOVER_LIMIT):
                    if delivery.updated_at < before:
                        wait = _seconds_until(delivery.next_attempt_at, now) if state == "retry" else 0.0
                        scheduled.append(("webhook", int(delivery.id), wait, 60))
        count = 0
        for kind, key, wait, priority in scheduled:
            count += self.push(kind, key, delay=wait, priority=priority, unless_known=True)
        if count:
            log.info("in-process deliverer: %d task(s) left due by an earlier process scheduled again", count)
        return count

    def close(self, *, deadline: float | None = None) -> None:
        """Run what is due until ``deadline`` (default: ``shutdown_timeout`` from now), then
        stop the threads and the sweeper. What is scheduled for later, or still due at the
        deadline, stays due in the tables for the next deliverer."""
        if deadline is None:
            deadline = time.monotonic() + self.shutdown_timeout
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._deadline = deadline
            self._cond.notify_all()
        if self._sweeper is not None:
            self._sweeper.stop()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(max(0.0, deadline - time.monotonic()))
        busy = sum(1 for thread in self._threads if thread.is_alive() and thread is not current)
        with self._cond:
            left = len(self._heap)
            self._heap.clear()
            self._known.clear()
        if busy:
            log.warning(
                "%d in-process delivery(ies) still running %gs after shutdown began; their leases run "
                "out and the sweep runs them again", busy, self.shutdown_timeout,
            )
        if left:
            log.info("in-process deliverer: %d scheduled task(s) left in the tables for the next start", left)


def _seconds_until(when: dt.datetime | None, now: dt.datetime) -> float:
    return max(0.0, (when - now).total_seconds()) if when is not None else 0.0


_deliverers: weakref.WeakSet[InProcessDeliverer] = weakref.WeakSet()


def _close_deliverers() -> None:
    # A script that exits without closing its kit lets running deliveries finish (by one
    # deadline), rather than killing its threads mid-handler.
    deliverers = [d for d in _deliverers if d._started]
    if not deliverers:
        return
    deadline = time.monotonic() + max(d.shutdown_timeout for d in deliverers)
    for deliverer in deliverers:
        try:
            deliverer.close(deadline=deadline)
        except Exception:  # pragma: no cover - interpreter shutdown
            log.warning("could not stop the in-process deliverer at exit", exc_info=True)


atexit.register(_close_deliverers)
