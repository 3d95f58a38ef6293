"""What operators do with the outbox, from the CLI or Python: list and replay dead letters, see
what waits, give up on a removed subscriber, count deliveries by state."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import peewee

from czo_kit.db.model import utcnow
from czo_kit.db.transactions import on_commit
from czo_kit.events._models import DeadLetter, EventDelivery

if TYPE_CHECKING:
    from czo_kit.events.outbox import Enqueuer

__all__ = ["OutboxAdmin", "dead_letter_dict"]


class OutboxAdmin:
    """The operator's half of ``Outbox`` (a base class of it)."""

    db: peewee.Database
    queue: Enqueuer

    def ensure_tables(self) -> None:
        raise NotImplementedError

    def dead_letters(self, *, include_replayed: bool = False, limit: int = 100) -> list[DeadLetter]:
        self.ensure_tables()
        query = DeadLetter.select().order_by(DeadLetter.id.desc()).limit(limit)
        if not include_replayed:
            query = query.where(DeadLetter.replayed_at.is_null(True))
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
        if letter.replayed_at is not None or state != "dead":
            from czo_kit.errors import ConflictError

            raise ConflictError(
                f"dead letter {dead_letter_id} was already replayed (its delivery is {state or 'gone'}); "
                "a delivery is replayed once per death"
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
            .where(EventDelivery.state == "waiting")
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
            .where((EventDelivery.subscriber == subscriber) & EventDelivery.state.in_(("queued", "retry", "waiting")))
            .execute(self.db)
        )

    def stats(self) -> dict[str, int]:
        """How many deliveries are in each state."""
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
    }


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
