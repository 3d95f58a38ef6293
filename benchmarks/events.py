"""czo_kit.events and czo_kit.hooks against blinker, pluggy and raw Huey, in the same run.

    python -m benchmarks.events            # full run, about 2.5 minutes
    python -m benchmarks.events --quick    # smoke run, seconds
    python -m benchmarks.events --markdown # tables as markdown (for docs/benchmarks.md)
    python -m benchmarks.events --only throughput --profile
                                           # async events end to end vs raw Huey (5,000 events,
                                           # 1 and 4 consumer threads), with the CPU per event
                                           # by stage (benchmarks/_events_throughput.py)

In-process parts (``emit``, ``HookRegistry.run``) need nothing. The async parts need Redis,
``CZO_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/14``; the test suite uses db 15),
and PostgreSQL, ``CZO_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``): the kit's outbox tables live in the scratch
schema ``czo_bench_events`` (dropped at the end), a second kit keeps its outbox in a temporary
SQLite file, and every Huey queue is named ``czo_bench_<pid>_...`` and deleted at the end.

The kit's consumer is the in-process one, ``kit.consumer(workers=N, sweep_interval=3600)``
(Huey worker threads in this process: one worker process); raw Huey gets the same consumer
settings. The end-to-end throughput runs with 1 and 4 threads; the latency with 4.

Last, ``emit_async`` and a worker's per-event work with 200,000 old delivered rows in the
tables against empty tables, on each database (``benchmarks/_events_retention.py``; schemas
``czo_bench_events_empty`` and ``czo_bench_events_old``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

import msgspec

from benchmarks import _events_retention as retention_module
from benchmarks import _events_throughput as throughput_module
from benchmarks import _pg
from benchmarks._stats import (
    Call,
    Check,
    Comparison,
    Pair,
    compose_report,
    environment,
    render,
    run_pairs,
    summarize,
    time_round_robin,
    write_json,
)
from czo_kit.events import Event, EventEmitter
from czo_kit.hooks import HookRegistry

SECRET = "czo-bench-secret-" + "x" * 32
DEFAULT_SCHEMA = "czo_bench_events"

BLINKER_TARGET = 1.5  # emit p50 / blinker send p50
EMIT10_P99_LIMIT = 50.0  # µs
HOOKS_P99_LIMIT = 20.0  # µs, the wrapped call's p99 (an upper bound on the overhead)
ENQUEUE_P95_LIMIT_MS = 1.0
HUEY_BASELINES_TASKS_S = 1_520  # docs: BASELINES, raw Huey no-op tasks, 4 worker threads

WORKERS = 4
THROUGHPUT_EVENTS = 5_000
THROUGHPUT_THREADS = [1, 4]
THROUGHPUT_TARGET = 0.6  # kit events/s over raw Huey no-op tasks/s, same run (issue 13)
LATENCY_EVENTS = 300


class BenchTyped1(Event, name="bench.typed1"):
    id: int
    sku: str
    price: int
    currency: str
    active: bool


class BenchTyped10(Event, name="bench.typed10"):
    id: int
    sku: str
    price: int
    currency: str
    active: bool


class BenchEnqueue(Event, name="bench.enqueue"):
    id: int
    sku: str


class BenchThroughput(Event, name="bench.throughput"):
    seq: int


class BenchLatency(Event, name="bench.latency"):
    seq: int


MAPPING: dict[str, Any] = {"id": 1, "sku": "SKU-1", "price": 1999, "currency": "EUR", "active": True}
SENDER = object()


def _no_op_handlers(count: int) -> list[Callable[..., None]]:
    """``count`` distinct no-op functions (blinker keys receivers by identity)."""

    def make() -> Callable[..., None]:
        def handler(*args: Any, **kwargs: Any) -> None:
            return None

        return handler

    return [make() for _ in range(count)]


# -- in-process: emit, hooks --------------------------------------------------------------


def _emit(emitter: EventEmitter, *args: Any) -> Call:
    return Call(lambda _: emitter.emit(*args))


def _send(signal: Any, payload: Any) -> Call:
    return Call(lambda _: signal.send(SENDER, payload=payload))


def emit_pairs(n: Callable[[int], int], w: Callable[[int], int]) -> list[Pair]:
    import blinker

    emitter = EventEmitter()
    signals = blinker.Namespace()
    pairs = []
    for count, typed in ((1, BenchTyped1), (10, BenchTyped10)):
        handlers = _no_op_handlers(count)
        mapped = f"bench.mapped{count}"
        signal = signals.signal(f"bench.{count}")
        for k, handler in enumerate(handlers):
            emitter.on(typed, handler, id=f"noop-{k}")
            emitter.on(mapped, handler, id=f"noop-{k}")
            signal.connect(handler)
        event = typed(**MAPPING)

        def checker(name: Any, count: int = count) -> Callable[[Any, list[Any]], None]:
            def check(kit: Any, base: list[Any]) -> None:
                if kit.errors or len(emitter.subscribers(name)) != count or len(base) != count:
                    raise AssertionError(f"expected {count} handlers on both sides, got "
                                         f"{len(emitter.subscribers(name))} and {len(base)}")

            return check

        label = f"{count} handler" + ("s" if count > 1 else "")
        pairs.append(Pair(
            f"emit typed Event, {label}", _emit(emitter, event), _send(signal, event),
            f"blinker send, {count} receiver" + ("s" if count > 1 else ""), n(20000), w(2000), BLINKER_TARGET,
            group="emit", check=checker(typed), note="Event struct, validated; blinker: send(sender, payload=event)",
        ))
        pairs.append(Pair(
            f"emit by name + mapping, {label}", _emit(emitter, mapped, MAPPING), _send(signal, MAPPING),
            f"blinker send, {count} receiver" + ("s" if count > 1 else ""), n(20000), w(2000), BLINKER_TARGET,
            group="emit", check=checker(mapped), note="undeclared name: the mapping is passed as is",
        ))
    return pairs


SHOP_EMIT_TARGET = 2.0  # shop-event emit p50 / blinker send p50 (issue 13)


def _warm_shop(kit: Any, event: str, payload: dict[str, Any]) -> None:
    """Emit until the shop's subscriptions are served from memory (the listener is up)."""
    cache = kit.apps.subscription_cache
    deadline = time.monotonic() + 30
    while cache.state == "querying" or payload["shop_id"] not in cache.cached_shops():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the subscriptions of shop {payload['shop_id']} never reached memory ({cache.state})")
        kit.events.emit(event, payload)
        time.sleep(0.01)


