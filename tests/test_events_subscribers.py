"""Which subscribers get a delivery when processes differ: the producer records its subscribers
with the event, dispatch creates a delivery for each of them and for the worker's own, and a
worker without a delivery's subscriber hands it back (not done, not dead, no attempt spent).

Two kits in this process play a producer that has subscribers ``a`` and ``b`` and a worker
that only has ``a``. Real processes are in ``tests/test_worker_deploy.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

from czo_kit import Kit
from czo_kit.events.outbox import EventDelivery, EventOutbox
from test_outbox import (  # noqa: F401
    DATABASES,
    Recorder,
    backend,
    cli_env,
    deliveries,
    make_kit,
    outbox_rows,
    run_cli,
)

NAME = "test.fleet.changed"


def pair(make_kit: Callable[..., Kit]) -> tuple[Kit, Kit, dict[str, Recorder]]:
    """A producer with subscribers a and b, a worker with only a, on one database and queue."""
    producer, worker = make_kit(), make_kit()
    calls = {"a@producer": Recorder(), "b@producer": Recorder(), "a@worker": Recorder()}
    producer.events.on(NAME, calls["a@producer"], id="a")
    producer.events.on(NAME, calls["b@producer"], id="b")
    worker.events.on(NAME, calls["a@worker"], id="a")
    return producer, worker, calls


def by_subscriber(kit: Kit) -> dict[str, EventDelivery]:
    return {d.subscriber: d for d in deliveries(kit)}


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_a_worker_creates_deliveries_for_the_producers_subscribers_and_leaves_them_to_one_that_has_them(
    make_kit: Callable[..., Kit], caplog: pytest.LogCaptureFixture
) -> None:
    producer, worker, calls = pair(make_kit)
    assert producer.outbox is not None and worker.outbox is not None
    ctx = producer.events.emit_async(NAME, {"n": 1}, retries=0)  # no retries: no second chance
    (row,) = outbox_rows(worker)
    assert row.subscribers == '["a","b"]'

    assert worker.outbox.dispatch(ctx.event_id) == 2
    found = by_subscriber(worker)
    assert set(found) == {f"{NAME}|a", f"{NAME}|b"}
    assert worker.outbox.deliver(found[f"{NAME}|a"].id) == "done"
    with caplog.at_level(logging.WARNING, logger="czo_kit.events"):
        for _ in range(3):  # it keeps coming back to this worker: still not run, not dead
            assert worker.outbox.deliver(found[f"{NAME}|b"].id) == "waiting"
    waiting = by_subscriber(worker)[f"{NAME}|b"]
    assert (waiting.state, waiting.attempts, waiting.finished_at) == ("waiting", 0, None)
    assert waiting.next_attempt_at is not None
    assert "czo_kit.default_plugins.events" in (waiting.last_error or "")
    assert worker.outbox.dead_letters() == []
    assert worker.outbox.stats() == {"done": 1, "waiting": 1}
    assert worker.outbox.waiting() == {f"{NAME}|b": 1}
    said = [r.getMessage() for r in caplog.records if "waits for a worker" in r.getMessage()]
    assert len(said) == 1, said  # once per subscriber and worker
    assert f"'{NAME}|b'" in said[0] and "czo-kit events discard --subscriber" in said[0]

    # The worker that has b runs it, as its first attempt.
    assert producer.outbox.deliver(waiting.id) == "done"
    assert [c.attempt for _, c in calls["b@producer"].calls] == [1]
    assert len(calls["a@worker"].calls) == 1 and calls["a@producer"].calls == []
    assert worker.outbox.stats() == {"done": 2}


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_the_sweep_of_a_worker_that_has_the_subscriber_takes_what_waits_for_it(
    make_kit: Callable[..., Kit],
) -> None:
    producer, worker, calls = pair(make_kit)
    assert producer.outbox is not None and worker.outbox is not None and producer.queue is not None
    ctx = producer.events.emit_async(NAME, {"n": 1})
    producer.outbox.flush()
    worker.outbox.dispatch(ctx.event_id)
    b = by_subscriber(worker)[f"{NAME}|b"]
    assert worker.outbox.deliver(b.id) == "waiting"
    producer.queue.flush()  # what is in the queue: only the sweep can bring it back now
    assert worker.outbox.sweep()["requeued"] == 0  # the worker without b leaves it waiting
    assert len(producer.queue) == 0
    assert producer.outbox.sweep()["requeued"] == 1  # the producer has b: queued now
    assert len(producer.queue) == 1
    assert producer.outbox.sweep()["requeued"] == 0  # and not again while its task is queued
    assert producer.outbox.deliver(b.id) == "done"


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_what_the_producer_records(make_kit: Callable[..., Kit]) -> None:
    producer, worker, _ = pair(make_kit)
    assert worker.outbox is not None
    producer.events.once(NAME, Recorder(), id="just-once")  # belongs to this process alone
    first = producer.events.emit_async(NAME, {"n": 1})
    off = producer.events.on(NAME, Recorder(), id="c")
    second = producer.events.emit_async(NAME, {"n": 2})
    off()
    unheard = producer.events.emit_async("test.fleet.unheard", {})
    recorded = {row.event_id: row.subscribers for row in outbox_rows(worker)}
    assert recorded == {first.event_id: '["a","b"]', second.event_id: '["a","b","c"]', unheard.event_id: None}
    # A row written before producers recorded anything (NULL) goes to the worker's own.
    EventOutbox.update(subscribers=None).where(EventOutbox.event_id == first.event_id).execute(worker.db)
    assert worker.outbox.dispatch(first.event_id) == 1
    assert worker.outbox.dispatch(unheard.event_id) == 0


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_recording_subscribers_adds_no_statement(make_kit: Callable[..., Kit]) -> None:
    """emit_async stays one INSERT, and dispatch costs the same with subscribers it lacks."""
    producer, worker, _ = pair(make_kit)
    lonely = make_kit()  # no subscriber at all: dispatches from the record alone
    assert producer.outbox is not None and worker.outbox is not None and lonely.outbox is not None
    producer.events.emit_async(NAME, {"n": 0})  # warm: tables checked, statements compiled
    statements: list[str] = []
    here = threading.current_thread()

    def counting(db: Any) -> Any:
        original = db.execute_sql

        def execute_sql(sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is here:  # not the relay thread's batched marks
                statements.append(sql.split(None, 1)[0].upper())
            return original(sql, params, *args, **kwargs)

        return execute_sql

    for kit in (producer, worker, lonely):
        setattr(kit.db, "execute_sql", counting(kit.db))
    ids = [producer.events.emit_async(NAME, {"n": n}).event_id for n in (1, 2, 3)]
    assert statements == ["INSERT"] * 3
    costs = []
    for kit, event_id in zip((producer, worker, lonely), ids):
        statements.clear()
        assert kit.outbox is not None and kit.outbox.dispatch(event_id) == 2
        costs.append(statements.copy())
    assert costs[0] == costs[1] == costs[2], costs


def test_discard_gives_up_on_a_removed_subscriber(
    sqlite_url: str, settings_for: Callable[..., Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = f"sqlite:///{tmp_path / 'q.sqlite3'}"
    with Kit(settings_for(sqlite_url, queue_url=queue, plugins=())) as kit:
        assert kit.outbox is not None
        off = kit.events.on(NAME, Recorder(), id="removed")
        kit.events.on(NAME, Recorder(), id="kept")
        for n in range(3):
            kit.events.emit_async(NAME, {"n": n})
        off()  # the new code no longer has it; events emitted before still name it
        for row in outbox_rows(kit):
            kit.outbox.dispatch(row.event_id)
        for delivery in deliveries(kit):
            kit.outbox.deliver(delivery.id)
        assert kit.outbox.stats() == {"done": 3, "waiting": 3}
        cli_env(monkeypatch, kit)
        status = run_cli("events", "status")
        assert status.exit_code == 0 and f"  {NAME}|removed  3" in status.output, status.output
        # The subscriber was once the argument: now DEAD_LETTER_ID is, and the error says what to write.
        moved = run_cli("events", "discard", f"{NAME}|removed", "--yes")
        assert moved.exit_code == 2 and f"--subscriber '{NAME}|removed'" in moved.output, moved.output
        assert run_cli("events", "discard", "--subscriber", f"{NAME}|removed").exit_code == 1  # asks first
        discarded = run_cli("events", "discard", "--subscriber", f"{NAME}|removed", "--yes")
        assert discarded.exit_code == 0, discarded.output
        assert f"discarded 3 deliveries of '{NAME}|removed'" in discarded.output
        assert kit.outbox.stats() == {"done": 3, "discarded": 3}
        assert kit.outbox.sweep()["requeued"] == 0

        # A subscriber this installation has is not discarded: a worker will run it.
        monkeypatch.setenv("CZO_PLUGINS", "czo_product,czo_order")
        refused = run_cli("events", "discard", "--subscriber", "product.deleted|czo_order.mark_lines_unavailable",
                          "--yes")
        assert refused.exit_code == 1 and "is registered in this installation" in refused.output, refused.output
