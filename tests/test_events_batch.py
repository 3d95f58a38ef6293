"""Async events in batches: the relay hands the events committed together to the queue as one
dispatch task, and a worker dispatches them and runs their handlers in that task, each
delivery still retried, recovered and counted on its own. Tasks of the previous release (one
dispatch task per event, one deliver task per delivery) still run.

The kit fixtures are those of ``tests/test_outbox.py``; the real worker processes those of
``tests/test_worker.py``.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from czo_kit import Kit
from czo_kit.events.outbox import EventDelivery
from czo_kit.events.queue import DELIVER_TASK, DISPATCH_MANY_TASK, DISPATCH_TASK
from czo_kit.events.types import EventContext
from czo_kit.testing.cache import wait_until
from test_outbox import (  # noqa: F401
    DATABASES,
    PAIRED,
    TIMEOUT,
    Recorder,
    backend,
    deliveries,
    make_kit,
    outbox_rows,
)
from test_worker import (  # noqa: F401
    Pg,
    Runs,
    diagnose,
    emit_many,
    expected_pairs,
    private_pg,
    queue_name,
    server_env,
    start_consumer,
    wait_for,
    write_scripts,
)


def by_subscriber(kit: Kit) -> dict[tuple[str, str], EventDelivery]:
    return {(str(d.event_id), d.subscriber.split("|")[1]): d for d in deliveries(kit)}


@pytest.mark.parametrize("backend", PAIRED, indirect=True)
def test_events_committed_together_go_to_the_queue_as_one_dispatch_task(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    assert kit.outbox is not None and kit.queue is not None
    handler = Recorder()
    kit.events.on("test.stock.changed", handler, id="h")
    with kit.db.atomic():
        ids = [kit.events.emit_async("test.stock.changed", {"n": n}).event_id for n in range(10)]
    kit.outbox.flush()
    assert [task.name for task in kit.queue.pending()] == [DISPATCH_MANY_TASK]
    assert kit.queue_tasks.queued_events() == ids  # commit order
    assert {row.state for row in outbox_rows(kit)} == {"queued"}
    with kit.consumer(workers=2, sweep_interval=3600):
        assert wait_until(lambda: kit.outbox.stats() == {"done": 10}, timeout=TIMEOUT)
    assert sorted(p["n"] for p in handler.payloads) == list(range(10))
    assert {c.attempt for _, c in handler.calls} == {1}
    assert {d.attempts for d in deliveries(kit)} == {1}
    assert len(kit.queue) == 0  # no deliver task: the handlers ran in the dispatch task


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_a_failing_handler_in_a_batch_retries_only_its_own_delivery(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    assert kit.outbox is not None
    ok = Recorder()
    failed: list[EventContext] = []

    def picky(payload: Any, ctx: EventContext) -> None:
        if payload["n"] == 1:
            failed.append(ctx)
            raise RuntimeError("not this one")

    kit.events.on("test.stock.changed", ok, id="ok")
    kit.events.on("test.stock.changed", picky, id="picky")
    ids = [kit.events.emit_async("test.stock.changed", {"n": n}).event_id for n in range(3)]
    assert kit.outbox.dispatch_many(ids) == {"done": 5, "retry": 1}
    states = {key: (d.state, d.attempts) for key, d in by_subscriber(kit).items()}
    assert states == {
        **{(e, "ok"): ("done", 1) for e in ids},
        (ids[0], "picky"): ("done", 1),
        (ids[1], "picky"): ("retry", 1),
        (ids[2], "picky"): ("done", 1),
    }
    assert sorted(p["n"] for p in ok.payloads) == [0, 1, 2]
    assert [c.event_id for c in failed] == [ids[1]]
    retry = by_subscriber(kit)[(ids[1], "picky")]
    assert retry.next_attempt_at is not None and "not this one" in (retry.last_error or "")
    assert {row.state for row in outbox_rows(kit)} == {"dispatched"}
    assert kit.outbox.dispatch_many(ids) == {}  # a duplicate task finds them dispatched
    assert len(ok.calls) == 3


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_a_batch_leaves_a_subscriber_this_worker_lacks_to_a_worker_that_has_it(
    make_kit: Callable[..., Kit],
) -> None:
    producer = make_kit()
    handler = Recorder()
    producer.events.on("test.stock.changed", handler, id="elsewhere")
    worker = make_kit(create=False)  # the same tables and queue, without the subscriber
    assert worker.outbox is not None
    mine = Recorder()
    worker.events.on("test.stock.changed", mine, id="mine")
    ids = [producer.events.emit_async("test.stock.changed", {"n": n}).event_id for n in range(2)]
    assert worker.outbox.dispatch_many(ids) == {"done": 2, "queued": 2}
    states = {key: (d.state, d.attempts) for key, d in by_subscriber(worker).items()}
    assert states == {**{(e, "mine"): ("done", 1) for e in ids}, **{(e, "elsewhere"): ("queued", 0) for e in ids}}
    assert handler.calls == []
    delivery_ids = [d.id for d in deliveries(worker) if d.subscriber.endswith("|elsewhere")]
    assert [worker.outbox.deliver(i) for i in delivery_ids] == ["waiting", "waiting"]  # handed back
    assert [producer.outbox.deliver(i) for i in delivery_ids] == ["done", "done"]
    assert sorted(p["n"] for p in handler.payloads) == [0, 1]


@pytest.mark.parametrize("backend", PAIRED, indirect=True)
def test_a_slow_batch_hands_what_it_has_not_started_to_other_workers(make_kit: Callable[..., Kit]) -> None:
    # The first handler waits until another delivery of the batch has run: only a second
    # worker thread can run it, once the batch's budget is spent and the rest is queued.
    kit = make_kit()
    assert kit.outbox is not None
    kit.outbox.settings = dataclasses.replace(kit.outbox.settings, batch_budget=0.05)
    ran: list[int] = []
    second_ran = threading.Event()

    def handler(payload: Any, ctx: EventContext) -> None:
        if payload["n"] == 0:
            assert second_ran.wait(TIMEOUT), "no other worker ran the rest of the batch"
        else:
            second_ran.set()
        ran.append(payload["n"])

    kit.events.on("test.stock.changed", handler, id="h")
    with kit.db.atomic():
        for n in range(3):
            kit.events.emit_async("test.stock.changed", {"n": n})
    kit.outbox.flush()
    assert kit.queue is not None and len(kit.queue) == 1
    with kit.consumer(workers=2, sweep_interval=3600):
        assert wait_until(lambda: kit.outbox.stats() == {"done": 3}, timeout=TIMEOUT)
    assert sorted(ran) == [0, 1, 2]
    assert {d.attempts for d in deliveries(kit)} == {1}


@pytest.mark.parametrize("backend", PAIRED, indirect=True)
def test_tasks_of_the_previous_release_still_run(make_kit: Callable[..., Kit]) -> None:
    # A rolling deploy: the queue holds a one-event dispatch task and a deliver task that a
    # worker of the previous release enqueued, next to a batch task of this release.
    kit = make_kit()
    assert kit.outbox is not None and kit.queue is not None
    handler = Recorder()
    kit.events.on("test.stock.changed", handler, id="h")
    old_dispatch, old_deliver, batched = (
        kit.events.emit_async("test.stock.changed", {"n": n}).event_id for n in range(3)
    )
    kit.outbox.flush()
    kit.queue.flush()  # only the tasks enqueued below
    kit.outbox.dispatch(old_deliver, inline=False)  # what a worker of the previous release did
    (delivery,) = deliveries(kit, old_deliver)
    assert delivery.state == "queued"
    kit.queue.enqueue(kit.queue_tasks._dispatch.s(old_dispatch))
    kit.queue_tasks.dispatch_many([batched, batched], delay=0, priority=50)  # a batch (one id, twice)
    assert sorted(task.name for task in kit.queue.pending()) == sorted(
        [DELIVER_TASK, DISPATCH_TASK, DISPATCH_MANY_TASK]
    )
    with kit.consumer(workers=2, sweep_interval=3600):
        assert wait_until(lambda: kit.outbox.stats() == {"done": 3}, timeout=TIMEOUT)
    assert sorted(p["n"] for p in handler.payloads) == [0, 1, 2]


# -- a real worker killed mid-batch -------------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
def test_a_worker_killed_mid_batch_loses_nothing_and_reruns_only_what_was_running(
    private_pg: tuple[str, Pg], redis_url: str, queue_name: str, tmp_path: Path  # noqa: F811
) -> None:
    db_url, pg = private_pg
    runs = Runs(pg)
    scripts = write_scripts(tmp_path)
    # Quick handlers (1-2 ms): a batch of 50 events runs within its budget, on one thread;
    # leases of 3 s (server_env) run out soon after the kill.
    env = server_env(db_url, redis_url, queue_name, WT_SLEEP_MS="1,2", WT_WORKERS="2")
    events = 600
    event_ids = emit_many(db_url, redis_url, queue_name, events)
    wanted = expected_pairs(event_ids)
    assert int(pg.one("SELECT count(*) FROM czo_event_outbox WHERE state = 'queued'")) == events

    with ExitStack() as stack:
        first = start_consumer(scripts, env, "consumer-1", wait_ready=False)
        stack.callback(first.kill)
        wait_for(lambda: runs.total() >= len(wanted) // 10 or not first.alive(), timeout=90,
                 what="10% of the deliveries", diag=diagnose(runs, first))
        assert first.alive(), f"the first consumer died on its own\n{first.tail()}"
        os.kill(first.pid, signal.SIGKILL)
        first.kill()  # reap
        at_kill = runs.total()
        assert at_kill < len(wanted), "everything ran before the kill; nothing was in flight"
        # Claimed by a batch, not started yet: attempt 0, to be run once.
        claimed = int(pg.one("SELECT count(*) FROM czo_event_delivery WHERE state = 'running' AND attempts = 0"))
        second = start_consumer(scripts, env, "consumer-2", wait_ready=False)
        stack.callback(second.kill)

        def finished() -> bool:
            return runs.delivery_states() == {"done": len(wanted)} and runs.pairs() == len(wanted)

        wait_for(lambda: finished() or not second.alive(), timeout=180,
                 what="every (event, subscriber) pair to run and every delivery to be done",
                 diag=diagnose(runs, first, second), interval=0.25)
        assert second.alive(), f"the second consumer died\n{second.tail()}"

    per_pair = runs.per_pair()
    assert set(per_pair) == wanted, f"missing {sorted(wanted - set(per_pair))[:3]}"
    twice = {pair: n for pair, n in per_pair.items() if n > 1}
    # Only a handler running at the kill runs again: one per worker thread at most.
    assert all(n == 2 for n in twice.values()) and len(twice) <= 2, twice
    attempts = dict(pg.all("SELECT attempts, count(*) FROM czo_event_delivery GROUP BY attempts"))
    assert set(attempts) <= {1, 2} and attempts.get(2, 0) <= 2, (attempts, claimed)
    assert pg.one("SELECT count(*) FROM czo_event_dead_letter") == 0


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_a_batch_whose_first_delivery_exists_already_still_counts_every_start(
    make_kit: Callable[..., Kit],
) -> None:
    # A dispatch of the previous release created the first event's delivery (queued) just
    # before this batch marked the event: the batch skips it and queues it; the next one,
    # created not started, is started before it runs.
    from czo_kit.db.model import utcnow

    kit = make_kit()
    assert kit.outbox is not None and kit.queue is not None
    handler = Recorder()
    kit.events.on("test.stock.changed", handler, id="h")
    first, second = (kit.events.emit_async("test.stock.changed", {"n": n}).event_id for n in range(2))
    kit.outbox.flush()
    kit.queue.flush()
    now = utcnow()
    EventDelivery.insert(event_id=first, subscriber="test.stock.changed|h", state="queued", max_attempts=6,
                         created_at=now, updated_at=now).execute(kit.db)
    assert kit.outbox.dispatch_many([first, second]) == {"done": 1, "queued": 1}
    states = {key: (d.state, d.attempts) for key, d in by_subscriber(kit).items()}
    assert states == {(first, "h"): ("queued", 0), (second, "h"): ("done", 1)}
    assert [c.attempt for _, c in handler.calls] == [1]
    assert [task.name for task in kit.queue.pending()] == [DELIVER_TASK]


# -- the worker's unsynchronised commits stay its own -------------------------------------

PG_ONLY = [p for p in DATABASES if p.values[0][0] == "postgresql"]


def synchronous_commit(kit: Kit) -> str:
    return str(kit.db.execute_sql("SHOW synchronous_commit").fetchone()[0])


@pytest.mark.parametrize("backend", PG_ONLY, indirect=True)
def test_a_batch_dispatched_inside_a_callers_transaction_leaves_its_commit_synchronous(
    make_kit: Callable[..., Kit],
) -> None:
    # A caller that dispatches in its own transaction (a script, Huey's immediate mode under a
    # flush) must commit as it always does: the relaxed commit is the worker's own.
    kit = make_kit()
    assert kit.outbox is not None
    handler = Recorder()
    kit.events.on("test.stock.changed", handler, id="h")
    ids = [kit.events.emit_async("test.stock.changed", {"n": n}).event_id for n in range(3)]
    with kit.db.atomic():
        assert synchronous_commit(kit) == "on"
        assert kit.outbox.dispatch_many(ids) == {"done": 3}
        assert synchronous_commit(kit) == "on"
    assert synchronous_commit(kit) == "on"
    assert {d.state for d in deliveries(kit)} == {"done"}


@pytest.mark.parametrize("backend", PG_ONLY, indirect=True)
def test_a_handler_writing_inside_a_batch_commits_synchronously(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    assert kit.outbox is not None
    seen: list[tuple[str, str]] = []

    def handler(payload: Any, ctx: EventContext) -> None:
        seen.append(("bare", synchronous_commit(kit)))
        with kit.db.atomic():
            seen.append(("atomic", synchronous_commit(kit)))
            with kit.db.atomic():
                seen.append(("savepoint", synchronous_commit(kit)))

    kit.events.on("test.stock.changed", handler, id="h")
    ids = [kit.events.emit_async("test.stock.changed", {"n": n}).event_id for n in range(3)]
    assert kit.outbox.dispatch_many(ids) == {"done": 3}
    assert len(seen) == 9 and {value for _, value in seen} == {"on"}, seen


@contextmanager
def deliveries_locked(kit: Kit) -> Iterator[None]:
    """Another connection holds a SHARE lock on the delivery table for the block, and this
    thread's statements give up waiting for a lock after 50 ms: a dispatch in the block
    fails in the database (PostgreSQL)."""
    locked, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with kit.db.atomic():
            kit.db.execute_sql("LOCK TABLE czo_event_delivery IN SHARE MODE")
            locked.set()
            release.wait(TIMEOUT)
        kit.db.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(TIMEOUT)
        kit.db.execute_sql("SET lock_timeout = '50ms'")
        yield
    finally:
        release.set()
        holder.join()
        kit.db.execute_sql("RESET lock_timeout")


@pytest.mark.parametrize("backend", PG_ONLY, indirect=True)
def test_a_once_subscription_survives_a_dispatch_the_database_rolled_back(make_kit: Callable[..., Kit]) -> None:
    # The dispatch transaction fails (here a lock it could not get in time): the event stays
    # queued for another dispatch, and that one must still find the ``once`` subscription.
    import peewee

    kit = make_kit()
    assert kit.outbox is not None
    once, steady = Recorder(), Recorder()
    kit.events.once("test.stock.changed", once, id="once")
    kit.events.on("test.stock.changed", steady, id="steady")
    event_id = kit.events.emit_async("test.stock.changed", {"n": 1}).event_id
    with deliveries_locked(kit), pytest.raises(peewee.OperationalError):
        kit.outbox.dispatch_many([event_id])
    assert {row.state for row in outbox_rows(kit)} <= {"pending", "queued"} and deliveries(kit) == []
    assert kit.outbox.dispatch_many([event_id]) == {"done": 2}
    assert len(once.calls) == 1 and len(steady.calls) == 1
    assert kit.events.subscription("test.stock.changed|once") is None  # forgotten once delivered


@pytest.mark.parametrize("backend", PG_ONLY, indirect=True)
def test_a_once_subscription_survives_a_single_dispatch_the_database_rolled_back(
    make_kit: Callable[..., Kit],
) -> None:
    # The same for a dispatch of one event as the in-process deliverer (no queue) runs it.
    import peewee

    kit = make_kit()
    assert kit.outbox is not None
    once = Recorder()
    kit.events.once("test.stock.changed", once, id="once")
    event_id = kit.events.emit_async("test.stock.changed", {"n": 1}).event_id
    with deliveries_locked(kit), pytest.raises(peewee.OperationalError):
        kit.outbox.dispatch(event_id, inline=True)
    assert kit.outbox.dispatch(event_id, inline=True) == 1
    assert len(once.calls) == 1