def shop_emit_rows(database_url: str, schema: str, tmp: str, n: Callable[[int], int], w: Callable[[int], int],
                   progress: Callable[[str], None]) -> list[Comparison]:
    """``emit`` of a shop event by name (a mapping carrying ``shop_id``), 10 handlers, through
    a whole kit, so the webhook tap looks up the shop's subscriptions on every emit: from
    memory, against blinker with 10 receivers; and, for context, with the memory closed (a
    query per emit, what every emit did before)."""
    import blinker

    from czo_kit.kit import Kit
    from czo_kit.settings import Settings

    _pg.fresh_schema(database_url, schema)
    rows: list[Comparison] = []
    try:
        for label, url in (("PostgreSQL", _pg.schema_url(database_url, schema)),
                           ("SQLite", f"sqlite:///{tmp}/shop-emit.sqlite3")):
            settings = Settings(database_url=url, queue_url="", cache_url="memory://", secret_key=SECRET, plugins=())
            kit, querying = Kit(settings), Kit(settings)
            try:
                kit.create_tables()
                event, payload = "bench.shop10", {"shop_id": 1, **MAPPING}
                signal = blinker.Namespace().signal("bench.shop10")
                for k, handler in enumerate(_no_op_handlers(10)):
                    kit.events.on(event, handler, id=f"noop-{k}")
                    querying.events.on(event, handler, id=f"noop-{k}")
                    signal.connect(handler)
                _warm_shop(kit, event, payload)
                querying.apps.subscription_cache.close()  # every lookup queries, as before issue 13

                def check(ctx: Any, base: list[Any], kit: Any = kit) -> None:
                    if ctx.errors or len(base) != 10 or 1 not in kit.apps.subscription_cache.cached_shops():
                        raise AssertionError("expected 10 handlers on both sides and shop 1 held in memory")

                pairs = [
                    Pair(f"emit shop event by name, 10 handlers ({label})", _emit(kit.events, event, payload),
                         _send(signal, payload), "blinker send, 10 receivers", n(20000), w(2000), SHOP_EMIT_TARGET,
                         group=f"shop-{label}", check=check,
                         note=f"subscriptions from memory ({kit.apps.subscription_cache.state}); no app hears it"),
                    Pair(f"emit shop event by name, 10 handlers, a query per emit ({label})",
                         _emit(querying.events, event, payload), _send(signal, payload), "blinker send, 10 receivers",
                         n(2000), w(200), None, group=f"shop-{label}-query",
                         note="context: the memory closed, each emit reads the subscriptions (the old way)"),
                ]
                progress(f"shop-event emit ({label})")
                rows += run_pairs(pairs, progress=progress)
            finally:
                querying.close()
                kit.close()
    finally:
        _pg.drop_schema(database_url, schema)
    return rows


