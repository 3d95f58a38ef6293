"""Recovery of webhook deliveries a crash or a lost queue left behind, on the worker's sweep:
``running`` past the lease, ``queued`` whose task was lost, retries past due. A part of
``WebhookDispatcher`` kept in a module of its own."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

import peewee

from czo_kit.apps._webhook_models import NOT_DELIVERED_TERM, WebhookDelivery, WebhookSettings
from czo_kit.db._claim import SWEEP_BUDGET, claim, drain, lost_cut, release
from czo_kit.db.model import utcnow

__all__ = ["SWEEP_PRUNE_BATCHES", "WebhookSweep"]

log = logging.getLogger("czo_kit.webhooks")

SWEEP_PRUNE_BATCHES = 20
"""Batches of delivered deliveries each sweep prunes at most (20 x 500 = 10,000)."""


class WebhookSweep:
    """The sweep of ``WebhookDispatcher`` (which provides what is declared here)."""

    db: peewee.Database
    settings: WebhookSettings
    queue: Any
    apps: Any

    if TYPE_CHECKING:  # provided by the dispatcher and WebhookOperations: no stub at run time

        def ensure_tables(self, *, required: bool = True) -> bool: ...

        def prune(self, *, older_than: float | None = None, batch: int = 500, max_batches: int | None = None) -> int: ...

    def sweep(self) -> dict[str, int]:
        """Re-queue deliveries a crash left behind (``running`` past the lease, queued and lost),
        then prune delivered ones past the retention period, a few batches per sweep.

        Every query here reads the live partial index (``NOT_DELIVERED_TERM`` repeats its
        condition for SQLite): the sweep costs the same however much history is kept."""
        self.sweep_unfinished = False  # until this pass stops at its budget: not if it fails
        self.ensure_tables()
        now = utcnow()
        stale = now - dt.timedelta(seconds=self.settings.lease)
        # A delivery whose worker kept dying on it has used its attempts: it is dead, or a
        # poison delivery would be retried for ever. It keeps the lease it died under: a
        # worker that was only slow still records its outcome then (``_record``), the true
        # one (delivered, say) over this guess; nothing else can claim a dead delivery.
        exhausted = (
            WebhookDelivery.update(
                state="dead", updated_at=now,
                last_error="the worker stopped during the last attempt (lease expired)",
            )
            .where(
                NOT_DELIVERED_TERM
                & (WebhookDelivery.state == "running")
                & (WebhookDelivery.lease_until < now)
                & (WebhookDelivery.attempts >= WebhookDelivery.max_attempts)
            )
            .execute(self.db)
        )
        # In bounded claims, as Outbox.sweep (``czo_kit.db._claim``): several workers sweeping
        # at once share the pass. A queued one whose task is older than a lease is queued
        # again even while the queue has a backlog (it may have been lost with a killed
        # worker); the claim moves its timestamp, so at most once per lease, and a duplicate
        # task finds the delivery claimed.
        deadline = time.monotonic() + SWEEP_BUDGET
        recovered, done_recovered = self._requeue(
            NOT_DELIVERED_TERM & (WebhookDelivery.state == "running") & (WebhookDelivery.lease_until < now),
            {WebhookDelivery.state: "queued", WebhookDelivery.lease_until: None},
            WebhookDelivery.updated_at, stale, deadline,
        )
        lost_before = lost_cut(self.queue, stale)  # not what waits behind a backlog (Outbox._sweep)
        lost, done_lost = self._requeue(
            NOT_DELIVERED_TERM & (WebhookDelivery.state == "queued") & (WebhookDelivery.updated_at < lost_before),
            {}, WebhookDelivery.updated_at, stale, deadline, order=WebhookDelivery.updated_at,
        )
        late, done_late = self._requeue(
            NOT_DELIVERED_TERM & (WebhookDelivery.state == "retry") & (WebhookDelivery.next_attempt_at < lost_before),
            {}, WebhookDelivery.next_attempt_at, stale, deadline,
        )
        self.sweep_unfinished = not (done_recovered and done_lost and done_late)
        counts = {"recovered": recovered, "requeued": lost + late, "dead": int(exhausted)}
        if recovered or lost or late:
            log.warning("webhook sweep re-queued %s", counts)
        if exhausted:  # as a delivery that fails its last attempt is (``_attempt``): said, not silent
            log.error(
                "%d webhook deliver%s dead: the worker stopped during the last attempt (lease expired); "
                "`czo-kit webhooks dead` lists them", exhausted, "y is" if exhausted == 1 else "ies are",
            )
        # Retention on the sweep's beat, a bounded amount each time: a large backlog (a first
        # run after an upgrade) goes over several sweeps instead of holding this one up.
        counts["pruned"] = self.prune(max_batches=SWEEP_PRUNE_BATCHES)
        if counts["pruned"]:
            log.info("pruned %d delivered webhook deliveries older than %gs", counts["pruned"], self.settings.retention)
        # The app registry's leftovers (installs whose process died, old idempotency keys)
        # are cleared on the same beat: the worker runs this sweep.
        cleared = self.apps.sweep()
        if cleared["abandoned_installs"]:
            log.warning("removed %d install(s) abandoned mid-way", cleared["abandoned_installs"])
        return {**counts, **cleared}

    sweep_unfinished = False
    """Whether the last sweep stopped at its time budget with more to do (see ``Sweeper``)."""

    def _requeue(
        self, due: Any, changes: dict[Any, Any], column: peewee.Field, stale: dt.datetime, deadline: float,
        *, order: peewee.Field | None = None,
    ) -> tuple[int, bool]:
        """Claim deliveries matching ``due`` a batch at a time (``changes``, and ``column``
        moved to now so that ``due`` no longer matches) and queue each batch in one call."""
        queue = self.queue
        claimed = [utcnow()]

        def take() -> list[tuple[Any, ...]]:
            at = claimed[0] = utcnow()
            return claim(
                self.db, WebhookDelivery, WebhookDelivery.id, due,
                {**changes, column: at, WebhookDelivery.updated_at: at}, (WebhookDelivery.id,), order=order,
            )

        def hand(batch: list[tuple[Any, ...]]) -> None:
            ids = [int(row[0]) for row in batch]
            if queue is None:
                return  # no queue configured: a worker's sweep hands them out (after a lease)
            try:
                many = getattr(queue, "deliver_many", None)
                if many is not None:
                    many(ids, delay=0)  # tasks of up to 64 deliveries
                else:
                    for delivery_id in ids:
                        queue.deliver(delivery_id, delay=0)
            except Exception:
                try:
                    release(self.db, WebhookDelivery, WebhookDelivery.id, ids, column, claimed[0],
                            stale - dt.timedelta(seconds=1))
                except Exception:  # the database too: the claim runs out with its lease
                    log.debug("could not give back a sweep's claim", exc_info=True)
                raise

        return drain(take, hand, deadline)
