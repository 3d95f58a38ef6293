"""End-to-end throughput of async events against raw Huey no-op tasks on the same Redis, with
where the CPU goes (``python -m benchmarks.events --only throughput [--profile]``).

Each round: produce N events (kit: ``emit_async`` outside a transaction, the relay thread
hands them to the queue; raw Huey: N ``enqueue`` calls), then start one consumer in this
process (``workers`` Huey threads) and time it from start until the last delivery is recorded
``done`` (kit) or the last task ran (raw). Sides alternate raw, kit, kit, raw.

CPU is read from /proc: this process's threads (the producer is the main thread, the relay
its own thread, the consumer's threads the rest), the PostgreSQL backends of the kit's
connections (found by their ``application_name``), and Redis's own ``INFO cpu``. Redis and
PostgreSQL serve other clients on a shared machine too: their figures are an upper bound.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["format_profile", "format_throughput", "throughput"]

TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(path: str) -> float:
    """User + system CPU seconds of /proc/<pid>[/task/<tid>]/stat."""
    try:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _threads_cpu() -> dict[int, float]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        out[int(tid)] = _proc_cpu(f"/proc/self/task/{tid}/stat")
    return out


class Meter:
    """CPU seconds by stage between ``start()`` and ``stop()``."""

    def __init__(self, kit: Any, redis_client: Any, app_name: str | None) -> None:
        self.kit = kit
        self.redis = redis_client
        self.app_name = app_name

    def _pg_pids(self) -> list[int]:
        if self.app_name is None:
            return []
        import psycopg2

        from benchmarks import _pg
        from czo_kit.default_plugins.postgres import parse_postgresql_url

        dbname, params = parse_postgresql_url(_pg.database_url())
        conn = psycopg2.connect(dbname=dbname, connect_timeout=10, **params)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.app_name,))
                return [int(pid) for (pid,) in cur.fetchall()]
        finally:
            conn.close()

    def _pg_cpu(self) -> dict[int, float]:
        return {pid: _proc_cpu(f"/proc/{pid}/stat") for pid in self._pg_pids()}

    def _redis_cpu(self) -> float:
        info = self.redis.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def start(self) -> None:
        self.t0 = _threads_cpu()
        self.pg0 = self._pg_cpu()
        self.redis0 = self._redis_cpu()
        self.proc0 = time.process_time()

    def stop(self, *, main: int, relay: int | None) -> dict[str, float]:
        proc = time.process_time() - self.proc0
        threads = _threads_cpu()
        pg = self._pg_cpu()
        redis_cpu = self._redis_cpu() - self.redis0

        def delta(tid: int | None) -> float:
            if tid is None:
                return 0.0
            return threads.get(tid, 0.0) - self.t0.get(tid, 0.0)

        return {
            "main": delta(main), "relay": delta(relay), "process": proc,
            "postgres": sum(cpu - self.pg0.get(pid, 0.0) for pid, cpu in pg.items()),
            "redis": redis_cpu,
        }


def _relay_tid(kit: Any) -> int | None:
    thread = getattr(kit.outbox._relayer, "_thread", None)
    return thread.native_id if thread is not None else None


def throughput(kit: Any, raw: Any, redis_client: Any, *, event: Any, reset: Callable[[Any], None],
               in_use: Callable[[Any], int | None], events: int, workers: list[int], rounds: int,
               app_name: str | None, progress: Callable[[str], None]) -> list[dict[str, Any]]:
    """Kit vs raw Huey, ``rounds`` of each side, for each count of consumer threads. ``event``
    is the event type (one ``seq`` field), ``reset`` empties the outbox and the queue,
    ``in_use`` counts the pool's checked-out connections."""
    handled = [0]
    all_handled = threading.Event()
    lock = threading.Lock()

    def on_event(payload: Any, ctx: Any) -> None:
        with lock:
            handled[0] += 1
            if handled[0] >= events:
                all_handled.set()

    kit.events.on(event, on_event, id="bench-throughput")
    return [_throughput(kit, raw, redis_client, event=event, reset=reset, in_use=in_use, events=events, workers=n,
                        rounds=rounds, app_name=app_name, progress=progress, handled=handled,
                        all_handled=all_handled) for n in workers]