def shop_emit_checks(rows: Sequence[Comparison]) -> list[Check]:
    return [Check(f"{row.operation}: p50 vs blinker", row.ratio, SHOP_EMIT_TARGET, unit="x")
            for row in rows if row.target is not None]


def hook_rows(n: Callable[[int], int], w: Callable[[int], int], progress: Callable[[str], None]) -> list[Comparison]:
    """HookRegistry.run with 3 + 3 no-op hooks, a plain call and a pluggy hook, in one loop."""
    import pluggy

    hooks = HookRegistry()
    for fn in _no_op_handlers(3):
        hooks.before("bench.op", fn)
    for fn in _no_op_handlers(3):
        hooks.after("bench.op", fn)

    def operation(ctx: dict[str, Any]) -> int:
        return 42

    ctx = {"id": 1, "price": 1999}
    spec = pluggy.HookspecMarker("czobench")
    impl = pluggy.HookimplMarker("czobench")

    class Spec:
        @spec
        def bench_op(self, ctx: dict[str, Any]) -> Any:
            """A no-op hook with six implementations."""

    pm = pluggy.PluginManager("czobench")
    pm.add_hookspecs(Spec)
    for k in range(6):
        pm.register(type(f"Plugin{k}", (), {"bench_op": impl(lambda self, ctx: None)})(), name=f"plugin{k}")
    call_hook = pm.hook.bench_op
    if hooks.run("bench.op", ctx, operation) != 42 or call_hook(ctx=ctx) != []:
        raise AssertionError("hooks did not run as set up")
    iterations, warmup = n(20000), w(2000)
    progress(f"HookRegistry.run, plain call, pluggy: {iterations:,} x 3 calls")
    run, plain, plug = time_round_robin(
        [Call(lambda _: hooks.run("bench.op", ctx, operation)), Call(lambda _: operation(ctx)),
         Call(lambda _: call_hook(ctx=ctx))],
        iterations=iterations, warmup=warmup,
    )
    kit = summarize(run)
    return [
        Comparison("HookRegistry.run, 3 before + 3 after", kit, summarize(plain), baseline="plain call",
                   note="no-op hooks and operation"),
        Comparison("HookRegistry.run, 3 before + 3 after", kit, summarize(plug),
                   baseline="pluggy hook call, 6 impls", note="context: pluggy's own per-call cost"),
    ]


# -- async: outbox + Huey on Redis --------------------------------------------------------


class Queues:
    """Names of every Huey queue one run creates, so that the run can delete them."""

    def __init__(self) -> None:
        stem = f"czo_bench_{os.getpid()}_"
        self.kit = stem + "kit"
        self.sqlite = stem + "sqlite"
        self.raw = stem + "raw"
        self.pattern = f"huey.*.{stem}*"



def make_kit(database_url: str, redis_url: str, queue: str) -> Any:
    from czo_kit.kit import Kit
    from czo_kit.settings import Settings

    settings = Settings(
        database_url=database_url, queue_url=redis_url, queue_name=queue, cache_url="memory://",
        secret_key=SECRET, plugins=(), events_sweep_interval=3600.0,
    )  # the default pool of 10 PostgreSQL connections: stopped consumers must give theirs back
    return Kit(settings)


def pooled_in_use(kit: Any) -> int | None:
    """Connections the kit's pool counts as checked out (None for an unpooled database)."""
    in_use = getattr(kit.db, "_in_use", None)
    return None if in_use is None else len(in_use)


