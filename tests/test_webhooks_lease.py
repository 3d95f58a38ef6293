"""A claim's lease fences what its worker writes afterwards, and a retry is never sent before
its time: a worker whose lease ran out (paused, slow) and whose delivery the sweep queued
again and another worker claimed leaves that worker's record alone; a duplicate task that
names a delivery waiting for its retry does not send it early."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

import inprocess_probe as probe
from apps_support import (
    OWNER,
    Receiver,
    Reply,
    Request,
    app_kit,
    app_settings,
    drop_tables,
    raw_rows,
    recorded_deliveries,
    wait_for,
)
from czo_kit import Kit
from czo_kit.apps import _webhook_batch
from czo_kit.apps._webhook_batch import Delivered, DeliveredBuffer
from czo_kit.apps.webhooks import WebhookDelivery
from czo_kit.db.model import utcnow
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]


def taken_over(kit: Kit, delivery_id: int) -> tuple[WebhookDelivery, WebhookDelivery]:
    """A claim whose lease runs out, then the sweep and another worker's claim: the stale
    claim and the one that holds the delivery now."""
    [stale] = _webhook_batch.claim(kit.db, [delivery_id], utcnow(), 0.2)

    def expired() -> bool:
        lease = kit.webhooks.delivery(delivery_id).lease_until
        return lease is not None and lease < utcnow()

    wait_for(expired, what="the first claim's lease to run out")
    assert kit.webhooks.sweep()["recovered"] == 1
    [other] = _webhook_batch.claim(kit.db, [delivery_id], utcnow(), 60.0)
    return stale, other


def still_held(kit: Kit, other: WebhookDelivery) -> None:
    """The delivery is still the other claim's: running under its lease, its attempt counted."""
    row = kit.webhooks.delivery(int(other.id))
    assert (row.state, row.attempts, row.lease_until) == ("running", 2, other.lease_until)
    assert row.delivered_at is None and row.next_attempt_at is None


