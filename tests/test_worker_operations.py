"""Real worker processes keep their tables bounded and say that they are alive.

- Retention: a long run through ``czo-kit worker`` with a short ``CZO_EVENTS_RETENTION``:
  the worker prunes at its sweeps, so the tables hold about what the retention covers, not
  everything ever emitted; every delivery still runs once.
- Heartbeats: ``czo-kit worker`` (threads and ``-k process``) and ``huey_consumer
  czo_kit.worker.huey`` each keep a row in ``czo_worker`` (``kit.outbox.workers()``), renewed
  every few seconds and removed when they stop cleanly; a killed one's row ages out.

On SQLite with its SQLite queue, and on PostgreSQL with Redis.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from czo_kit.kit import Kit
from czo_kit.settings import Settings
from test_worker import (
    EVENT,
    SECRET,
    Lite,
    Proc,
    child_env,
    czo_kit_command,
    install_probe_plugin,
    private_pg,  # noqa: F401
    queue_name,  # noqa: F401
    wait_for,
)

pytestmark = [pytest.mark.slow]

GUARD = 120.0
"""Seconds after which a wait means "it never happened"."""


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.redis])])
def servers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[dict[str, str], Any]]:
    """(the worker's environment, a reader with ``all(sql)``), the probe plugin installed."""
    site = tmp_path / "site"
    install_probe_plugin(site)
    if request.param == "sqlite":
        path = tmp_path / "data.sqlite3"
        reader: Any = Lite(path)
        db_url, queue_url, name = f"sqlite:///{path}", f"sqlite:///{tmp_path / 'queue.sqlite3'}", "czo_wt_ops"
    else:
        db_url, reader = request.getfixturevalue("private_pg")
        queue_url, name = str(request.getfixturevalue("redis_url")), str(request.getfixturevalue("queue_name"))
    env = child_env(
        CZO_DATABASE_URL=db_url, CZO_QUEUE_URL=queue_url, CZO_QUEUE_NAME=name, CZO_SECRET_KEY=SECRET,
        CZO_PLUGINS="czo-worker-probe", CZO_EVENTS_LEASE="2", CZO_EVENTS_SWEEP_INTERVAL="0.2",
        PYTHONPATH=os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p),
        WT_SLEEP_MS="0,1",
    )
    yield env, reader


def producer_kit(env: dict[str, str]) -> Kit:
    return Kit(Settings(database_url=env["CZO_DATABASE_URL"], queue_url=env["CZO_QUEUE_URL"],
                        queue_name=env["CZO_QUEUE_NAME"], secret_key=SECRET, plugins=()))


def count(reader: Any, table: str) -> int:
    return int(reader.all(f"SELECT count(*) FROM {table}")[0][0])


def start_worker(args: list[str], env: dict[str, str], cwd: Path, label: str, stack: ExitStack) -> Proc:
    worker = Proc(args, env=env, cwd=cwd, label=label)
    stack.callback(worker.kill)
    return worker


def test_a_long_run_keeps_the_tables_bounded_by_the_retention(
    servers: tuple[dict[str, str], Any], tmp_path: Path
) -> None:
    env, reader = servers
    env = {**env, "CZO_EVENTS_RETENTION": "1"}
    rounds, per_round = 6, 40
    wanted = 2 * per_round  # two probe subscribers
    sizes: list[tuple[int, int]] = []
    with ExitStack() as stack:
        worker = start_worker([*czo_kit_command(), "worker", "-w", "2", "--max-delay", "0.2"], env, tmp_path,
                              "worker", stack)
        producer = producer_kit(env)
        stack.callback(producer.close)
        for n in range(1, rounds + 1):
            for i in range(per_round):
                producer.events.emit_async(EVENT, {"n": i})
            wait_for(lambda n=n: count(reader, "worker_runs") == n * wanted or not worker.alive(), timeout=GUARD,
                     what=f"round {n} to run", diag=worker.tail)
            assert worker.alive(), worker.tail()
            sizes.append((count(reader, "czo_event_outbox"), count(reader, "czo_event_delivery")))
            # Nobody prunes but the worker: the rounds before this one go once 1 s has passed.
            wait_for(lambda: count(reader, "czo_event_delivery") <= wanted, timeout=GUARD,
                     what="the worker to prune the earlier rounds", diag=worker.tail)
        worker.popen.send_signal(signal.SIGINT)
        assert worker.wait(timeout=GUARD) == 0, worker.tail()

    runs = reader.all("SELECT event_id, subscriber, count(*) FROM worker_runs GROUP BY event_id, subscriber")
    assert len(runs) == rounds * wanted and {int(n) for *_, n in runs} == {1}  # every delivery, once
    # At every point of the run the tables held at most this round and what was left of the
    # one before, not the 240 events and 480 deliveries that went through them.
    assert max(outbox for outbox, _ in sizes) <= 2 * per_round, sizes
    assert max(deliveries for _, deliveries in sizes) <= 2 * wanted, sizes
    assert count(reader, "czo_event_outbox") <= per_round
    assert "Traceback" not in worker.err_path.read_text(), worker.tail()
    print(f"\n{rounds} rounds of {per_round} events: (outbox, deliveries) after each round {sizes}")