class RawHuey:
    """A plain PriorityRedisHuey (pickle serializer), with tasks that count and time themselves."""

    def __init__(self, url: str, name: str) -> None:
        from huey import PriorityRedisHuey

        self.huey = PriorityRedisHuey(name, url=url, results=False, utc=True)
        self.lock = threading.Lock()
        self.count = 0
        self.goal = 0
        self.done = threading.Event()
        self.seen: dict[int, int] = {}
        self.arrived = threading.Event()

        @self.huey.task(name="bench_noop")  # type: ignore[untyped-decorator]
        def noop(event_id: str) -> None:
            return None

        @self.huey.task(name="bench_count")  # type: ignore[untyped-decorator]
        def count(seq: int) -> None:
            with self.lock:
                self.count += 1
                if self.count >= self.goal:
                    self.done.set()

        @self.huey.task(name="bench_latency")  # type: ignore[untyped-decorator]
        def latency(seq: int) -> None:
            self.seen[seq] = time.perf_counter_ns()
            self.arrived.set()

        self.noop, self.count_task, self.latency = noop, count, latency

    def enqueue(self, event_id: str) -> None:
        self.huey.enqueue(self.noop.s(event_id, priority=50))


def emit_async_rows(label: str, kit: Any, raw: RawHuey, n: Callable[[int], int], w: Callable[[int], int],
                    progress: Callable[[str], None]) -> list[Comparison]:
    """emit_async, a raw Huey enqueue and one autocommitted INSERT on the kit's database,
    in one loop: the enqueue is the baseline, the INSERT what one commit costs right now."""
    if kit.db.in_transaction():
        raise RuntimeError("emit_async must be measured outside a transaction")
    kit.db.execute_sql("CREATE TABLE IF NOT EXISTS bench_commit (id INTEGER PRIMARY KEY, note VARCHAR(40))")
    placeholder = kit.db.param
    insert = f"INSERT INTO bench_commit (id, note) VALUES ({placeholder}, {placeholder})"
    ids = [str(uuid.uuid4()) for _ in range(n(2000) + w(100) + 10)]

    def event(i: int) -> BenchEnqueue:
        return BenchEnqueue(id=i, sku=f"SKU-{i}")

    def raw_id(i: int) -> str:
        return ids[i % len(ids)]

    def commit_one(i: int) -> Any:
        return kit.db.execute_sql(insert, (i + 1_000_000, ids[i % len(ids)]))

    kit.events.emit_async(event(-1))  # the first call creates the outbox tables
    iterations, warmup = n(2000), w(100)
    progress(f"emit_async ({label} outbox), Huey enqueue, INSERT: {iterations:,} x 3 calls")
    kit_ns, raw_ns, insert_ns = time_round_robin(
        # The relay thread's enqueue is waited for after each call, untimed, so that it never
        # runs during the next call of either side.
        [Call(kit.events.emit_async, event, lambda _: kit.outbox.flush(mark=False)), Call(raw.enqueue, raw_id),
         Call(commit_one, lambda i: i)],
        iterations=iterations, warmup=warmup,
    )
    kit_summary = summarize(kit_ns)
    return [
        Comparison(f"emit_async ({label} outbox)", kit_summary, summarize(raw_ns),
                   baseline="Huey enqueue (PriorityRedisHuey)",
                   note="outside a transaction: INSERT outbox row (a commit); the relay thread enqueues the "
                        "dispatch (waited for after each call, untimed) and writes 'queued' marks in batches"),
        Comparison(f"emit_async ({label} outbox)", kit_summary, summarize(insert_ns),
                   baseline=f"one autocommitted INSERT ({label})",
                   note="context: what one commit costs in this run (emit_async commits once)"),
    ]


def _wait_stats(kit: Any, goal: int, timeout: float, poll: float = 0.02) -> tuple[float, dict[str, int]]:
    deadline = time.perf_counter() + timeout
    while True:
        stats = kit.outbox.stats()
        now = time.perf_counter()
        if stats.get("done", 0) + stats.get("dead", 0) >= goal or now > deadline:
            return now, stats
        time.sleep(poll)


def _reset_outbox(kit: Any) -> None:
    from czo_kit.events.outbox import EVENT_MODELS

    kit.queue.flush()
    for model in EVENT_MODELS:
        model.delete().execute(kit.db)


