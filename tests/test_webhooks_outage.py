"""Webhook deliveries while the queue's Redis hangs: emitting does not wait for it, nothing is
lost, and the deliveries go out once it answers again.

Each test runs a private ``redis-server`` that it pauses (SIGSTOP).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apps_support import OWNER, Receiver, app_kit, app_settings, manifest
from czo_kit import Kit
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until
from test_cache_redis import PrivateRedis, redis_server_binary  # noqa: F401
from test_events_outage import paused, sweeps_in_thirty_beats

pytestmark = pytest.mark.redis

SettingsFor = Callable[..., Settings]
ORDER = {"shop_id": 1, "id": 7, "total": 1999}
HANG_GUARD = 60.0
"""Seconds after which a wait means "it never happened". Before the fix, the emitting thread
waited on the paused Redis for as long as it stayed paused (no socket timeout)."""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def server(redis_server_binary: str) -> Iterator[PrivateRedis]:  # noqa: F811
    with PrivateRedis(redis_server_binary) as server:  # resumed before it is killed
        yield server


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def settings(settings_for: SettingsFor, db_url: str, tmp_path: Path, server: PrivateRedis, **changes: Any) -> Settings:
    # The client waits an hour for an answer (redis-py's default is 5 s, then retries): the
    # paused server hangs longer than any test lasts, so nothing returns by timing out.
    return app_settings(
        settings_for, db_url, str(tmp_path), queue_url=server.url + "?socket_timeout=3600",
        queue_name=f"t{uuid.uuid4().hex[:12]}", events_shutdown_timeout=1.0, **changes,
    )


def threads_queueing(kit: Kit) -> dict[int, list[str]]:
    """For each delivery id, the names of the threads that handed it to the queue, in order,
    whether one at a time (``deliver``) or grouped in one task (``deliver_many``)."""
    assert kit.webhooks.queue is not None
    queue = kit.webhooks.queue
    one, many = queue.deliver, queue.deliver_many
    seen: dict[int, list[str]] = {}
    grouping = threading.local()  # deliver_many hands a group of one to deliver: count it once

    def note(ids: list[int]) -> None:
        for delivery_id in ids:
            seen.setdefault(int(delivery_id), []).append(threading.current_thread().name)

    def deliver(delivery_id: int, *, delay: float) -> None:
        if not getattr(grouping, "active", False):
            note([delivery_id])
        one(delivery_id, delay=delay)

    def deliver_many(delivery_ids: list[int], *, delay: float) -> None:
        note(delivery_ids)
        grouping.active = True
        try:
            many(delivery_ids, delay=delay)
        finally:
            grouping.active = False

    queue.deliver = deliver  # type: ignore[method-assign]
    queue.deliver_many = deliver_many  # type: ignore[method-assign]
    return seen


def delivered_ids(kit: Kit) -> set[str]:
    return {d.event_id for d in kit.webhooks.deliveries(limit=1000) if d.state == "delivered"}


def test_emitting_does_not_wait_for_a_hung_queue_and_delivers_once_it_answers(
    server: PrivateRedis, db_url: str, tmp_path: Path, settings_for: SettingsFor, receiver: Receiver
) -> None:
    with app_kit(settings(settings_for, db_url, tmp_path, server)) as kit:
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url))
        assert kit.queue is not None and server.process is not None
        queueing = threads_queueing(kit)
        # The queue's connection is open and has answered once.
        first = kit.events.emit_async("order.created", dict(ORDER, id=1)).event_id
        assert wait_until(lambda: kit.queue.pending_count() == 2, timeout=HANG_GUARD)  # event + webhook
        pid = server.process.pid
        server.pause()
        emitted: list[str] = []
        try:
            def emit() -> None:
                emitted.append(kit.events.emit_async("order.created", dict(ORDER, id=2)).event_id)
                emitted.append(kit.events.emit("order.created", dict(ORDER, id=3)).event_id)
                with kit.db.atomic():
                    emitted.append(kit.events.emit_async("order.created", dict(ORDER, id=4)).event_id)

            caller = threading.Thread(target=emit, name="emitter", daemon=True)
            caller.start()
            caller.join(HANG_GUARD)
            assert not caller.is_alive(), "emitting is still waiting for the paused Redis"
            assert paused(pid), "the calls returned only because the server came back"
            assert len(emitted) == 3
            states = {d.event_id: d.state for d in kit.webhooks.deliveries()}
            assert [states[e] for e in emitted] == ["queued"] * 3  # recorded, waiting for the queue
        finally:
            server.resume()
        with kit.consumer(workers=2, sweep_interval=0.5):
            assert wait_until(lambda: delivered_ids(kit) == {first, *emitted}, timeout=HANG_GUARD), (
                kit.webhooks.deliveries()
            )
        deliveries = [d.id for d in kit.webhooks.deliveries(limit=1000)]
    assert len(deliveries) == 4
    assert sorted(p.json()["data"]["id"] for p in receiver.posts("/hook")) == [1, 2, 3, 4]
    # Each emit's delivery reached the queue first from the relay's thread, never the caller's
    # (the relay may group several deliveries in one task).
    assert sorted(queueing) == sorted(deliveries), queueing
    assert [queueing[d][0] for d in deliveries] == ["czo-webhook-relay"] * 4, queueing


def test_closing_during_a_hang_keeps_the_deadline_and_the_sweep_delivers_the_rest(
    server: PrivateRedis, db_url: str, tmp_path: Path, settings_for: SettingsFor, receiver: Receiver
) -> None:
    # A short lease: the sweep takes a queued delivery whose hand-over was lost after it.
    options = settings(settings_for, db_url, tmp_path, server, webhooks_lease=1.0)
    with app_kit(options) as kit:
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url))
        assert server.process is not None
        kit.events.emit_async("order.created", dict(ORDER, id=1))
        assert kit.queue is not None
        assert wait_until(lambda: kit.queue.pending_count() == 2, timeout=HANG_GUARD)  # event + webhook
        pid = server.process.pid
        server.pause()
        ids: list[str] = []
        try:
            def emit() -> None:
                ids.extend(kit.events.emit_async("order.created", dict(ORDER, id=n)).event_id for n in range(2, 12))

            caller = threading.Thread(target=emit, name="emitter", daemon=True)
            caller.start()
            caller.join(HANG_GUARD)
            assert not caller.is_alive(), "emitting is still waiting for the paused Redis"
            closer = threading.Thread(target=kit.close, name="closer", daemon=True)
            closer.start()
            closer.join(HANG_GUARD)
            assert not closer.is_alive(), "kit.close() is still waiting for the paused Redis"
            assert paused(pid), "close() returned only because the server came back"
        finally:
            server.resume()
        with Kit(options) as worker, worker.consumer(workers=2, sweep_interval=0.2):
            assert wait_until(lambda: set(ids) <= delivered_ids(worker), timeout=HANG_GUARD), (
                worker.webhooks.deliveries()
            )
    ids_posted = [p.json()["data"]["id"] for p in receiver.posts("/hook")]
    assert sorted(set(ids_posted)) == list(range(1, 12))


def test_a_webhook_sweep_that_fails_midway_through_a_backlog_waits_for_its_interval(
    server: PrivateRedis, sqlite_url: str, tmp_path: Path, settings_for: SettingsFor, receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the event sweep (test_events_outage): a webhook sweep that stopped at its budget is
    followed at once by the next, but one that fails while the queue's Redis is down waits
    out the sweeper's interval, instead of claiming and giving back a batch in a tight loop."""
    import datetime as dt

    import czo_kit.apps._webhook_sweep as sweep_module
    from czo_kit.apps._webhook_models import WebhookDelivery
    from czo_kit.db._claim import SWEEP_BATCH

    with app_kit(settings(settings_for, sqlite_url, tmp_path, server)) as kit:
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url))
        kit.events.emit("order.created", dict(ORDER, id=1))
        (first,) = WebhookDelivery.select().dicts().execute(kit.db)
        long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
        WebhookDelivery.insert_many([
            {**{k: v for k, v in first.items() if k != "id"}, "message_id": f"msg_backlog_{n}", "state": "queued",
             "updated_at": long_ago}
            for n in range(3 * SWEEP_BATCH)
        ]).execute(kit.db)  # queued an hour ago, their tasks lost with a wiped queue
        monkeypatch.setattr(sweep_module, "SWEEP_BUDGET", 0.0)  # each pass stops after a batch
        kit.webhooks.sweep()
        assert kit.webhooks.sweep_unfinished  # more to do: the next pass would follow at once
        server.kill()  # refused at once: each pass fails fast

        sweeps, beats = sweeps_in_thirty_beats(kit, kit.webhooks, monkeypatch, kit.webhooks)
        assert sweeps == 1, f"{sweeps} sweeps in {beats} heartbeats, with a 3600 s interval"
