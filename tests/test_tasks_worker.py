"""Plugin tasks through real consumer processes: ``czo-kit worker`` and ``huey_consumer
czo_kit.worker.huey``, on SQLite (data and queue) and on PostgreSQL + Redis.

The reviews test plugin is found by its entry point; the retry and periodic probes live in a
small plugin written to ``tmp_path`` with an entry point of its own (``czo-tasks-probe``).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from conftest import service_unavailable
from czo_kit.events.outbox import EventDelivery, EventOutbox
from czo_kit.kit import Kit
from czo_kit.settings import Settings
from czo_kit.tasks import TaskTick
from test_worker import Proc, child_env, czo_kit_command, private_pg, queue_name, wait_for  # noqa: F401

pytestmark = [pytest.mark.slow]

SECRET = "tasks-worker-secret-" + "w" * 32
UTC = dt.timezone.utc

PROBE_SOURCE = '''\
"""Tasks for the worker tests: a task that fails twice before it succeeds, and a yearly
periodic task; each run is a row in task_runs (no unique key: a second run shows)."""

import time

from czo_kit.hookspecs import hookimpl


def _record(kit, label):
    db = kit.db
    db.execute_sql(
        "INSERT INTO task_runs (label, pid, at) VALUES ({p}, {p}, {p})".format(p=db.param),
        (label, __import__("os").getpid(), time.time()),
    )


def flaky(key, *, kit):
    _record(kit, key)
    (count,) = kit.db.execute_sql(
        "SELECT COUNT(*) FROM task_runs WHERE label = {p}".format(p=kit.db.param), (key,)
    ).fetchone()
    if count < 3:
        raise RuntimeError(f"attempt {count} of {key} fails on purpose")


def yearly(kit):
    _record(kit, "yearly")


@hookimpl
def czo_register_tasks(register):
    register.task(flaky, retries=2, retry_delay=1)
    register.periodic(yearly, cron="0 0 1 1 *")
'''


def install_probe(site: Path) -> None:
    site.mkdir(parents=True, exist_ok=True)
    (site / "czo_tasks_probe.py").write_text(PROBE_SOURCE)
    info = site / "czo_tasks_probe-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: czo-tasks-probe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[czo_kit]\nczo-tasks-probe = czo_tasks_probe\n")


class Backend:
    """The URLs of one backend pair, the environment of its processes, a kit of the test's."""

    def __init__(self, tmp_path: Path, db_url: str, queue_url: str, queue: str, plugins: tuple[str, ...]) -> None:
        site = tmp_path / "site"
        install_probe(site)
        self.tmp_path = tmp_path
        self.settings = Settings(database_url=db_url, queue_url=queue_url, queue_name=queue, secret_key=SECRET,
                                 plugins=plugins)
        path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
        self.env = child_env(
            CZO_DATABASE_URL=db_url, CZO_QUEUE_URL=queue_url, CZO_QUEUE_NAME=queue, CZO_SECRET_KEY=SECRET,
            CZO_PLUGINS=",".join(plugins), CZO_EVENTS_SWEEP_INTERVAL="1", CZO_EVENTS_LEASE="3",
            CZO_EVENTS_RETRY_BASE="0.5", PYTHONPATH=path,
        )
        sys.path.insert(0, str(site))  # the test's own kit loads the probe too
        self.kit = Kit(self.settings)
        self.kit.create_tables()
        self.kit.db.execute_sql("CREATE TABLE IF NOT EXISTS task_runs (label VARCHAR(100), pid INTEGER, at FLOAT)")

    def runs(self, label: str) -> list[tuple[int, float]]:
        sql = f"SELECT pid, at FROM task_runs WHERE label = {self.kit.db.param} ORDER BY at"
        rows = [(int(pid), float(at)) for pid, at in self.kit.db.execute_sql(sql, (label,)).fetchall()]
        self.kit.db.close()  # no read transaction kept open against the workers' writes
        return rows

    def worker(self, label: str, *, huey_consumer: bool = False) -> Proc:
        if huey_consumer:
            binary = shutil.which("huey_consumer", path=str(Path(sys.executable).parent))
            if binary is None:  # pragma: no cover - huey installs it
                service_unavailable("huey_consumer", f"not installed next to {sys.executable}")
            args = [binary, "czo_kit.worker.huey", "-w", "2", "-m", "0.5"]
            banner = "Huey consumer started"
        else:
            args = [*czo_kit_command(), "worker", "-w", "2", "--max-delay", "0.5"]
            banner = "czo-kit worker:"
        proc = Proc(args, env=self.env, cwd=self.tmp_path, label=label)
        wait_for(lambda: banner in proc.err_path.read_text() or not proc.alive(), timeout=60,
                 what=f"the {label} banner", diag=proc.tail)
        assert proc.alive(), proc.tail()
        return proc

    def close(self) -> None:
        self.kit.close()
        sys.path.remove(str(self.tmp_path / "site"))