def latency(kit: Any, raw: RawHuey, *, count: int, progress: Callable[[str], None],
            pool_log: list[int | None]) -> Comparison:
    """Enqueue-to-handler, one event at a time, with both consumers already running."""
    from czo_kit.events.queue import InProcessConsumer

    seen: dict[int, int] = {}
    arrived = threading.Event()

    def on_event(payload: BenchLatency, ctx: Any) -> None:
        seen[payload.seq] = time.perf_counter_ns()
        arrived.set()

    kit.events.on(BenchLatency, on_event, id="bench-latency")
    _reset_outbox(kit)
    raw.huey.flush()
    kit_ns: list[int] = []
    raw_ns: list[int] = []
    progress(f"latency: {count:,} events per side, one at a time")
    kit_consumer = kit.consumer(workers=WORKERS, sweep_interval=3600)
    raw_consumer = InProcessConsumer(raw.huey, workers=WORKERS)
    kit_consumer.start()
    raw_consumer.start()
    warmup = 20 if count > 50 else 3
    try:
        time.sleep(0.5)  # workers blocked on BZPOPMIN
        for i in range(-warmup, count):
            sides = ("kit", "raw") if i % 2 == 0 else ("raw", "kit")
            for side in sides:
                seq = i + warmup
                if side == "kit":
                    arrived.clear()
                    start = time.perf_counter_ns()
                    kit.events.emit_async(BenchLatency(seq=seq))
                    if not arrived.wait(timeout=30):
                        raise RuntimeError(f"kit event {seq} never reached its handler")
                    if i >= 0:
                        kit_ns.append(seen[seq] - start)
                else:
                    raw.arrived.clear()
                    start = time.perf_counter_ns()
                    raw.huey.enqueue(raw.latency.s(seq, priority=50))
                    if not raw.arrived.wait(timeout=30):
                        raise RuntimeError(f"raw task {seq} never ran")
                    if i >= 0:
                        raw_ns.append(raw.seen[seq] - start)
                # Let the kit's worker record the delivery as done before the next event.
                time.sleep(0.01)
        _, stats = _wait_stats(kit, count + warmup, timeout=30)
    finally:
        kit_consumer.stop()
        raw_consumer.stop()
        pool_log.append(pooled_in_use(kit))
    row = Comparison(
        f"emit_async → handler ({WORKERS} workers running)", summarize(kit_ns), summarize(raw_ns),
        baseline="Huey enqueue → task", note="one event at a time; the handler notes perf_counter",
    )
    row.extra["delivery_states"] = stats
    return row


# -- running ------------------------------------------------------------------------------


