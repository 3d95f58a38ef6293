"""Sweeps that scale, with real processes on PostgreSQL and Redis: several workers sweeping
the same backlog at once queue each row exactly once, and deliveries whose tasks were lost
are queued again although unrelated tasks wait in the queue.

Servers, the probe plugin and the process helpers are those of ``tests/test_worker.py``.
"""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from czo_kit import Kit
from czo_kit.settings import Settings
from test_worker import (
    EVENT,
    SECRET,
    Pg,
    Proc,
    Runs,
    diagnose,
    private_pg,  # noqa: F401
    queue_name,  # noqa: F401
    server_env,
    start_consumer,
    wait_for,
    write_scripts,
)

pytestmark = [pytest.mark.slow, pytest.mark.redis, pytest.mark.postgres]

SWEEPER_SOURCE = '''\
"""Wait for WT_GO, then sweep until the sweep says it is through; print what it queued."""

import os
import pathlib
import time

from czo_kit.kit import Kit

kit = Kit(plugins=[])
assert kit.outbox is not None
kit.outbox.ensure_tables()
go = pathlib.Path(os.environ["WT_GO"])
pathlib.Path(os.environ["WT_READY"]).write_text("ready")
while not go.exists():
    time.sleep(0.005)
total = 0
while True:
    total += kit.outbox.sweep().get("events", 0)
    if not getattr(kit.outbox, "sweep_unfinished", False):
        break
print(total, flush=True)
kit.close()
'''


def queued_tasks(redis_url: str, name: str) -> list[tuple[str, Any]]:
    """(task name, first argument) of every task waiting in the Huey queue ``name``."""
    import redis

    from czo_kit.events.queue import MsgspecSerializer

    serializer = MsgspecSerializer()
    client = redis.Redis.from_url(redis_url)
    try:
        members = client.zrange(f"huey.redis.{name}", 0, -1)
    finally:
        client.close()
    messages = [serializer.deserialize(member[8:]) for member in members]  # 8 bytes: Huey's order prefix
    return [(m.name, m.args[0]) for m in messages]


def insert_pending_events(pg: Pg, count: int) -> None:
    """``count`` committed events that no relay queued (their producers died), in one statement."""
    pg.execute(
        "INSERT INTO czo_event_outbox (event_id, name, payload, correlation_id, created_at, deliver_at, "
        "retries, priority, state, updated_at) "
        "SELECT 'sweep-' || lpad(g::text, 12, '0'), 'worker.probe', '\\x80'::bytea, 'c', "
        "(now() at time zone 'utc') - interval '1 hour', (now() at time zone 'utc') - interval '1 hour', "
        "0, 50, 'pending', (now() at time zone 'utc') - interval '1 hour' "
        f"FROM generate_series(1, {int(count)}) AS g"
    )


@pytest.mark.parametrize(("sweepers", "rows"), [(4, 4_000), (2, 20_000)])
def test_concurrent_sweepers_queue_each_pending_event_exactly_once(
    private_pg: tuple[str, Pg], redis_url: str, queue_name: str, tmp_path: Path,  # noqa: F811
    sweepers: int, rows: int,
) -> None:
    db_url, pg = private_pg
    insert_pending_events(pg, rows)
    script = tmp_path / "wt_sweeper.py"
    script.write_text(SWEEPER_SOURCE)
    go = tmp_path / "go"
    # The tests' usual 3 s lease would let a late sweeper take again, by design, what an early
    # one queued 3 s before; one pass is what is measured here.
    env = server_env(db_url, redis_url, queue_name, WT_GO=str(go), CZO_EVENTS_LEASE="300")
    with ExitStack() as stack:
        procs = []
        for n in range(sweepers):
            ready = tmp_path / f"sweeper-{n}.ready"
            proc = Proc([sys.executable, str(script)], env={**env, "WT_READY": str(ready)}, cwd=tmp_path,
                        label=f"sweeper-{n}")
            stack.callback(proc.kill)
            procs.append((proc, ready))
        for proc, ready in procs:
            wait_for(lambda ready=ready, proc=proc: ready.exists() or not proc.alive(), timeout=120,
                     what=f"{proc.label} to start", diag=proc.tail)
        go.write_text("go")  # all sweep the same backlog at once
        for proc, _ in procs:
            assert proc.wait(timeout=300) == 0, proc.tail()
        swept = [int(proc.stdout().split()[0]) for proc, _ in procs]

    tasks = queued_tasks(redis_url, queue_name)
    # A sweep queues the events it claims as the relay does, many to a dispatch task.
    queued = [
        event_id
        for task, arg in tasks
        for event_id in (arg if task.endswith("czo_events_dispatch_many") else [arg])
    ]
    assert all(task.endswith(("czo_events_dispatch", "czo_events_dispatch_many")) for task, _ in tasks), tasks[:3]
    per_event = Counter(queued)
    twice = {event_id: n for event_id, n in per_event.items() if n > 1}
    assert not twice, f"{len(twice)} event(s) queued more than once, e.g. {list(twice.items())[:3]}; sweepers said {swept}"
    assert len(queued) == rows, f"{len(queued)} events queued for {rows} (sweepers said {swept})"
    assert len(tasks) < rows  # in batches
    assert sum(swept) == rows, swept
    assert pg.one("SELECT count(*) FROM czo_event_outbox WHERE state = 'queued'") == rows
    print(f"\n{rows} pending events, {sweepers} sweepers: {len(tasks)} tasks queued; by sweeper {swept}")


