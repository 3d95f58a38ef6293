"""Recovery and workers at scale on one PostgreSQL and one Redis: sweeps, outage drain, workers.

Four parts, each with real processes (``czo-kit worker`` for the workers):

(a) ``sweep``: a sweep re-queues 20,000 pending outbox rows (committed events whose producer
    died before the relay queued them), one and two sweeper processes at once, the sweep
    before this change (select everything, then one enqueue and one UPDATE per row; kept
    here as the baseline) against the kit's (claims of 500 rows per statement, ``FOR UPDATE
    SKIP LOCKED``, one ``ZADD`` per claim). Rows/s, and the tasks that reached the queue:
    two old sweepers queue every row twice.
(b) ``outage``: a Redis outage of ``--minutes`` at 400 events/s leaves ``minutes * 24,000``
    pending rows (inserted with ``INSERT ... SELECT generate_series``); then ``--workers``
    worker processes start, sweep them into the queue and deliver them (one subscriber each).
    Time until everything is re-queued and until everything is delivered, the rates, and
    the drain time of a full hour (1,440,000 events) extrapolated from the drain rate.
(c) ``workers``: the same drain of ``--backlog`` events with 1, 2 and 4 worker processes:
    events/s, and duplicates ((event, subscriber) runs beyond the first: there should be none
    without a crash).
(d) ``webhooks``: a backlog of ``--deliveries`` webhook deliveries drained by 1, 2 and 4
    worker processes into a local receiver (``benchmarks/_receiver.py``, a process of its
    own). The backlog is what the kit writes: an app subscribed to ``order.created`` is
    installed in a shop (``benchmarks.webhooks.install_app``) and that many shop events are
    emitted with ``emit_async`` in transactions of 100 (``benchmarks.webhooks.record_deliveries``)
    while no worker runs, and handed to Redis; then the workers start. Time until every
    delivery is ``delivered``, deliveries/s, and duplicates: POSTs whose ``webhook-id`` (one
    per delivery) had already reached the receiver.

One command: ``python -m benchmarks.scale`` (``--only sweep|outage|workers|webhooks``,
``--quick``, ``--markdown``, ``--json PATH``). Everything happens in a scratch schema and
under Redis keys of its own, removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

from benchmarks._pg import database_url, delete_redis_keys, drop_schema, fresh_schema, redis_url, schema_url
from benchmarks._receiver import ReceiverProcess
from benchmarks._stats import environment, environment_line

DEFAULT_SCHEMA = "czo_bench_scale"
EVENT = "bench.scale"
SECRET = "bench-scale-secret-" + "s" * 32
HOUR_AT_400 = 400 * 3600

PLUGIN_SOURCE = '''\
"""The benchmark's subscriber: records each run (for the duplicate count), nothing else."""

from czo_kit.hookspecs import hookimpl


@hookimpl
def czo_register_events(events, kit):
    db = kit.db
    sql = "INSERT INTO bench_runs (event_id) VALUES ({p})".format(p=db.param)

    def handler(payload, ctx):
        db.execute_sql(sql, (ctx.event_id,))

    events.on("bench.scale", handler, id="count")