def run(
    redis_url: str,
    database_url: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    quick: bool = False,
    progress: Callable[[str], None] = lambda text: None,
) -> tuple[list[tuple[str, list[Comparison]]], list[Check], list[str], list[dict[str, Any]]]:
    import redis

    def n(full: int) -> int:
        return 40 if quick else full

    def w(full: int) -> int:
        return 5 if quick else full

    rows = run_pairs(emit_pairs(n, w), progress=progress)
    by_name = {row.operation: row for row in rows}
    hooks = hook_rows(n, w, progress)
    rows += hooks

    queues = Queues()
    app_name = f"czo_bench_{os.getpid()}"  # finds the kit's PostgreSQL backends for the CPU profile
    client = redis.Redis.from_url(redis_url)
    client.ping()
    _pg.fresh_schema(database_url, schema)
    tmp = tempfile.TemporaryDirectory(prefix="czo-bench-events-")
    kits: dict[str, Any] = {}
    raw: RawHuey | None = None
    try:
        raw = RawHuey(redis_url, queues.raw)
        # One kit at a time, so that the SQLite and PostgreSQL figures do not share the
        # process with another kit's threads (the event models are process-wide, but each
        # kit now passes its own database to every statement, binary columns included).
        shop_rows = shop_emit_rows(database_url, schema + "_shop", tmp.name, n, w, progress)
        rows += shop_rows
        kits["SQLite"] = make_kit(f"sqlite:///{tmp.name}/bench.sqlite3", redis_url, queues.sqlite)
        async_rows = emit_async_rows("SQLite", kits["SQLite"], raw, n, w, progress)
        kits.pop("SQLite").close()
        kits["PostgreSQL"] = pg = make_kit(
            _pg.schema_url(database_url, schema) + "&" + urlencode({"application_name": app_name}), redis_url,
            queues.kit,
        )
        (path,) = pg.db.execute_sql("SHOW search_path").fetchone()
        if path.strip('"') != schema:
            raise RuntimeError(f"search_path is {path!r}, expected {schema!r}")
        async_rows += emit_async_rows("PostgreSQL", pg, raw, n, w, progress)
        _reset_outbox(pg)
        results = throughput_module.throughput(
            pg, raw, client, event=BenchThroughput, reset=_reset_outbox, in_use=pooled_in_use,
            events=200 if quick else THROUGHPUT_EVENTS, workers=THROUGHPUT_THREADS, rounds=1 if quick else 2,
            app_name=app_name, progress=progress,
        )
        result = results[-1]
        latency_row = latency(pg, raw, count=20 if quick else LATENCY_EVENTS, progress=progress,
                              pool_log=result["pool_in_use"])
        kits.pop("PostgreSQL").close()
        retention, pruned = history(database_url, schema, tmp.name, kits, quick=quick, n=n, w=w, progress=progress)
    finally:
        for kit in kits.values():
            kit.close()
        if raw is not None:
            raw.huey.storage.close()
        removed = _pg.delete_redis_keys(client, [queues.pattern])
        progress(f"deleted {removed:,} Redis keys")
        client.close()
        tmp.cleanup()
        _pg.drop_schema(database_url, schema)
        for suffix in ("_empty", "_old"):
            _pg.drop_schema(database_url, schema + suffix)

    pg_enqueue = next(r for r in async_rows if "PostgreSQL" in r.operation)
    sqlite_enqueue = next(r for r in async_rows if "SQLite" in r.operation)
    hooks_row = hooks[0]
    kit_rate = statistics.mean(r["events_per_s"] for r in result["kit"])
    raw_rate = statistics.mean(r["tasks_per_s"] for r in result["raw"])
    checks = [
        Check("emit typed Event, 10 handlers: p99", by_name["emit typed Event, 10 handlers"].kit.p99, EMIT10_P99_LIMIT),
        Check("emit by name + mapping, 10 handlers: p99", by_name["emit by name + mapping, 10 handlers"].kit.p99,
              EMIT10_P99_LIMIT),
        Check("HookRegistry.run 3+3: p99 (bounds the overhead)", hooks_row.kit.p99, HOOKS_P99_LIMIT),
        Check("emit_async (PostgreSQL outbox): p95", pg_enqueue.kit.p95 / 1000, ENQUEUE_P95_LIMIT_MS, unit="ms"),
        Check("emit_async (SQLite outbox): p95", sqlite_enqueue.kit.p95 / 1000, ENQUEUE_P95_LIMIT_MS, unit="ms"),
    ]
    checks += shop_emit_checks(shop_rows)
    notes = [
        f"HookRegistry.run overhead over the plain call: p50 {hooks_row.kit.p50 - hooks_row.base.p50:.1f} µs, "
        f"p99 {hooks_row.kit.p99 - hooks_row.base.p99:.1f} µs.",
        f"End-to-end: {result['events']:,} async events, one no-op subscriber, one consumer (this process) "
        f"with 1 and {result['workers']} worker threads, PostgreSQL outbox, Redis queue; timed from consumer "
        f"start until every handler ran and outbox.stats() shows every delivery done. Kit with "
        f"{result['workers']} threads: {kit_rate:,.0f} events/s, {kit_rate / raw_rate:.2f}x raw Huey.",
        "PostgreSQL pool connections checked out, at the start and after each kit consumer stopped: "
        + " → ".join(str(v) for v in result["pool_in_use"])
        + " (the kit's default pool of 10; a stopped consumer's workers and sweeper give theirs back).",
    ]
    sections = [
        ("emit vs blinker", [r for r in rows if r.operation.startswith("emit")]),
        ("Hooks", [r for r in rows if r.operation.startswith("HookRegistry")]),
        ("emit_async enqueue (Redis queue)", async_rows),
        ("Enqueue to handler", [latency_row]),
        (f"With {retention_module.OLD_ROWS if not quick else QUICK_OLD_ROWS:,} old delivered rows vs empty "
         "tables", retention),
    ]
    for done in pruned:
        notes.append(
            f"Retention ({done['label']}): {done['how']}. Pruning the history took {done['seconds']:.1f} s "
            f"({done['rows_per_s']:,.0f} rows/s, 500 per statement): {done['pruned']}."
        )
    checks += [
        Check(f"{row.operation}: p50 vs empty tables", row.ratio, RETENTION_RATIO_LIMIT, unit="x")
        for row in retention if row.operation.startswith(("emit_async", "relay", "worker"))
    ]
    checks += throughput_checks(results)
    return sections, checks, notes, results