def _throughput(kit: Any, raw: Any, redis_client: Any, *, event: Any, reset: Callable[[Any], None],
                in_use: Callable[[Any], int | None], events: int, workers: int, rounds: int, app_name: str | None,
                progress: Callable[[str], None], handled: list[int], all_handled: threading.Event) -> dict[str, Any]:
    from czo_kit.events.queue import InProcessConsumer

    meter = Meter(kit, redis_client, app_name)
    main = threading.get_native_id()
    out: dict[str, Any] = {"kit": [], "raw": [], "events": events, "workers": workers,
                           "pool_in_use": [in_use(kit)]}
    order = (["raw", "kit", "kit", "raw"] * rounds)[: 2 * rounds] if rounds > 1 else ["kit", "raw"]
    for side in order:
        if side == "kit":
            reset(kit)
            handled[0] = 0
            all_handled.clear()
            progress(f"throughput: emitting {events:,} async events")
            meter.start()
            started = time.perf_counter()
            for i in range(events):
                kit.events.emit_async(event(seq=i))
            produced = time.perf_counter() - started
            relay = _relay_tid(kit)
            kit.outbox.flush()  # what the relay still holds, and its 'queued' marks
            produce_cpu = meter.stop(main=main, relay=relay)
            tasks = len(kit.queue)
            progress(f"throughput: kit consumer, {workers} worker thread(s), {tasks:,} tasks queued")
            consumer = kit.consumer(workers=workers, sweep_interval=3600)
            meter.start()
            started = time.perf_counter()
            consumer.start()
            try:
                if not all_handled.wait(timeout=600):
                    raise RuntimeError(f"only {handled[0]} of {events} handlers ran")
                deadline = time.perf_counter() + 60
                while True:  # the handlers ran: now their 'done' marks (a few polls at most)
                    stats = kit.outbox.stats()
                    if stats.get("done", 0) >= events or time.perf_counter() > deadline:
                        break
                    time.sleep(0.005)
                elapsed = time.perf_counter() - started
                consume_cpu = meter.stop(main=main, relay=None)
            finally:
                consumer.stop()
                out["pool_in_use"].append(in_use(kit))
            if stats.get("done", 0) != events:
                raise RuntimeError(f"only {stats} of {events} deliveries finished")
            out["kit"].append({
                "seconds": elapsed, "events_per_s": events / elapsed, "produce_per_s": events / produced,
                "tasks": tasks, "handled": handled[0], "produce_cpu": produce_cpu, "consume_cpu": consume_cpu,
            })
        else:
            raw.huey.flush()
            with raw.lock:
                raw.count, raw.goal = 0, events
                raw.done.clear()
            meter.start()
            for i in range(events):
                raw.huey.enqueue(raw.count_task.s(i, priority=50))
            produce_cpu = meter.stop(main=main, relay=None)
            progress(f"throughput: raw Huey consumer, {workers} worker thread(s)")
            consumer = InProcessConsumer(raw.huey, workers=workers)
            meter.start()
            started = time.perf_counter()
            consumer.start()
            try:
                if not raw.done.wait(timeout=600):
                    raise RuntimeError(f"raw Huey ran only {raw.count} of {events} tasks")
                elapsed = time.perf_counter() - started
                consume_cpu = meter.stop(main=main, relay=None)
            finally:
                consumer.stop()
            out["raw"].append({"seconds": elapsed, "tasks_per_s": events / elapsed, "produce_cpu": produce_cpu,
                               "consume_cpu": consume_cpu})
    return out


def format_throughput(results: list[dict[str, Any]], *, markdown: bool) -> str:
    from benchmarks._stats import render

    body = []
    for result in results:
        kit_rates = [r["events_per_s"] for r in result["kit"]]
        raw_rates = [r["tasks_per_s"] for r in result["raw"]]
        kit_rate, raw_rate = statistics.mean(kit_rates), statistics.mean(raw_rates)
        per_task = statistics.mean(result["events"] / r["tasks"] for r in result["kit"] if r["tasks"])
        threads = f"{result['workers']} thread" + ("s" if result["workers"] > 1 else "")
        body += [
            [f"kit: async events delivered, {threads} (about {per_task:.0f} events per dispatch task)",
             " / ".join(f"{v:,.0f}" for v in kit_rates), f"{kit_rate:,.0f}", f"{kit_rate / raw_rate:.2f}x"],
            [f"raw Huey: no-op tasks, {threads}", " / ".join(f"{v:,.0f}" for v in raw_rates), f"{raw_rate:,.0f}",
             "1.00x"],
            [f"kit: emit_async, producer side (one thread; run with {threads})",
             " / ".join(f"{r['produce_per_s']:,.0f}" for r in result["kit"]),
             f"{statistics.mean(r['produce_per_s'] for r in result['kit']):,.0f}", ""],
        ]
    return render(["per second", "runs", "mean", "vs raw Huey, this run"], body, markdown=markdown)


def format_profile(results: list[dict[str, Any]], *, markdown: bool) -> str:
    """CPU per event (kit) and per task (raw Huey), by stage, in ms: the mean of the runs."""
    from benchmarks._stats import render

    body = []
    for result in results:
        n = result["events"]
        threads = f"{result['workers']} thread" + ("s" if result["workers"] > 1 else "")

        def per(runs: list[dict[str, Any]], phase: str, key: str, n: int = n) -> float:
            return float(statistics.mean(r[phase][key] for r in runs)) / n * 1000

        kit, raw = result["kit"], result["raw"]
        kit_row = {
            "producer": per(kit, "produce_cpu", "main"), "relay": per(kit, "produce_cpu", "relay"),
            "worker": per(kit, "consume_cpu", "process"),
            "postgres": per(kit, "produce_cpu", "postgres") + per(kit, "consume_cpu", "postgres"),
            "redis": per(kit, "produce_cpu", "redis") + per(kit, "consume_cpu", "redis"),
        }
        raw_row = {
            "producer": per(raw, "produce_cpu", "main"), "relay": 0.0, "worker": per(raw, "consume_cpu", "process"),
            "postgres": 0.0, "redis": per(raw, "produce_cpu", "redis") + per(raw, "consume_cpu", "redis"),
        }
        for label, row in ((f"kit, per event, {threads}", kit_row), (f"raw Huey, per task, {threads}", raw_row)):
            body.append([label, *(f"{row[k]:.3f}" for k in ("producer", "relay", "worker", "postgres", "redis")),
                         f"{sum(row.values()):.3f}"])
        pg_share = per(kit, "consume_cpu", "postgres")
        body.append([f"  of which PostgreSQL while the worker ran, {threads}", "", "", "", f"{pg_share:.3f}", "", ""])
    return render(["CPU ms", "producer", "relay", "worker process", "PostgreSQL", "Redis", "total"], body,
                  markdown=markdown)
