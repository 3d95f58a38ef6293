"""Without a queue (``CZO_QUEUE_URL=""``): the in-process deliverer keeps the promises of the
queued path (retries, delays, dead letters, webhooks: see the tests of ``test_outbox.py``
and ``test_webhooks.py`` that run in both modes), and what a stopped process left due is
taken up by the next one: in this process (one kit after another) and with real processes
(a producer script, then ``czo-kit worker``)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from apps_support import Receiver, Reply, app_kit, app_settings, manifest
from apps_support import OWNER
from czo_kit import Kit
from czo_kit.apps.webhooks import WebhookDelivery
from czo_kit.events import EventContext
from czo_kit.events.outbox import EventDelivery, EventOutbox
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until
from test_outbox import NO_QUEUE, TIMEOUT, backend, deliveries, make_kit  # noqa: F401
from test_worker import Lite, Proc, child_env, czo_kit_command, wait_for

EVENT = "test.noqueue.item"


@pytest.mark.parametrize("backend", NO_QUEUE, indirect=True)
def test_without_a_queue_the_kit_has_none_and_still_records(make_kit: Callable[..., Kit]) -> None:  # noqa: F811
    kit = make_kit()
    assert kit.queue is None and kit.deliverer is not None  # DESIGN: kit.queue is None here
    ran: list[int] = []
    kit.events.on(EVENT, lambda payload, ctx: ran.append(payload["n"]), id="h")
    ctx = kit.events.emit_async(EVENT, {"n": 1})
    assert ran == [1]  # outside a transaction, at once, as before
    ((row_id, state),) = EventOutbox.select(EventOutbox.event_id, EventOutbox.state).tuples().execute(kit.db)
    assert (row_id, state) == (ctx.event_id, "dispatched")
    assert [(d.subscriber, d.state, d.attempts) for d in deliveries(kit)] == [(f"{EVENT}|h", "done", 1)]


@pytest.mark.parametrize("backend", NO_QUEUE, indirect=True)
def test_a_retry_and_a_delay_left_by_a_stopped_kit_resume_in_the_next(make_kit: Callable[..., Kit]) -> None:  # noqa: F811
    first = make_kit(events_retry_base=1.0, events_retry_max=2.0)
    failing: list[int] = []

    def down(payload: Any, ctx: EventContext) -> None:
        failing.append(ctx.attempt)
        raise ConnectionError("search index down")

    first.events.on(EVENT, down, id="index")
    retried = first.events.emit_async(EVENT, {"n": 1}, retries=5)
    delayed = first.events.emit_async(EVENT, {"n": 2}, delay=2.0)
    (row,) = [r for r in deliveries(first) if r.event_id == retried.event_id]
    assert row.state == "retry" and failing == [1]
    first.close()  # what it had scheduled (the retry, the delayed event) is only in the tables
    # As a process that stopped a minute ago leaves them (younger rows may still be on their
    # way in a live process: a starting deliverer leaves those to the sweep, after a lease).
    a_minute_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    EventOutbox.update(updated_at=a_minute_ago).execute(first.db)
    EventDelivery.update(updated_at=a_minute_ago).execute(first.db)

    second = make_kit()
    ran: dict[str, tuple[int, float]] = {}

    def up(payload: Any, ctx: EventContext) -> None:
        ran[ctx.event_id] = (ctx.attempt, time.time())

    second.events.on(EVENT, up, id="index")
    assert second.deliverer is not None
    second.deliverer.start()  # what `czo-kit serve` and `czo-kit worker` do at start
    assert wait_until(lambda: len(ran) == 2, timeout=TIMEOUT), deliveries(second)
    assert ran[retried.event_id][0] >= 2  # its next attempt, not a new first one
    deliver_at = EventOutbox.get_by_id(delayed.event_id).deliver_at
    assert ran[delayed.event_id] == (1, pytest.approx(ran[delayed.event_id][1]))
    assert ran[delayed.event_id][1] >= deliver_at.timestamp() - 0.001  # not before its delay
    assert wait_until(lambda: second.outbox.stats() == {"done": 2}, timeout=TIMEOUT)


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_webhook_retry_left_by_a_stopped_kit_is_sent_by_the_next(
    db: str, request: pytest.FixtureRequest, settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    url = str(request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url"))
    settings = app_settings(settings_for, url, str(tmp_path), queue_url="", webhooks_retry_schedule=(2.0, 2.0))
    refuse = threading.Event()
    refuse.set()
    with Receiver(lambda request: Reply(503) if refuse.is_set() else Reply(200)) as receiver:
        with app_kit(settings) as first:
            first.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url))
            first.events.emit_async("order.created", {"shop_id": 1, "id": 7})
            assert wait_until(lambda: first.webhooks.stats() == {"retry": 1}, timeout=TIMEOUT)
        refuse.clear()
        with Kit(settings) as aging:  # as a process that stopped a minute ago leaves it
            a_minute_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
            WebhookDelivery.update(updated_at=a_minute_ago).execute(aging.db)
        with Kit(settings) as second:
            assert second.deliverer is not None
            second.deliverer.start()
            assert wait_until(lambda: second.webhooks.stats(delivered=True) == {"delivered": 1}, timeout=TIMEOUT)
        attempts = [p.headers["x-czo-delivery-attempt"] for p in receiver.posts("/hook")]
        assert attempts[0] == "1" and len(attempts) >= 2  # the second kit sent the next one


PLUGIN = '''\
"""A subscriber that fails while NQ_FAIL is set, and records each run in nq_runs."""

import datetime as dt
import os

from czo_kit.hookspecs import hookimpl


@hookimpl
def czo_register_events(events, kit):
    db = kit.db

    def index(payload, ctx):
        if os.environ.get("NQ_FAIL"):
            raise ConnectionError("search index down")
        with db.atomic():
            db.execute_sql("INSERT INTO nq_runs (event_id, attempt, pid) VALUES (?, ?, ?)",
                           (ctx.event_id, ctx.attempt, os.getpid()))

    events.on("test.noqueue.item", index, id="index")
'''

PRODUCER = '''\
import sys
from czo_kit.kit import Kit

kit = Kit()
for n in range(int(sys.argv[1])):
    print(kit.events.emit_async("test.noqueue.item", {"n": n}, retries=5).event_id, flush=True)
kit.close()
'''


def test_czo_kit_worker_without_a_queue_takes_up_what_a_producer_left(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "nq_probe.py").write_text(PLUGIN)
    info = site / "nq_probe-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nq-probe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[czo_kit]\nnq-probe = nq_probe\n")
    (tmp_path / "producer.py").write_text(PRODUCER)
    data = tmp_path / "data.sqlite3"
    env = child_env(
        CZO_DATABASE_URL=f"sqlite:///{data}", CZO_QUEUE_URL="", CZO_SECRET_KEY="k" * 40, CZO_PLUGINS="nq-probe",
        CZO_EVENTS_RETRY_BASE="1", CZO_EVENTS_SWEEP_INTERVAL="1", CZO_EVENTS_LEASE="2",
        PYTHONPATH=os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p),
    )
    lite = Lite(data)
    lite_conn_sql = "CREATE TABLE IF NOT EXISTS nq_runs (event_id TEXT, attempt INTEGER, pid INTEGER)"
    import sqlite3

    with sqlite3.connect(data) as conn:
        conn.execute(lite_conn_sql)

    producer = Proc([sys.executable, str(tmp_path / "producer.py"), "5"], env={**env, "NQ_FAIL": "1"},
                    cwd=tmp_path, label="producer")
    try:
        assert producer.wait(timeout=60) == 0, producer.tail()
    finally:
        producer.kill()
    ids = producer.stdout().split()
    assert len(ids) == 5
    # Each first attempt ran in the producer, failed, and left a retry in the table.
    assert sorted(lite.all("SELECT state, attempts FROM czo_event_delivery")) == [("retry", 1)] * 5
    assert "Traceback (most recent call last)" in producer.err_path.read_text()  # logged with it

    with ExitStack() as stack:
        worker = Proc([*czo_kit_command(), "worker", "-w", "2"], env=env, cwd=tmp_path, label="worker")
        stack.callback(worker.kill)

        def done() -> bool:
            return sorted(lite.all("SELECT state FROM czo_event_delivery")) == [("done",)] * 5

        wait_for(lambda: done() or not worker.alive(), timeout=60, what="the worker to run the 5 retries",
                 diag=lambda: f"{lite.all('SELECT state, attempts FROM czo_event_delivery')}\n{worker.tail()}")
        assert worker.alive(), worker.tail()
        assert "no queue (CZO_QUEUE_URL is empty)" in worker.err_path.read_text()
        worker.popen.send_signal(signal.SIGINT)
        assert worker.wait(timeout=30) == 0, worker.tail()
    runs = lite.all("SELECT event_id, attempt, pid FROM nq_runs")
    assert sorted(event_id for event_id, _, _ in runs) == sorted(ids)  # each once
    assert {attempt for _, attempt, _ in runs} == {2} and {pid for _, _, pid in runs} == {worker.pid}
    assert "Traceback" not in worker.err_path.read_text(), worker.tail()


def test_a_close_racing_the_start_never_leaves_a_sweeper_running() -> None:
    """kit.close() while the first event starts the deliverer: the sweeper is either never
    made or made and stopped, never made after the close looked and left running (it also
    raised "cannot join thread before it is started" when the close caught it half made)."""
    from czo_kit.events.deliverer import InProcessDeliverer

    making = threading.Event()
    release = threading.Event()
    sweepers: list[Any] = []

    class Sweeper:
        def __init__(self) -> None:
            self.running = False

        def start(self) -> None:
            self.running = True

        def stop(self) -> None:
            self.running = False

    def make_sweeper() -> Sweeper:
        making.set()
        assert release.wait(TIMEOUT)
        sweeper = Sweeper()
        sweepers.append(sweeper)
        return sweeper

    deliverer = InProcessDeliverer(sweep_interval=60, shutdown_timeout=1, maintenance=make_sweeper)
    starting = threading.Thread(target=deliverer.start)
    starting.start()
    assert making.wait(TIMEOUT)
    closing = threading.Thread(target=deliverer.close)
    closing.start()
    closing.join(0.2)  # the close may wait for the start; give it the chance to run ahead
    release.set()
    starting.join(TIMEOUT)
    closing.join(TIMEOUT)
    assert not starting.is_alive() and not closing.is_alive()
    assert [s.running for s in sweepers] == [False]
