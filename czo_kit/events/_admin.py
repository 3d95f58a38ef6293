"""What operators do with the outbox, from the CLI or Python: status, dead letters (list,
replay, discard), what waits for a worker with its subscriber, pruning, live workers."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import msgspec
import peewee

from czo_kit.db.model import utcnow
from czo_kit.db.transactions import on_commit
from czo_kit.events._heartbeat import HEARTBEAT_INTERVAL, Heartbeat, WorkerInfo, workers
from czo_kit.events._models import (
    DELIVERY_FINISHED,
    DELIVERY_LIVE,
    DELIVERY_LIVE_STATES,
    LETTER_OPEN,
    OUTBOX_DISPATCHED,
    OUTBOX_LIVE,
    OUTBOX_LIVE_STATES,
    DeadLetter,
    EventDelivery,
    EventOutbox,
)
from czo_kit.events._retention import prune

if TYPE_CHECKING:
    from czo_kit.events.outbox import Enqueuer, OutboxSettings

__all__ = ["OutboxAdmin", "OutboxStatus", "StateCount", "dead_letter_dict"]


class StateCount(msgspec.Struct, frozen=True):
    """Rows in one state."""

    count: int
    oldest_age: float | None = None
    """Seconds since the oldest became due (outbox: its ``deliver_at``; deliveries: created)."""
    scheduled: int = 0
    """Outbox rows whose delay has not run out yet (counted in ``count``, not in the age)."""


class OutboxStatus(msgspec.Struct, frozen=True):
    """``Outbox.status()``: live work, by state; ``msgspec.to_builtins`` makes it JSON."""

    at: dt.datetime
    outbox: dict[str, StateCount]
    """``pending`` (committed, not yet handed to the queue) and ``queued`` (handed over, not yet
    dispatched)."""
    deliveries: dict[str, StateCount]
    """``queued``, ``running``, ``retry`` and ``waiting`` (for a worker with the subscriber)."""
    dead_letters: int
    """Dead letters neither replayed nor discarded."""
    waiting_subscribers: dict[str, int]
    finished: dict[str, int] | None = None
    """With ``status(finished=True)``: ``dispatched`` outbox rows, ``done`` and ``discarded``
    deliveries kept until the retention runs out."""


class OutboxAdmin:
    """The operator's half of ``Outbox`` (a base class of it)."""

    db: peewee.Database
    queue: Enqueuer
    queue_name: str
    plugins: tuple[str, ...]
    settings: OutboxSettings

    def ensure_tables(self) -> None:
        raise NotImplementedError

    def dead_letters(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
        """Dead letters neither replayed nor discarded, newest first; ``include_replayed``
        adds those (until the retention prunes them)."""
        self.ensure_tables()
        query = DeadLetter.select().order_by(DeadLetter.id.desc()).limit(limit)
        if not include_replayed:
            query = query.where(LETTER_OPEN)
        return list(query.execute(self.db))

    def dead_letter(self, dead_letter_id: int) -> DeadLetter:
        """One dead letter, with its error and traceback; ``NotFoundError`` if there is none."""
        self.ensure_tables()
        from czo_kit.errors import NotFoundError

        letter: DeadLetter | None = DeadLetter.select().where(DeadLetter.id == dead_letter_id).first(self.db)
        if letter is None:
            raise NotFoundError("DeadLetter", dead_letter_id)
        return letter

    def replay(self, dead_letter_id: int) -> int:
        """Send a dead delivery again with a fresh set of attempts; returns the delivery id."""
        self.ensure_tables()
        from czo_kit.errors import NotFoundError

        letter = DeadLetter.select().where(DeadLetter.id == dead_letter_id).first(self.db)
        if letter is None:
            raise NotFoundError("DeadLetter", dead_letter_id)
        state = (
            EventDelivery.select(EventDelivery.state).where(EventDelivery.id == letter.delivery_id).scalar(self.db)
        )
        if letter.replayed_at is not None or letter.discarded_at is not None or state != "dead":
            from czo_kit.errors import ConflictError

            done = "discarded" if letter.discarded_at is not None else "already replayed"
            raise ConflictError(
                f"dead letter {dead_letter_id} was {done} (its delivery is {state or 'gone'}); "
                "a delivery is replayed once per death, and never after it was discarded"
            )
        now = utcnow()
        with self.db.atomic():
            EventDelivery.update(
                state="queued", attempts=0, next_attempt_at=None, lease_until=None,
                finished_at=None, updated_at=now,
            ).where(EventDelivery.id == letter.delivery_id).execute(self.db)
            DeadLetter.update(replayed_at=now).where(DeadLetter.id == letter.id).execute(self.db)
        priority = (
            EventDelivery.select(EventDelivery.priority).where(EventDelivery.id == letter.delivery_id).scalar(self.db)
        )
        on_commit(self.db, lambda: self.queue.deliver(letter.delivery_id, delay=0, priority=priority or 50))
        return int(letter.delivery_id)

    def waiting(self) -> dict[str, int]:
        """Subscribers whose deliveries wait for a worker that has them, and how many each."""
        self.ensure_tables()
        rows = (
            EventDelivery.select(EventDelivery.subscriber, peewee.fn.COUNT(EventDelivery.id))
            .where(DELIVERY_LIVE & (EventDelivery.state == "waiting"))
            .group_by(EventDelivery.subscriber)
            .tuples()
            .execute(self.db)
        )
        return {subscriber: count for subscriber, count in rows}

    def discard(self, subscriber: str) -> int:
        """Give up on every delivery of ``subscriber`` not yet run (a subscriber removed on
        purpose); they end ``discarded``. Returns how many."""
        self.ensure_tables()
        now = utcnow()
        return int(
            EventDelivery.update(
                state="discarded", finished_at=now, lease_until=None, updated_at=now,
                last_error="discarded by an operator",
            )
            .where(
                DELIVERY_LIVE & (EventDelivery.subscriber == subscriber)
                & EventDelivery.state.in_(("queued", "retry", "waiting"))
            )
            .execute(self.db)
        )

    def status(self, *, finished: bool = False) -> OutboxStatus:
        """What an operator reads first (``czo-kit events status``, ``czo-kit status``): the
        live rows by state with the age of the oldest, open dead letters, and what waits for a
        worker with its subscriber; reads only live rows (through their partial indexes).
        ``finished`` also counts delivered rows, which means reading them all."""
        self.ensure_tables()
        now = utcnow()
        due = peewee.Case(None, [(EventOutbox.deliver_at <= now, EventOutbox.deliver_at)], None)
        later = peewee.Case(None, [(EventOutbox.deliver_at > now, 1)], 0)
        outbox = {state: StateCount(0) for state in OUTBOX_LIVE_STATES}
        for state, count, oldest, scheduled in (
            EventOutbox.select(EventOutbox.state, peewee.fn.COUNT(EventOutbox.event_id), peewee.fn.MIN(due),
                               peewee.fn.SUM(later))
            .where(OUTBOX_LIVE).group_by(EventOutbox.state).tuples().execute(self.db)
        ):
            outbox[state] = StateCount(int(count), _age(EventOutbox.deliver_at.python_value(oldest), now),
                                       int(scheduled or 0))
        deliveries = {state: StateCount(0) for state in DELIVERY_LIVE_STATES}
        for state, count, oldest in (
            EventDelivery.select(EventDelivery.state, peewee.fn.COUNT(EventDelivery.id),
                                 peewee.fn.MIN(EventDelivery.created_at))
            .where(DELIVERY_LIVE).group_by(EventDelivery.state).tuples().execute(self.db)
        ):
            deliveries[state] = StateCount(int(count), _age(EventDelivery.created_at.python_value(oldest), now))
        letters = DeadLetter.select(peewee.fn.COUNT(DeadLetter.id)).where(LETTER_OPEN).scalar(self.db)
        done: dict[str, int] | None = None
        if finished:
            done = {"dispatched": EventOutbox.select().where(OUTBOX_DISPATCHED).count(self.db)}
            done.update(
                (state, int(count)) for state, count in
                EventDelivery.select(EventDelivery.state, peewee.fn.COUNT(EventDelivery.id))
                .where(DELIVERY_FINISHED).group_by(EventDelivery.state).tuples().execute(self.db)
            )
        return OutboxStatus(
            at=now, outbox=outbox, deliveries=deliveries, dead_letters=int(letters or 0),
            waiting_subscribers=self.waiting(), finished=done,
        )

    def discard_dead(self, dead_letter_id: int | None = None, *, older_than: float | None = None) -> int:
        """Give up on dead letter ``dead_letter_id``, or on every open one that died more than
        ``older_than`` seconds ago: each is marked discarded and its delivery ends
        ``discarded``; the retention prunes them later. Returns how many."""
        self.ensure_tables()
        from czo_kit.errors import ConflictError, NotFoundError

        if (dead_letter_id is None) == (older_than is None):
            raise ValueError("give a dead letter id or older_than, not both")
        now = utcnow()
        if dead_letter_id is not None:
            letter = DeadLetter.select().where(DeadLetter.id == dead_letter_id).first(self.db)
            if letter is None:
                raise NotFoundError("DeadLetter", dead_letter_id)
            if letter.replayed_at is not None or letter.discarded_at is not None:
                done = "discarded" if letter.discarded_at is not None else "replayed"
                raise ConflictError(f"dead letter {dead_letter_id} was already {done}; there is nothing to discard")
            ids = [int(letter.id)]
        else:
            assert older_than is not None
            ids = [
                int(i) for (i,) in DeadLetter.select(DeadLetter.id)
                .where(LETTER_OPEN & (DeadLetter.died_at < now - dt.timedelta(seconds=older_than)))
                .tuples().execute(self.db)
            ]
        for start in range(0, len(ids), 500):  # short transactions, whatever the count
            chunk = ids[start : start + 500]
            with self.db.atomic():
                DeadLetter.update(discarded_at=now).where(DeadLetter.id.in_(chunk) & LETTER_OPEN).execute(self.db)
                deliveries = DeadLetter.select(DeadLetter.delivery_id).where(DeadLetter.id.in_(chunk))
                EventDelivery.update(
                    state="discarded", finished_at=now, updated_at=now, last_error="discarded by an operator",
                ).where(EventDelivery.id.in_(deliveries) & (EventDelivery.state == "dead")).execute(self.db)
        return len(ids)

    def prune(self, *, older_than: float | None = None, budget: float | None = None) -> dict[str, int]:
        """Delete what is finished and older than ``older_than`` seconds (default: the
        retention, ``CZO_EVENTS_RETENTION``) in small batches, until none is left or
        ``budget`` seconds have gone; never anything at work or an open dead letter. What it
        deleted, by kind. The worker runs it at its sweeps."""
        self.ensure_tables()
        keep = self.settings.retention if older_than is None else older_than
        return prune(self.db, before=utcnow() - dt.timedelta(seconds=keep), budget=budget)

    def workers(self, *, seen_within: float = 3 * HEARTBEAT_INTERVAL) -> list[WorkerInfo]:
        """Worker processes whose heartbeat is at most ``seen_within`` seconds old: host, pid,
        what runs, the queue, the plugins it loaded, when it started and was last seen."""
        self.ensure_tables()
        return workers(self.db, seen_within=seen_within)

    def heartbeat(self, kind: str) -> Heartbeat:
        """This process's heartbeat as a worker of ``kind`` (for its sweeper to beat)."""
        return Heartbeat(self.db, kind=kind, queue=self.queue_name, plugins=self.plugins)

    def stats(self) -> dict[str, int]:
        """How many deliveries are in each state (reads every delivery row: ``status()`` is
        the cheap one)."""
        self.ensure_tables()
        rows = (
            EventDelivery.select(EventDelivery.state, peewee.fn.COUNT(EventDelivery.id))
            .group_by(EventDelivery.state)
            .tuples()
            .execute(self.db)
        )
        return {state: count for state, count in rows}



def dead_letter_dict(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as JSON-ready data (``czo-kit events dead --json``)."""
    return {
        "id": int(letter.id),
        "delivery_id": int(letter.delivery_id),
        "event_id": letter.event_id,
        "name": letter.name,
        "subscriber": letter.subscriber,
        "attempts": int(letter.attempts),
        "error": letter.error,
        "traceback": letter.traceback,
        "died_at": _iso(letter.died_at),
        "replayed_at": _iso(letter.replayed_at),
        "discarded_at": _iso(letter.discarded_at),
    }


def _age(oldest: dt.datetime | None, now: dt.datetime) -> float | None:
    return round(max(0.0, (now - oldest).total_seconds()), 3) if oldest is not None else None


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