QUICK_OLD_ROWS = 20_000
RETENTION_RATIO_LIMIT = 1.15  # old rows / empty tables, p50: "the same cost", with noise room


def history(database_url: str, schema: str, tmp: str, kits: dict[str, Any], *, quick: bool,
            n: Callable[[int], int], w: Callable[[int], int],
            progress: Callable[[str], None]) -> tuple[list[Comparison], list[dict[str, Any]]]:
    """emit_async and a worker's per-event work with a long history in the tables, against
    empty tables, on each database (see benchmarks/_events_retention.py)."""
    rows = QUICK_OLD_ROWS if quick else retention_module.OLD_ROWS
    out: list[Comparison] = []
    pruned: list[dict[str, Any]] = []
    for label in ("PostgreSQL", "SQLite"):
        pair = []
        for side in ("empty", "old"):
            if label == "PostgreSQL":
                _pg.fresh_schema(database_url, f"{schema}_{side}")
                url = _pg.schema_url(database_url, f"{schema}_{side}")
            else:
                url = f"sqlite:///{tmp}/history-{side}.sqlite3"
            kit = kits[f"{label} {side}"] = make_kit(url, f"sqlite:///{tmp}/history-queue-{side}.sqlite3",
                                                     f"czo_bench_{os.getpid()}_history_{side}")
            kit.create_kit_tables()
            pair.append(kit)
        how = retention_module.load_history(pair[1], rows, progress)
        table, done = retention_module.retention_rows(label, pair[0], pair[1], iterations=n(1000), warmup=w(50),
                                                      progress=progress)
        out += table
        pruned.append({**done, "how": how})
        for side in ("empty", "old"):
            kits.pop(f"{label} {side}").close()
    return out, pruned



def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.events", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (40 calls per side)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--schema", default=DEFAULT_SCHEMA, help=f"scratch schema (default {DEFAULT_SCHEMA})")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    parser.add_argument("--only", choices=["shop-emit", "throughput"], help="run one part only: shop-emit "
                        "(emit of a shop event through a kit vs blinker, on PostgreSQL and SQLite); throughput "
                        "(async events end to end vs raw Huey, with --events, --threads, --profile)")
    parser.add_argument("--events", type=int, default=THROUGHPUT_EVENTS,
                        help=f"--only throughput: events per run (default {THROUGHPUT_EVENTS:,})")
    parser.add_argument("--threads", default=",".join(map(str, THROUGHPUT_THREADS)),
                        help="--only throughput: consumer thread counts, comma-separated (default 1,4)")
    parser.add_argument("--rounds", type=int, default=2, help="--only throughput: runs of each side (default 2)")
    parser.add_argument("--profile", action="store_true",
                        help="also print the CPU per event by stage (producer, relay, worker, PostgreSQL, Redis)")
    args = parser.parse_args(argv)
    if args.only == "shop-emit":
        return _main_shop_emit(args)
    if args.only == "throughput":
        return _main_throughput(args)
    import peewee
    import psycopg2
    import redis

    redis_url, database_url = _pg.redis_url(), _pg.database_url()
    env = environment(["blinker", "pluggy", "huey", "redis", "msgspec", "peewee", "psycopg2-binary"])
    started = time.monotonic()
    try:
        sections, checks, notes, results = run(
            redis_url, database_url, schema=args.schema, quick=args.quick,
            progress=lambda text: print(text, file=sys.stderr, flush=True),
        )
    except redis.exceptions.ConnectionError as exc:
        print(f"Redis at {redis_url} is not usable ({exc}); set CZO_BENCH_REDIS_URL", file=sys.stderr)
        return 2
    except (peewee.OperationalError, psycopg2.OperationalError) as exc:
        print(f"PostgreSQL at {database_url} is not usable ({str(exc).strip()}); set CZO_BENCH_DATABASE_URL",
              file=sys.stderr)
        return 2
    elapsed = time.monotonic() - started
    tables = [("End-to-end throughput", throughput_module.format_throughput(results, markdown=args.markdown))]
    if args.profile:
        profile = throughput_module.format_profile(results, markdown=args.markdown)
        tables.append(("CPU per event by stage (ms)", profile))
    print(compose_report(env, sections, checks, notes=notes, markdown=args.markdown, elapsed=elapsed, tables=tables))
    rows = [row for _, section in sections for row in section]
    if args.json:
        write_json(args.json, env=env, quick=args.quick, sections=sections, checks=checks, notes=notes,
                   throughput=results)
    return 1 if any("mismatch" in row.extra for row in rows) else 0


