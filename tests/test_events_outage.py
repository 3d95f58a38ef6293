"""The relay when the queue's Redis hangs or goes away: shutdown keeps one deadline, what is
left stays ``pending`` for the sweep, and an outage is logged once with its end, however many
events it holds up.

Each test runs a private ``redis-server`` that it pauses (SIGSTOP) or kills.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from czo_kit import Kit
from czo_kit.events.outbox import EventDelivery, EventOutbox
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until
from test_cache_redis import PrivateRedis, free_port, redis_server_binary  # noqa: F401
from test_worker import private_pg  # noqa: F401

pytestmark = pytest.mark.redis

SettingsFor = Callable[..., Settings]
EVENT = "test.outage.item"
HANG_GUARD = 60.0
"""Seconds after which a wait means "it never happened". Before the fix, close() waited the
Redis client's 5-second timeout once per held event: 20 events, 100 s."""


@pytest.fixture
def server(redis_server_binary: str) -> Iterator[PrivateRedis]:  # noqa: F811
    with PrivateRedis(redis_server_binary) as server:  # resumed before it is killed
        yield server


def make_settings(settings_for: SettingsFor, sqlite_url: str, server: PrivateRedis, **changes: Any) -> Settings:
    options: dict[str, Any] = {
        "queue_url": server.url,
        "queue_name": f"t{uuid.uuid4().hex[:12]}",
        "plugins": (),
        "events_shutdown_timeout": 1.0,
        "events_lease": 2.0,  # the sweep picks up pending events after min(10 s, lease)
        **changes,
    }
    return settings_for(sqlite_url, **options)


def states(kit: Kit, ids: list[str]) -> dict[str, str]:
    rows = EventOutbox.select(EventOutbox.event_id, EventOutbox.state).where(EventOutbox.event_id.in_(ids))
    return dict(rows.tuples().execute(kit.db))


