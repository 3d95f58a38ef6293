"""Durable async events: an outbox written in the caller's transaction, one delivery record
per (event, subscriber), retries with backoff and jitter, a dead-letter table, and a sweep
that recovers whatever a crash left behind.

The life of an event::

    emit_async  -> outbox row, with the subscribers the producer knows         state pending
                   (same transaction as the business write)
    commit      -> relay enqueues a dispatch task, marks the row               state queued
    dispatch    -> one delivery row per subscriber, those recorded by the      state dispatched
                   producer and the worker's own, one deliver task each
    deliver     -> claim (queued/retry/waiting -> running, with a lease), run,  done | retry | dead
                   record; a worker without the subscriber hands it back        | waiting

Every step is idempotent, so the sweep may re-enqueue anything that looks stuck: a delivery is
only run by whoever flips it to ``running``. Handlers get at-least-once delivery: a worker
killed mid-handler leaves a ``running`` row whose lease runs out, and the sweep runs it again.
Workers may differ (a rolling deploy, per-worker plugins): a delivery is only ever finished by
a worker that has its subscriber.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import shlex
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
import peewee

from czo_kit._faults import fault_point
from czo_kit.db._claim import SWEEP_BUDGET, claim, drain, release
from czo_kit.db._sql import Slot, model_info
from czo_kit.db._tables import ensure_tables
from czo_kit.db.model import utcnow
from czo_kit.db.transactions import on_commit
from czo_kit.events._admin import OutboxAdmin
from czo_kit.events._models import (
    DELIVERY_LIVE,
    EVENT_MODELS,
    OUTBOX_LIVE,
    TRACEBACK_LIMIT,
    DeadLetter,
    EventDelivery,
    EventOutbox,
    ProcessedEvent,
)
from czo_kit.events._relay import Relay
from czo_kit.events.types import EventContext

if TYPE_CHECKING:
    from czo_kit.events.emitter import EventEmitter, Subscription

__all__ = [
    "EVENT_MODELS",
    "DeadLetter",
    "EventDelivery",
    "EventOutbox",
    "Outbox",
    "OutboxSettings",
    "ProcessedEvent",
]

log = logging.getLogger("czo_kit.events")


@dataclass(frozen=True)
class OutboxSettings:
    retry_base: float = 2.0
    """Seconds before the first retry; doubled each time, with jitter."""
    retry_max: float = 3600.0
    """Longest wait between two attempts."""
    lease: float = 300.0
    """Seconds a delivery may run before the sweep assumes its worker died."""
    relay_grace: float = 10.0
    """Seconds after which a committed but unqueued event is re-queued by the sweep."""
    shutdown_timeout: float = 3.0
    """Seconds ``close()`` (or the exit of a process) waits for the queue to take the events
    the relay still holds; the rest stay pending for the sweep."""
    retention: float = 7 * 86400.0
    """Seconds finished rows are kept before ``prune()`` deletes them."""


class Enqueuer:
    """What the outbox needs from the queue (``czo_kit.events.queue.HueyQueue`` has it)."""

    def dispatch(self, event_id: str, *, delay: float, priority: int) -> None:
        raise NotImplementedError

    def deliver(self, delivery_id: int, *, delay: float, priority: int) -> None:
        raise NotImplementedError

    def dispatch_many(self, items: Sequence[tuple[str, float, int]]) -> None:
        """``dispatch`` of each ``(event_id, delay, priority)``; a queue that can take them in
        one call (the kit's Redis queue) overrides it: the sweep re-queues in batches."""
        for event_id, delay, priority in items:
            self.dispatch(event_id, delay=delay, priority=priority)

    def deliver_many(self, items: Sequence[tuple[int, float, int]]) -> None:
        """``deliver`` of each ``(delivery_id, delay, priority)`` (see ``dispatch_many``)."""
        for delivery_id, delay, priority in items:
            self.deliver(delivery_id, delay=delay, priority=priority)

    def pending(self) -> int:
        """How many tasks wait in the queue (0 if unknown)."""
        return 0

    inline = False
    """True where there is no queue (``czo_kit.events.deliverer``): a committed event is then
    handed to ``committed`` instead of the relay."""

    def committed(self, event_id: str, *, delay: float, priority: int, background: bool = False) -> None:
        """An inline enqueuer's hand-over of a committed event (see ``inline``); ``background``
        keeps even its first attempt off the committing thread."""
        raise NotImplementedError


def format_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as Python prints it (with its causes), cut to its last
    ``TRACEBACK_LIMIT`` characters: the end says where and why it raised."""
    text = "".join(traceback.format_exception(exc))
    if len(text) <= TRACEBACK_LIMIT:
        return text
    cut = len(text) - TRACEBACK_LIMIT
    return f"[... {cut} earlier characters cut ...]\n" + text[cut:]


def backoff(attempt: int, *, base: float, cap: float) -> float:
    """Seconds before retry number ``attempt`` (1 = first retry): exponential, full jitter
    over the upper half so two failing subscribers do not retry in lockstep."""
    ceiling = min(cap, base * (2 ** (attempt - 1)))
    return random.uniform(ceiling / 2, ceiling)


class Outbox(OutboxAdmin):
    """The durable transport of one kit: ``publish`` for producers, the rest for workers."""

    def __init__(
        self,
        db: peewee.Database,
        queue: Enqueuer,
        emitter: EventEmitter,
        settings: OutboxSettings | None = None,
        *,
        plugins: tuple[str, ...] = (),
        queue_name: str = "",
    ) -> None:
        self.db = db
        self.queue = queue
        self.queue_name = queue_name
        """The queue's name (``CZO_QUEUE_NAME``), empty without a queue: for heartbeats."""
        self.emitter = emitter
        self.settings = settings or OutboxSettings()
        self.plugins = plugins
        """Names of this process's plugins, for the warning about a missing subscriber."""
        self.retry_delays: dict[str, float] = {}
        """Subscriber ids whose retries wait a fixed number of seconds instead of the backoff
        (plugin tasks, ``czo_kit.tasks``: their ``retry_delay``)."""
        self._recorded: dict[str, tuple[tuple[Subscription, ...], str | None]] = {}
        self._warned: set[str] = set()  # subscribers this worker said it does not have
        self._warn_lock = threading.Lock()
        self._sweep_lock = threading.Lock()
        self._tables_ready = False
        self._relayer = Relay(self._relay, self._mark_queued, shutdown_timeout=self.settings.shutdown_timeout)

    def ensure_tables(self) -> None:
        """Make the event tables exist (they are the kit's own, not a module's), so that the
        embedded default works without ``czo-kit db init``: checked once per process, on
        first use, so building a kit never touches the database. Never inside a caller's
        transaction (see ``czo_kit.db._tables``)."""
        if not self._tables_ready:
            self._tables_ready = ensure_tables(self.db, EVENT_MODELS)

    # -- producer side ------------------------------------------------------------------

    def publish(
        self, ctx: EventContext, payload: bytes, *, delay: float, retries: int, priority: int, background: bool = False
    ) -> None:
        """Write the event's outbox row in the caller's transaction; it is queued after the
        commit. Without a queue its first attempt runs in the committing thread, as
        ``emit_async`` always did, unless ``background`` (plugin tasks) hands it to the
        in-process deliverer's threads."""
        self.ensure_tables()
        now = utcnow()
        info = model_info(EventOutbox, self.db)
        columns = (
            "event_id", "name", "payload", "actor", "correlation_id", "causation_id",
            "created_at", "deliver_at", "retries", "priority", "state", "updated_at", "subscribers",
        )
        template = info.template(
            ("outbox_insert",),
            lambda: EventOutbox.insert(
                {info.field_map[c]: Slot(c, info.field_map[c].db_value) for c in columns}
            ),
        )
        info.execute(
            template,
            {
                "event_id": ctx.event_id,
                "name": ctx.name,
                "payload": payload,
                "actor": ctx.actor,
                "correlation_id": ctx.correlation_id,
                "causation_id": ctx.causation_id,
                "created_at": ctx.timestamp,
                "deliver_at": now + dt.timedelta(seconds=delay),
                "retries": retries,
                "priority": priority,
                "state": "pending",
                "updated_at": now,
                "subscribers": self._subscribers_of(ctx.name),
            },
        )
        event_id = ctx.event_id
        if self.queue.inline:
            on_commit(
                self.db, lambda: self.queue.committed(event_id, delay=delay, priority=priority, background=background)
            )
        else:
            on_commit(self.db, lambda: self._relayer.add((event_id, delay, priority)))

    def _subscribers_of(self, name: str) -> str | None:
        """What ``publish`` records: the event's subscribers here, but not ``once`` ones (they
        belong to the process that subscribed them). Encoded once per change of subscribers."""
        subs = self.emitter.subscribers(name)
        cached = self._recorded.get(name)
        if cached is not None and cached[0] is subs:
            return cached[1]
        prefix = len(name) + 1
        ids = [sub.id[prefix:] for sub in subs if not sub.once]
        encoded = msgspec.json.encode(ids).decode() if ids else None
        if len(self._recorded) < 4096:  # names are a module's vocabulary; bound it anyway
            self._recorded[name] = (subs, encoded)
        return encoded

    def _relay(self, event_id: str, delay: float, priority: int) -> None:
        """Queue a committed event's dispatch; raises if the queue did not take it."""
        fault_point("events.relay")  # tests kill the producer here: committed, not queued
        self.queue.dispatch(event_id, delay=delay, priority=priority)

    def _mark_queued(self, ids: list[str]) -> None:
        """Tell the sweep these events are in the queue (500 per statement)."""
        opened = self.db.is_closed()  # leave a caller's own connection open (flush from its thread)
        try:
            for start in range(0, len(ids), 500):
                (
                    EventOutbox.update(state="queued", updated_at=utcnow())
                    .where(EventOutbox.event_id.in_(ids[start : start + 500]) & (EventOutbox.state == "pending"))
                    .execute(self.db)
                )
        finally:
            if opened and not self.db.is_closed() and not self.db.in_transaction():
                self.db.close()

    def flush(self, *, mark: bool = True) -> None:
        """Queue every committed event still waiting for the relay thread, now, in this thread
        (waiting for a hand-off already under way); with ``mark``, also write their ``queued``
        marks instead of leaving them to the next batch."""
        self._relayer.flush(mark=mark)

    def close(self) -> None:
        """Queue what the relay still holds, by ``settings.shutdown_timeout``, write down what
        was queued, stop its thread; what the queue did not take stays pending for the sweep."""
        self._relayer.close()

    # -- worker side --------------------------------------------------------------------

    # Hot statements are compiled once (Peewee builds them, with named slots) and reused:
    # building Peewee queries cost more CPU per event than the database round trips.

    def _outbox_row(self, event_id: str) -> EventOutbox | None:
        info = model_info(EventOutbox, self.db)
        template = info.template(
            ("outbox_by_id",),
            lambda: info.select_all().where(EventOutbox.event_id == Slot("id", EventOutbox.event_id.db_value)),
        )
        row = info.execute(template, {"id": event_id}).fetchone()
        return info.load(row) if row is not None else None

    def dispatch(self, event_id: str, *, inline: bool = False) -> int:
        """Create a delivery per subscriber, those of this worker and those the producer
        recorded, and queue each; returns how many queued. ``inline`` runs their first attempt
        in this thread instead (no queue: what ``emit_async`` always did there)."""
        self.ensure_tables()
        row = self._outbox_row(event_id)
        if row is None:
            log.warning("dispatch of unknown event %s ignored", event_id)
            return 0
        if row.state == "dispatched":
            # A second dispatch task (the sweep raced the first): deliveries exist and are queued.
            return 0
        now = utcnow()
        # A ``once`` subscription is claimed by the first event dispatched to it.
        subscribers = [s.id for s in self.emitter.subscribers(row.name) if not s.once or self.emitter.claim_once(s)]
        if row.subscribers:
            # Subscribers the producer had and this worker may not (an older or narrower
            # worker): their deliveries wait for a worker that has them.
            own = set(subscribers)
            recorded = (f"{row.name}|{base}" for base in msgspec.json.decode(row.subscribers, type=list[str]))
            subscribers += [sub for sub in recorded if sub not in own]
        queued: list[tuple[int, int]] = []
        info = model_info(EventOutbox, self.db)
        mark = info.template(
            ("outbox_dispatched",),
            lambda: EventOutbox.update(
                {EventOutbox.state: "dispatched", EventOutbox.updated_at: Slot("now", EventOutbox.updated_at.db_value)}
            ).where(EventOutbox.event_id == Slot("id", EventOutbox.event_id.db_value)),
        )
        with self.db.atomic():
            if subscribers:
                queued = [
                    (int(delivery_id), int(priority))
                    for delivery_id, priority in EventDelivery.insert_many(
                        [
                            {
                                "event_id": event_id,
                                "subscriber": sub,
                                "state": "queued",
                                "max_attempts": row.retries + 1,
                                "priority": row.priority,
                                "created_at": now,
                                "updated_at": now,
                            }
                            for sub in subscribers
                        ]
                    )
                    .on_conflict_ignore()
                    .returning(EventDelivery.id, EventDelivery.priority)
                    .tuples()
                    .execute(self.db)
                ]
            info.execute(mark, {"now": now, "id": event_id})
        if len(queued) < len(subscribers):
            # Some deliveries existed already (a dispatch interrupted after its commit): queue
            # every one still waiting; claiming makes any duplicate harmless.
            queued = list(
                EventDelivery.select(EventDelivery.id, EventDelivery.priority)
                .where((EventDelivery.event_id == event_id) & (EventDelivery.state == "queued"))
                .tuples()
                .execute(self.db)
            )
        for delivery_id, priority in queued:
            if inline:
                self._deliver_inline(delivery_id, priority)
            else:
                self.queue.deliver(delivery_id, delay=0, priority=priority)
        return len(queued)

    def _deliver_inline(self, delivery_id: int, priority: int) -> None:
        try:
            self.deliver(delivery_id)
        except Exception as exc:
            # Not the handler (deliver records its failures): the database failed us. Leave it
            # to the deliverer's threads; a claim that did go through waits for its lease.
            log.warning("delivery %s could not run now (%r); it is queued for another try", delivery_id, exc)
            self.queue.deliver(delivery_id, delay=self.settings.retry_base, priority=priority)

    def _claim(self, delivery_id: int) -> EventDelivery | None:
        now = utcnow()
        info = model_info(EventDelivery, self.db)
        template = info.template(
            ("claim",),
            lambda: EventDelivery.update(
                {
                    EventDelivery.state: "running",
                    EventDelivery.attempts: EventDelivery.attempts + 1,
                    EventDelivery.lease_until: Slot("lease", EventDelivery.lease_until.db_value),
                    EventDelivery.updated_at: Slot("now", EventDelivery.updated_at.db_value),
                }
            )
            .where((EventDelivery.id == Slot("id")) & (EventDelivery.state.in_(("queued", "retry", "waiting"))))
            .returning(*info.fields),
        )
        row = info.execute(
            template,
            {"lease": now + dt.timedelta(seconds=self.settings.lease), "now": now, "id": int(delivery_id)},
        ).fetchone()
        return info.load(row) if row is not None else None

    def _done(self, delivery_id: int) -> None:
        info = model_info(EventDelivery, self.db)
        template = info.template(
            ("done",),
            lambda: EventDelivery.update(
                {
                    EventDelivery.state: "done",
                    EventDelivery.finished_at: Slot("now", EventDelivery.finished_at.db_value),
                    EventDelivery.lease_until: None,
                    EventDelivery.updated_at: Slot("now", EventDelivery.updated_at.db_value),
                }
            ).where(EventDelivery.id == Slot("id")),
        )
        info.execute(template, {"now": utcnow(), "id": int(delivery_id)})

    def deliver(self, delivery_id: int) -> str:
        """Run one delivery if it is still due; returns the state it ends in (or ``skipped``)."""
        self.ensure_tables()
        delivery = self._claim(delivery_id)
        if delivery is None:
            return "skipped"  # done, dead, or running elsewhere: a duplicate task
        event = self._outbox_row(str(delivery.event_id))
        if event is None:
            return self._finish_dead(delivery, None, "event row is gone", None)
        sub = self.emitter.subscription(delivery.subscriber)
        if sub is None:
            return self._hand_back(delivery, event)
        ctx = EventContext(
            event_id=event.event_id,
            name=event.name,
            timestamp=event.created_at,
            actor=event.actor,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            attempt=delivery.attempts,
        )
        try:
            value = self.emitter.decode(event.name, bytes(event.payload))
            self.emitter.run_subscription(sub, value, ctx)
        except Exception as exc:
            log.warning(
                "delivery %s of %s to %s failed (attempt %d of %d): %r",
                delivery.id, event.name, sub.id, delivery.attempts, delivery.max_attempts, exc,
                exc_info=exc,
            )
            if delivery.attempts >= delivery.max_attempts:
                self.emitter.release_once(sub)
            return self._retry_or_die(delivery, event, repr(exc), format_traceback(exc))
        self._done(int(delivery.id))
        self.emitter.release_once(sub)
        return "done"

    def _hand_back(self, delivery: EventDelivery, event: EventOutbox) -> str:
        """Leave a delivery whose subscriber this worker lacks to one that has it: back to the
        queue after a wait that grows with its age, its attempt not counted, never dead."""
        now = utcnow()
        age = (now - delivery.created_at).total_seconds()
        # No low cap: while no worker has the subscriber (one removed on purpose, say), its
        # deliveries come back ever more rarely; a worker that has it finds them in its sweep.
        wait = random.uniform(0.5, 1.0) * min(self.settings.retry_max, max(self.settings.retry_base, age / 2))
        plugins = ", ".join(sorted(self.plugins)) or "none"
        note = (
            f"waiting for a worker with subscriber {delivery.subscriber!r}; worker pid {os.getpid()} "
            f"does not have it (its plugins: {plugins})"
        )
        EventDelivery.update(
            state="waiting",
            attempts=EventDelivery.attempts - 1,
            next_attempt_at=now + dt.timedelta(seconds=wait),
            lease_until=None,
            last_error=note[:2000],
            updated_at=now,
        ).where((EventDelivery.id == delivery.id) & (EventDelivery.state == "running")).execute(self.db)
        self.queue.deliver(delivery.id, delay=wait, priority=delivery.priority)
        with self._warn_lock:
            first = delivery.subscriber not in self._warned
            self._warned.add(delivery.subscriber)
        if first:
            log.warning(
                "event %s (%s) waits for a worker with subscriber %r: this worker (pid %d) does not "
                "have it; its plugins: %s. A worker that has it will run it. If the subscriber was "
                "removed on purpose, drop what waits for it: czo-kit events discard --subscriber %s",
                event.event_id, event.name, delivery.subscriber, os.getpid(), plugins,
                shlex.quote(delivery.subscriber),
            )
        return "waiting"

    def _retry_or_die(self, delivery: EventDelivery, event: EventOutbox, error: str, trace: str) -> str:
        """Schedule the next attempt with backoff and jitter, or dead-letter the last one."""
        if delivery.attempts >= delivery.max_attempts:
            return self._finish_dead(delivery, event, error, trace)
        fixed = self.retry_delays.get(delivery.subscriber)
        if fixed is not None:
            wait = fixed
        else:
            wait = backoff(delivery.attempts, base=self.settings.retry_base, cap=self.settings.retry_max)
        now = utcnow()
        EventDelivery.update(
            state="retry",
            next_attempt_at=now + dt.timedelta(seconds=wait),
            lease_until=None,
            last_error=error[:2000],
            last_traceback=trace,
            updated_at=now,
        ).where(EventDelivery.id == delivery.id).execute(self.db)
        self.queue.deliver(delivery.id, delay=wait, priority=delivery.priority)
        return "retry"

    def _finish_dead(self, delivery: EventDelivery, event: EventOutbox | None, error: str, trace: str | None) -> str:
        now = utcnow()
        with self.db.atomic():
            EventDelivery.update(
                state="dead", finished_at=now, lease_until=None, last_error=error[:2000], last_traceback=trace,
                updated_at=now,
            ).where(EventDelivery.id == delivery.id).execute(self.db)
            letter_id = DeadLetter.insert(
                delivery_id=delivery.id,
                event_id=delivery.event_id,
                name=event.name if event is not None else "?",
                subscriber=delivery.subscriber,
                attempts=delivery.attempts,
                error=error[:2000],
                traceback=trace,
                died_at=now,
            ).execute(self.db)
        log.error(
            "event %s to %s is dead after %d attempt(s): %s (`czo-kit events dead %s` shows its traceback)",
            delivery.event_id, delivery.subscriber, delivery.attempts, error, letter_id,
        )
        return "dead"

    # -- recovery -----------------------------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Re-queue what a crash left behind. Safe to run anywhere, any time, repeatedly."""
        if not self._sweep_lock.acquire(blocking=False):
            return {}
        try:
            return self._sweep()
        finally:
            self._sweep_lock.release()

    def _sweep(self) -> dict[str, int]:
        """One pass, in bounded claims (``czo_kit.db._claim``): each batch is taken out of
        the sweep's reach by the statement that reads it, so several workers sweeping at
        once share the pass and none queues a row another one queued."""
        self.ensure_tables()
        now = utcnow()
        grace = now - dt.timedelta(seconds=self.settings.relay_grace)
        stale = now - dt.timedelta(seconds=self.settings.lease)
        deadline = time.monotonic() + SWEEP_BUDGET
        counts = {"events": 0, "recovered": 0, "requeued": 0}
        finished = True

        # Committed but never queued (producer died after commit), or queued long ago but
        # never dispatched (the dispatch task was lost). One statement claims a batch and
        # marks it queued (moving updated_at); if the queue refuses the batch, it goes back
        # to pending. A sweeper killed between the claim and the enqueue leaves its batch
        # queued: the next sweep takes it after a lease, as any lost dispatch.
        pending = OUTBOX_LIVE & (EventOutbox.state == "pending") & (EventOutbox.updated_at < grace)
        never_dispatched = (  # through the live rows' index: delivered ones are not read
            OUTBOX_LIVE & (EventOutbox.state == "queued") & (EventOutbox.updated_at < stale)
            & (EventOutbox.deliver_at < stale)
        )
        claimed = [now]  # when the batch in hand was claimed
        for due, was in ((pending, "pending"), (never_dispatched, "queued")):

            def take_events(due: Any = due) -> list[tuple[Any, ...]]:
                claimed[0] = utcnow()
                return claim(
                    self.db, EventOutbox, EventOutbox.event_id, due,
                    {EventOutbox.state: "queued", EventOutbox.updated_at: claimed[0]},
                    (EventOutbox.event_id, EventOutbox.deliver_at, EventOutbox.priority),
                    order=EventOutbox.updated_at,
                )

            def hand_events(batch: list[tuple[Any, ...]], was: str = was) -> None:
                try:
                    self._enqueue_many(
                        "dispatch",
                        [(e, max(0.0, (EventOutbox.deliver_at.python_value(at) - now).total_seconds()), p)
                         for e, at, p in batch],
                    )
                except Exception:
                    self._release(EventOutbox, EventOutbox.event_id, EventOutbox.updated_at, batch, claimed[0], stale,
                                  {EventOutbox.state: was})
                    raise

            found, done = drain(take_events, hand_events, deadline)
            counts["events"] += found
            finished &= done

        # Running past its lease: the worker died mid-handler. Run it again (at least once).
        counts["recovered"], done = self._requeue_deliveries(
            DELIVERY_LIVE & (EventDelivery.state == "running") & (EventDelivery.lease_until < now),
            {EventDelivery.state: "queued", EventDelivery.lease_until: None},
            EventDelivery.updated_at, stale, deadline,
        )
        finished &= done

        requeued, done = self._sweep_waiting(now, stale, deadline)
        finished &= done

        # Queued, or due for another try, for longer than a lease: the task was lost (popped by
        # a worker that died before claiming it, or dropped with a queue that was wiped). Or it
        # still waits behind a long backlog: then the new task is a duplicate, which the
        # delivery's own claim makes harmless, and the claim here (moving the timestamp) keeps
        # it to one per lease. Waiting for an empty queue instead would never recover a lost
        # delivery under steady load.
        lost, done = self._requeue_deliveries(
            DELIVERY_LIVE & (EventDelivery.state == "queued") & (EventDelivery.updated_at < stale),
            {}, EventDelivery.updated_at, stale, deadline, order=EventDelivery.updated_at,
        )
        finished &= done
        late, done = self._requeue_deliveries(
            DELIVERY_LIVE & EventDelivery.state.in_(("retry", "waiting")) & (EventDelivery.next_attempt_at < stale),
            {}, EventDelivery.next_attempt_at, stale, deadline,
        )
        finished &= done
        counts["requeued"] = requeued + lost + late
        self.sweep_unfinished = not finished
        if any(counts.values()):
            log.warning("event sweep re-queued %s%s", counts, "" if finished else " (more next pass)")
        return counts

    sweep_unfinished = False
    """Whether the last sweep stopped at its time budget with more to do (the sweeper then
    runs the next one at once)."""

    def _requeue_deliveries(
        self, due: Any, changes: dict[Any, Any], column: peewee.Field, stale: dt.datetime, deadline: float,
        *, order: peewee.Field | None = None,
    ) -> tuple[int, bool]:
        """Claim deliveries matching ``due`` a batch at a time (``changes``, and ``column``
        moved to now so that ``due`` no longer matches) and queue each batch in one call."""

        claimed = [utcnow()]  # when the batch in hand was claimed

        def take() -> list[tuple[Any, ...]]:
            at = claimed[0] = utcnow()
            return claim(
                self.db, EventDelivery, EventDelivery.id, due,
                {**changes, column: at, EventDelivery.updated_at: at},
                (EventDelivery.id, EventDelivery.priority), order=order,
            )

        def hand(batch: list[tuple[Any, ...]]) -> None:
            try:
                self._enqueue_many("deliver", [(int(i), 0.0, int(p)) for i, p in batch])
            except Exception:
                self._release(EventDelivery, EventDelivery.id, column, batch, claimed[0], stale)
                raise

        return drain(take, hand, deadline)

    def _enqueue_many(self, kind: str, items: list[tuple[Any, float, int]]) -> None:
        """``dispatch_many``/``deliver_many`` where the queue has them (any ``Enqueuer``),
        else one call per item (a duck-typed queue)."""
        many = getattr(self.queue, f"{kind}_many", None)
        if many is not None:
            many(items)
            return
        one = getattr(self.queue, kind)
        for key, delay, priority in items:
            one(key, delay=delay, priority=priority)

    def _release(
        self, model: type[peewee.Model], key: peewee.Field, column: peewee.Field, batch: list[tuple[Any, ...]],
        claimed_at: dt.datetime, stale: dt.datetime, restore: dict[Any, Any] | None = None,
    ) -> None:
        """The queue refused a claimed batch: make it due for the next sweep again."""
        try:
            release(self.db, model, key, [row[0] for row in batch], column, claimed_at,
                    stale - dt.timedelta(seconds=1), restore)
        except Exception:  # the database too: the claim runs out with its lease
            log.debug("could not give back a sweep's claim", exc_info=True)

    def _sweep_waiting(self, now: dt.datetime, stale: dt.datetime, deadline: float) -> tuple[int, bool]:
        """Queue now the deliveries waiting for a subscriber this worker has: a worker without
        it handed them back for later, maybe long before this one started. Not those just
        queued (their task is on its way)."""
        waited_for = (
            EventDelivery.select(EventDelivery.subscriber)
            .distinct()
            .where(DELIVERY_LIVE & (EventDelivery.state == "waiting"))
        )
        mine = [sub for (sub,) in waited_for.tuples().execute(self.db) if self.emitter.subscription(sub) is not None]
        if not mine:
            return 0, True
        # The claim sets next_attempt_at to the claim's time: neither in the future nor a
        # lease ago, so no other sweep takes it again within a lease.
        return self._requeue_deliveries(
            DELIVERY_LIVE
            & (EventDelivery.state == "waiting")
            & EventDelivery.subscriber.in_(mine)
            & ((EventDelivery.next_attempt_at > now) | (EventDelivery.next_attempt_at < stale)),
            {}, EventDelivery.next_attempt_at, stale, deadline,
        )


def idempotent(db: peewee.Database, *, key: Callable[[EventContext], str] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Make a handler's database effects happen once per event, however often it is delivered.

    The handler runs in a transaction together with an insert of a marker keyed by the
    subscriber and ``ctx.event_id``; a redelivery finds the marker and does nothing.
    """

    def decorate(handler: Callable[..., Any]) -> Callable[..., Any]:
        label = f"{getattr(handler, '__module__', '?')}:{getattr(handler, '__qualname__', repr(handler))}"

        def wrapper(payload: Any, ctx: EventContext) -> Any:
            marker = (key(ctx) if key is not None else f"{label}|{ctx.event_id}")[:500]
            with db.atomic():
                try:
                    with db.atomic():  # a savepoint: a duplicate marker must not abort the rest
                        ProcessedEvent.insert(key=marker, processed_at=utcnow()).execute(db)
                except peewee.IntegrityError:
                    log.info("event %s already processed by %s; skipped", ctx.event_id, label)
                    return None
                return handler(payload, ctx)

        wrapper.__module__ = getattr(handler, "__module__", wrapper.__module__)
        wrapper.__qualname__ = getattr(handler, "__qualname__", wrapper.__qualname__)
        wrapper.__name__ = getattr(handler, "__name__", wrapper.__name__)
        wrapper.__doc__ = handler.__doc__
        return wrapper

    return decorate
