"""Resources around async events: pooled connections come back after consumers stop, and
two kits on different databases in one process do not trip over each other's bindings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from czo_kit import Kit
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until


@pytest.mark.postgres
def test_a_stopped_consumer_gives_its_connections_back(
    pg_url: str, settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_for(
        pg_url, queue_url=f"sqlite:///{tmp_path / 'q.sqlite3'}", db_pool_size=4, plugins=(), events_retry_base=0.2
    )
    with Kit(settings) as kit:
        assert kit.outbox is not None
        kit.outbox.ensure_tables()
        seen: list[int] = []
        kit.events.on("test.pool.ping", lambda payload, ctx: seen.append(payload["n"]), id="pool-ping")
        # More consumers, one after another, than the pool has connections: each must return
        # what its workers and sweeper took.
        for round_number in range(4):
            with kit.consumer(workers=3, sweep_interval=0.1):
                kit.events.emit_async("test.pool.ping", {"n": round_number})
                assert wait_until(lambda: round_number in seen, timeout=20), f"round {round_number} stalled"
            in_use: dict[Any, Any] = getattr(kit.db, "_in_use")
            kit.db.close()  # this (test) thread's own connection
            assert wait_until(lambda: len(in_use) == 0, timeout=10), f"{len(in_use)} connection(s) still out"
        assert seen == [0, 1, 2, 3]


@pytest.mark.postgres
def test_kits_on_postgresql_and_sqlite_in_one_process(
    pg_url: str, sqlite_url: str, settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    results: dict[str, list[bytes]] = {}
    kits = []
    try:
        # The PostgreSQL kit last: the shared event models end up bound to it.
        for name, url in (("sqlite", sqlite_url), ("pg", pg_url)):
            kit = Kit(settings_for(url, queue_url=f"sqlite:///{tmp_path / (name + '-q.sqlite3')}", plugins=()))
            kits.append((name, kit))
        # Each kit writes, both orders: binary payloads must suit its own database whatever
        # database the models were last bound to.
        for name, kit in kits + kits[::-1]:
            assert kit.outbox is not None
            kit.outbox.ensure_tables()
            ctx = kit.events.emit_async("test.binding.checked", {"kit": name})
            from czo_kit.events.outbox import EventOutbox

            row = EventOutbox.select().where(EventOutbox.event_id == ctx.event_id).first(kit.db)
            assert row is not None
            results.setdefault(name, []).append(bytes(row.payload))
        assert all(len(payloads) == 2 for payloads in results.values())
    finally:
        from czo_kit.events.outbox import EVENT_MODELS

        for _, kit in kits:
            with kit.db.bind_ctx(list(EVENT_MODELS)):
                kit.db.drop_tables(list(EVENT_MODELS), safe=True)
            kit.close()


def test_a_delivery_whose_subscriber_is_missing_here_waits_for_a_worker_that_has_it(
    sqlite_url: str, settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    """A worker without the subscriber (rolling deploy, per-worker plugins) hands it back
    without spending an attempt; the worker that has it runs its first attempt."""
    settings = settings_for(
        sqlite_url, queue_url=f"sqlite:///{tmp_path / 'q.sqlite3'}", plugins=(), events_retry_base=0.1
    )
    with Kit(settings) as kit:
        assert kit.outbox is not None
        got: list[int] = []
        off = kit.events.on("test.deploy.rolled", lambda payload, ctx: got.append(ctx.attempt), id="new-handler")
        kit.events.emit_async("test.deploy.rolled", {}, retries=0)
        event = kit.outbox  # no consumer: the test plays the worker
        from czo_kit.events.outbox import EventDelivery, EventOutbox

        (event_id,) = [row.event_id for row in EventOutbox.select().execute(kit.db)]
        assert event.dispatch(event_id) == 1
        (delivery,) = list(EventDelivery.select().execute(kit.db))
        off()  # this worker runs the old code: it does not know "new-handler"
        assert event.deliver(delivery.id) == "waiting"
        assert event.deliver(delivery.id) == "waiting"  # retries=0, yet never dead
        kit.events.on("test.deploy.rolled", lambda payload, ctx: got.append(ctx.attempt), id="new-handler")
        assert event.deliver(delivery.id) == "done"  # an upgraded worker takes it
        assert got == [1]
        assert event.dead_letters() == []


def test_the_sweep_requeues_a_stale_delivery_once_per_lease_even_behind_a_backlog(
    sqlite_url: str, settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    """A delivery queued longer than a lease is queued again although other tasks wait (it
    may have been lost with a killed worker: waiting for an empty queue would never find it
    under steady load), but only once per lease: the sweep's claim moves its timestamp."""
    import datetime as dt

    from czo_kit.db.model import utcnow
    from czo_kit.events.outbox import EventDelivery, EventOutbox
    from czo_kit.events.queue import DELIVER_TASK

    settings = settings_for(sqlite_url, queue_url=f"sqlite:///{tmp_path / 'q.sqlite3'}", plugins=())
    with Kit(settings) as kit:
        assert kit.outbox is not None and kit.queue is not None
        kit.events.on("test.backlog.item", lambda payload, ctx: None, id="slow")
        for n in range(5):
            kit.events.emit_async("test.backlog.item", {"n": n})
        # The relay thread hands committed events to the queue in the background: hand them
        # over now, so that nothing but the sweep can add to the queue from here on.
        kit.outbox.flush()
        for row in EventOutbox.select().execute(kit.db):
            kit.outbox.dispatch(row.event_id)
        long_ago = utcnow() - dt.timedelta(seconds=kit.outbox.settings.lease + 60)
        EventDelivery.update(updated_at=long_ago).execute(kit.db)  # queued for "too long"
        waiting = kit.queue.pending_count()  # the 5 events' dispatch task(s) and 5 deliver tasks
        assert len(kit.queue_tasks.queued_events()) == 5
        assert sum(1 for task in kit.queue.pending() if task.name == DELIVER_TASK) == 5
        assert kit.outbox.sweep()["requeued"] == 5  # behind a backlog, yet queued again
        assert kit.queue.pending_count() == waiting + 5
        assert kit.outbox.sweep()["requeued"] == 0  # not again within the lease
        assert kit.queue.pending_count() == waiting + 5
        EventDelivery.update(updated_at=long_ago).execute(kit.db)  # a lease later
        assert kit.outbox.sweep()["requeued"] == 5


@pytest.mark.parametrize("name", ["a-b", "a.b", "a b", "", "x" * 65, "ab\n"])
def test_queue_names_huey_would_mangle_are_refused(name: str) -> None:
    from czo_kit.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="queue_name"):
        Settings(queue_name=name)