def paused(pid: int) -> bool:
    """Whether the process is stopped (state T in /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] == "T"

def run_by_a_new_worker(settings: Settings, ids: list[str]) -> tuple[list[str], dict[str, str]]:
    """Start a worker (two consumer threads, a sweep every 0.2 s) with a handler of ``EVENT``
    and wait until it has run every one of ``ids``: the event ids it ran, in order (repeats
    included), and the outbox states of ``ids`` at the end."""
    ran: list[str] = []
    lock = threading.Lock()

    def handler(payload: Any, ctx: Any) -> None:
        with lock:
            ran.append(ctx.event_id)

    with Kit(settings) as worker:
        assert worker.outbox is not None
        worker.events.on(EVENT, handler, id="outage-handler")
        with worker.consumer(workers=2, sweep_interval=0.2):
            assert wait_until(lambda: set(ids) <= set(ran), timeout=HANG_GUARD), (
                f"{len(set(ids) - set(ran))} of {len(ids)} never delivered; outbox {states(worker, ids)}"
            )
        return ran, states(worker, ids)



def test_close_keeps_its_deadline_while_the_queue_redis_hangs(
    server: PrivateRedis, sqlite_url: str, settings_for: SettingsFor
) -> None:
    settings = make_settings(settings_for, sqlite_url, server)
    kit = Kit(settings)
    assert kit.outbox is not None and server.process is not None
    kit.outbox.ensure_tables()
    kit.events.emit_async(EVENT, {"n": -1})
    kit.outbox.flush()  # the queue's connection is open and has answered once
    pid = server.process.pid
    server.pause()
    try:
        ids = [kit.events.emit_async(EVENT, {"n": n}).event_id for n in range(20)]
        closer = threading.Thread(target=kit.close, name="closer", daemon=True)
        closer.start()
        closer.join(HANG_GUARD)
        assert not closer.is_alive(), "kit.close() is still waiting for the paused Redis"
        assert paused(pid), "close() returned only because the server came back"
        assert set(states(kit, ids).values()) == {"pending"}  # left for the sweep
    finally:
        server.resume()

    # A worker started after the server came back delivers every one of them, once.
    ran, final = run_by_a_new_worker(settings, ids)
    assert sorted(ran.count(i) for i in ids) == [1] * 20
    assert set(final.values()) == {"dispatched"}


def test_what_the_relay_holds_while_the_queue_redis_hangs_stays_within_its_limit(
    server: PrivateRedis, sqlite_url: str, settings_for: SettingsFor
) -> None:
    """A Redis that accepts connections and never answers makes no call fail: the relay's
    hand-off hangs, and everything committed meanwhile is held. Once the call has hung longer
    than the back-off's cap, at most ``max_held`` of it, in the hand-off or waiting; the rest
    stays ``pending`` for the sweep, and none is lost."""
    settings = make_settings(settings_for, sqlite_url, server)
    kit = Kit(settings)
    assert kit.outbox is not None and server.process is not None
    kit.outbox.ensure_tables()
    kit.events.emit_async(EVENT, {"n": -1})
    kit.outbox.flush()  # the queue's connection is open and has answered once
    relay = kit.outbox._relayer
    relay.max_held = 5
    relay.retry_max = 0.2  # how long a call may hang before the queue counts as down
    server.pause()
    try:
        ids = [kit.events.emit_async(EVENT, {"n": 0}).event_id]
        # The relay thread is in the hand-off, which never returns while Redis is paused.
        assert wait_until(lambda: not relay._todo and relay._relay_lock.locked(), timeout=HANG_GUARD)
        calling = time.monotonic()  # the call began before this: it has hung longer than the cap once
        assert wait_until(lambda: time.monotonic() - calling > relay.retry_max, timeout=HANG_GUARD)
        ids += [kit.events.emit_async(EVENT, {"n": n}).event_id for n in range(1, 50)]
        assert len(relay._todo) < relay.max_held, f"{len(relay._todo)} held besides the one in the hand-off"
        kit.close()  # by its deadline, the thread left stuck
    finally:
        server.resume()

    run_by_a_new_worker(settings, ids)  # none lost


def test_a_burst_larger_than_the_limit_is_held_while_the_queue_answers(
    server: PrivateRedis, sqlite_url: str, settings_for: SettingsFor
) -> None:
    """The limit is for a queue that fails or hangs: a commit of more events than it, with the
    queue answering, hands them all over (none waits for the sweep)."""
    with Kit(make_settings(settings_for, sqlite_url, server)) as kit:
        assert kit.outbox is not None
        kit.outbox.ensure_tables()
        kit.outbox._relayer.max_held = 5
        with kit.db.atomic():
            ids = [kit.events.emit_async(EVENT, {"n": n}).event_id for n in range(50)]
        kit.outbox.flush()
        assert set(states(kit, ids).values()) == {"queued"}


def test_a_queue_outage_is_logged_once_and_its_end_once(
    server: PrivateRedis, sqlite_url: str, settings_for: SettingsFor, caplog: pytest.LogCaptureFixture
) -> None:
    with Kit(make_settings(settings_for, sqlite_url, server)) as kit:
        assert kit.outbox is not None and kit.queue is not None
        kit.outbox.ensure_tables()
        kit.events.emit_async(EVENT, {"n": -1})
        kit.outbox.flush()
        with caplog.at_level(logging.DEBUG, logger="czo_kit.events"):
            server.kill()  # refused at once: every attempt fails fast
            ids = [kit.events.emit_async(EVENT, {"n": n}).event_id for n in range(200)]
            assert wait_until(lambda: any("unreachable" in r.getMessage() for r in caplog.records), timeout=HANG_GUARD)
            assert set(states(kit, ids).values()) == {"pending"}
            server.start()  # on the same port, empty
            assert wait_until(lambda: set(states(kit, ids).values()) == {"queued"}, timeout=HANG_GUARD), states(kit, ids)
        relay = [r for r in caplog.records if r.threadName == "czo-outbox-relay" or "queue" in r.getMessage()]
        warnings = [r.getMessage() for r in relay if r.levelno >= logging.WARNING]
        assert len(warnings) == 2, warnings
        down, up = warnings
        assert "unreachable" in down and "reachable again" in up, warnings
        assert not any(r.exc_info for r in relay), "a traceback was logged"
        assert sorted(kit.queue_tasks.queued_events()) == sorted(ids)  # each handed over once, after the outage


def test_a_process_that_exits_without_closing_keeps_the_deadline(
    server: PrivateRedis, sqlite_url: str, tmp_path: Path
) -> None:
    assert server.process is not None
    script = tmp_path / "emit_and_exit.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys
        from czo_kit import Kit
        from czo_kit.settings import Settings

        kit = Kit(Settings(database_url={sqlite_url!r}, queue_url={server.url!r}, plugins=(),
                           secret_key="x" * 40, events_shutdown_timeout=1.0))
        kit.outbox.ensure_tables()
        kit.events.emit_async("{EVENT}", {{"n": -1}})
        kit.outbox.flush()
        os.kill({server.process.pid}, signal.SIGSTOP)
        for n in range(20):
            kit.events.emit_async("{EVENT}", {{"n": n}})
        print("emitted", flush=True)
        # no kit.close(): the exit hook hands over what it can, by the deadline
    """))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=HANG_GUARD)
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit while the queue's Redis was paused", pytrace=False)
    finally:
        server.resume()
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "emitted"
    assert "left pending" in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]