def heartbeats(reader: Any) -> dict[int, tuple[str, str, str, Any]]:
    rows = reader.all("SELECT pid, kind, queue, plugins, last_seen FROM czo_worker")
    return {int(pid): (kind, queue, plugins, last_seen) for pid, kind, queue, plugins, last_seen in rows}


@pytest.mark.parametrize("worker_type", ["thread", "process"])
def test_a_worker_keeps_a_heartbeat_and_removes_it_when_it_stops(
    servers: tuple[dict[str, str], Any], tmp_path: Path, worker_type: str
) -> None:
    env, reader = servers
    with ExitStack() as stack:
        worker = start_worker([*czo_kit_command(), "worker", "-w", "2", "-k", worker_type], env, tmp_path,
                              "worker", stack)
        wait_for(lambda: worker.pid in heartbeats(reader) or not worker.alive(), timeout=GUARD,
                 what="the worker's heartbeat", diag=worker.tail)
        kind, queue, plugins, first_seen = heartbeats(reader)[worker.pid]
        assert kind == f"czo-kit worker (2 {worker_type})" and queue == env["CZO_QUEUE_NAME"]
        assert "czo-worker-probe" in plugins and "czo_kit.default_plugins.events" in plugins
        # Renewed every few seconds.
        wait_for(lambda: heartbeats(reader)[worker.pid][3] != first_seen, timeout=GUARD,
                 what="a second heartbeat", diag=worker.tail)
        with producer_kit(env) as kit:
            (seen,) = [w for w in kit.outbox.workers(seen_within=30) if w.pid == worker.pid]
            assert seen.kind == kind and "czo-worker-probe" in seen.plugins and seen.seen_ago < 30
            assert seen.started_at <= seen.last_seen <= dt.datetime.now(dt.timezone.utc)
        worker.popen.send_signal(signal.SIGINT)
        assert worker.wait(timeout=GUARD) == 0, worker.tail()
    assert worker.pid not in heartbeats(reader), "a clean stop removes the heartbeat"


def test_huey_consumer_keeps_a_heartbeat_and_a_killed_worker_ages_out(
    servers: tuple[dict[str, str], Any], tmp_path: Path
) -> None:
    env, reader = servers
    consumer_bin = shutil.which("huey_consumer", path=str(Path(sys.executable).parent))
    assert consumer_bin is not None, "huey installs huey_consumer next to python"
    with ExitStack() as stack:
        consumer = start_worker([consumer_bin, "czo_kit.worker.huey", "-w", "2", "-m", "0.5"], env, tmp_path,
                                "huey-consumer", stack)
        killed = start_worker([*czo_kit_command(), "worker", "-w", "1"], env, tmp_path, "killed", stack)
        for proc in (consumer, killed):
            wait_for(lambda proc=proc: proc.pid in heartbeats(reader) or not proc.alive(), timeout=GUARD,
                     what=f"the heartbeat of {proc.label}", diag=proc.tail)
        assert heartbeats(reader)[consumer.pid][0] == "huey_consumer"
        os.kill(killed.pid, signal.SIGKILL)
        killed.kill()
        with producer_kit(env) as kit:
            # Its row stays (nobody removed it) but ages: it drops out of the recent workers.
            assert killed.pid in heartbeats(reader)
            wait_for(lambda: killed.pid not in {w.pid for w in kit.outbox.workers(seen_within=1.0)},
                     timeout=GUARD, what="the killed worker to age out", diag=consumer.tail)
            assert consumer.pid in {w.pid for w in kit.outbox.workers(seen_within=30)}
        consumer.popen.send_signal(signal.SIGINT)
        assert consumer.wait(timeout=GUARD) == 0, consumer.tail()
    assert set(heartbeats(reader)) == {killed.pid}