def test_deliveries_whose_tasks_were_lost_are_recovered_while_other_tasks_wait(
    private_pg: tuple[str, Pg], redis_url: str, queue_name: str, tmp_path: Path  # noqa: F811
) -> None:
    """1,000 deliveries whose tasks a killed worker took with it: the sweep queues them again
    although an unrelated task waits in the queue (it used to wait for an empty queue, which
    under steady load never comes), and a worker then runs each exactly once."""
    import redis

    db_url, pg = private_pg
    runs = Runs(pg)
    settings = Settings(
        database_url=db_url, queue_url=redis_url, queue_name=queue_name, secret_key=SECRET, plugins=(),
        events_lease=3.0,
    )
    with Kit(settings) as kit:
        assert kit.outbox is not None and kit.queue is not None
        for label in ("probe-0", "probe-1"):  # the worker's subscribers, recorded by the producer
            kit.events.on(EVENT, lambda payload, ctx: None, id=label)
        with kit.db.atomic():
            event_ids = [kit.events.emit_async(EVENT, {"n": n}).event_id for n in range(500)]
        kit.outbox.flush()
        for event_id in event_ids:  # the worker that dispatched them, and queued 1,000 deliveries
            kit.outbox.dispatch(event_id)
        client = redis.Redis.from_url(redis_url)
        try:
            # ... then was killed after taking their tasks: none of them is in the queue now.
            client.delete(f"huey.redis.{queue_name}")
        finally:
            client.close()
        kit.outbox.queue.dispatch("not-an-event", delay=0, priority=50)
        assert kit.queue.pending_count() == 1  # unrelated work waits
        pg.execute(
            "UPDATE czo_event_delivery SET updated_at = (now() at time zone 'utc') - interval '1 minute'"
        )  # queued for longer than the lease
        counts = kit.outbox.sweep()
        assert counts["requeued"] == 1000, counts
        assert kit.queue.pending_count() == 1001
        assert kit.outbox.sweep()["requeued"] == 0  # the claim keeps them to one task per lease

    scripts = write_scripts(tmp_path)
    env = server_env(db_url, redis_url, queue_name, WT_SLEEP_MS="0,1", CZO_EVENTS_LEASE="300")
    with ExitStack() as stack:
        consumer = start_consumer(scripts, env, "consumer")
        stack.callback(consumer.kill)
        wait_for(lambda: runs.delivery_states() == {"done": 1000} or not consumer.alive(), timeout=240,
                 what="the 1,000 recovered deliveries", diag=diagnose(runs, consumer), interval=0.2)
        assert consumer.alive(), consumer.tail()
    per_pair = runs.per_pair()
    assert len(per_pair) == 1000 and set(per_pair.values()) == {1}, runs.summary()


