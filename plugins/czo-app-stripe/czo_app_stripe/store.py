"""The app's own state, in a database of its own: installations (token, webhook secret), the
event ids it has processed (kept for a retention period), and each order's payment (the
PaymentIntent that pays it, and how far the app got), so a restart resumes where it stopped.

SQLite by default; any URL ``playhouse.db_url`` knows (``postgresql://...``) works.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import peewee
from playhouse.db_url import connect

__all__ = ["DEFAULT_DATABASE_URL", "Installation", "Payment", "Store"]

DEFAULT_DATABASE_URL = "sqlite:///czo-app-stripe.sqlite3"

# A payment's states. "pending" is the app's own work in progress (creating, confirming,
# recording); the others are where Stripe and c-zo agree.
PENDING, PAID, FAILED, REFUNDED, CANCELED = "pending", "paid", "failed", "refunded", "canceled"


@dataclass(frozen=True)
class Installation:
    shop_id: int
    installation_id: int
    token: str
    webhook_secret: str


@dataclass(frozen=True)
class Payment:
    """An order's payment as the app knows it. ``intent_id`` is None until Stripe answered."""

    shop_id: int
    order_id: int
    amount: int
    currency: str
    idempotency_key: str
    intent_id: str | None
    state: str
    failure: str | None
    cancel_requested: bool

    @property
    def unfinished(self) -> bool:
        return self.state == PENDING or (self.cancel_requested and self.state == PAID)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _models(db: peewee.Database) -> tuple[Any, Any, Any]:  # peewee's fields are not typed per model
    # Built per store: two stores (two apps in one test process, or a restart) never share
    # a binding.
    class Base(peewee.Model):
        class Meta:
            database = db

    class InstallationRow(Base):
        shop_id = peewee.IntegerField(primary_key=True)
        installation_id = peewee.IntegerField()
        token = peewee.TextField()
        webhook_secret = peewee.TextField()

        class Meta:
            table_name = "stripe_app_installation"

    class ProcessedEvent(Base):
        source = peewee.CharField(max_length=10)
        event_id = peewee.CharField(max_length=255)
        seen_at = peewee.DateTimeField(index=True)

        class Meta:
            table_name = "stripe_app_processed_event"
            primary_key = peewee.CompositeKey("source", "event_id")

    class PaymentRow(Base):
        shop_id = peewee.IntegerField()
        order_id = peewee.BigIntegerField()
        amount = peewee.BigIntegerField()
        currency = peewee.CharField(max_length=3)
        idempotency_key = peewee.CharField(max_length=255)
        intent_id = peewee.CharField(max_length=255, null=True, unique=True)
        state = peewee.CharField(max_length=20, default=PENDING)
        failure = peewee.TextField(null=True)
        cancel_requested = peewee.BooleanField(default=False)
        updated_at = peewee.DateTimeField(default=_now)

        class Meta:
            table_name = "stripe_app_payment"
            primary_key = peewee.CompositeKey("shop_id", "order_id")

    return InstallationRow, ProcessedEvent, PaymentRow


class Store:
    """The app's tables, created on first open. Safe to share between threads."""

    def __init__(self, url: str = DEFAULT_DATABASE_URL, *, event_retention: float = 7 * 86400) -> None:
        if "://" not in url:
            raise ValueError(f"database URL {url!r} is not a URL; use sqlite:///path or postgresql://user@host/db")
        options: dict[str, Any] = {}
        if url.startswith("sqlite"):
            # WAL and a busy timeout: the webhook threads and the resume loop write at once.
            options["pragmas"] = {"journal_mode": "wal", "busy_timeout": 5000}
        try:
            self.db: peewee.Database = connect(url, **options)
        except RuntimeError as exc:
            raise ValueError(f"database URL {url!r} is not supported: {exc}") from None
        self.url = url
        self.event_retention = event_retention
        self._installations, self._events, self._payments = _models(self.db)
        with self.db.connection_context():
            self.db.create_tables([self._installations, self._events, self._payments], safe=True)

    @contextmanager
    def _conn(self) -> Iterator[None]:
        with self.db.connection_context():
            yield

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()

    # -- installations --------------------------------------------------------------------

    def save_installation(self, installation: Installation) -> None:
        with self._conn():
            self._installations.replace(
                shop_id=installation.shop_id, installation_id=installation.installation_id,
                token=installation.token, webhook_secret=installation.webhook_secret,
            ).execute()

    def installation(self, shop_id: int) -> Installation | None:
        with self._conn():
            row = self._installations.get_or_none(self._installations.shop_id == shop_id)
        return None if row is None else Installation(row.shop_id, row.installation_id, row.token, row.webhook_secret)

    def installations(self) -> dict[int, Installation]:
        with self._conn():
            rows = list(self._installations.select())
        return {r.shop_id: Installation(r.shop_id, r.installation_id, r.token, r.webhook_secret) for r in rows}

    # -- processed events -----------------------------------------------------------------

    def first_time(self, source: str, event_id: str) -> bool:
        """Note ``event_id`` of ``source`` as processed; False if it was before (a redelivery).

        Ids older than the retention are forgotten: a sender retries for days, not forever.
        """
        now = _now()
        with self._conn():
            self._events.delete().where(
                self._events.seen_at < now - datetime.timedelta(seconds=self.event_retention)
            ).execute()
            try:
                with self.db.atomic():
                    self._events.insert(source=source, event_id=event_id, seen_at=now).execute()
            except peewee.IntegrityError:
                return False
        return True

    def processed(self, source: str) -> set[str]:
        with self._conn():
            return {r.event_id for r in self._events.select().where(self._events.source == source)}

    # -- payments -------------------------------------------------------------------------

    def _payment(self, row: Any) -> Payment:
        return Payment(
            shop_id=row.shop_id, order_id=row.order_id, amount=row.amount, currency=row.currency,
            idempotency_key=row.idempotency_key, intent_id=row.intent_id, state=row.state,
            failure=row.failure, cancel_requested=bool(row.cancel_requested),
        )

    def open_payment(self, *, shop_id: int, order_id: int, amount: int, currency: str, idempotency_key: str) -> Payment:
        """The order's payment, opened now unless it was before (a retried webhook)."""
        with self._conn():
            self._payments.insert(
                shop_id=shop_id, order_id=order_id, amount=amount, currency=currency,
                idempotency_key=idempotency_key,
            ).on_conflict_ignore().execute()
        found = self.payment(shop_id, order_id)
        assert found is not None
        return found

    def payment(self, shop_id: int, order_id: int) -> Payment | None:
        with self._conn():
            row = self._payments.get_or_none((self._payments.shop_id == shop_id) & (self._payments.order_id == order_id))
        return None if row is None else self._payment(row)

    def payment_by_intent(self, intent_id: str) -> Payment | None:
        with self._conn():
            row = self._payments.get_or_none(self._payments.intent_id == intent_id)
        return None if row is None else self._payment(row)

    def payments(self) -> list[Payment]:
        with self._conn():
            return [self._payment(r) for r in self._payments.select().order_by(self._payments.updated_at)]

    def unfinished(self) -> list[Payment]:
        return [p for p in self.payments() if p.unfinished]

    def update_payment(self, shop_id: int, order_id: int, **changes: Any) -> None:
        with self._conn():
            self._payments.update(updated_at=_now(), **changes).where(
                (self._payments.shop_id == shop_id) & (self._payments.order_id == order_id)
            ).execute()
