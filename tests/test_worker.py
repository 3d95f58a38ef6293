"""Async events through real consumer processes: crashes, recovery, sharing, the CLI worker.

Every test here starts real processes (the Huey consumer of ``czo_kit``, a producer that dies
on purpose) against real servers: the queue on Redis, the data in PostgreSQL, each test in a
private schema and on a private queue name so that no sweep touches another test's rows.

The subscribers live in a tiny plugin, ``czo_worker_probe``, written to ``tmp_path``. Every
handler run inserts a row (event, subscriber, pid) into ``worker_runs`` *without* a unique
constraint, so a second run of the same delivery shows up as a duplicate row that the test
can count after the processes are gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from conftest import service_unavailable
from czo_kit.kit import Kit
from czo_kit.settings import Settings

pytestmark = [pytest.mark.slow]

SECRET = "worker-test-secret-" + "w" * 32
EVENT = "worker.probe"
SILENT_EVENT = "worker.nobody-listens"

PLUGIN_SOURCE = '''\
"""Test subscribers for the worker tests: each run is recorded in worker_runs."""

import os
import random
import time

from czo_kit.hookspecs import hookimpl

EVENT = "worker.probe"
SUBSCRIBERS = int(os.environ.get("WT_SUBSCRIBERS", "2"))
LOW, HIGH = (float(x) / 1000 for x in os.environ.get("WT_SLEEP_MS", "20,40").split(","))


@hookimpl
def czo_register_events(events, kit):
    db = kit.db
    sql = "INSERT INTO worker_runs (event_id, subscriber, pid) VALUES ({p}, {p}, {p})".format(p=db.param)

    def subscriber(label):
        def handler(payload, ctx):
            # Record first, then work: a worker killed during the work has run the handler
            # without finishing the delivery, which is exactly what makes a duplicate.
            with db.atomic():
                db.execute_sql(sql, (ctx.event_id, label, os.getpid()))
            time.sleep(random.uniform(LOW, HIGH))

        return handler

    for i in range(SUBSCRIBERS):
        events.on(EVENT, subscriber(f"probe-{i}"), id=f"probe-{i}")
'''

CONSUMER_SOURCE = '''\
"""A Huey consumer with the probe plugin and the periodic sweep (what `czo-kit worker` runs)."""

import os
import pathlib
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import czo_worker_probe  # noqa: E402

from czo_kit.events.queue import Sweeper  # noqa: E402
from czo_kit.kit import Kit  # noqa: E402

kit = Kit(plugins=[czo_worker_probe])
assert kit.queue is not None and kit.outbox is not None
ready = pathlib.Path(os.environ["WT_READY"])
first = threading.Lock()


def announce():
    # Runs in every worker thread before it takes a task; the first one says "ready".
    if first.acquire(blocking=False):
        ready.write_text(str(os.getpid()))


kit.queue.on_startup("wt_ready")(announce)
sweeper = Sweeper(kit.outbox, kit.settings.events_sweep_interval)
consumer = kit.queue.create_consumer(
    workers=int(os.environ.get("WT_WORKERS", "4")), periodic=False, max_delay=0.5
)
sweeper.start()
try:
    consumer.run()
finally:
    sweeper.stop()
    kit.close()
'''

PRODUCER_SOURCE = '''\
"""Emit WT_COUNT async events in one transaction; print their ids before the commit.
With WT_PRODUCER_PLUGIN, that module (next to this script) is one of the kit's plugins."""

import importlib
import os
import sys

from czo_kit.kit import Kit

plugins = []
if os.environ.get("WT_PRODUCER_PLUGIN"):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    plugins.append(importlib.import_module(os.environ["WT_PRODUCER_PLUGIN"]))
kit = Kit(plugins=plugins)
with kit.db.atomic():
    for n in range(int(os.environ.get("WT_COUNT", "1"))):
        ctx = kit.events.emit_async(os.environ.get("WT_EVENT", "worker.probe"), {"n": n})
        print(ctx.event_id, flush=True)