# -- starting while the queue's Redis is down -------------------------------------------------


@pytest.fixture
def down_server(redis_server_binary: str) -> Iterator[PrivateRedis]:  # noqa: F811
    """A private redis-server that is not running yet (its port is chosen); stopped afterwards."""
    server = PrivateRedis(redis_server_binary)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def outage_db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """(database URL, a reader with ``all(sql)``) with the probe plugin's ``worker_runs``
    table and the kit's tables made, as `czo-kit db init` would have."""
    from test_worker import Lite

    if request.param == "sqlite":
        path = tmp_path / "data.sqlite3"
        return f"sqlite:///{path}", Lite(path)
    url, pg = request.getfixturevalue("private_pg")
    return url, pg


def test_everything_starts_while_the_queue_redis_is_down_and_catches_up_when_it_returns(
    down_server: PrivateRedis, outage_db: Any, tmp_path: Path
) -> None:
    from test_worker import (
        EVENT as PROBE_EVENT,
        SECRET as WORKER_SECRET,
        Proc,
        child_env,
        czo_kit_command,
        install_probe_plugin,
        wait_for,
    )

    db_url, rows = outage_db
    site = tmp_path / "site"
    install_probe_plugin(site)
    env = child_env(
        CZO_DATABASE_URL=db_url, CZO_QUEUE_URL=down_server.url, CZO_QUEUE_NAME=f"t{uuid.uuid4().hex[:12]}",
        CZO_SECRET_KEY=WORKER_SECRET, CZO_PLUGINS="czo-worker-probe", CZO_EVENTS_LEASE="2",
        CZO_EVENTS_SWEEP_INTERVAL="1", CZO_EVENTS_SHUTDOWN_TIMEOUT="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p),
    )
    settings = Settings(database_url=db_url, queue_url=down_server.url, queue_name=env["CZO_QUEUE_NAME"],
                        secret_key=WORKER_SECRET, plugins=(), events_shutdown_timeout=1.0)

    def delivered() -> dict[str, int]:
        found = rows.all("SELECT state, count(*) FROM czo_event_delivery GROUP BY state")
        return {state: int(n) for state, n in found}

    with ExitStack() as stack:
        # The worker starts (and waits) although nothing answers on the queue's port.
        worker = Proc([*czo_kit_command(), "worker", "-w", "2", "--max-delay", "0.2"], env=env, cwd=tmp_path,
                      label="worker")
        stack.callback(worker.kill)
        wait_for(lambda: "czo-kit worker:" in worker.err_path.read_text() or not worker.alive(), timeout=HANG_GUARD,
                 what="the worker to start", diag=worker.tail)
        assert worker.alive(), worker.tail()

        # A producer that stays up (its relay holds its events) and one that exits meanwhile
        # (its events stay pending for the sweep): both commit at once, as if nothing were wrong.
        producer = Kit(settings)
        stack.callback(producer.close)
        held = [producer.events.emit_async(PROBE_EVENT, {"n": n}).event_id for n in range(10)]
        script = Proc([sys.executable, "-c", textwrap.dedent("""
            from czo_kit.kit import Kit
            kit = Kit()
            for n in range(10):
                print(kit.events.emit_async("worker.probe", {"n": n}).event_id, flush=True)
            kit.close()
        """)], env=env, cwd=tmp_path, label="script")
        stack.callback(script.kill)
        assert script.wait(timeout=HANG_GUARD) == 0, script.tail()
        left = script.stdout().split()
        assert len(left) == 10
        assert set(states(producer, held + left).values()) == {"pending"}

        # The CLI reads what it can without the queue.
        status = subprocess.run([*czo_kit_command(), "events", "status"], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=HANG_GUARD)
        assert status.returncode == 0, status.stderr
        assert re.search(r"^  pending\s+20  oldest due ", status.stdout, re.M), status.stdout
        # The worker's sweep finds the script's events (past their grace) and cannot queue them.
        wait_for(lambda: "sweep of Outbox failed" in worker.err_path.read_text() or not worker.alive(),
                 timeout=HANG_GUARD,
                 what="the sweep to meet the outage", diag=worker.tail)

        down_server.start()  # the server comes back (empty)
        wanted = 2 * len(held + left)  # two probe subscribers
        wait_for(lambda: delivered() == {"done": wanted} or not worker.alive(), timeout=HANG_GUARD,
                 what="every delivery after the outage", diag=lambda: f"{delivered()}\n{worker.tail()}")
        assert worker.alive(), worker.tail()
        worker.popen.send_signal(signal.SIGINT)
        assert worker.wait(timeout=HANG_GUARD) == 0, worker.tail()

    runs = rows.all("SELECT event_id, subscriber, count(*) FROM worker_runs GROUP BY event_id, subscriber")
    assert len(runs) == wanted and {int(n) for _, _, n in runs} == {1}, runs  # each once
    assert {event_id for event_id, _, _ in runs} == set(held + left)
    log_text = worker.err_path.read_text()
    assert "Traceback" not in log_text, worker.tail()
    assert log_text.count("is unreachable") == 1 and log_text.count("answers again") == 1, worker.tail(60)
    assert log_text.count("sweep of Outbox failed") == 1 and "sweep of Outbox works again" in log_text, worker.tail(60)