def throughput_checks(results: Sequence[dict[str, Any]]) -> list[Check]:
    checks = []
    for result in results:
        kit = statistics.mean(r["events_per_s"] for r in result["kit"])
        raw = statistics.mean(r["tasks_per_s"] for r in result["raw"])
        checks.append(Check(f"async events end to end, {result['workers']} thread(s): kit / raw Huey (at least)",
                            kit / raw, THROUGHPUT_TARGET, unit="x", at_least=True))
    return checks


def _main_throughput(args: argparse.Namespace) -> int:
    """Only the end-to-end throughput (kit vs raw Huey), on PostgreSQL and Redis."""
    import redis

    redis_url, database_url = _pg.redis_url(), _pg.database_url()
    env = environment(["huey", "redis", "msgspec", "peewee", "psycopg2-binary"])
    started = time.monotonic()
    queues = Queues()
    app_name = f"czo_bench_{os.getpid()}"
    client = redis.Redis.from_url(redis_url)
    schema = args.schema + "_throughput"
    _pg.fresh_schema(database_url, schema)
    progress = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    raw = RawHuey(redis_url, queues.raw)
    kit = make_kit(_pg.schema_url(database_url, schema) + "&" + urlencode({"application_name": app_name}),
                   redis_url, queues.kit)
    try:
        kit.create_kit_tables()
        results = throughput_module.throughput(
            kit, raw, client, event=BenchThroughput, reset=_reset_outbox, in_use=pooled_in_use,
            events=40 if args.quick else args.events,
            workers=[int(n) for n in args.threads.split(",")], rounds=1 if args.quick else args.rounds,
            app_name=app_name, progress=progress,
        )
    finally:
        kit.close()
        raw.huey.storage.close()
        _pg.delete_redis_keys(client, [queues.pattern])
        client.close()
        _pg.drop_schema(database_url, schema)
    tables = [("End-to-end throughput", throughput_module.format_throughput(results, markdown=args.markdown))]
    if args.profile:
        profile = throughput_module.format_profile(results, markdown=args.markdown)
        tables.append(("CPU per event by stage (ms)", profile))
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    notes = [
        f"{results[0]['events']:,} events per run, one no-op subscriber; one consumer in this process; "
        "PostgreSQL outbox, Redis queue; sides alternate raw, kit, kit, raw.",
        "CPU from /proc: the producer is this process's main thread, the relay its thread, the worker this "
        "process while the consumer ran; PostgreSQL the kit's backends (by application_name); Redis its INFO "
        "cpu, which counts every client of a shared server.",
        f"load average (1, 5, 15 min) at the end: {load}",
    ]
    print(compose_report(env, [], throughput_checks(results), notes=notes, markdown=args.markdown,
                         elapsed=time.monotonic() - started, tables=tables))
    if args.json:
        write_json(args.json, env=env, quick=args.quick, sections=[], checks=throughput_checks(results), notes=notes,
                   throughput=results)
    return 0


def _main_shop_emit(args: argparse.Namespace) -> int:
    database_url = _pg.database_url()
    env = environment(["blinker", "msgspec", "peewee", "psycopg2-binary"])
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="czo-bench-shop-emit-") as tmp:
        rows = shop_emit_rows(database_url, args.schema + "_shop", tmp, lambda full: 40 if args.quick else full,
                              lambda full: 5 if args.quick else full,
                              lambda text: print(text, file=sys.stderr, flush=True))
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    print(compose_report(env, [("Shop-event emit vs blinker", rows)], shop_emit_checks(rows),
                         notes=[f"load average (1, 5, 15 min) at the end: {load}"], markdown=args.markdown,
                         elapsed=time.monotonic() - started))
    return 1 if any("mismatch" in row.extra for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