# With CZO_FAULTS=events.relay the process ends inside the commit above (exit code 70).
kit.close()
print("committed and relayed", flush=True)
'''


# -- processes --------------------------------------------------------------------------


class Proc:
    """A subprocess whose output goes to files in ``tmp_path``; always reaped."""

    def __init__(self, args: list[str], *, env: dict[str, str], cwd: Path, label: str) -> None:
        self.label = label
        self.out_path = cwd / f"{label}.stdout"
        self.err_path = cwd / f"{label}.stderr"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL (if still running) and reap."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        text = self.err_path.read_text(errors="replace") if self.err_path.exists() else ""
        shown = "\n".join(text.splitlines()[-lines:])
        return f"--- {self.label} (pid {self.pid}, exit {self.popen.poll()}) stderr tail ---\n{shown or '(empty)'}"


def child_env(**values: str) -> dict[str, str]:
    """The parent environment without any CZO_* variable (no leaked faults), plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CZO_") and not k.startswith("WT_")}
    env.update(values)
    return env


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str, diag: Callable[[], str], interval: float = 0.05) -> Any:
    """Poll ``condition`` until it is truthy; fail with ``diag()`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{diag()}", pytrace=False)
        time.sleep(interval)


# -- servers ----------------------------------------------------------------------------


class Pg:
    """An autocommit psycopg2 connection to the test's private schema, for checking rows."""

    def __init__(self, base_url: str, schema: str) -> None:
        import psycopg2

        from czo_kit.default_plugins.postgres import parse_postgresql_url

        dbname, params = parse_postgresql_url(base_url)
        self.conn = psycopg2.connect(dbname=dbname, options=f"-csearch_path={schema}", **params)
        self.conn.autocommit = True

    def all(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall())

    def one(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self.all(query, params)
        return rows[0][0] if rows else None

    def execute(self, query: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute(query)

    def table_exists(self, name: str) -> bool:
        return bool(self.one("SELECT to_regclass(%s) IS NOT NULL", (name,)))

    def close(self) -> None:
        self.conn.close()


def create_kit_tables(url: str) -> None:
    """What `czo-kit db init` does for the kit's own tables, before any process starts."""
    with Kit(Settings(database_url=url, secret_key="k" * 40, queue_url="", plugins=())) as kit:
        kit.create_kit_tables()


@pytest.fixture
def private_pg(pg_base_url: str) -> Iterator[tuple[str, Pg]]:
    """A schema of its own for one test (the sweep of a worker recovers every row it sees)."""
    schema = f"czowt_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in pg_base_url else "?"
    url = pg_base_url + separator + urlencode({"options": f"-csearch_path={schema}"})
    admin = Pg(pg_base_url, "public")
    try:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        pg = Pg(pg_base_url, schema)
        try:
            pg.execute(
                "CREATE TABLE worker_runs (id bigserial PRIMARY KEY, event_id varchar(36) NOT NULL, "
                "subscriber text NOT NULL, pid integer NOT NULL, "
                "at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
            create_kit_tables(url)  # `czo-kit db init`: producers emit inside transactions
            yield url, pg
        finally:
            pg.close()
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        admin.close()


@pytest.fixture
def queue_name(redis_url: str) -> Iterator[str]:
    """A queue of its own on the Redis test database, deleted afterwards."""
    import redis

    name = f"czo_wt_{uuid.uuid4().hex[:12]}"  # Huey drops "-" and "." from Redis key names
    try:
        yield name
    finally:
        client = redis.Redis.from_url(redis_url)
        try:
            keys = list(client.scan_iter(match=f"huey.*{name}*"))
            if keys:
                client.delete(*keys)
        finally:
            client.close()


def queue_size(redis_url: str, name: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.zcard(f"huey.redis.{name}"))
    finally:
        client.close()


def write_scripts(where: Path) -> dict[str, Path]:
    where.mkdir(parents=True, exist_ok=True)
    paths = {
        "plugin": where / "czo_worker_probe.py",
        "consumer": where / "wt_consumer.py",
        "producer": where / "wt_producer.py",
    }
    paths["plugin"].write_text(PLUGIN_SOURCE)
    paths["consumer"].write_text(CONSUMER_SOURCE)
    paths["producer"].write_text(PRODUCER_SOURCE)
    return paths


def server_env(db_url: str, redis_url: str, queue_name: str, **extra: str) -> dict[str, str]:
    values = {
        "CZO_DATABASE_URL": db_url,
        "CZO_QUEUE_URL": redis_url,
        "CZO_QUEUE_NAME": queue_name,
        "CZO_SECRET_KEY": SECRET,
        "CZO_PLUGINS": "",  # no installed plugin: only the probe subscribes
        "CZO_EVENTS_LEASE": "3",
        "CZO_EVENTS_SWEEP_INTERVAL": "1",
        "CZO_EVENTS_RETRY_BASE": "0.5",
    }
    values.update(extra)
    return child_env(**values)


def start_consumer(scripts: dict[str, Path], env: dict[str, str], label: str, *, wait_ready: bool = True) -> Proc:
    ready = scripts["consumer"].parent / f"{label}.ready"
    proc = Proc([sys.executable, str(scripts["consumer"])], env={**env, "WT_READY": str(ready)},
                cwd=scripts["consumer"].parent, label=label)
    if wait_ready:
        wait_for(lambda: ready.exists() or not proc.alive(), timeout=60, what=f"{label} to start", diag=proc.tail)
        assert proc.alive(), f"{label} died while starting\n{proc.tail()}"
    return proc


def emit_many(db_url: str, redis_url: str, queue_name: str, count: int) -> list[str]:
    """Emit ``count`` async events from this process, in one transaction; their ids."""
    settings = Settings(
        database_url=db_url, queue_url=redis_url, queue_name=queue_name, secret_key=SECRET, plugins=()
    )
    with Kit(settings) as kit:
        with kit.db.atomic():
            ids = [kit.events.emit_async(EVENT, {"n": n}).event_id for n in range(count)]
    return ids


class Runs:
    """Counts over ``worker_runs`` and the delivery table of one test."""

    def __init__(self, pg: Pg) -> None:
        self.pg = pg

    def total(self) -> int:
        return int(self.pg.one("SELECT count(*) FROM worker_runs"))

    def pairs(self) -> int:
        return int(self.pg.one("SELECT count(*) FROM (SELECT DISTINCT event_id, subscriber FROM worker_runs) AS p"))

    def per_pair(self) -> dict[tuple[str, str], int]:
        rows = self.pg.all("SELECT event_id, subscriber, count(*) FROM worker_runs GROUP BY event_id, subscriber")
        return {(e, s): int(n) for e, s, n in rows}

    def pids(self) -> dict[int, int]:
        return {int(p): int(n) for p, n in self.pg.all("SELECT pid, count(*) FROM worker_runs GROUP BY pid")}

    def delivery_states(self) -> dict[str, int]:
        if not self.pg.table_exists("czo_event_delivery"):
            return {}
        return {s: int(n) for s, n in self.pg.all("SELECT state, count(*) FROM czo_event_delivery GROUP BY state")}

    def outbox_states(self) -> dict[str, int]:
        if not self.pg.table_exists("czo_event_outbox"):
            return {}
        return {s: int(n) for s, n in self.pg.all("SELECT state, count(*) FROM czo_event_outbox GROUP BY state")}

    def summary(self) -> str:
        return (
            f"runs={self.total()} distinct pairs={self.pairs()} by pid={self.pids()} "
            f"deliveries={self.delivery_states()} outbox={self.outbox_states()}"
        )


def diagnose(runs: Runs, *procs: Proc) -> Callable[[], str]:
    return lambda: "\n".join([runs.summary(), *(p.tail() for p in procs)])


def expected_pairs(event_ids: list[str], subscribers: int = 2) -> set[tuple[str, str]]:
    return {(e, f"probe-{i}") for e in event_ids for i in range(subscribers)}


# -- 1. kill -9 the consumer mid-flight -------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
def test_consumer_killed_mid_flight_loses_nothing(
    private_pg: tuple[str, Pg], redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    db_url, pg = private_pg
    runs = Runs(pg)
    scripts = write_scripts(tmp_path)
    env = server_env(db_url, redis_url, queue_name, WT_SLEEP_MS="20,40", WT_WORKERS="4")
    events = 1000
    event_ids = emit_many(db_url, redis_url, queue_name, events)
    wanted = expected_pairs(event_ids)
    assert runs.outbox_states() == {"queued": events}

    with ExitStack() as stack:
        first = start_consumer(scripts, env, "consumer-1", wait_ready=False)
        stack.callback(first.kill)
        # Kill once some, but not all, deliveries have run: 10% of 2,000 pairs.
        wait_for(lambda: runs.total() >= len(wanted) // 10 or not first.alive(), timeout=90,
                 what="10% of the deliveries", diag=diagnose(runs, first))
        assert first.alive(), f"the first consumer died on its own\n{first.tail()}"
        os.kill(first.pid, signal.SIGKILL)
        first.kill()  # reap
        assert first.popen.returncode == -signal.SIGKILL
        at_kill = runs.total()
        states_at_kill = runs.delivery_states()
        killed_db_time = pg.one("SELECT clock_timestamp()")
        assert at_kill < len(wanted), "everything ran before the kill; nothing was in flight"

        killed_at = time.monotonic()
        second = start_consumer(scripts, env, "consumer-2", wait_ready=False)
        stack.callback(second.kill)

        def finished() -> bool:
            return runs.delivery_states() == {"done": len(wanted)} and runs.pairs() == len(wanted)

        wait_for(lambda: finished() or not second.alive(), timeout=180,
                 what="every (event, subscriber) pair to run and every delivery to be done",
                 diag=diagnose(runs, first, second), interval=0.25)
        assert second.alive(), f"the second consumer died\n{second.tail()}"
        recovery = time.monotonic() - killed_at

    per_pair = runs.per_pair()
    missing = wanted - set(per_pair)
    assert not missing, f"{len(missing)} pair(s) never ran, e.g. {sorted(missing)[:3]}"
    assert set(per_pair) == wanted, "a run was recorded for an unknown (event, subscriber)"
    twice = {pair: n for pair, n in per_pair.items() if n > 1}
    # At-least-once: only a delivery that was running when the worker died may run again,
    # and a consumer has 4 worker threads, so at most 4 handlers were mid-run.
    assert all(n == 2 for n in twice.values()), f"a pair ran more than twice: {twice}"
    assert len(twice) <= 4, f"{len(twice)} duplicates, more than the 4 handlers in flight: {twice}"
    assert runs.delivery_states() == {"done": len(wanted)}
    assert runs.outbox_states() == {"dispatched": events}
    assert "Traceback" not in second.err_path.read_text(), second.tail()
    assert pg.one("SELECT count(*) FROM czo_event_dead_letter") == 0
    # The re-run deliveries were claimed twice; nothing else was.
    attempts = dict(pg.all("SELECT attempts, count(*) FROM czo_event_delivery GROUP BY attempts"))
    assert set(attempts) <= {1, 2} and attempts.get(2, 0) <= 4, attempts
    by_pid = runs.pids()
    assert set(by_pid) == {first.pid, second.pid}, by_pid
    # When did the deliveries that were running at the kill run again? (lease + a sweep)
    rerun_after = pg.one(
        "SELECT extract(epoch FROM max(d.finished_at AT TIME ZONE 'UTC') - %s::timestamptz) "
        "FROM czo_event_delivery d WHERE d.attempts = 2", (killed_db_time,)
    ) if attempts.get(2) else None
    leftover = queue_size(redis_url, queue_name)
    print(
        f"\nkill -9 after {at_kill} of {len(wanted)} runs (delivery states {states_at_kill}); "
        f"{len(twice)} pair(s) ran twice; re-claimed deliveries {attempts.get(2, 0)}"
        f"{f', the last finished {float(rerun_after):.1f}s after the kill' if rerun_after is not None else ''}; "
        f"all {len(wanted)} done {recovery:.1f}s after the kill; runs by pid {by_pid}; "
        f"{leftover} task(s) still in the queue (duplicates from the sweep, all to be skipped)"
    )


# -- 2. the producer dies between commit and enqueue --------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
def test_producer_killed_after_commit_before_enqueue(
    private_pg: tuple[str, Pg], redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    db_url, pg = private_pg
    runs = Runs(pg)
    scripts = write_scripts(tmp_path)
    env = server_env(db_url, redis_url, queue_name, WT_SLEEP_MS="0,1")

    producer = Proc([sys.executable, str(scripts["producer"])],
                    env={**env, "CZO_FAULTS": "events.relay", "WT_COUNT": "3"}, cwd=tmp_path, label="producer")
    try:
        code = producer.wait(timeout=60)
    finally:
        producer.kill()
    assert code == 70, f"the producer should die at the fault point\n{producer.tail()}"
    event_ids = producer.stdout().split()
    assert len(event_ids) == 3, producer.stdout()
    rows = dict(pg.all("SELECT event_id, state FROM czo_event_outbox"))
    assert rows == {e: "pending" for e in event_ids}, "committed, never queued: the rows stay pending"
    assert queue_size(redis_url, queue_name) == 0, "nothing reached the queue: only the sweep can find them"
    assert runs.total() == 0

    with ExitStack() as stack:
        consumer = start_consumer(scripts, env, "consumer")
        stack.callback(consumer.kill)
        started = time.monotonic()
        wanted = expected_pairs(event_ids)
        wait_for(lambda: runs.delivery_states() == {"done": len(wanted)} or not consumer.alive(), timeout=60,
                 what="the sweep to recover the pending events", diag=diagnose(runs, consumer), interval=0.1)
        assert consumer.alive(), consumer.tail()
        took = time.monotonic() - started
    assert runs.per_pair() == {pair: 1 for pair in wanted}
    assert runs.outbox_states() == {"dispatched": 3}
    assert "Traceback" not in consumer.err_path.read_text(), consumer.tail()
    print(f"\nproducer exit 70 left 3 pending events; delivered to every subscriber {took:.1f}s after the consumer started")


# -- 3. two consumers share one queue -----------------------------------------------------


@pytest.mark.redis
@pytest.mark.postgres
def test_two_consumers_share_the_work_exactly_once(
    private_pg: tuple[str, Pg], redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    db_url, pg = private_pg
    runs = Runs(pg)
    scripts = write_scripts(tmp_path)
    env = server_env(db_url, redis_url, queue_name, WT_SLEEP_MS="10,20", WT_WORKERS="3")

    with ExitStack() as stack:
        consumers = []
        for label in ("consumer-a", "consumer-b"):
            proc = start_consumer(scripts, env, label, wait_ready=False)
            stack.callback(proc.kill)
            consumers.append(proc)
        for proc in consumers:  # both take tasks before there is any
            ready = tmp_path / f"{proc.label}.ready"
            wait_for(lambda ready=ready, proc=proc: ready.exists() or not proc.alive(), timeout=60,
                     what=f"{proc.label} to start", diag=proc.tail)
            assert proc.alive(), proc.tail()
        started = time.monotonic()
        event_ids = emit_many(db_url, redis_url, queue_name, 400)
        wanted = expected_pairs(event_ids)
        wait_for(lambda: runs.delivery_states() == {"done": len(wanted)} or not all(p.alive() for p in consumers),
                 timeout=120, what="all 800 deliveries", diag=diagnose(runs, *consumers), interval=0.2)
        assert all(p.alive() for p in consumers), "\n".join(p.tail() for p in consumers)
        took = time.monotonic() - started

    per_pair = runs.per_pair()
    assert set(per_pair) == wanted, f"missing {len(wanted - set(per_pair))}, unknown {len(set(per_pair) - wanted)}"
    twice = {pair: n for pair, n in per_pair.items() if n != 1}
    assert not twice, f"{len(twice)} pair(s) ran more than once without any crash: {list(twice.items())[:5]}"
    by_pid = runs.pids()
    assert set(by_pid) == {p.pid for p in consumers}, f"both consumers should have worked: {by_pid}"
    for proc in consumers:
        assert "Traceback" not in proc.err_path.read_text(), proc.tail()
    assert runs.outbox_states() == {"dispatched": 400}
    assert dict(pg.all("SELECT attempts, count(*) FROM czo_event_delivery GROUP BY attempts")) == {1: 800}
    print(f"\n800 deliveries in {took:.1f}s, each exactly once; runs by pid {by_pid}")


# -- 4. the real `czo-kit worker` and `huey_consumer czo_kit.worker.huey` ----------------


def install_probe_plugin(site: Path) -> None:
    """Make ``czo_worker_probe`` an installed ``czo_kit`` plugin for processes that put
    ``site`` on PYTHONPATH: a module plus a dist-info with its entry point (nothing is
    installed into the virtualenv)."""
    site.mkdir(parents=True, exist_ok=True)
    (site / "czo_worker_probe.py").write_text(PLUGIN_SOURCE)
    info = site / "czo_worker_probe-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: czo-worker-probe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[czo_kit]\nczo-worker-probe = czo_worker_probe\n")


def sqlite_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    site = tmp_path / "site"
    install_probe_plugin(site)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    values = {
        "CZO_DATABASE_URL": f"sqlite:///{tmp_path / 'data.sqlite3'}",
        "CZO_QUEUE_URL": f"sqlite:///{tmp_path / 'queue.sqlite3'}",
        "CZO_QUEUE_NAME": "czo_wt_cli",
        "CZO_SECRET_KEY": SECRET,
        "CZO_PLUGINS": "czo-worker-probe",
        "CZO_EVENTS_SWEEP_INTERVAL": "1",
        "CZO_EVENTS_LEASE": "2",
        "PYTHONPATH": path,
    }
    values.update(extra)
    return child_env(**values)


class Lite:
    """Read the SQLite data file of the CLI tests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=wal")
            conn.execute("CREATE TABLE IF NOT EXISTS worker_runs (id INTEGER PRIMARY KEY, event_id TEXT, subscriber TEXT, pid INTEGER)")
            conn.commit()
        finally:
            conn.close()
        create_kit_tables(f"sqlite:///{path}")

    def all(self, query: str) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "czo_event_outbox" not in names and "czo_event" in query:
                return []
            return list(conn.execute(query))
        finally:
            conn.close()

    def summary(self) -> str:
        return (
            f"outbox={self.all('SELECT event_id, name, state FROM czo_event_outbox')} "
            f"deliveries={self.all('SELECT subscriber, state, attempts, last_error FROM czo_event_delivery')} "
            f"runs={self.all('SELECT event_id, subscriber, pid FROM worker_runs')}"
        )


def sqlite_kit(env: dict[str, str]) -> Kit:
    return Kit(Settings(
        database_url=env["CZO_DATABASE_URL"], queue_url=env["CZO_QUEUE_URL"], queue_name=env["CZO_QUEUE_NAME"],
        secret_key=SECRET, plugins=(),
    ))


def czo_kit_command() -> list[str]:
    script = Path(sys.executable).with_name("czo-kit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "czo_kit.cli"]


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_czo_kit_worker_delivers_and_stops_cleanly_on_sigint(tmp_path: Path, worker_type: str) -> None:
    env = sqlite_env(tmp_path)
    lite = Lite(tmp_path / "data.sqlite3")
    with ExitStack() as stack:
        worker = Proc([*czo_kit_command(), "worker", "-w", "2", "-k", worker_type], env=env, cwd=tmp_path,
                      label="czo-kit-worker")
        stack.callback(worker.kill)
        wait_for(lambda: "czo-kit worker:" in worker.err_path.read_text() or not worker.alive(), timeout=60,
                 what="the worker banner", diag=worker.tail)
        assert worker.alive(), worker.tail()
        with sqlite_kit(env) as kit:
            heard = kit.events.emit_async(EVENT, {"n": 1}).event_id
            unheard = kit.events.emit_async(SILENT_EVENT, {"n": 2}).event_id

        def delivered() -> bool:
            outbox = dict(lite.all("SELECT event_id, state FROM czo_event_outbox"))
            deliveries = lite.all("SELECT subscriber, state FROM czo_event_delivery")
            return outbox == {heard: "dispatched", unheard: "dispatched"} and sorted(deliveries) == [
                (f"{EVENT}|probe-0", "done"), (f"{EVENT}|probe-1", "done")
            ]

        # The worker polls an idle SQLite queue with back-off (up to 10 s between polls).
        wait_for(delivered, timeout=60, what="both events dispatched and both deliveries done",
                 diag=lambda: f"{lite.summary()}\n{worker.tail()}", interval=0.1)
        runs = lite.all("SELECT event_id, subscriber FROM worker_runs ORDER BY subscriber")
        assert runs == [(heard, "probe-0"), (heard, "probe-1")], runs
        pids = {pid for (pid,) in lite.all("SELECT pid FROM worker_runs")}
        if worker_type == "thread":
            assert pids == {worker.pid}
        else:  # forked worker processes ran the handlers
            assert worker.pid not in pids, pids

        sent = time.monotonic()
        worker.popen.send_signal(signal.SIGINT)
        try:
            code = worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"czo-kit worker did not stop within 30s of SIGINT\n{worker.tail()}", pytrace=False)
        took = time.monotonic() - sent
    assert code == 0, f"czo-kit worker exited with {code} on SIGINT\n{worker.tail()}"
    assert "Traceback" not in worker.err_path.read_text(), worker.tail()
    print(f"\nczo-kit worker -k {worker_type} delivered both events and stopped {took:.1f}s after SIGINT")


def test_worker_module_exposes_the_event_tasks(tmp_path: Path) -> None:
    env = sqlite_env(tmp_path)
    code = (
        "import czo_kit.worker as w\n"
        "from huey import Huey\n"
        "assert isinstance(w.huey, Huey)\n"
        "print('\\n'.join(sorted(w.huey._registry._registry)))\n"
        "print('subscribers', ','.join(s.id for s in w.kit.events.subscribers('worker.probe')))\n"
        "w.kit.close()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    keys = lines[:-1]
    assert any(k.endswith("czo_events_dispatch") for k in keys), keys
    assert any(k.endswith("czo_events_deliver") for k in keys), keys
    assert lines[-1] == f"subscribers {EVENT}|probe-0,{EVENT}|probe-1", lines[-1]


def test_huey_consumer_runs_the_sweep(tmp_path: Path) -> None:
    """``huey_consumer czo_kit.worker.huey`` delivers, and its start-up hook starts the sweep:
    an event whose producer died before enqueueing is only ever found by the sweep."""
    consumer_bin = shutil.which("huey_consumer", path=str(Path(sys.executable).parent))
    if consumer_bin is None:  # pragma: no cover - huey installs it
        service_unavailable("huey_consumer", f"not installed next to {sys.executable}")
    env = sqlite_env(tmp_path)
    lite = Lite(tmp_path / "data.sqlite3")
    producer_path = tmp_path / "wt_producer.py"
    producer_path.write_text(PRODUCER_SOURCE)
    producer = Proc([sys.executable, str(producer_path)], env={**env, "CZO_FAULTS": "events.relay"},
                    cwd=tmp_path, label="producer")
    try:
        assert producer.wait(timeout=60) == 70, producer.tail()
    finally:
        producer.kill()
    (event_id,) = producer.stdout().split()
    assert lite.all("SELECT event_id, state FROM czo_event_outbox") == [(event_id, "pending")]

    with ExitStack() as stack:
        consumer = Proc([consumer_bin, "czo_kit.worker.huey", "-w", "2", "-m", "0.5"], env=env, cwd=tmp_path,
                        label="huey-consumer")
        stack.callback(consumer.kill)
        wait_for(
            lambda: sorted(lite.all("SELECT state FROM czo_event_delivery")) == [("done",), ("done",)]
            or not consumer.alive(),
            timeout=60, what="the sweep to deliver the pending event",
            diag=lambda: f"{lite.summary()}\n{consumer.tail()}", interval=0.1,
        )
        assert consumer.alive(), consumer.tail()
        consumer.popen.send_signal(signal.SIGINT)
        try:
            code = consumer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"huey_consumer did not stop within 30s of SIGINT\n{consumer.tail()}", pytrace=False)
    assert code == 0, consumer.tail()
    assert sorted(lite.all("SELECT subscriber FROM worker_runs")) == [("probe-0",), ("probe-1",)]
