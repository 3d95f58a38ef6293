"""Durable async events: an outbox written in the caller's transaction, one delivery record
per (event, subscriber), retries with backoff and jitter, a dead-letter table, and a sweep
that recovers whatever a crash left behind.

The life of an event::

    emit_async  -> outbox row, with the subscribers the producer knows         state pending
                   (same transaction as the business write)
    commit      -> relay enqueues a dispatch task for the events committed     state queued
                   together (up to ``dispatch_batch``), marks the rows
    dispatch    -> in one transaction: the rows marked, one delivery row per   state dispatched
                   subscriber, those recorded by the producer and the
                   worker's own; the worker's own are created claimed
                   (running, a lease), the others queued with a deliver task
    run         -> the claimed ones run in that task, one after the other:     done | retry | dead
                   each start counted (attempts) in the round trip that
                   records the previous success; past ``batch_budget`` the
                   rest go back to the queue, one deliver task each
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
from czo_kit.db._claim import SWEEP_BUDGET, claim, drain, lost_cut, release
from czo_kit.db._sql import Slot, SqlTemplate, model_info
from czo_kit.db._tables import ensure_tables
from czo_kit.db.model import utcnow
from czo_kit.db.transactions import on_commit
from czo_kit.events._admin import OutboxAdmin
from czo_kit.events._batch import Batch, BatchWatch
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
    dispatch_batch: int = 50
    """Most committed events the relay hands to the queue in one dispatch task (a worker then
    dispatches them and runs their handlers together); 1 sends one task per event, the only
    kind workers older than the batch task run."""
    batch_budget: float = 0.2
    """Seconds a worker runs the handlers of a dispatch batch alone: then it hands what it has
    not started back to the queue, for every worker to share."""
    relay_linger: float = 0.02
    """Seconds between two hand-offs of the relay at least: events committed meanwhile go in
    one task (a burst in batches; an event after a quiet spell goes at once)."""


class Enqueuer:
    """What the outbox needs from the queue (``czo_kit.events.queue.HueyQueue`` has it)."""

    def dispatch(self, event_id: str, *, delay: float, priority: int) -> None:
        raise NotImplementedError

    def deliver(self, delivery_id: int, *, delay: float, priority: int) -> None:
        raise NotImplementedError

    def dispatch_many(self, event_ids: list[str], *, delay: float, priority: int) -> None:
        """Queue the dispatch of several events as one task (one task each by default)."""
        for event_id in event_ids:
            self.dispatch(event_id, delay=delay, priority=priority)

    def dispatch_each(self, items: Sequence[tuple[str, float, int]]) -> None:
        """``dispatch`` of each ``(event_id, delay, priority)``; a queue that can take them in
        one call (the kit's Redis queue) overrides it: the sweep re-queues in batches."""
        for event_id, delay, priority in items:
            self.dispatch(event_id, delay=delay, priority=priority)

    def deliver_each(self, items: Sequence[tuple[int, float, int]]) -> None:
        """``deliver`` of each ``(delivery_id, delay, priority)`` (see ``dispatch_each``)."""
        for delivery_id, delay, priority in items:
            self.deliver(delivery_id, delay=delay, priority=priority)

    def pending(self) -> int:
        """How many tasks wait in the queue (0 if unknown)."""
        return 0

    def oldest_waiting(self) -> dt.datetime | None:
        """When the oldest task waiting in the queue was enqueued (now if none waits); None
        if unknown (see ``HueyQueue.oldest_waiting``)."""
        return None

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
        self._relaxed_templates: dict[str, SqlTemplate] = {}
        self._watch = BatchWatch(self._release_claims, after=self._release_connection)
        self._tables_ready = False
        self._relayer = Relay(
            self._relay, self._mark_queued, shutdown_timeout=self.settings.shutdown_timeout,
            relay_many=self._relay_many, many=self.settings.dispatch_batch, linger=self.settings.relay_linger,
        )

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

    def _relay_many(self, items: list[tuple[str, float, int]]) -> None:
        """Queue the dispatch of committed events sharing a delay and a priority as one task;
        raises if the queue did not take it (then none of them is queued)."""
        fault_point("events.relay")
        _, delay, priority = items[0]
        self.queue.dispatch_many([item[0] for item in items], delay=delay, priority=priority)

    def _mark_queued(self, ids: list[str]) -> None:
        """Tell the sweep these events are in the queue (512 per statement)."""
        opened = self.db.is_closed()  # leave a caller's own connection open (flush from its thread)
        info = model_info(EventOutbox, self.db)
        try:
            for start in range(0, len(ids), _IN_MAX):
                chunk = ids[start : start + _IN_MAX]
                size, keys = _in_slots(chunk)
                template = info.template(
                    ("outbox_queued", size),
                    lambda: EventOutbox.update(
                        {
                            EventOutbox.state: "queued",
                            EventOutbox.updated_at: Slot("now", EventOutbox.updated_at.db_value),
                        }
                    ).where(_in_clause(EventOutbox.event_id, size) & (EventOutbox.state == "pending")),
                )
                info.execute(template, {"now": utcnow(), **keys})
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
        taken: list[Subscription] = []  # given back if the transaction below rolls back
        subscribers = [s.id for s in self.emitter.subscribers(row.name) if not s.once or self._claim_once(s, taken)]
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
        try:
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
        except BaseException:
            for sub in taken:
                self.emitter.unclaim_once(sub)
            raise
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

    # -- the batch path: dispatch and run in one worker task ------------------------------

    def dispatch_many(self, event_ids: Sequence[str]) -> dict[str, int]:
        """What a worker does with a dispatch task (of one event or a batch): in one
        transaction, mark the events dispatched and create their deliveries, those of the
        subscribers this worker has already claimed (``running``, attempt 1, a lease), the
        others ``queued`` with a deliver task each for a worker that has them; then run the
        claimed ones here (see ``_run_batch``). Events already dispatched are left alone (a
        duplicate task). Returns how many deliveries ended in each state.

        A worker killed meanwhile leaves ``running`` rows whose lease runs out: the sweep runs
        them again, as for a single delivery (those not started yet are at attempt 0)."""
        self.ensure_tables()
        counts: dict[str, int] = {}
        for start in range(0, len(event_ids), _IN_MAX):
            self._dispatch_chunk([str(e) for e in event_ids[start : start + _IN_MAX]], counts)
        return counts

    def _dispatch_chunk(self, ids: list[str], counts: dict[str, int]) -> None:
        info = model_info(EventOutbox, self.db)
        size, keys = _in_slots(ids)
        mark = info.template(
            ("outbox_dispatch_many", size),
            lambda: EventOutbox.update(
                {EventOutbox.state: "dispatched", EventOutbox.updated_at: Slot("now", EventOutbox.updated_at.db_value)}
            )
            .where(_in_clause(EventOutbox.event_id, size) & OUTBOX_LIVE)
            .returning(*info.fields),
        )
        now = utcnow()
        lease = now + dt.timedelta(seconds=self.settings.lease)
        planned: dict[tuple[str, str], Subscription | None] = {}  # (event id, subscriber) -> own subscription
        # Asked before the block: inside a caller's transaction ``atomic()`` is a savepoint,
        # which Peewee does not count as a transaction.
        own_transaction = not self.db.in_transaction()
        taken: list[Subscription] = []  # ``once`` subscriptions claimed here: given back on a rollback
        try:
            with self.db.atomic():
                # The update locks the rows it marks: a concurrent dispatch of the same event waits,
                # then finds it dispatched and leaves it.
                statement = self._relaxed(mark) if own_transaction else mark
                marked = info.execute(statement, {"now": now, **keys}).fetchall()
                events = {str(e.event_id): e for e in map(info.load, marked)}
                rows: list[dict[str, Any]] = []
                seen: set[str] = set()  # an id repeated in one task is dispatched once
                started = False
                for event_id in ids:
                    event = events.get(event_id)
                    if event is None or event_id in seen:
                        continue
                    seen.add(event_id)
                    own = [s for s in self.emitter.subscribers(event.name) if not s.once or self._claim_once(s, taken)]
                    subscribers: list[tuple[str, Subscription | None]] = [(s.id, s) for s in own]
                    if event.subscribers:
                        mine = {s.id for s in own}
                        recorded = msgspec.json.decode(event.subscribers, type=list[str])
                        named = (f"{event.name}|{base}" for base in recorded)
                        subscribers += [(sub_id, None) for sub_id in named if sub_id not in mine]
                    for sub_id, sub in subscribers:
                        planned[(event_id, sub_id)] = sub
                        first = sub is not None and not started
                        started = started or first
                        rows.append({
                            "event_id": event_id, "subscriber": sub_id,
                            "state": "running" if sub is not None else "queued",
                            "attempts": 1 if first else 0,  # the first runs at once; the rest are started in turn
                            "lease_until": lease if sub is not None else None,
                            "max_attempts": event.retries + 1, "priority": event.priority, "now": now,
                        })
                created = self._insert_deliveries(rows) if rows else []
        except BaseException:
            for sub in taken:  # the event is dispatched again later: it must find them
                self.emitter.unclaim_once(sub)
            raise
        claimed: list[tuple[EventDelivery, EventOutbox, Subscription]] = []
        # The queue failing now (an outage) must not keep the claimed deliveries from running
        # here: what it did not take is a queued row, which the sweep queues again.
        queue_up = _QueueOnce(self.queue)
        for delivery in created:
            sub = planned.get((str(delivery.event_id), delivery.subscriber))
            if delivery.state == "running" and sub is not None:
                claimed.append((delivery, events[str(delivery.event_id)], sub))
            else:
                queue_up(int(delivery.id), int(delivery.priority))
                counts["queued"] = counts.get("queued", 0) + 1
        if len(created) < len(rows):
            # Some deliveries existed already (a dispatch of old code raced this one): queue
            # those still waiting; claiming makes any duplicate harmless.
            made = {(str(d.event_id), d.subscriber) for d in created}
            for event_id in {row["event_id"] for row in rows if (row["event_id"], row["subscriber"]) not in made}:
                for delivery_id, priority in (
                    EventDelivery.select(EventDelivery.id, EventDelivery.priority)
                    .where((EventDelivery.event_id == event_id) & (EventDelivery.state == "queued"))
                    .tuples()
                    .execute(self.db)
                ):
                    queue_up(int(delivery_id), int(priority))
                    counts["queued"] = counts.get("queued", 0) + 1
        queue_up.report()
        claimed.sort(key=lambda item: -int(item[0].attempts))  # the one inserted started runs first
        self._run_batch(claimed, counts)

    def _claim_once(self, sub: Subscription, taken: list[Subscription]) -> bool:
        if not self.emitter.claim_once(sub):
            return False
        taken.append(sub)
        return True

    def _insert_deliveries(self, rows: list[dict[str, Any]]) -> list[EventDelivery]:
        """Insert delivery rows (duplicates of existing ones are skipped), in statements of a
        few compiled sizes; the rows created, in full."""
        info = model_info(EventDelivery, self.db)
        created: list[EventDelivery] = []
        for start in range(0, len(rows), _INSERT_MAX):
            chunk = rows[start : start + _INSERT_MAX]
            size = _bucket(len(chunk))
            chunk += [chunk[-1]] * (size - len(chunk))  # a repeated row is skipped as a conflict
            template = info.template(("delivery_insert_many", size), lambda: _delivery_insert(info, size))
            values = {f"{name}{i}": value for i, row in enumerate(chunk) for name, value in row.items()}
            created += info.load_all(info.execute(template, values).fetchall())
        return created

    def _run_batch(
        self, claimed: list[tuple[EventDelivery, EventOutbox, Subscription]], counts: dict[str, int]
    ) -> None:
        """Run claimed deliveries one after the other. The first was inserted started
        (attempt 1); each next one is started (its attempt counted, its lease renewed) in the
        round trip that records the previous one's success, so that a worker killed here
        leaves one delivery run twice at most, as a single delivery would: those done are
        recorded, those not started are still at attempt 0 and run once when their lease runs
        out. A failure is recorded on its own (retry or dead). Once the batch has run for
        ``settings.batch_budget``, the watch hands what it has not started back to the queue
        (slow handlers are shared by every worker)."""
        if not claimed:
            return
        batch = Batch([d for d, _, _ in claimed], time.monotonic() + self.settings.batch_budget)
        batch.take(0)  # the first runs at once
        if len(claimed) > 1:
            self._watch.watch(batch)
        succeeded: tuple[int, Subscription] | None = None  # recorded with the next start
        try:
            for n, (delivery, event, sub) in enumerate(claimed):
                if n > 0 and not batch.take(n):
                    break  # the watch handed the rest back to the queue
                if delivery.attempts == 0:  # not started yet (all but the first, as a rule)
                    self._finish_and_start(succeeded[0] if succeeded else None, int(delivery.id))
                    delivery.attempts = 1
                elif succeeded is not None:
                    self._finish_and_start(succeeded[0], None)
                if succeeded is not None:
                    self._succeeded(succeeded[1], counts)
                    succeeded = None
                state = self._run_claimed(delivery, event, sub)
                if state == "done":
                    succeeded = (int(delivery.id), sub)
                else:
                    counts[state] = counts.get(state, 0) + 1
        finally:
            if batch.released:
                counts["queued"] = counts.get("queued", 0) + len(claimed) - batch.next
            batch.finish()
            self._watch.unwatch(batch)
            if succeeded is not None:
                self._finish_and_start(succeeded[0], None)
                self._succeeded(succeeded[1], counts)

    def _succeeded(self, sub: Subscription, counts: dict[str, int]) -> None:
        counts["done"] = counts.get("done", 0) + 1
        self.emitter.release_once(sub)

    def _finish_and_start(self, done_id: int | None, start_id: int | None) -> None:
        """Record a success and start the next claimed delivery, in one round trip."""
        info = model_info(EventDelivery, self.db)
        now = utcnow()
        statements: list[tuple[SqlTemplate, dict[str, Any]]] = []
        if done_id is not None:
            statements.append((self._done_template(), {"now": now, "id": done_id}))
        if start_id is not None:
            start = info.template(
                ("start",),
                lambda: EventDelivery.update(
                    {
                        EventDelivery.attempts: EventDelivery.attempts + 1,
                        EventDelivery.lease_until: Slot("lease", EventDelivery.lease_until.db_value),
                        EventDelivery.updated_at: Slot("now", EventDelivery.updated_at.db_value),
                    }
                ).where((EventDelivery.id == Slot("id")) & (EventDelivery.state == "running")),
            )
            lease = now + dt.timedelta(seconds=self.settings.lease)
            statements.append((start, {"now": now, "lease": lease, "id": start_id}))
        if self._pg and not self.db.in_transaction():
            self._relaxed_autocommit(statements)
        else:
            for template, values in statements:
                info.execute(template, values)

    # PostgreSQL waits for the disk at every commit (synchronous_commit), which costs more than
    # all the rest of a batch on a busy server. The worker's own commits (dispatched, done) may
    # skip that wait: a crash of the server can only lose the last of them, and losing one
    # only runs work again (the event is dispatched again, the delivery's lease runs out),
    # never skips it: at-least-once holds. The WAL is written in order, so a commit that
    # waits (a handler's, a producer's) makes every earlier one durable too. Never for a
    # caller's transaction, nor for the producer's outbox row.
    _RELAXED = "SET LOCAL synchronous_commit TO OFF; "

    @property
    def _pg(self) -> bool:
        return isinstance(self.db, peewee.PostgresqlDatabase)

    def _relaxed(self, template: SqlTemplate) -> SqlTemplate:
        """``template`` run first thing in the worker's own transaction, which then commits
        without waiting for the disk (PostgreSQL; elsewhere ``template`` itself). Only where
        the caller opened that transaction itself: a savepoint in a caller's transaction has
        the same depth (Peewee does not count savepoints), and ``SET LOCAL`` there would
        outlive it to the caller's commit."""
        if not self._pg or self.db.transaction_depth() != 1:
            return template
        relaxed = self._relaxed_templates.get(template.sql)
        if relaxed is None:
            relaxed = object.__new__(SqlTemplate)
            relaxed.sql, relaxed.plan = self._RELAXED + template.sql, template.plan
            if len(self._relaxed_templates) < 64:
                self._relaxed_templates[template.sql] = relaxed
        return relaxed

    def _relaxed_autocommit(self, statements: list[tuple[SqlTemplate, dict[str, Any]]]) -> None:
        """Run statements in a transaction of their own that commits without waiting for the
        disk, in one round trip (PostgreSQL, outside any transaction)."""
        sql = "BEGIN; " + self._RELAXED + "; ".join(t.sql for t, _ in statements) + "; COMMIT"
        params = [p for template, values in statements for p in template.params(values)]
        try:
            self.db.execute_sql(sql, params)
        except Exception:
            try:  # a statement failed inside the block: end it before the connection is reused
                self.db.execute_sql("ROLLBACK")
            except Exception:
                log.debug("could not roll back a failed worker statement", exc_info=True)
            raise

    def _release_claims(self, deliveries: list[EventDelivery]) -> None:
        """Give claimed deliveries not started (attempt 0) back to the queue (the watch's
        thread)."""
        EventDelivery.update(
            state="queued", lease_until=None, updated_at=utcnow()
        ).where(
            EventDelivery.id.in_([d.id for d in deliveries]) & (EventDelivery.state == "running")
        ).execute(self.db)
        for delivery in deliveries:
            self.queue.deliver(int(delivery.id), delay=0, priority=int(delivery.priority))

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

    def _release_connection(self) -> None:
        if not self.db.is_closed() and not self.db.in_transaction():
            self.db.close()

    def _done_template(self) -> SqlTemplate:
        info = model_info(EventDelivery, self.db)
        return info.template(
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

    def _done(self, delivery_id: int) -> None:
        model_info(EventDelivery, self.db).execute(self._done_template(), {"now": utcnow(), "id": int(delivery_id)})

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
        state = self._run_claimed(delivery, event, sub)
        if state == "done":
            self._done(int(delivery.id))
            self.emitter.release_once(sub)
        return state

    def _run_claimed(self, delivery: EventDelivery, event: EventOutbox, sub: Subscription) -> str:
        """Run a claimed delivery's handler: ``done`` (for the caller to record), or the
        failure recorded here (``retry`` or ``dead``)."""
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
        try:
            self.queue.deliver(delivery.id, delay=wait, priority=delivery.priority)
        except Exception as exc:
            # Recorded as due: the sweep queues it. Raising here would also stop a batch's
            # other deliveries until their lease runs out.
            log.warning("could not queue the retry of delivery %s (%r); the sweep queues it", delivery.id, exc)
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
        self.sweep_unfinished = False  # until this pass stops at its budget: not if it fails
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
        lost_before = lost_cut(self.queue, stale)
        pending = OUTBOX_LIVE & (EventOutbox.state == "pending") & (EventOutbox.updated_at < grace)
        never_dispatched = (  # through the live rows' index: delivered ones are not read
            OUTBOX_LIVE & (EventOutbox.state == "queued") & (EventOutbox.updated_at < lost_before)
            & (EventOutbox.deliver_at < lost_before)
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
                    self._dispatch_batch(
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

        requeued, done = self._sweep_waiting(stale, deadline)
        finished &= done

        # Queued, or due for another try, for longer than a lease and since before the oldest
        # task still waiting in the queue: the task was lost (popped by a worker that died
        # before claiming it, or dropped with a queue that was wiped). One queued after that
        # task still waits behind it (a backlog): not queued again, so a long drain is not
        # flooded with duplicates, and a lost one is found under any steady load, since the
        # queue's oldest task is then young. Where the queue cannot say, once per lease (the
        # claim moves the timestamp; the delivery's own claim makes a duplicate harmless).
        lost, done = self._requeue_deliveries(
            DELIVERY_LIVE & (EventDelivery.state == "queued") & (EventDelivery.updated_at < lost_before),
            {}, EventDelivery.updated_at, stale, deadline, order=EventDelivery.updated_at,
        )
        finished &= done
        late, done = self._requeue_deliveries(
            DELIVERY_LIVE & EventDelivery.state.in_(("retry", "waiting"))
            & (EventDelivery.next_attempt_at < lost_before),
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
        moved to now so that ``due`` no longer matches) and queue each batch in one call.
        ``due`` may be a function of the claim's time, for a condition that must not match
        what an earlier claim of the pass moved to its own time."""

        claimed = [utcnow()]  # when the batch in hand was claimed

        def take() -> list[tuple[Any, ...]]:
            at = claimed[0] = utcnow()
            return claim(
                self.db, EventDelivery, EventDelivery.id, due(at) if callable(due) else due,
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

    def _dispatch_batch(self, items: list[tuple[str, float, int]]) -> None:
        """Queue the dispatch of a sweep's claimed events as the relay does: those due now,
        of one priority, in tasks of ``settings.dispatch_batch`` events (a backlog after an
        outage drains at the batched rate); delayed ones one task each, at their time."""
        now_by_priority: dict[int, list[str]] = {}
        later: list[tuple[str, float, int]] = []
        for event_id, delay, priority in items:
            if delay > 0 or self.settings.dispatch_batch <= 1:
                later.append((event_id, delay, priority))
            else:
                now_by_priority.setdefault(priority, []).append(event_id)
        size = max(1, self.settings.dispatch_batch)
        for priority, ids in now_by_priority.items():
            for start in range(0, len(ids), size):
                self.queue.dispatch_many(ids[start : start + size], delay=0.0, priority=priority)
        if later:
            self._enqueue_many("dispatch", later)

    def _enqueue_many(self, kind: str, items: list[tuple[Any, float, int]]) -> None:
        """``dispatch_each``/``deliver_each`` where the queue has them (any ``Enqueuer``),
        else one call per item (a duck-typed queue)."""
        many = getattr(self.queue, f"{kind}_each", None)
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

    def _sweep_waiting(self, stale: dt.datetime, deadline: float) -> tuple[int, bool]:
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
        # lease ago, so no other sweep takes it again within a lease. "In the future" is as of
        # each claim, not of the pass's start: the rows an earlier batch of this pass moved to
        # its time are after the start, and would be taken again batch after batch.
        return self._requeue_deliveries(
            lambda at: (
                DELIVERY_LIVE
                & (EventDelivery.state == "waiting")
                & EventDelivery.subscriber.in_(mine)
                & ((EventDelivery.next_attempt_at > at) | (EventDelivery.next_attempt_at < stale))
            ),
            {}, EventDelivery.next_attempt_at, stale, deadline,
        )


class _QueueOnce:
    """Deliver tasks for a batch's deliveries that other workers run: after the queue fails
    once, the rest are not tried (each try may wait for a timeout); they stay queued rows."""

    def __init__(self, queue: Enqueuer) -> None:
        self.queue = queue
        self.error: Exception | None = None
        self.left = 0

    def __call__(self, delivery_id: int, priority: int) -> None:
        if self.error is None:
            try:
                self.queue.deliver(delivery_id, delay=0, priority=priority)
                return
            except Exception as exc:
                self.error = exc
        self.left += 1

    def report(self) -> None:
        if self.error is not None:
            log.warning(
                "could not queue %d delivery(ies) for other workers (%r); the sweep queues them",
                self.left, self.error,
            )


_IN_MAX = 512
"""Most values in one compiled ``IN (...)`` list."""
_INSERT_MAX = 128
"""Most delivery rows in one compiled insert."""


def _bucket(n: int) -> int:
    """The compiled size that holds ``n`` values: the next power of two (a few shapes only)."""
    size = 1
    while size < n:
        size *= 2
    return size


def _in_slots(values: Sequence[Any]) -> tuple[int, dict[str, Any]]:
    """``values`` as the slots ``k0``... of an ``IN`` list of a compiled size, padded with
    the last value (a repeat changes nothing)."""
    size = _bucket(len(values))
    keys = {f"k{i}": value for i, value in enumerate(values)}
    last = values[-1]
    for i in range(len(values), size):
        keys[f"k{i}"] = last
    return size, keys


def _in_clause(field: peewee.Field, size: int) -> peewee.Expression:
    return field.in_([Slot(f"k{i}") for i in range(size)])


def _delivery_insert(info: Any, size: int) -> peewee.Node:
    fields = info.field_map
    lease = fields["lease_until"]
    stamp = fields["created_at"]
    return (
        EventDelivery.insert_many([
            {
                fields["event_id"]: Slot(f"event_id{i}"),
                fields["subscriber"]: Slot(f"subscriber{i}"),
                fields["state"]: Slot(f"state{i}"),
                fields["attempts"]: Slot(f"attempts{i}"),
                lease: Slot(f"lease_until{i}", lease.db_value),
                fields["max_attempts"]: Slot(f"max_attempts{i}"),
                fields["priority"]: Slot(f"priority{i}"),
                stamp: Slot(f"now{i}", stamp.db_value),
                fields["updated_at"]: Slot(f"now{i}", stamp.db_value),
            }
            for i in range(size)
        ])
        .on_conflict_ignore()
        .returning(*info.fields)
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