def test_a_batch_runs_its_claimed_deliveries_while_the_queue_redis_is_down(
    server: PrivateRedis, sqlite_url: str, settings_for: SettingsFor
) -> None:
    # A worker took a dispatch task, then Redis went away: the deliveries it claimed in the
    # batch still run there and then (not a lease later); what needed the queue (a subscriber
    # of another worker, a retry) stays in the tables and the sweep queues it once Redis is back.
    settings = make_settings(settings_for, sqlite_url, server)
    elsewhere: list[str] = []
    mine: list[str] = []
    lock = threading.Lock()

    def recorder(into: list[str]) -> Callable[[Any, Any], None]:
        def handler(payload: Any, ctx: Any) -> None:
            with lock:
                into.append(ctx.event_id)
            if into is mine and payload["n"] == 1 and ctx.attempt == 1:
                raise RuntimeError("first attempt fails")
        return handler

    with Kit(settings) as producer, Kit(settings) as worker:
        assert producer.outbox is not None and worker.outbox is not None
        producer.events.on(EVENT, recorder(elsewhere), id="elsewhere")
        producer.events.on(EVENT, recorder(mine), id="mine")
        worker.events.on(EVENT, recorder(mine), id="mine")
        producer.outbox.ensure_tables()
        ids = [producer.events.emit_async(EVENT, {"n": n}).event_id for n in range(3)]
        producer.outbox.flush()
        server.kill()
        worker.outbox.dispatch_many(ids)  # the task the worker had taken
        assert sorted(mine) == sorted(ids), "the claimed deliveries did not run"
        by_sub = {(d.event_id, d.subscriber.split("|")[1]): d.state for d in EventDelivery.select().execute(worker.db)}
        assert by_sub == {
            **{(e, "elsewhere"): "queued" for e in ids},
            **{(e, "mine"): "done" for e in ids if e != ids[1]},
            (ids[1], "mine"): "retry",
        }
        server.start()  # on the same port, empty: the sweep finds what was never queued
        with producer.consumer(workers=2, sweep_interval=0.2):
            done = wait_until(lambda: producer.outbox.stats() == {"done": 6}, timeout=HANG_GUARD)
            assert done, producer.outbox.stats()
        assert sorted(elsewhere) == sorted(ids)
        assert sorted(mine) == sorted([*ids, ids[1]])