def test_a_delivery_queued_behind_the_oldest_waiting_task_is_left_to_the_backlog(
    private_pg: tuple[str, Pg], redis_url: str, queue_name: str, tmp_path: Path  # noqa: F811
) -> None:
    """Past a lease, a queued delivery is taken for lost only if it was queued before the
    oldest task still waiting in the queue: one queued after it waits behind that backlog,
    and queuing it again would flood a long drain with duplicates. The oldest task is found
    across priorities: a newer task of a higher priority, first in line, does not hide it."""
    import datetime as dt
    import struct
    import time

    import redis

    from czo_kit.events.outbox import EventDelivery

    db_url, pg = private_pg
    settings = Settings(
        database_url=db_url, queue_url=redis_url, queue_name=queue_name, secret_key=SECRET, plugins=(),
        events_lease=3.0,
    )
    with Kit(settings) as kit:
        assert kit.outbox is not None and kit.queue is not None
        queue = kit.outbox.queue
        for label in ("probe-0", "probe-1"):
            kit.events.on(EVENT, lambda payload, ctx: None, id=label)
        lost_event = kit.events.emit_async(EVENT, {"n": 0}).event_id
        behind_event = kit.events.emit_async(EVENT, {"n": 1}).event_id
        kit.outbox.flush()
        for event_id in (lost_event, behind_event):
            kit.outbox.dispatch(event_id)
        client = redis.Redis.from_url(redis_url)
        try:
            client.delete(f"huey.redis.{queue_name}")  # a killed worker took their tasks
            assert queue.oldest_waiting() is not None  # an empty queue: every stale row is lost
            # A backlog whose oldest task was enqueued an hour ago, at the lowest priority ...
            hour_ago = time.time() - 3600
            head = queue._dispatch.s("backlog-head")
            member = struct.pack(">Q", int(hour_ago * 1e6)) + kit.queue.serialize_task(head)
            client.zadd(f"huey.redis.{queue_name}", {member: -(head.priority or 0)})
        finally:
            client.close()
        queue.dispatch("urgent", delay=0, priority=90)  # ... and a newer task first in line
        oldest = queue.oldest_waiting()
        assert oldest is not None and abs(oldest.timestamp() - hour_ago) < 0.001
        now = dt.datetime.now(dt.timezone.utc)
        EventDelivery.update(updated_at=now - dt.timedelta(hours=2)).where(
            EventDelivery.event_id == lost_event
        ).execute(kit.db)  # queued before the backlog's oldest task: its task is gone
        EventDelivery.update(updated_at=now - dt.timedelta(minutes=30)).where(
            EventDelivery.event_id == behind_event
        ).execute(kit.db)  # past the lease, but queued after that task: it waits behind it
        lost = sorted(d.id for d in EventDelivery.select().where(EventDelivery.event_id == lost_event).execute(kit.db))
        assert len(lost) == 2
        assert kit.outbox.sweep()["requeued"] == 2
        tasks = queued_tasks(redis_url, queue_name)
        requeued = sorted(int(arg) for name, arg in tasks if name.endswith("czo_events_deliver"))
        assert requeued == lost, tasks


def test_waiting_deliveries_are_queued_once_by_a_pass_however_many(
    private_pg: tuple[str, Pg], redis_url: str, queue_name: str  # noqa: F811
) -> None:
    """Deliveries handed back by a worker without their subscriber wait for a worker that has
    it; its sweep queues them now, each once. The claim moves them to the claim's time, which
    is after the pass began: a claim of a full batch must not take the same rows again (it
    used to, batch after batch until the pass's time budget ran out)."""
    db_url, pg = private_pg
    rows = 1_200  # more than one claim takes
    settings = Settings(
        database_url=db_url, queue_url=redis_url, queue_name=queue_name, secret_key=SECRET, plugins=(),
        events_lease=300.0,
    )
    with Kit(settings) as kit:
        assert kit.outbox is not None and kit.queue is not None
        kit.events.on(EVENT, lambda payload, ctx: None, id="probe-0")
        (sub,) = kit.outbox.emitter.subscribers(EVENT)
        kit.outbox.ensure_tables()
        pg.all(
            "INSERT INTO czo_event_delivery (event_id, subscriber, state, attempts, max_attempts, priority, "
            "next_attempt_at, created_at, updated_at) "
            "SELECT 'waiting-' || g, %s, 'waiting', 0, 3, 50, (now() at time zone 'utc') + interval '1 hour', "
            "(now() at time zone 'utc') - interval '1 minute', (now() at time zone 'utc') - interval '1 minute' "
            f"FROM generate_series(1, {rows}) AS g RETURNING id",
            (sub.id,),
        )  # handed back for an hour by a worker without the subscriber
        counts = kit.outbox.sweep()
        tasks = queued_tasks(redis_url, queue_name)
        per_delivery = Counter(int(arg) for name, arg in tasks if name.endswith("czo_events_deliver"))
        twice = {i: n for i, n in per_delivery.items() if n > 1}
        assert not twice, f"{len(twice)} delivery(ies) queued more than once, e.g. {list(twice.items())[:3]}"
        assert len(per_delivery) == rows and counts["requeued"] == rows, (len(per_delivery), counts)
        assert kit.outbox.sweep()["requeued"] == 0  # the next pass leaves them to their tasks