@pytest.mark.parametrize("status", [200, 503, 410])
def test_a_late_outcome_leaves_the_claim_that_took_the_delivery_over_alone(
    db_url: str, settings_for: SettingsFor, tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    # 200: a plain success, recorded by the batched flush; 503: a retry; 410: dead at once.
    with Receiver(lambda request: Reply(status)) as receiver, app_kit(
        app_settings(settings_for, db_url, str(tmp_path))
    ) as kit:
        [delivery_id] = recorded_deliveries(kit, receiver.url, 1)
        stale, other = taken_over(kit, delivery_id)
        caplog.set_level("INFO", logger="czo_kit.webhooks")
        buffer = DeliveredBuffer(kit.db)
        states: dict[int, str] = {}
        kit.webhooks._deliver_claimed([stale], buffer, states)
        kit.webhooks._flush(buffer)
        assert len(receiver.posts("/hook")) == 1  # the POST did go out
        still_held(kit, other)
        assert kit.webhooks.sweep()["recovered"] == 0  # nothing for the sweep: its lease holds
        # The attempt is history (what the receiver was sent, and answered), not the state.
        assert [(a["attempt"], a["status"]) for a in raw_rows(kit, "czo_webhook_attempt")] == [(1, status)]
        assert "after its lease ran out" in caplog.text
        # The claim that holds it records its own outcome.
        kit.webhooks._deliver_claimed([other], buffer, states)
        kit.webhooks._flush(buffer)
        row = kit.webhooks.delivery(delivery_id)
        assert row.state == {200: "delivered", 503: "retry", 410: "dead"}[status]
        assert sorted(a["attempt"] for a in raw_rows(kit, "czo_webhook_attempt")) == [1, 2]


def test_a_flush_records_each_success_under_its_own_claims_lease(
    db_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    # One buffer spans two claims (two leases): the success of the one taken over since is
    # kept as history only; the other is recorded delivered, in the same flush.
    with Receiver() as receiver, app_kit(app_settings(settings_for, db_url, str(tmp_path))) as kit:
        first, second = recorded_deliveries(kit, receiver.url, 2)
        stale, other = taken_over(kit, first)
        [mine] = _webhook_batch.claim(kit.db, [second], utcnow(), 60.0)
        assert mine.lease_until != other.lease_until
        buffer = DeliveredBuffer(kit.db)
        for claimed in (stale, mine):
            buffer.add(Delivered(claimed, utcnow(), 1.0, 200, "ok"))
        recorded = buffer.flush(utcnow())
        assert [int(item.delivery.id) for item in recorded] == [second]
        assert [int(item.delivery.id) for item in buffer.superseded] == [first]
        still_held(kit, other)
        assert kit.webhooks.delivery(second).state == "delivered"
        assert sorted(a["delivery_id"] for a in raw_rows(kit, "czo_webhook_attempt")) == [first, second]


def test_a_pause_after_the_lease_ran_out_leaves_the_new_claim_alone(
    db_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    with Receiver() as receiver, app_kit(app_settings(settings_for, db_url, str(tmp_path))) as kit:
        [delivery_id] = recorded_deliveries(kit, receiver.url, 1)
        stale, other = taken_over(kit, delivery_id)
        origin = str(stale.origin)
        # The target's circuit opened meanwhile: the stale worker would hand the delivery back
        # (one attempt given back, a retry after the cool-down) over the other worker's claim.
        now = utcnow()
        kit.webhooks.breaker.result(origin, False, now, None)
        for _ in range(kit.webhooks.settings.breaker_threshold):
            kit.webhooks.breaker.result(origin, False, now, kit.webhooks.breaker.row(origin))
        assert kit.webhooks.breaker.wait(origin, utcnow(), kit.webhooks.breaker.row(origin)) > 0
        states: dict[int, str] = {}
        kit.webhooks._deliver_claimed([stale], DeliveredBuffer(kit.db), states)
        assert states == {delivery_id: "skipped"}
        assert receiver.posts("/hook") == []
        still_held(kit, other)


def test_an_in_process_run_after_the_lease_ran_out_is_rolled_back(
    db_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    # The handler and the record of its success share a transaction: superseded, the record
    # fails its fence and the handler's writes go with it (the claim that holds the delivery
    # runs the handler itself).
    settings = app_settings(settings_for, db_url, str(tmp_path))
    drop_tables(settings.database_url, "probe_row")
    probe.CALLS.clear()
    with app_kit(settings, probe) as kit:
        kit.apps.install(shop_id=1, installer_id=OWNER, app_id="probe")
        kit.events.emit_async("order.created", {"shop_id": 1, "id": 7, "total": 1999, "currency": "EUR"})
        kit.webhooks.flush()
        assert kit.queue is not None
        kit.queue.flush()
        [delivery_id] = [int(d.id) for d in kit.webhooks.deliveries()]
        stale, other = taken_over(kit, delivery_id)
        states: dict[int, str] = {}
        kit.webhooks._deliver_claimed([stale], DeliveredBuffer(kit.db), states)
        assert len(probe.CALLS) == 1 and states == {delivery_id: "skipped"}
        assert raw_rows(kit, "probe_row") == [] and raw_rows(kit, "czo_webhook_attempt") == []
        still_held(kit, other)
        kit.webhooks._deliver_claimed([other], DeliveredBuffer(kit.db), states)
        assert states == {delivery_id: "delivered"}
        assert [r["attempt"] for r in raw_rows(kit, "probe_row")] == [2]
    probe.CALLS.clear()


def retry_in(kit: Kit, delivery_id: int, seconds: float) -> dt.datetime:
    """Make ``delivery_id`` wait for a retry ``seconds`` from now, as a failed attempt leaves it."""
    due = utcnow() + dt.timedelta(seconds=seconds)
    WebhookDelivery.update(state="retry", attempts=1, next_attempt_at=due).where(
        WebhookDelivery.id == delivery_id
    ).execute(kit.db)
    return due


def test_a_duplicate_task_never_sends_a_retry_before_its_time(
    db_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    with Receiver() as receiver, app_kit(app_settings(settings_for, db_url, str(tmp_path))) as kit:
        first, second = recorded_deliveries(kit, receiver.url, 2)
        due = retry_in(kit, second, 3600)  # a Retry-After of an hour
        assert kit.webhooks.deliver(second) == "skipped"
        assert kit.webhooks.deliver_many([first, second]) == ["delivered", "skipped"]
        assert [p.json()["data"]["id"] for p in receiver.posts("/hook")] == [0]
        row = kit.webhooks.delivery(second)
        assert (row.state, row.attempts, row.next_attempt_at) == ("retry", 1, due)


def test_a_retry_task_a_little_early_still_sends_it(db_url: str, settings_for: SettingsFor, tmp_path: Path) -> None:
    # The retry's own delayed task, run by a host whose clock is a second behind the one that
    # scheduled it, is not turned away.
    with Receiver() as receiver, app_kit(app_settings(settings_for, db_url, str(tmp_path))) as kit:
        [delivery_id] = recorded_deliveries(kit, receiver.url, 1)
        retry_in(kit, delivery_id, 1.0)
        assert kit.webhooks.deliver(delivery_id) == "delivered"
        assert kit.webhooks.delivery(delivery_id).attempts == 2


def test_a_retry_task_run_early_is_queued_again_for_its_time(
    db_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    # Early by more than a clock difference (a host far behind, a duplicate just before the
    # time): queued again for when it is due, sent then, never before, and not dropped.
    posted: list[Request] = []
    with Receiver(lambda request: posted.append(request) or Reply()) as receiver, app_kit(
        app_settings(settings_for, db_url, str(tmp_path))
    ) as kit:
        [delivery_id] = recorded_deliveries(kit, receiver.url, 1)
        due = retry_in(kit, delivery_id, 4.0)
        assert kit.queue is not None
        kit.webhooks.queue.deliver(delivery_id, delay=0)  # type: ignore[union-attr]
        with kit.consumer(workers=1, sweep_interval=600):
            wait_for(lambda: kit.webhooks.delivery(delivery_id).state == "delivered", what="the retry")
        assert len(posted) == 1
        assert posted[0].at >= (due - dt.timedelta(seconds=2.0)).timestamp()  # _webhook_batch.DUE_SLACK


@pytest.mark.parametrize("status", [200, 503])
def test_a_slow_last_attempt_dead_lettered_by_the_sweep_still_records_its_outcome(
    db_url: str, settings_for: SettingsFor, tmp_path: Path, status: int
) -> None:
    # The sweep takes a last attempt whose lease ran out for a worker that died: dead. A worker
    # that was only slow then records what really happened, not "stopped" (nobody else can
    # hold a dead delivery): delivered, or dead with the target's answer.
    with Receiver(lambda request: Reply(status)) as receiver, app_kit(
        app_settings(settings_for, db_url, str(tmp_path))
    ) as kit:
        [delivery_id] = recorded_deliveries(kit, receiver.url, 1)
        WebhookDelivery.update(attempts=WebhookDelivery.max_attempts - 1).where(
            WebhookDelivery.id == delivery_id
        ).execute(kit.db)
        [stale] = _webhook_batch.claim(kit.db, [delivery_id], utcnow(), 0.2)
        wait_for(lambda: kit.webhooks.delivery(delivery_id).lease_until < utcnow(), what="the lease to run out")
        assert kit.webhooks.sweep()["dead"] == 1
        states: dict[int, str] = {}
        kit.webhooks._deliver_claimed([stale], DeliveredBuffer(kit.db), states)
        row = kit.webhooks.delivery(delivery_id)
        assert (states[delivery_id], row.state, row.last_status) == (
            {200: "delivered", 503: "dead"}[status], {200: "delivered", 503: "dead"}[status], status
        )
        assert row.lease_until is None and "lease expired" not in (row.last_error or "")
        assert [a["status"] for a in raw_rows(kit, "czo_webhook_attempt")] == [status]