def sweeps_in_thirty_beats(kit: Kit, swept: Any, monkeypatch: pytest.MonkeyPatch, *more: Any) -> tuple[int, int]:
    """Run a worker's sweeper (sweeps every hour, heartbeat every 20 ms; ``more`` are its other
    recoverers) for 30 heartbeats: how many times ``swept.sweep`` ran, and the beats counted."""
    from czo_kit.events._heartbeat import Heartbeat
    from czo_kit.events.queue import Sweeper

    sweeps: list[float] = []
    beats: list[float] = []
    real_sweep = swept.sweep
    heartbeat = Heartbeat(kit.db, kind="test", queue="", plugins=(), interval=0.02)
    real_beat = heartbeat.beat

    def sweep() -> dict[str, int]:
        sweeps.append(time.monotonic())
        return dict(real_sweep())

    def beat() -> None:
        beats.append(time.monotonic())
        real_beat()

    monkeypatch.setattr(swept, "sweep", sweep)
    monkeypatch.setattr(heartbeat, "beat", beat)
    sweeper = Sweeper(kit.outbox, 3600.0, *more, heartbeat=heartbeat, prune=False)
    sweeper.start()
    try:
        assert wait_until(lambda: len(beats) >= 30, timeout=HANG_GUARD)
    finally:
        sweeper.stop()
    return len(sweeps), len(beats)


def test_a_sweep_that_fails_midway_through_a_backlog_waits_for_its_interval(
    server: PrivateRedis, sqlite_url: str, settings_for: SettingsFor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep that stops at its time budget with more to do is followed at once by the next;
    one that fails (the queue's Redis went away) is not: the sweeper waits out its interval
    instead of claiming, failing and giving back a batch as fast as it can for the whole
    outage. It used to, when the pass before the failure had stopped at its budget."""
    import datetime as dt

    import czo_kit.events.outbox as outbox_module
    from czo_kit.db._claim import SWEEP_BATCH

    with Kit(make_settings(settings_for, sqlite_url, server)) as kit:
        assert kit.outbox is not None
        kit.outbox.ensure_tables()
        long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
        EventOutbox.insert_many([
            {"event_id": f"backlog-{n}", "name": EVENT, "payload": b"\x80", "correlation_id": "c",
             "created_at": long_ago, "deliver_at": long_ago, "retries": 0, "priority": 50, "state": "pending",
             "updated_at": long_ago}
            for n in range(3 * SWEEP_BATCH)
        ]).execute(kit.db)  # committed, never queued: a backlog after an outage
        monkeypatch.setattr(outbox_module, "SWEEP_BUDGET", 0.0)  # each pass stops after a batch
        kit.outbox.sweep()
        assert kit.outbox.sweep_unfinished  # more to do: the next pass would follow at once
        server.kill()  # refused at once: each pass fails fast

        sweeps, beats = sweeps_in_thirty_beats(kit, kit.outbox, monkeypatch)
        assert sweeps == 1, f"{sweeps} sweeps in {beats} heartbeats, with a 3600 s interval"
        # The failed pass gave its claim back: what the first pass did not queue is pending again.
        left = Counter(states(kit, [f"backlog-{n}" for n in range(3 * SWEEP_BATCH)]).values())
        assert left == {"queued": SWEEP_BATCH, "pending": 2 * SWEEP_BATCH}, left