@pytest.fixture(params=["sqlite", "postgresql+redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    plugins = ("czo_test_reviews", "czo-tasks-probe")
    if request.param == "sqlite":
        made = Backend(tmp_path, f"sqlite:///{tmp_path / 'data.sqlite3'}", f"sqlite:///{tmp_path / 'queue.sqlite3'}",
                       "czo_tasks_wt", plugins)
    else:
        db_url, _pg = request.getfixturevalue("private_pg")
        made = Backend(tmp_path, db_url, request.getfixturevalue("redis_url"), request.getfixturevalue("queue_name"),
                       plugins)
    try:
        yield made
    finally:
        made.close()


def stop(proc: Proc) -> None:
    proc.popen.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.label} did not stop within 30s of SIGINT\n{proc.tail()}", pytrace=False)
    assert code == 0, f"{proc.label} exited with {code}\n{proc.tail()}"


PRODUCER = """
import sys
from czo_kit.kit import Kit
kit = Kit()
with kit.db.atomic():
    print(kit.tasks.get("czo_test_reviews.recompute_rating").enqueue(int(sys.argv[1])), flush=True)
# With CZO_FAULTS=events.relay the process ends inside the commit above (exit code 70).
"""


def test_the_reviews_plugins_tasks_run_on_a_real_worker(backend: Backend, request: pytest.FixtureRequest) -> None:
    """Committed: run. Rolled back: never. Committed by a process that died before it could
    enqueue: run all the same (the worker's sweep finds the outbox row). And the periodic
    refresh runs on the worker's scheduler: `czo-kit worker` on SQLite, `huey_consumer` on
    PostgreSQL + Redis."""
    from czo_test_reviews.plugin import Review, ReviewStats

    kit = backend.kit
    recompute = kit.tasks.get("czo_test_reviews.recompute_rating")
    with kit.db.atomic():
        for shop, rating in ((1, 5), (1, 3), (2, 1), (3, 2), (3, 4)):
            Review.create(shop_id=shop, rating=rating, body="fine", author_email="c@example.com")
        committed = recompute.enqueue(1)
    with pytest.raises(ZeroDivisionError):
        with kit.db.atomic():
            recompute.enqueue(2)
            1 / 0
    producer = Proc([sys.executable, "-c", PRODUCER, "3"], env={**backend.env, "CZO_FAULTS": "events.relay"},
                    cwd=backend.tmp_path, label="producer")
    try:
        assert producer.wait(timeout=60) == 70, producer.tail()
    finally:
        producer.kill()
    orphan = producer.stdout().strip()
    rows = dict(EventOutbox.select(EventOutbox.event_id, EventOutbox.state).where(EventOutbox.name == recompute.event)
                .tuples().execute(kit.db))
    assert rows.get(orphan) == "pending" and set(rows) == {committed, orphan}

    huey_consumer = "postgresql" in request.node.callspec.params["backend"]
    with ExitStack() as stack:
        worker = backend.worker("consumer", huey_consumer=huey_consumer)
        stack.callback(worker.kill)

        def stats() -> dict[int, tuple[int, float | None, int]]:
            found = {s.shop_id: (s.reviews, s.average, s.refreshes) for s in ReviewStats.select().execute(kit.db)}
            kit.db.close()
            return found

        def done() -> bool:
            found = stats()
            # 1 and 3 by the recompute task; every shop by the refresh the scheduler started.
            return set(found) == {1, 2, 3} and all(r >= 1 for _, _, r in found.values()) and all(
                state == "done" for (state,) in EventDelivery.select(EventDelivery.state)
                .where(EventDelivery.event_id.in_([committed, orphan])).tuples().execute(kit.db)
            ) and EventDelivery.select().where(EventDelivery.event_id.in_([committed, orphan])).count(kit.db) == 2

        wait_for(done, timeout=90, what="both recomputes and a periodic refresh",
                 diag=lambda: f"stats={stats()}\n{worker.tail()}", interval=0.2)
        stop(worker)
    found = stats()
    assert {shop: found[shop][:2] for shop in found} == {1: (2, 4.0), 2: (1, 1.0), 3: (2, 3.0)}
    names = {name for (name,) in EventOutbox.select(EventOutbox.name).tuples().execute(kit.db)}
    assert recompute.event in names and kit.tasks.get("czo_test_reviews.refresh_ratings").event in names
    # The rolled-back enqueue never reached the outbox: still exactly the two runs.
    assert EventOutbox.select().where(EventOutbox.name == recompute.event).count(kit.db) == 2


def test_a_task_failing_twice_then_succeeding_on_a_real_consumer(backend: Backend) -> None:
    kit = backend.kit
    run_id = kit.tasks.get("czo-tasks-probe.flaky").enqueue("order-42")
    with ExitStack() as stack:
        worker = backend.worker("consumer")
        stack.callback(worker.kill)

        def finished() -> bool:
            states = [s for (s,) in EventDelivery.select(EventDelivery.state).where(EventDelivery.event_id == run_id)
                      .tuples().execute(kit.db)]
            return states == ["done"]

        wait_for(finished, timeout=90, what="the third attempt to succeed",
                 diag=lambda: f"runs={backend.runs('order-42')}\n{worker.tail()}", interval=0.2)
        stop(worker)
    runs = backend.runs("order-42")
    assert len(runs) == 3, runs
    # retry_delay=1: each attempt starts at least a second after the one before it.
    assert all(later - earlier >= 1.0 for (_, earlier), (_, later) in zip(runs, runs[1:])), runs
    delivery = EventDelivery.select().where(EventDelivery.event_id == run_id).get(kit.db)
    assert (delivery.attempts, delivery.max_attempts) == (3, 3)


def test_two_consumers_run_a_periodic_task_once_per_tick(backend: Backend) -> None:
    """Both workers' schedulers see every minute: here the test enqueues the ticks they would
    (six copies of each of two minutes, as six schedulers would), and the task runs once per
    minute all the same. No wall clock: the minutes are fixed, a century ahead (a tick older than
    two days is skipped)."""
    kit = backend.kit
    assert kit.queue is not None
    ticks = [dt.datetime(2124, 1, 1, tzinfo=UTC), dt.datetime(2125, 1, 1, tzinfo=UTC)]
    with ExitStack() as stack:
        workers = [backend.worker(f"consumer-{n}") for n in (1, 2)]
        for worker in workers:
            stack.callback(worker.kill)
        for _ in range(6):
            for tick in ticks:
                kit.tasks.schedule_tick(tick)

        def settled() -> bool:
            return len(backend.runs("yearly")) >= 2 and kit.queue is not None and kit.queue.pending_count() == 0

        wait_for(settled, timeout=90, what="both ticks run and the queue drained",
                 diag=lambda: f"runs={backend.runs('yearly')}\n" + "\n".join(w.tail() for w in workers), interval=0.2)
        for worker in workers:  # graceful: a tick still being handled finishes first
            stop(worker)
    assert len(backend.runs("yearly")) == 2
    claims = sorted((c.task, c.tick) for c in TaskTick.select().where(TaskTick.task == "czo-tasks-probe.yearly")
                    .execute(kit.db))
    assert claims == [("czo-tasks-probe.yearly", tick) for tick in ticks]
    event = kit.tasks.get("czo-tasks-probe.yearly").event
    assert EventOutbox.select().where(EventOutbox.name == event).count(kit.db) == 2