'''


# -- the sweep before this change (the baseline of part a) -------------------------------


def old_sweep(outbox: Any) -> int:
    """What ``Outbox.sweep`` did with pending events before bounded claims: read every due
    row, then one enqueue and one UPDATE per row."""
    from czo_kit.db.model import utcnow
    from czo_kit.events._models import OUTBOX_LIVE, EventOutbox

    now = utcnow()
    grace = now - dt.timedelta(seconds=outbox.settings.relay_grace)
    stale = now - dt.timedelta(seconds=outbox.settings.lease)
    events = list(
        EventOutbox.select(EventOutbox.event_id, EventOutbox.deliver_at, EventOutbox.priority)
        .where(
            OUTBOX_LIVE
            & (
                ((EventOutbox.state == "pending") & (EventOutbox.updated_at < grace))
                | ((EventOutbox.state == "queued") & (EventOutbox.updated_at < stale) & (EventOutbox.deliver_at < stale))
            )
        )
        .tuples()
        .execute(outbox.db)
    )
    for event_id, deliver_at, priority in events:
        outbox.queue.dispatch(event_id, delay=max(0.0, (deliver_at - now).total_seconds()), priority=priority)
        EventOutbox.update(state="queued", updated_at=utcnow()).where(
            (EventOutbox.event_id == event_id) & EventOutbox.state.in_(("pending", "queued"))
        ).execute(outbox.db)
    return len(events)


def child_sweep(kind: str, go: str, ready: str) -> int:
    """A sweeper process: wait for ``go``, sweep once (through), print rows and seconds."""
    from czo_kit.kit import Kit

    kit = Kit(plugins=[])
    outbox = kit.outbox
    assert outbox is not None
    outbox.ensure_tables()
    Path(ready).write_text("ready")
    while not Path(go).exists():
        time.sleep(0.002)
    started = time.perf_counter()
    if kind == "old":
        total = old_sweep(outbox)
    else:
        total = 0
        while True:
            total += outbox.sweep().get("events", 0)
            if not outbox.sweep_unfinished:
                break
    print(total, time.perf_counter() - started, flush=True)
    kit.close()
    return 0


# -- the scratch world ------------------------------------------------------------------


class World:
    """A scratch schema, a queue name, a plugin site, and SQL on an autocommit connection."""

    def __init__(self, schema: str) -> None:
        import psycopg2
        import redis

        from czo_kit.default_plugins.postgres import parse_postgresql_url
        from czo_kit.kit import Kit
        from czo_kit.settings import Settings

        self.base = database_url()
        self.schema = schema
        fresh_schema(self.base, schema)
        self.url = schema_url(self.base, schema)
        self.redis_url = redis_url()
        self.queue = f"czo_bench_scale_{uuid.uuid4().hex[:10]}"
        self.redis = redis.Redis.from_url(self.redis_url)
        self.tmp = Path(tempfile.mkdtemp(prefix="czo-bench-scale-"))
        site = self.tmp / "site"
        site.mkdir()
        (site / "czo_bench_scale_plugin.py").write_text(PLUGIN_SOURCE)
        info = site / "czo_bench_scale_plugin-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: czo-bench-scale-plugin\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text("[czo_kit]\nczo-bench-scale = czo_bench_scale_plugin\n")
        root = str(Path(__file__).resolve().parent.parent)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
        self.env.update({
            "CZO_DATABASE_URL": self.url, "CZO_QUEUE_URL": self.redis_url, "CZO_QUEUE_NAME": self.queue,
            "CZO_SECRET_KEY": SECRET, "CZO_PLUGINS": "", "CZO_EVENTS_SWEEP_INTERVAL": "1",
            "CZO_LOG_LEVEL": "ERROR",
            "PYTHONPATH": os.pathsep.join(p for p in (str(site), root, os.environ.get("PYTHONPATH", "")) if p),
        })
        with Kit(Settings(database_url=self.url, secret_key=SECRET, queue_url="", plugins=())) as kit:
            kit.create_kit_tables()
        dbname, params = parse_postgresql_url(self.base)
        self.conn = psycopg2.connect(dbname=dbname, options=f"-csearch_path={schema}", **params)
        self.conn.autocommit = True
        self.sql("CREATE TABLE bench_runs (id bigserial PRIMARY KEY, event_id varchar(36) NOT NULL)")
        import msgspec

        self.payload = msgspec.msgpack.encode({"n": 1})

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def one(self, query: str, params: tuple[Any, ...] = ()) -> Any:
        return self.sql(query, params)[0][0]

    def reset(self, rows: int) -> float:
        """Empty tables and queue, then ``rows`` pending events an hour old; seconds taken."""
        started = time.perf_counter()
        self.sql("TRUNCATE czo_event_outbox, czo_event_delivery, bench_runs")
        delete_redis_keys(self.redis, [f"huey.*{self.queue}*"])
        self.sql(
            "INSERT INTO czo_event_outbox (event_id, name, payload, correlation_id, created_at, deliver_at, "
            "retries, priority, state, updated_at) "
            "SELECT 'b-' || lpad(g::text, 12, '0'), %s, %s, 'c', t.at, t.at, 0, 50, 'pending', t.at "
            "FROM generate_series(1, %s) AS g, (SELECT (now() AT TIME ZONE 'utc') - interval '1 hour' AS at) AS t",
            (EVENT, self.payload, rows),
        )
        self.sql("VACUUM ANALYZE czo_event_outbox")  # autovacuum is off here: fresh statistics
        self.sql("VACUUM ANALYZE czo_event_delivery")
        return time.perf_counter() - started

    def vacuum(self, tables: Sequence[str]) -> None:
        """``VACUUM ANALYZE`` each of ``tables`` (autovacuum is off here: fresh statistics)."""
        from psycopg2 import sql

        with self.conn.cursor() as cur:
            for table in tables:
                cur.execute(sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(table)))

    def queued_tasks(self) -> int:
        return int(self.redis.zcard(f"huey.redis.{self.queue}"))

    def close(self) -> None:
        self.conn.close()
        delete_redis_keys(self.redis, [f"huey.*{self.queue}*"])
        self.redis.close()
        drop_schema(self.base, self.schema)


# -- (a) sweep re-queue -----------------------------------------------------------------


def sweep_run(world: World, kind: str, sweepers: int, rows: int) -> dict[str, Any]:
    world.reset(rows)
    go = world.tmp / f"go-{uuid.uuid4().hex[:6]}"
    procs = []
    for n in range(sweepers):
        ready = world.tmp / f"ready-{uuid.uuid4().hex[:6]}-{n}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.scale", "--child-sweep", kind, "--go", str(go), "--ready", str(ready)],
            env=world.env, cwd=str(Path(__file__).resolve().parent.parent), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        procs.append((proc, ready))
    deadline = time.monotonic() + 120
    while not all(ready.exists() for _, ready in procs):
        if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
            raise RuntimeError("a sweeper did not start: " + " | ".join(p.stderr.read() for p, _ in procs if p.poll() and p.stderr))
        time.sleep(0.01)
    started = time.perf_counter()
    go.write_text("go")
    outputs = []
    for proc, _ in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"sweeper failed: {err}")
        outputs.append(out.split())
    wall = time.perf_counter() - started
    tasks = world.queued_tasks()
    return {
        "kind": kind, "sweepers": sweepers, "rows": rows, "seconds": wall, "rows_per_s": rows / wall,
        "tasks": tasks, "by_sweeper": [int(o[0]) for o in outputs],
        "sweeper_seconds": [float(o[1]) for o in outputs],
    }


def part_sweep(world: World, rows: int, repeats: int) -> list[dict[str, Any]]:
    results = []
    for sweepers in (1, 2):
        runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        for r in range(repeats):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")  # alternate: drift lands on both
            for kind in order:
                runs[kind].append(sweep_run(world, kind, sweepers, rows))
        for kind in ("old", "new"):
            rates = sorted(run["rows_per_s"] for run in runs[kind])
            results.append({
                "kind": kind, "sweepers": sweepers, "rows": rows, "repeats": repeats,
                "rows_per_s_median": statistics.median(rates), "rows_per_s_min": rates[0],
                "rows_per_s_max": rates[-1],
                "seconds_median": statistics.median(run["seconds"] for run in runs[kind]),
                "tasks": [run["tasks"] for run in runs[kind]],
                "by_sweeper": runs[kind][-1]["by_sweeper"],
            })
    return results


# -- (b), (c) drains with real workers ---------------------------------------------------


def czo_kit_command() -> list[str]:
    script = Path(sys.executable).with_name("czo-kit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "czo_kit.cli"]


Workers: TypeAlias = list[tuple[subprocess.Popen[bytes], Any]]


def start_workers(world: World, env: dict[str, str], workers: int, threads: int) -> Workers:
    """``workers`` ``czo-kit worker`` processes, their output in ``worker-<n>.log``."""
    procs: Workers = []
    for n in range(workers):
        log = open(world.tmp / f"worker-{n}.log", "wb")  # noqa: SIM115 - closed in stop_workers
        procs.append((subprocess.Popen(
            [*czo_kit_command(), "worker", "-w", str(threads), "--max-delay", "0.1"],
            env=env, cwd=str(world.tmp), stdout=log, stderr=subprocess.STDOUT,
        ), log))
    return procs


def check_workers(world: World, procs: Workers) -> None:
    for n, (proc, _) in enumerate(procs):
        if proc.poll() is not None:
            raise RuntimeError(f"worker {n} stopped: " + (world.tmp / f"worker-{n}.log").read_text()[-2000:])


def stop_workers(procs: Workers) -> None:
    for proc, _ in procs:
        proc.terminate()
    for proc, log in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def drain(world: World, rows: int, workers: int, threads: int) -> dict[str, Any]:
    """``rows`` pending events, then ``workers`` ``czo-kit worker`` processes: until when
    is everything queued, and delivered."""
    world.reset(rows)
    env = {**world.env, "CZO_PLUGINS": "czo-bench-scale"}
    started = time.perf_counter()
    procs = start_workers(world, env, workers, threads)
    queued_at = None
    try:
        while True:
            time.sleep(0.5)
            pending = world.one("SELECT count(*) FROM czo_event_outbox WHERE state IN ('pending', 'queued') "
                                "AND state = 'pending'")  # through the live rows' partial index
            now = time.perf_counter() - started
            if queued_at is None and pending == 0:
                queued_at = now
            if queued_at is not None:
                live = world.one("SELECT count(*) FROM czo_event_outbox WHERE state IN ('pending', 'queued')")
                busy = world.one("SELECT count(*) FROM czo_event_delivery "
                                 "WHERE state IN ('queued', 'running', 'retry', 'waiting')")
                if live == 0 and busy == 0:
                    drained_at = now
                    break
            check_workers(world, procs)
            if now > 3 * 3600:
                raise RuntimeError("not drained after 3 hours")
    finally:
        stop_workers(procs)
    runs = world.one("SELECT count(*) FROM bench_runs")
    distinct = world.one("SELECT count(DISTINCT event_id) FROM bench_runs")
    done = world.one("SELECT count(*) FROM czo_event_delivery WHERE state = 'done'")
    return {
        "rows": rows, "workers": workers, "threads": threads, "requeued_s": queued_at, "drained_s": drained_at,
        "requeue_per_s": rows / queued_at if queued_at else None, "drain_per_s": rows / drained_at,
        "runs": runs, "distinct": distinct, "duplicates": runs - distinct, "done": done,
        "hour_minutes": HOUR_AT_400 / (rows / drained_at) / 60,
    }


# -- (d) webhook deliveries with real workers ----------------------------------------------

WEBHOOK_PATH = "/kit"  # the target benchmarks.webhooks.install_app subscribes the app with


def webhook_tables() -> list[str]:
    from czo_kit.apps.webhooks import WebhookAttempt, WebhookCircuit, WebhookDelivery
    from czo_kit.events.outbox import EVENT_MODELS

    models: list[Any] = [WebhookAttempt, WebhookDelivery, WebhookCircuit, *EVENT_MODELS]
    return [str(model._meta.table_name) for model in models]


def webhook_drain(world: World, kit: Any, receiver: ReceiverProcess, deliveries: int, workers: int,
                  threads: int) -> dict[str, Any]:
    """A backlog of ``deliveries`` webhook deliveries written by ``kit`` (no worker running),
    then ``workers`` worker processes: until when is every one delivered, and how many POSTs
    reached the receiver twice."""
    from benchmarks import webhooks

    webhooks.reset_kit(kit)  # empty queue, deliveries, attempts, circuits and outbox
    world.vacuum(webhook_tables())
    produce = webhooks.record_deliveries(kit, deliveries)  # raises unless all `deliveries` are queued
    kit.webhooks.flush()  # every delivery's task (and every event's) in Redis before the workers start
    kit.outbox.flush()
    world.vacuum(webhook_tables())
    tasks = world.queued_tasks()
    posts_before = receiver.stats().get(WEBHOOK_PATH, 0)
    duplicates_before = receiver.duplicates().get(WEBHOOK_PATH, 0)
    # The workers decrypt the app's signing secret with the producing kit's secret key, and
    # POST to the receiver on loopback.
    env = {**world.env, "CZO_SECRET_KEY": webhooks.SECRET, "CZO_APPS_ALLOW_PRIVATE_URLS": "true"}
    started = time.perf_counter()
    procs = start_workers(world, env, workers, threads)
    first_at = None
    first_left = deliveries
    try:
        while True:
            time.sleep(0.05)
            states = dict(world.sql("SELECT state, count(*) FROM czo_webhook_delivery "
                                    "WHERE state != 'delivered' GROUP BY state"))  # the live rows' partial index
            now = time.perf_counter() - started
            left = sum(states.values())
            if first_at is None and left < deliveries:
                first_at, first_left = now, left
            if left == 0:
                drained_at = now
                break
            if states.get("dead"):
                raise RuntimeError(f"dead webhook deliveries: {states}")
            check_workers(world, procs)
            if now > 3600:
                raise RuntimeError(f"webhook deliveries not drained after an hour: {states}")
    finally:
        stop_workers(procs)
    posts = receiver.stats().get(WEBHOOK_PATH, 0) - posts_before
    duplicates = receiver.duplicates().get(WEBHOOK_PATH, 0) - duplicates_before
    attempts = world.one("SELECT coalesce(sum(attempts), 0) FROM czo_webhook_delivery")
    assert first_at is not None
    return {
        "deliveries": deliveries, "workers": workers, "threads": threads, "produce_per_s": deliveries / produce,
        "tasks_queued": tasks, "first_s": first_at, "drained_s": drained_at, "per_s": deliveries / drained_at,
        "per_s_after_first": (first_left / (drained_at - first_at)) if drained_at > first_at else None,
        "posts": posts, "duplicates": duplicates, "attempts": int(attempts),
    }


def part_webhooks(world: World, deliveries: int, threads: int) -> list[dict[str, Any]]:
    from benchmarks import webhooks

    receiver = ReceiverProcess().start()
    kit: Any = None
    try:
        kit = webhooks.make_kit(world.url, world.redis_url, world.queue)
        webhooks.install_app(kit, receiver.url)
        return [webhook_drain(world, kit, receiver, deliveries, n, threads) for n in (1, 2, 4)]
    finally:
        if kit is not None:
            kit.close()
        receiver.stop()


# -- output -----------------------------------------------------------------------------


def render(results: dict[str, Any], markdown: bool) -> str:
    lines: list[str] = [environment_line(environment(("peewee", "psycopg2-binary", "redis", "huey")), markdown=markdown)]
    if "sweep" in results:
        rows = results["sweep"]
        lines += ["", f"(a) sweep re-queue of {rows[0]['rows']:,} pending outbox rows "
                  f"(median of {rows[0]['repeats']} runs, wall time from go to the last sweeper's exit)", ""]
        lines += ["| sweep | sweepers | rows/s (median) | min-max | tasks queued | rows per sweeper | new/old |",
                  "|---|---|---|---|---|---|---|"]
        for row in rows:
            old = next(r for r in rows if r["kind"] == "old" and r["sweepers"] == row["sweepers"])
            ratio = row["rows_per_s_median"] / old["rows_per_s_median"]
            lines.append(
                f"| {'before (row by row)' if row['kind'] == 'old' else 'claims of 500, SKIP LOCKED'} "
                f"| {row['sweepers']} | {row['rows_per_s_median']:,.0f} | {row['rows_per_s_min']:,.0f}-"
                f"{row['rows_per_s_max']:,.0f} | {', '.join(f'{t:,}' for t in row['tasks'])} "
                f"| {', '.join(f'{n:,}' for n in row['by_sweeper'])} | {ratio:.1f}x |"
            )
    if "outage" in results:
        o = results["outage"]
        lines += ["", f"(b) outage drain: {o['rows']:,} pending events ({o['rows'] / 24000:g} min at 400 events/s), "
                  f"{o['workers']} worker process(es) x {o['threads']} threads", ""]
        lines += ["| re-queued after | re-queue rate | drained after | drain rate | a full hour (1,440,000) drains in "
                  "| duplicates |", "|---|---|---|---|---|---|",
                  f"| {o['requeued_s']:.1f} s | {o['requeue_per_s']:,.0f} events/s | {o['drained_s']:.1f} s "
                  f"| {o['drain_per_s']:,.0f} events/s | {o['hour_minutes']:.0f} min | {o['duplicates']} |"]
    if "workers" in results:
        ws = results["workers"]
        lines += ["", f"(c) workers: {ws[0]['rows']:,} events, one subscriber each, "
                  f"{ws[0]['threads']} threads per process", ""]
        lines += ["| worker processes | events/s (delivered) | vs 1 process | duplicates | deliveries done |",
                  "|---|---|---|---|---|"]
        for w in ws:
            lines.append(f"| {w['workers']} | {w['drain_per_s']:,.0f} | {w['drain_per_s'] / ws[0]['drain_per_s']:.2f}x "
                         f"| {w['duplicates']} | {w['done']:,} |")
    if "webhooks" in results:
        hs = results["webhooks"]
        lines += ["", f"(d) webhooks: {hs[0]['deliveries']:,} webhook deliveries to a receiver on loopback (one "
                  f"app, one subscription), emitted before the workers start, {hs[0]['threads']} threads per "
                  "process; times from the workers' start (process start-up included)", ""]
        lines += ["| worker processes | first delivered after | drained after | deliveries/s | vs 1 process "
                  "| deliveries/s after the first | POSTs | duplicates (same webhook-id) |",
                  "|---|---|---|---|---|---|---|---|"]
        for h in hs:
            after = h["per_s_after_first"]
            lines.append(f"| {h['workers']} | {h['first_s']:.1f} s | {h['drained_s']:.1f} s | {h['per_s']:,.0f} "
                         f"| {h['per_s'] / hs[0]['per_s']:.2f}x | {'' if after is None else f'{after:,.0f}'} "
                         f"| {h['posts']:,} | {h['duplicates']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["sweep", "outage", "workers", "webhooks"], help="run one part only")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (small backlogs, one repeat)")
    parser.add_argument("--rows", type=int, default=20_000, help="pending rows of the sweep part (default 20,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each sweep configuration (default 3)")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="length of the simulated Redis outage at 400 events/s (default 10: 240,000 rows; "
                             "60 is the full hour, 1,440,000 rows)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the outage part (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process (default 4)")
    parser.add_argument("--backlog", type=int, default=10_000, help="events of the workers part (default 10,000)")
    parser.add_argument("--deliveries", type=int, default=4_000,
                        help="webhook deliveries of the webhooks part (default 4,000)")
    parser.add_argument("--schema", default=DEFAULT_SCHEMA, help=f"scratch schema (default {DEFAULT_SCHEMA})")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    parser.add_argument("--child-sweep", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_sweep:
        return child_sweep(args.child_sweep, args.go, args.ready)
    if args.quick:
        args.rows, args.repeats, args.minutes, args.backlog, args.deliveries = 2_000, 1, 0.25, 1_000, 400
    world = World(args.schema)
    results: dict[str, Any] = {}
    try:
        if args.only in (None, "sweep"):
            results["sweep"] = part_sweep(world, args.rows, args.repeats)
        if args.only in (None, "outage"):
            results["outage"] = drain(world, int(args.minutes * 60 * 400), args.workers, args.threads)
        if args.only in (None, "workers"):
            results["workers"] = [drain(world, args.backlog, n, args.threads) for n in (1, 2, 4)]
        if args.only in (None, "webhooks"):
            results["webhooks"] = part_webhooks(world, args.deliveries, args.threads)
    finally:
        world.close()
    print(render(results, args.markdown))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
