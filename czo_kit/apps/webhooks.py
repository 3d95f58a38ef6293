"""``WebhookDispatcher``: signed HTTP deliveries of kit events to the apps of a shop.

When an event carrying a ``shop_id`` is emitted, each active subscription of that shop gets a
delivery row, in the emitting transaction (next to the event's outbox row), holding the JSON
body built once (so its ``id`` is stable across retries). After commit a relay thread hands
the deliveries to the queue, many to a task, so a hung queue holds up no caller. A worker
claims a task's deliveries with a lease in one statement, signs each afresh, POSTs it, and
records the attempt (an exception with its traceback); plain successes are recorded a few
at a time (``_webhook_batch``).
2xx is delivered; network errors, timeouts, 5xx, 408 and 429 are retried on a schedule with
jitter (``Retry-After`` honoured); any other answer is dead at once. A target that keeps
failing is paused by a circuit breaker (``_circuits``): its deliveries wait, they are not
dropped, and one probe goes out after the cool-down. The sweep recovers deliveries a crashed
worker left ``running`` and prunes delivered ones past the retention period. The tables are
in ``_webhook_models``; what operators call (listings, redeliver, prune, discard) in
``_webhook_ops``.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import peewee
import urllib3

from czo_kit import metrics as _metrics
from czo_kit.apps import _webhook_batch as _batch
from czo_kit.apps._circuits import CircuitBreaker, CircuitRow, CircuitState
from czo_kit.apps._webhook_batch import Delivered, DeliveredBuffer
from czo_kit.apps._webhook_models import (
    DEFAULT_SCHEDULE,
    WEBHOOK_MODELS,
    WebhookAttempt,
    WebhookCircuit,
    WebhookDelivery,
    WebhookSettings,
)
from czo_kit.apps._webhook_failures import ERROR_LIMIT, Failure, TracebackScrubber, failure
from czo_kit.apps._webhook_ops import WebhookOperations
from czo_kit.apps._webhook_sweep import WebhookSweep
from czo_kit.apps.inprocess import is_in_process_target
from czo_kit.apps.net import OutboundHTTP, parse_target, shown_url
from czo_kit.apps.registry import APP_MODELS, AppInstallation, AppRegistry, AppSecret, AppWebhook
from czo_kit.apps.signing import sign
from czo_kit.context import clean_correlation_id
from czo_kit.db._sql import Slot, model_info
from czo_kit.db._tables import ensure_tables
from czo_kit.db.model import utcnow
from czo_kit.db.transactions import on_commit
from czo_kit.errors import UnsafeURLError
from czo_kit.events._relay import Relay
from czo_kit.events.emitter import as_mapping
from czo_kit.events.types import EventContext, uuid7

if TYPE_CHECKING:
    from czo_kit.apps.permissions import PermissionRegistry

__all__ = [
    "CircuitState",
    "DEFAULT_SCHEDULE",
    "WEBHOOK_MODELS",
    "WebhookAttempt",
    "WebhookCircuit",
    "WebhookDelivery",
    "WebhookDispatcher",
    "WebhookSettings",
]

log = logging.getLogger("czo_kit.webhooks")
log.addFilter(TracebackScrubber())

RESPONSE_EXCERPT = 1024

CLAIM_BATCH = 64
"""Deliveries of one queue task claimed per statement."""

EARLY_WINDOW = 60.0
"""Seconds before its retry is due a task that finds it not due queues it again for then; a
task earlier than that is a duplicate, and leaves it (``_not_due_yet``)."""


class WebhookEnqueuer(Protocol):
    """How deliveries reach workers (the Huey task registered by the kit)."""

    def deliver(self, delivery_id: int, *, delay: float) -> None: ...

    def pending(self) -> int: ...

    # Optional: ``deliver_many(items: Sequence[tuple[int, float]])``, (id, delay) pairs in one
    # call; the sweep uses it where the queue has it (the kit's does).


def _retry_after(value: str | None, now: dt.datetime) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # "²".isdigit() is true too, and float() refuses it
        return min(float(value), 86400.0)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, min((when - now).total_seconds(), 86400.0))


class WebhookDispatcher(WebhookOperations, WebhookSweep):
    """Turns events into signed deliveries, and delivers them."""

    meter: Any = None  # set by czo_kit.metrics.attach

    def __init__(
        self,
        db: peewee.Database,
        apps: AppRegistry,
        permissions: PermissionRegistry,
        http: OutboundHTTP,
        settings: WebhookSettings | None = None,
    ) -> None:
        self.db = db
        self.apps = apps
        self.permissions = permissions
        self.http = http
        self.settings = settings or WebhookSettings()
        self.breaker = CircuitBreaker(
            db, threshold=self.settings.breaker_threshold, cooldown=self.settings.breaker_cooldown
        )
        self.queue: WebhookEnqueuer | None = None
        self._ready = False
        self._encoder = msgspec.json.Encoder()
        # Committed deliveries reach the queue from a thread of this relay, never from the
        # emitting one: a queue that hangs holds up no caller (see czo_kit.events._relay).
        self._relayer = Relay(
            self._hand_over, _no_marks, shutdown_timeout=self.settings.shutdown_timeout,
            what="webhook deliveries", kept="the deliveries table", thread_name="czo-webhook-relay", logger=log,
            relay_many=self._hand_over_many, many=500,
        )

    def ensure_tables(self, *, required: bool = True) -> bool:
        """Make the app and webhook tables exist; with ``required=False`` (the tap, inside the
        emitting transaction) a missing table answers False instead of raising."""
        if not self._ready:
            self._ready = ensure_tables(self.db, (*APP_MODELS, *WEBHOOK_MODELS), required=required)
        return self._ready

    # -- from events to deliveries --------------------------------------------------------

    def on_event(self, ctx: EventContext, value: Any) -> Callable[[], int] | None:
        """The event emitter's tap: work out the deliveries the event's shop subscribed to,
        and return the write that records them (run in the emitting transaction, next to
        the event's outbox row), or ``None`` when no app hears the event."""
        shop_id = value.get("shop_id") if isinstance(value, Mapping) else getattr(value, "shop_id", None)
        if not isinstance(shop_id, int) or isinstance(shop_id, bool):
            return None  # not a shop event: no app hears it
        if not self.ensure_tables(required=False):
            return None  # no app tables, so no app installed: nobody to deliver to
        # From memory, kept exact across processes (czo_kit.apps._subscriptions).
        subscriptions = self.apps.subscription_cache.lookup(shop_id, ctx.name)
        if not subscriptions:
            return None
        data = as_mapping(value)
        now = utcnow()
        rows = []
        for installation_id, name, _, target_url, granted in subscriptions:
            # The one filter every app's payload goes through: declared fields only, each
            # if the app holds its permission.
            visible = self.permissions.payload_for(ctx.name, data, granted)
            if visible is None:
                continue  # permissions narrowed since the install: stay silent
            message_id = "msg_" + uuid7().replace("-", "")
            body = self._encoder.encode(
                {
                    "id": message_id,
                    "event": ctx.name,
                    "event_id": ctx.event_id,
                    "shop_id": shop_id,
                    "occurred_at": ctx.timestamp,
                    "data": visible,
                }
            )
            rows.append(
                {
                    "message_id": message_id,
                    "installation": installation_id,
                    "shop_id": shop_id,
                    "webhook_name": name,
                    "event_id": ctx.event_id,
                    "event_name": ctx.name,
                    "correlation_id": ctx.correlation_id,
                    "target_url": target_url,
                    "origin": _origin(target_url),
                    "body": body,
                    "state": "queued",
                    "max_attempts": len(self.settings.schedule) + 1,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        if not rows:
            return None

        def write() -> int:
            ids = self._insert_deliveries(rows)
            on_commit(self.db, lambda: self._enqueue_all(ids))
            return len(ids)

        return write

    def _insert_deliveries(self, rows: list[dict[str, Any]]) -> list[int]:
        """INSERT the delivery rows of one event (one per subscription) RETURNING their ids,
        through a statement compiled once per number of rows."""
        columns = tuple(rows[0])
        info, template = self._template(
            WebhookDelivery, ("insert", len(rows), columns),
            lambda i: WebhookDelivery.insert_many(
                [
                    {i.field_map[c]: Slot(f"{c}.{n}", i.field_map[c].db_value) for c in columns}
                    for n in range(len(rows))
                ]
            ).returning(WebhookDelivery.id),
        )
        values = {f"{c}.{n}": value for n, row in enumerate(rows) for c, value in row.items()}
        cursor = self.db.execute_sql(template.sql, template.params(values))
        return [int(row[0]) for row in cursor.fetchall()]

    def _enqueue_all(self, ids: Sequence[int]) -> None:
        """Queue committed deliveries: handed to the relay, which queues them off the caller's
        thread; what the queue does not take stays ``queued`` in the table for the sweep."""
        if self.queue is None:
            log.warning("%d webhook deliveries recorded but no queue is configured; run a worker", len(ids))
            return
        for delivery_id in ids:
            self._relayer.add((int(delivery_id), 0.0))

    def _hand_over(self, delivery_id: int, delay: float) -> None:
        """The relay's hand-over of one delivery; raises when the queue did not take it."""
        queue = self.queue
        if queue is not None:
            queue.deliver(delivery_id, delay=delay)

    def _hand_over_many(self, items: list[tuple[int, float]]) -> None:
        """The relay's hand-over of what it holds: one queue task for many deliveries where the
        queue can (``deliver_many``); raises when the queue did not take them."""
        by_delay: dict[float, list[int]] = {}
        for delivery_id, delay in items:
            by_delay.setdefault(delay, []).append(int(delivery_id))
        for delay, ids in by_delay.items():
            self._queue_ids(ids, delay)

    def _queue_ids(self, ids: list[int], delay: float) -> None:
        queue = self.queue
        if queue is None:
            return
        many = getattr(queue, "deliver_many", None)
        if many is not None:
            many(ids, delay=delay)
        else:
            for delivery_id in ids:
                queue.deliver(delivery_id, delay=delay)

    def flush(self) -> None:
        """Queue every committed delivery the relay still holds, now, in this thread."""
        self._relayer.flush(mark=False)

    def close(self, *, deadline: float | None = None) -> None:
        """Queue what the relay still holds by ``deadline`` (monotonic; default
        ``settings.shutdown_timeout`` from now) and stop its thread; the rest stays ``queued``
        in the table, for the sweep."""
        self._relayer.close(deadline=deadline)
        self.apps.subscription_cache.close()

    # -- delivering ---------------------------------------------------------------------

    # The worker's statements are compiled once (Peewee builds them with named slots) and
    # reused: building Peewee queries per delivery cost more than the database itself.

    def _template(self, model: type[peewee.Model], key: Any, build: Callable[[Any], peewee.Node]) -> tuple[Any, Any]:
        info = model_info(model, self.db)
        return info, info.template(key if isinstance(key, tuple) else (key,), lambda: build(info))

    def _secrets(self, installation_id: int, now: dt.datetime) -> list[str]:
        """Secrets to sign with: the current one first, then any still in their grace period."""
        info, template = self._template(
            AppSecret, "signing_secrets",
            lambda i: AppSecret.select(AppSecret.secret)
            .where(
                (AppSecret.installation == Slot("installation"))
                & (AppSecret.expires_at.is_null(True) | (AppSecret.expires_at > Slot("now", AppSecret.expires_at.db_value)))
            )
            .order_by(AppSecret.expires_at.is_null(False), AppSecret.id.desc()),
        )
        return [str(row[0]) for row in info.execute(template, {"installation": installation_id, "now": now}).fetchall()]

    def deliver(self, delivery_id: int) -> str:
        """Attempt one delivery; returns the state it ends in (or ``skipped``/``paused``)."""
        return self.deliver_many([delivery_id])[0]

    def deliver_many(self, delivery_ids: Sequence[int]) -> list[str]:
        """Attempt each delivery, in order (one queue task's batch); returns the state each
        ends in, as ``deliver`` does (``queued`` for one handed back to the queue because the
        batch ran long).

        Deliveries are claimed ``CLAIM_BATCH`` at a time in one statement; the circuit of each
        target is read once per claim (again after any failure), the signing secrets before
        each POST (a rotation or an uninstall counts from the next one); successes to a
        target whose circuit is closed are recorded a few at a time (``DeliveredBuffer``),
        anything else at once, exactly as a single delivery is. A claim held for half the
        lease gives back what it has not attempted yet, so no lease runs out under a live
        worker.

        A delivery on its last attempt is never claimed with others (``_batch.claim``): it is
        claimed alone right before its POST, so a worker killed mid-batch cannot use up the
        last attempt of deliveries it never sent."""
        self.ensure_tables()
        ids = list(dict.fromkeys(int(i) for i in delivery_ids))
        states: dict[int, str] = {}
        buffer = DeliveredBuffer(self.db)
        started = time.monotonic()
        try:
            for start in range(0, len(ids), CLAIM_BATCH):
                if start and time.monotonic() - started > self.settings.lease / 2:
                    self._hand_back(ids[start:], states)  # never claimed: still queued
                    break
                chunk = ids[start:start + CLAIM_BATCH]
                claimed = _batch.claim(self.db, chunk, utcnow(), self.settings.lease)
                self._deliver_claimed(claimed, buffer, states)
                if len(claimed) < len(chunk):
                    # Left out: on its last attempt (still waiting), a retry not due yet, or
                    # taken elsewhere, or done.
                    left = _batch.left_out(self.db, [i for i in chunk if i not in states], utcnow())
                    self._not_due_yet(left.early)
                    if len(chunk) > 1:
                        self._deliver_alone(left.waiting, buffer, states, started)
        finally:
            self._flush(buffer)
        return [states.get(i, "skipped") for i in ids]

    def _not_due_yet(self, early: list[tuple[int, float]]) -> None:
        """Retries this task found before their time (``_batch.left_out``): never sent early.
        One due within ``EARLY_WINDOW`` is queued again for when it is due (its own delayed
        task, run a little early by a host whose clock is behind); one further off was named
        by a duplicate task (a sweep's, a hand-back) and is left to its own delayed task, or
        to the sweep, which queues a retry overdue by a lease."""
        queue = self.queue
        for delivery_id, remaining in early:
            if queue is None or remaining > EARLY_WINDOW:
                continue
            try:
                queue.deliver(delivery_id, delay=remaining)
            except Exception as exc:
                log.warning("could not queue webhook delivery %s for its retry (%r); the sweep queues it",
                            delivery_id, exc)

    def _deliver_claimed(self, claimed: list[WebhookDelivery], buffer: DeliveredBuffer, states: dict[int, str]) -> None:
        claimed_at = time.monotonic()
        circuits: dict[str, CircuitRow | None] = {}
        for index, delivery in enumerate(claimed):
            if index and time.monotonic() - claimed_at > self.settings.lease / 2:
                rest = [int(d.id) for d in claimed[index:]]
                _batch.give_back(self.db, rest, utcnow(), delivery.lease_until)  # one lease per claim
                self._hand_back(rest, states, stamped=True)
                return
            try:
                states[int(delivery.id)] = self._attempt(delivery, circuits, buffer)
                if buffer.due():
                    self._flush(buffer)
            except BaseException:
                # A failure of this side (the database, the queue) stops the batch: what it
                # has not attempted is given back, its attempt unused, and queued again, not
                # held ``running`` until the lease runs out. The one being attempted is left
                # as it stands (its retry may be recorded already). Ids never claimed are not
                # queued again (one the claim itself fails on would loop): the sweep finds them.
                self._give_back(claimed[index + 1:], states)
                raise

    def _deliver_alone(self, ids: list[int], buffer: DeliveredBuffer, states: dict[int, str], started: float) -> None:
        """Claim and attempt each of ``ids`` on its own, in turn (as ``deliver`` does)."""
        for index, delivery_id in enumerate(ids):
            if time.monotonic() - started > self.settings.lease / 2:
                self._hand_back(ids[index:], states)  # not claimed: still queued
                return
            self._deliver_claimed(_batch.claim(self.db, [delivery_id], utcnow(), self.settings.lease), buffer, states)

    def _give_back(self, rest: list[WebhookDelivery], states: dict[int, str]) -> None:
        """Give back claimed deliveries not attempted, and queue them again, on the way out
        of a failed batch."""
        if not rest:
            return
        ids = [int(d.id) for d in rest]
        try:
            _batch.give_back(self.db, ids, utcnow(), rest[0].lease_until)
        except Exception as exc:  # the database too: the claim runs out with its lease
            log.warning("could not give back %d claimed webhook deliveries (%r); the sweep queues them", len(ids), exc)
            return
        self._hand_back(ids, states, stamped=True)

    def _hand_back(self, ids: list[int], states: dict[int, str], *, stamped: bool = False) -> None:
        """Hand ``ids`` (queued, not claimed) back to the queue; the sweep finds any it refuses.

        Their ``updated_at`` moves to now first, unless ``give_back`` just did (``stamped``): the
        sweep counts a queued delivery older than the oldest task still waiting as lost, and
        this one's task is new."""
        for delivery_id in ids:
            states[delivery_id] = "queued"
        try:
            if not stamped:
                (
                    WebhookDelivery.update(updated_at=utcnow())
                    .where(WebhookDelivery.id.in_(ids) & (WebhookDelivery.state == "queued"))
                    .execute(self.db)
                )
            self._queue_ids(ids, 0.0)
        except Exception as exc:
            log.warning("could not queue %d webhook deliveries again (%r); the sweep queues them", len(ids), exc)

    def _flush(self, buffer: DeliveredBuffer) -> None:
        now = utcnow()
        for item in buffer.flush(now):
            _metrics.webhook_result(self, item.delivery, "delivered", now)
        for item in buffer.superseded:
            self._superseded(item.delivery, "delivered", item.status, None)

    def _superseded(self, delivery: WebhookDelivery, outcome: str, status: int | None, error: str | None) -> None:
        """Say that an outcome came after its claim's lease ran out, and was left to whoever
        holds the delivery now (at info: nothing is lost; the receiver may see it twice)."""
        log.info(
            "webhook %s attempt %d ended %s (%s) after its lease ran out; the delivery was queued "
            "again since, so its state is left to that claim", delivery.message_id, int(delivery.attempts),
            outcome, status if status is not None else error,
        )

    def _attempt(
        self,
        delivery: WebhookDelivery,
        circuits: dict[str, CircuitRow | None],
        buffer: DeliveredBuffer,
    ) -> str:
        """One claimed delivery: the circuit, the signature, the POST, its record."""
        delivery_id = int(delivery.id)
        now = utcnow()
        origin = str(delivery.origin)
        if origin not in circuits:
            circuits[origin] = self.breaker.row(origin)
        circuit = circuits[origin]
        wait = self.breaker.wait(origin, now, circuit)
        if wait > 0:
            # Paused, not failed: give the claim back without using up an attempt, and wait
            # for the probe.
            paused = WebhookDelivery.update(
                state="retry", attempts=WebhookDelivery.attempts - 1, lease_until=None,
                next_attempt_at=now + dt.timedelta(seconds=wait), updated_at=now,
            ).where(_batch.held(delivery)).execute(self.db)
            if not paused:
                # The lease ran out before this (a worker paused for that long): the delivery
                # is another claim's now, or queued again by the sweep.
                self._superseded(delivery, "paused", None, None)
                return "skipped"
            if self.queue is not None:
                self.queue.deliver(delivery_id, delay=wait + random.uniform(0, 1))
            _metrics.webhook_result(self, delivery, "paused", now)
            circuits.pop(origin, None)  # the probe may have been taken meanwhile: read again
            return "paused"
        # Read for each delivery, never kept for the batch: a secret rotated without grace (it
        # leaked) signs nothing more, and an uninstalled app is sent nothing more, from the next
        # delivery on, as for a delivery alone.
        secrets_ = self._secrets(int(delivery.__data__["installation"]), now)
        if not secrets_:
            # Uninstalled since the claim (secrets and deliveries go with the installation):
            # never send a webhook unsigned.
            return "skipped"
        if is_in_process_target(str(delivery.target_url)):
            return self._deliver_in_process(delivery)
        body = bytes(delivery.body)
        headers = sign(body, secrets_, message_id=str(delivery.message_id))
        headers.update(
            {
                "Content-Type": "application/json",
                "X-CZO-Event": str(delivery.event_name),
                "X-CZO-Event-Id": str(delivery.event_id),
                "X-CZO-Shop-Id": str(delivery.shop_id),
                "X-CZO-Delivery-Attempt": str(delivery.attempts),
            }
        )
        # Only a header-safe one: a correlation id set in code may be any text.
        correlation = clean_correlation_id(delivery.correlation_id)
        if correlation is not None:
            headers["X-CZO-Correlation-Id"] = correlation
        status: int | None = None
        excerpt: str | None = None
        error: str | None = None
        retry_after: float | None = None
        failed: Failure | None = None
        target = str(delivery.target_url)
        started = utcnow()
        clock = time.monotonic()
        try:
            checked = self.http.check(target, what="webhook target")
            response = self.http.request(
                "POST", checked, body=body, headers=headers,
                max_bytes=RESPONSE_EXCERPT, connect_timeout=self.settings.connect_timeout,
                read_timeout=self.settings.read_timeout, what="webhook target",
            )
            status = response.status
            excerpt = response.body[:RESPONSE_EXCERPT].decode("utf-8", "replace")
            if circuit is None and 200 <= status < 300 and int(delivery.attempts) < int(delivery.max_attempts):
                # The common case, recorded with others in one transaction: nothing for the
                # breaker to do (no failure on record for this target). Not a last attempt:
                # left ``running`` by a killed worker, the sweep would dead-letter it.
                buffer.add(Delivered(delivery, started, (time.monotonic() - clock) * 1000, status, excerpt))
                return "delivered"
            retry_after = _retry_after(response.headers.get("retry-after"), utcnow())
        except UnsafeURLError as exc:
            failed = failure(exc, target_url=target, secrets=secrets_)
            # The URL is refused on our side: not the target's failure, so no circuit count.
            return self._record(delivery, started, None, None, failed.error, final=True, target_failed=False,
                                failed=failed)
        except (TimeoutError, OSError, urllib3.exceptions.HTTPError) as exc:
            failed = failure(exc, target_url=target, secrets=secrets_)
            error = failed.error
        except Exception as exc:
            # Not the network: a fault on this side (a bug, a resource running out). Retried
            # like a network error, so it ends dead with its traceback rather than stuck
            # ``running``, but not counted against the target's circuit.
            failed = failure(exc, target_url=target, secrets=secrets_)
            return self._record(delivery, started, None, None, failed.error, final=False, target_failed=False,
                                circuit=circuit, failed=failed)
        # Anything but a plain success is recorded at once, after what the buffer holds, and
        # the breaker hears it: this target's circuit is read again for the next delivery.
        self._flush(buffer)
        circuits.pop(origin, None)
        if status is not None and 200 <= status < 300:
            return self._record(delivery, started, status, excerpt, None, final=False, delivered=True, circuit=circuit)
        retryable = status is None or status >= 500 or status in (408, 429)
        if not retryable:
            error = f"HTTP {status}: not retried (only network errors, 5xx, 408 and 429 are)"
            return self._record(delivery, started, status, excerpt, error, final=True, circuit=circuit)
        return self._record(
            delivery, started, status, excerpt, error or f"HTTP {status}", final=False,
            retry_after=retry_after, circuit=circuit, failed=failed,
        )

    def _deliver_in_process(self, delivery: WebhookDelivery) -> str:
        """The transport of an in-process app: its handler, called here with the delivery's
        body (the payload a remote app is POSTed), instead of a POST. The handler and the
        record of its success share one transaction, so a worker killed in between leaves
        neither (the delivery stays ``running``, and the sweep hands it out again); an
        exception rolls the handler's writes back and is a failed attempt, retried on the
        schedule, with its traceback kept like a failed POST's."""
        target = str(delivery.target_url)
        installation_id = int(delivery.__data__["installation"])
        started = utcnow()
        try:
            with self.db.atomic() as transaction:
                row = (
                    AppInstallation.select(AppInstallation.permissions)
                    .where(AppInstallation.id == installation_id)
                    .tuples()
                    .first(self.db)
                )
                if row is None:
                    return "skipped"  # uninstalled since the claim
                granted = frozenset((r, a) for r, _, a in (item.partition(":") for item in json.loads(row[0])))
                self.apps.in_process.call(
                    target=target, body=bytes(delivery.body), installation_id=installation_id,
                    shop_id=int(delivery.shop_id), permissions=granted, message_id=str(delivery.message_id),
                    attempt=int(delivery.attempts), correlation_id=delivery.correlation_id,
                )
                state = self._record(
                    delivery, started, None, None, None, final=False, delivered=True, target_failed=False,
                    history=False,
                )
                if state == "skipped":
                    # Uninstalled during the attempt, or the delivery's lease ran out and another
                    # claim holds it (and runs the handler itself): this run's writes go.
                    transaction.rollback()
                return state
        except Exception as exc:
            # The app's own failure, not a target's: no circuit counts it, and the retries,
            # the dead letter and its traceback are those of a failed POST.
            failed = failure(exc, target_url=target)
            return self._record(delivery, started, None, None, failed.error, final=False, target_failed=False,
                                failed=failed)

    def _record(
        self,
        delivery: WebhookDelivery,
        started: dt.datetime,
        status: int | None,
        excerpt: str | None,
        error: str | None,
        *,
        final: bool,
        delivered: bool = False,
        retry_after: float | None = None,
        target_failed: bool = True,
        circuit: tuple[int, Any] | None = None,
        failed: Failure | None = None,
        history: bool = True,
    ) -> str:
        """Record the outcome of an attempt under its claim's lease (``delivery.lease_until``),
        and the attempt; returns the state it ends in, or ``skipped`` when the delivery is
        gone, or another claim's now (then the attempt is kept as history, unless ``history``
        is false, and nothing else is changed)."""
        now = utcnow()
        duration = (now - started).total_seconds() * 1000
        attempt = int(delivery.attempts)
        exhausted = attempt >= int(delivery.max_attempts)
        if delivered:
            state, delay = "delivered", None
        elif final or exhausted:
            state, delay = "dead", None
        else:
            base = self.settings.schedule[min(attempt - 1, len(self.settings.schedule) - 1)]
            delay = retry_after if retry_after is not None else random.uniform(base * 0.8, base * 1.2)
            state = "retry"
        update_info, update = self._template(
            WebhookDelivery, "record",
            lambda i: WebhookDelivery.update(
                {
                    WebhookDelivery.state: Slot("state"),
                    WebhookDelivery.last_status: Slot("status"),
                    WebhookDelivery.last_error: Slot("error"),
                    WebhookDelivery.last_error_detail: Slot("detail"),
                    WebhookDelivery.lease_until: None,
                    WebhookDelivery.next_attempt_at: Slot("next", WebhookDelivery.next_attempt_at.db_value),
                    WebhookDelivery.delivered_at: Slot("delivered", WebhookDelivery.delivered_at.db_value),
                    WebhookDelivery.updated_at: Slot("now", WebhookDelivery.updated_at.db_value),
                }
            ).where(
                (WebhookDelivery.id == Slot("id"))
                & WebhookDelivery.state.in_(_batch.HELD)
                & (WebhookDelivery.lease_until == Slot("lease", WebhookDelivery.lease_until.db_value))
            ),
        )
        insert_info, insert = self._template(
            WebhookAttempt, "attempt",
            lambda i: WebhookAttempt.insert(
                {
                    WebhookAttempt.delivery: Slot("delivery"),
                    WebhookAttempt.attempt: Slot("attempt"),
                    WebhookAttempt.at: Slot("at", WebhookAttempt.at.db_value),
                    WebhookAttempt.status: Slot("status"),
                    WebhookAttempt.duration_ms: Slot("duration"),
                    WebhookAttempt.response: Slot("response"),
                    WebhookAttempt.error: Slot("error"),
                    WebhookAttempt.error_detail: Slot("detail"),
                }
            ),
        )
        short_error = (error or None) and error[:ERROR_LIMIT]
        detail = failed.detail if failed is not None else None
        with self.db.atomic():
            updated = update_info.execute(
                update,
                {
                    "state": state, "status": status, "error": short_error, "detail": detail,
                    "next": now + dt.timedelta(seconds=delay) if delay is not None else None,
                    "delivered": now if delivered else None, "now": now, "id": int(delivery.id),
                    "lease": delivery.lease_until,
                },
            ).rowcount
            # Not updated: the app was uninstalled while this attempt was in flight, taking the
            # delivery with it (nothing to record: the attempt row would have no delivery), or
            # the claim's lease ran out and the sweep queued the delivery again, maybe for
            # another worker's claim: its state is that claim's to record, not this one's.
            superseded = not updated and bool(_batch.existing(self.db, [int(delivery.id)]))
            if not updated and not (superseded and history):
                if superseded:
                    self._superseded(delivery, state, status, short_error)
                return "skipped"
            insert_info.execute(
                insert,
                {
                    "delivery": int(delivery.id), "attempt": attempt, "at": started, "status": status,
                    "duration": round(duration, 2), "response": excerpt, "error": short_error,
                    "detail": detail,
                },
            )
        if superseded:
            # The attempt went out and is kept in the history; the outcome is left to the
            # claim that holds the delivery now (no retry queued, no breaker count, no metric).
            self._superseded(delivery, state, status, short_error)
            return "skipped"
        if target_failed and (status is not None or error is not None):
            answered = status is not None and status < 500 and status not in (408, 429)
            self.breaker.result(str(delivery.origin), delivered or answered, now, circuit)
        if state == "retry" and self.queue is not None and delay is not None:
            self.queue.deliver(int(delivery.id), delay=delay)
        if state == "dead" or failed is not None:
            # Without its query string (a target may carry a token there), and with the
            # traceback of an attempt that raised, scrubbed alike (TracebackScrubber).
            level = logging.ERROR if state == "dead" else logging.WARNING
            outcome = (
                f"is dead after {attempt} attempt(s)" if state == "dead"
                else f"attempt {attempt}/{int(delivery.max_attempts)} failed, next in {delay or 0:.0f}s"
            )
            log.log(
                level, "webhook %s to %s %s: %s", delivery.message_id, shown_url(str(delivery.target_url)),
                outcome, short_error, exc_info=failed.exc if failed is not None else None,
                extra={"czo_traceback": detail} if detail is not None else None,
            )
        _metrics.webhook_result(self, delivery, state, now)
        return state


def _origin(target_url: str) -> str:
    """What a target's circuit is keyed by: its origin, or an in-process app's ``czo-app://<id>``."""
    if is_in_process_target(target_url):
        return target_url.rsplit("/", 1)[0]
    return parse_target(target_url).origin


def _no_marks(ids: list[Any]) -> None:
    """A delivery handed to the queue stays ``queued`` until a worker claims it: no mark."""


def payload_of(delivery: WebhookDelivery) -> Mapping[str, Any]:
    """The JSON body of a delivery, decoded (for inspection and tests)."""
    decoded: Mapping[str, Any] = msgspec.json.decode(bytes(delivery.body))
    return decoded
