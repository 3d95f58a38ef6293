"""czo_kit webhooks against a hand-built Huey + urllib3 sender and bare HMAC, in the same run.

    python -m benchmarks.webhooks            # full run, about a minute
    python -m benchmarks.webhooks --quick    # smoke run, seconds
    python -m benchmarks.webhooks --markdown # tables as markdown (for docs/benchmarks.md)

Needs Redis, ``CZO_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/14``; the test suite
uses db 15), and PostgreSQL, ``CZO_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). The kit's tables (apps, webhook deliveries,
outbox) live in the scratch schema ``czo_bench_webhooks``, dropped at the end; every Huey
queue is named ``czo_bench_<pid>_...`` and deleted at the end.

The receiver is a real HTTP/1.1 server on loopback (``http.server`` with keep-alive and Nagle
off) in a process of its own; the kit's consumer is the in-process one
(``kit.consumer(...)``: Huey worker threads in this process). Three parts:

- enqueue to receiver: ``kit.events.emit_async("order.created", {...shop_id: 1...})`` for a
  shop where an app subscribed to it is installed, until the receiver has the signed POST,
  with ``kit.consumer(workers=4)`` running; called on its own and inside ``kit.db.atomic()``;
  against a Huey task that signs and POSTs with urllib3 (what a module author would
  otherwise write); one event at a time, the three sides in turn;
- deliveries per second with one worker thread: 2,000 deliveries recorded, then a
  ``kit.consumer(workers=1)`` timed until every one is ``delivered``; against the same number
  of plain urllib3 POSTs from one thread (keep-alive pool), and the hand-built Huey task with
  one worker;
- signing: ``czo_kit.apps.sign`` and ``verify_signature`` for 1, 16 and 64 KiB bodies
  against a bare ``hmac.new(key, body, sha256).hexdigest()``;
- history: ``sweep()``, ``stats()``, ``deliver(id)`` and ``emit_async`` with 200,000 old
  delivered rows kept (inside the retention period) against empty tables, each in a schema
  of its own (``<schema>_history`` and ``<schema>_empty``), both ``VACUUM ANALYZE``d after
  loading (see ``benchmarks/_webhook_history.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import peewee

from benchmarks import _pg
from benchmarks._receiver import ReceiverProcess
from benchmarks._stats import (
    Call,
    Check,
    Comparison,
    compose_report,
    environment,
    format_us,
    render,
    summarize,
    time_round_robin,
    write_json,
)

SECRET = "czo-bench-secret-" + "x" * 32
DEFAULT_SCHEMA = "czo_bench_webhooks"

LATENCY_REQUIREMENT_MS = 100.0  # enqueue -> receiver p95, the requirement
LATENCY_TARGET_MS = 10.0  # and its target

WORKERS = 4  # consumer threads while measuring latency
LATENCY_EVENTS = 300
THROUGHPUT_DELIVERIES = 2_000
PRODUCE_BATCH = 100  # events emitted per transaction when recording the deliveries
SIGN_SIZES_KIB = (1, 16, 64)
HISTORY_ROWS = 200_000  # delivered deliveries kept, each with its attempt
HISTORY_CALLS = 400  # timed calls per operation and side
SHOP = 1
OWNER = "bench-owner"
APP_ID = "bench-app"

_clock = time.monotonic_ns  # CLOCK_MONOTONIC: the receiver process reads the same clock
_json = msgspec.json.Encoder()


def order(seq: int, *, notify: bool) -> dict[str, Any]:
    """An ``order.created`` payload (about 200 bytes of JSON in the webhook's ``data``)."""
    return {
        "shop_id": SHOP,
        "id": 100_000 + seq,
        "number": f"#{100_000 + seq}",
        "total": 4_990,
        "currency": "EUR",
        "lines": 3,
        "customer_id": 4242,
        "status": "created",
        "seq": seq,
        "notify": notify,
    }


class Queues:
    """Names of every Huey queue one run creates, so that the run can delete them."""

    def __init__(self) -> None:
        stem = f"czo_bench_{os.getpid()}_"
        self.kit = stem + "webhooks"
        self.raw = stem + "raw_webhooks"
        self.pattern = f"huey.*.{stem}*"


# -- the kit ------------------------------------------------------------------------------


def make_kit(database_url: str, redis_url: str, queue: str) -> Any:
    """A kit with an app installed in shop 1, subscribed to ``order.created``."""
    from czo_kit.kit import Kit
    from czo_kit.settings import Settings

    settings = Settings(
        database_url=database_url, queue_url=redis_url, queue_name=queue, cache_url="memory://",
        secret_key=SECRET, plugins=(), events_sweep_interval=3600.0, apps_allow_private_urls=True,
    )
    return Kit(settings)


def install_app(kit: Any, receiver_url: str) -> None:
    if "order" not in kit.permissions.resources:  # the order plugin is not loaded (plugins=())
        kit.permissions.resource("order", ["read", "write"])
    # Apps receive only declared fields: every field of the bench payload is, so the receiver
    # gets the whole of it (its "seq" and "notify" time the run), filtered as in production.
    kit.permissions.event("order.created", resource="order", fields={name: None for name in order(0, notify=False)})
    kit.webhooks.ensure_tables()  # the apps' and deliveries' tables, as `czo-kit db init` would
    kit.outbox.ensure_tables()
    kit.permission_service.grant(OWNER, SHOP, "owner")
    kit.apps.install(
        shop_id=SHOP,
        installer_id=OWNER,
        manifest={
            "id": APP_ID,
            "name": "Bench app",
            "version": "1.0.0",
            "about": "receives order.created",
            "app_url": receiver_url + "/",
            "permissions": [{"resource": "order", "actions": ["read"], "scope": "shop"}],
            "webhooks": [
                {"name": "orders", "events": ["order.created"], "target_url": receiver_url + "/kit", "is_active": True}
            ],
        },
    )


def reset_kit(kit: Any) -> None:
    """Empty the queue, the deliveries and the outbox between parts."""
    from czo_kit.apps.webhooks import WebhookAttempt, WebhookCircuit, WebhookDelivery
    from czo_kit.events.outbox import EVENT_MODELS

    kit.queue.flush()
    models: list[type[peewee.Model]] = [WebhookAttempt, WebhookDelivery, WebhookCircuit, *EVENT_MODELS]
    for model in models:
        model.delete().execute(kit.db)


def delivered(kit: Any) -> int:
    return int(kit.webhooks.stats(delivered=True).get("delivered", 0))


# -- the baseline: what a module author would otherwise write ------------------------------


class HandBuilt:
    """A plain PriorityRedisHuey (pickle) with a task that signs the body (HMAC-SHA256, hex,
    ``t=<ts>,v1=<sig>``) and POSTs it with a shared urllib3 pool, raising on a non-2xx answer
    so that Huey retries it. No delivery records, attempt log, dead letters or breaker."""

    def __init__(self, redis_url: str, name: str, target: str) -> None:
        import urllib3
        from huey import PriorityRedisHuey

        self.huey = PriorityRedisHuey(name, url=redis_url, results=False, utc=True)
        self.http = urllib3.PoolManager(maxsize=WORKERS, block=False)
        self.timeout = urllib3.Timeout(connect=2.0, read=10.0)
        self.target = target
        key = SECRET.encode()
        self.lock = threading.Lock()
        self.count = 0
        self.goal = 0
        self.done = threading.Event()

        @self.huey.task(retries=7, retry_delay=10, name="bench_webhook_post")  # type: ignore[untyped-decorator]
        def post(url: str, body: bytes) -> None:
            ts = str(int(time.time()))
            signature = hmac.new(key, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            response = self.http.request(
                "POST", url, body=body, retries=False, timeout=self.timeout,
                headers={"Content-Type": "application/json", "X-Signature": f"t={ts},v1={signature}"},
            )
            if not 200 <= response.status < 300:
                raise RuntimeError(f"webhook answered {response.status}")
            with self.lock:
                self.count += 1
                if self.count >= self.goal:
                    self.done.set()

        self.post = post

    def body(self, seq: int, *, notify: bool) -> bytes:
        return _json.encode({"id": f"msg_{seq}", "event": "order.created", "shop_id": SHOP,
                             "occurred_at": time.time(), "data": order(seq, notify=notify)})

    def enqueue(self, seq: int, *, notify: bool) -> None:
        self.huey.enqueue(self.post.s(self.target, self.body(seq, notify=notify), priority=50))

    def close(self) -> None:
        self.http.clear()
        pool = getattr(self.huey.storage, "pool", None)
        if pool is not None:
            pool.disconnect()


# -- enqueue to receiver ------------------------------------------------------------------


def latency(kit: Any, raw: HandBuilt, receiver: ReceiverProcess, *, count: int,
            progress: Callable[[str], None]) -> tuple[list[Comparison], dict[str, Any]]:
    """One event at a time, rotating sides, both consumers running and idle.

    Three sides: ``emit_async`` called on its own (outside a transaction: the delivery row
    and the outbox row in one transaction of its own; then the delivery is queued by the webhook
    relay thread and the event by the outbox relay thread, none in the caller's), the same
    call inside ``kit.db.atomic()`` as a caller's transaction would hold it (one commit,
    handed to the relays at commit; the timer includes the commit), and the hand-built sender.
    """
    from czo_kit.events.queue import InProcessConsumer

    reset_kit(kit)
    raw.huey.flush()
    sides = ("kit", "kit-tx", "raw")
    total: dict[str, list[int]] = {side: [] for side in sides}
    call: dict[str, list[int]] = {side: [] for side in sides}
    warmup = 20 if count > 50 else 3
    progress(f"latency: {count:,} events per side (3 sides), one at a time, {WORKERS} workers each")
    kit_consumer = kit.consumer(workers=WORKERS, sweep_interval=3600)
    raw_consumer = InProcessConsumer(raw.huey, workers=WORKERS)
    kit_consumer.start()
    raw_consumer.start()
    seq = 0
    try:
        time.sleep(0.5)  # every worker blocked on BZPOPMIN
        for i in range(-warmup, count):
            shift = (i + warmup) % 3
            for side in sides[shift:] + sides[:shift]:
                seq += 1
                if side == "kit":
                    payload = order(seq, notify=True)
                    start = _clock()
                    kit.events.emit_async("order.created", payload)
                    returned = _clock()
                    arrived = receiver.wait("/kit", seq)
                elif side == "kit-tx":
                    payload = order(seq, notify=True)
                    start = _clock()
                    with kit.db.atomic():
                        kit.events.emit_async("order.created", payload)
                    returned = _clock()
                    arrived = receiver.wait("/kit", seq)
                else:
                    start = _clock()
                    raw.enqueue(seq, notify=True)
                    returned = _clock()
                    arrived = receiver.wait("/raw", seq)
                if i >= 0:
                    total[side].append(arrived - start)
                    call[side].append(returned - start)
                # Let the worker record the attempt (after the POST) before the next event.
                time.sleep(0.02)
        expected = 2 * (count + warmup)
        deadline = time.monotonic() + 30
        while delivered(kit) < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        states = kit.webhooks.stats(delivered=True)
    finally:
        kit_consumer.stop()
        raw_consumer.stop()
    raw_total, raw_call = summarize(total["raw"]), summarize(call["raw"])
    baseline = "Huey task: sign + urllib3 POST"
    rows = [
        Comparison("emit_async → receiver has the POST", summarize(total["kit"]), raw_total, baseline=baseline,
                   note="emit_async on its own, outside a transaction"),
        Comparison("atomic(): emit_async, commit → receiver has the POST", summarize(total["kit-tx"]), raw_total,
                   baseline=baseline, note="inside a transaction, as a caller would emit it"),
        Comparison("emit_async call (shop event, 1 subscription)", summarize(call["kit"]), raw_call,
                   baseline="Huey enqueue of that task",
                   note="outside a transaction: delivery row + outbox row in one commit; both enqueues are "
                        "the relay threads'"),
        Comparison("atomic(): emit_async, commit", summarize(call["kit-tx"]), raw_call,
                   baseline="Huey enqueue of that task",
                   note="one commit; both enqueues are the relay threads'"),
    ]
    return rows, {"delivery_states": states, "events": count, "expected": expected}


# -- deliveries per second, one worker ------------------------------------------------------


def record_deliveries(kit: Any, count: int) -> float:
    """``count`` order.created events emitted in transactions of PRODUCE_BATCH, no consumer
    running: one webhook delivery each, recorded and queued. Returns the seconds it took."""
    started = time.perf_counter()
    for start in range(0, count, PRODUCE_BATCH):
        with kit.db.atomic():
            for seq in range(start, min(start + PRODUCE_BATCH, count)):
                kit.events.emit_async("order.created", order(seq, notify=False))
    elapsed = time.perf_counter() - started
    states = kit.webhooks.stats(delivered=True)
    if states != {"queued": count}:
        raise RuntimeError(f"expected {count} queued deliveries, found {states}")
    return elapsed


def kit_throughput(kit: Any, count: int, receiver: ReceiverProcess) -> dict[str, Any]:
    reset_kit(kit)
    produce = record_deliveries(kit, count)
    # Everything in the queue before the clock starts, as the hand-built side enqueues before
    # its consumer starts: otherwise the consumer would idle, or run the events' own dispatch
    # tasks, while the relay threads are still handing over.
    kit.webhooks.flush()
    kit.outbox.flush()
    before = receiver.stats().get("/kit", 0)
    consumer = kit.consumer(workers=1, sweep_interval=3600)
    started = time.perf_counter()
    consumer.start()
    try:
        deadline = started + 600
        while True:
            done = delivered(kit)
            now = time.perf_counter()
            if done >= count or now > deadline:
                break
            time.sleep(0.05)
    finally:
        consumer.stop()
    if done < count:
        raise RuntimeError(f"only {done} of {count} webhook deliveries were delivered: {kit.webhooks.stats(delivered=True)}")
    posts = receiver.stats().get("/kit", 0) - before
    return {"seconds": now - started, "per_s": count / (now - started), "posts": posts,
            "produce_per_s": count / produce}


def urllib3_throughput(url: str, count: int) -> dict[str, Any]:
    """``count`` plain POSTs of a webhook-sized body from one thread, one kept-alive connection."""
    import urllib3

    http = urllib3.PoolManager(maxsize=1)
    timeout = urllib3.Timeout(connect=2.0, read=10.0)
    body = _json.encode({"id": "msg_0", "event": "order.created", "shop_id": SHOP, "occurred_at": time.time(),
                         "data": order(0, notify=False)})
    headers = {"Content-Type": "application/json"}
    http.request("POST", url, body=body, headers=headers, timeout=timeout)  # open the connection
    started = time.perf_counter()
    for _ in range(count):
        response = http.request("POST", url, body=body, headers=headers, timeout=timeout, retries=False)
        if response.status != 200:
            raise RuntimeError(f"receiver answered {response.status}")
    elapsed = time.perf_counter() - started
    http.clear()
    return {"seconds": elapsed, "per_s": count / elapsed}


def huey_throughput(raw: HandBuilt, count: int) -> dict[str, Any]:
    from czo_kit.events.queue import InProcessConsumer

    raw.huey.flush()
    with raw.lock:
        raw.count, raw.goal = 0, count
        raw.done.clear()
    for seq in range(count):
        raw.enqueue(seq, notify=False)
    consumer = InProcessConsumer(raw.huey, workers=1)
    started = time.perf_counter()
    consumer.start()
    try:
        if not raw.done.wait(timeout=600):
            raise RuntimeError(f"the hand-built sender posted only {raw.count} of {count}")
        elapsed = time.perf_counter() - started
    finally:
        consumer.stop()
    return {"seconds": elapsed, "per_s": count / elapsed}


def throughput(kit: Any, raw: HandBuilt, receiver: ReceiverProcess, *, count: int, rounds: int,
               progress: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {"count": count, "kit": [], "urllib3": [], "huey": []}
    order_ = ["urllib3", "kit", "huey", "huey", "kit", "urllib3"][: 3 * rounds]
    for side in order_:
        if side == "kit":
            progress(f"throughput: {count:,} deliveries recorded, kit consumer with 1 worker")
            out["kit"].append(kit_throughput(kit, count, receiver))
        elif side == "urllib3":
            progress(f"throughput: {count:,} plain urllib3 POSTs from one thread")
            out["urllib3"].append(urllib3_throughput(receiver.url + "/plain", count))
        else:
            progress(f"throughput: {count:,} hand-built Huey tasks, 1 worker")
            out["huey"].append(huey_throughput(raw, count))
    return out


def format_throughput(result: dict[str, Any], *, markdown: bool) -> str:
    kit = statistics.mean(r["per_s"] for r in result["kit"])
    plain = statistics.mean(r["per_s"] for r in result["urllib3"])
    huey = statistics.mean(r["per_s"] for r in result["huey"])

    def runs(side: str) -> str:
        return " / ".join(f"{r['per_s']:,.0f}" for r in result[side])

    body = [
        ["kit: webhook deliveries, consumer with 1 worker thread", runs("kit"), f"{kit:,.0f}",
         f"{kit / plain:.2f}x", f"{kit / huey:.2f}x"],
        ["plain urllib3 POSTs, one thread, keep-alive", runs("urllib3"), f"{plain:,.0f}", "1.00x", f"{plain / huey:.2f}x"],
        ["hand-built Huey task (sign + POST), 1 worker", runs("huey"), f"{huey:,.0f}", f"{huey / plain:.2f}x", "1.00x"],
        ["kit: recording them (emit_async, 100 per transaction)",
         " / ".join(f"{r['produce_per_s']:,.0f}" for r in result["kit"]),
         f"{statistics.mean(r['produce_per_s'] for r in result['kit']):,.0f}", "", ""],
    ]
    return render(["per second", "runs", "mean", "vs urllib3", "vs Huey task"], body, markdown=markdown)


# -- signing ------------------------------------------------------------------------------


def signing(n: Callable[[int], int], w: Callable[[int], int],
            progress: Callable[[str], None]) -> tuple[list[Comparison], dict[str, Any]]:
    """sign / verify_signature vs a bare HMAC, per body size, in one round-robin loop each."""
    from czo_kit.apps import new_webhook_secret, sign, verify_signature

    secret = new_webhook_secret()
    key = secret.encode()
    rows: list[Comparison] = []
    p50: dict[str, dict[int, float]] = {"sign": {}, "hmac": {}, "verify": {}, "check": {}}
    for kib in SIGN_SIZES_KIB:
        body = (b'{"data":"' + b"x" * (kib * 1024))[: kib * 1024 - 2] + b'"}'
        ts = int(time.time())
        header = sign(body, [secret], message_id="msg_bench", timestamp=ts)["X-CZO-Signature"]
        expected_hex = header.split("v1=", 1)[1].encode()
        prefix = f"{ts}.".encode()

        def kit_sign(_: Any, body: bytes = body) -> Any:
            return sign(body, [secret], message_id="msg_bench")

        def bare_hmac(_: Any, body: bytes = body) -> str:
            return hmac.new(key, body, hashlib.sha256).hexdigest()

        def kit_verify(_: Any, body: bytes = body, header: str = header) -> bool:
            return verify_signature(body, header, secret)

        def bare_verify(_: Any, body: bytes = body, expected: bytes = expected_hex) -> bool:
            return hmac.compare_digest(hmac.new(key, prefix + body, hashlib.sha256).hexdigest().encode(), expected)

        if not (kit_verify(None) and bare_verify(None)):
            raise AssertionError("the signature did not verify")
        iterations = n(10_000 if kib < 64 else 5_000)
        progress(f"signing, {kib} KiB body: {iterations:,} x 4 calls")
        s, h, v, c = time_round_robin(
            [Call(kit_sign), Call(bare_hmac), Call(kit_verify), Call(bare_verify)],
            iterations=iterations, warmup=w(500),
        )
        sig, mac, ver, chk = summarize(s), summarize(h), summarize(v), summarize(c)
        rows.append(Comparison(f"sign, {kib} KiB", sig, mac, baseline="hmac.new(key, body, sha256).hexdigest()",
                               note="X-CZO-Signature + Standard Webhooks: two HMACs"))
        rows.append(Comparison(f"verify_signature, {kib} KiB", ver, chk,
                               baseline="HMAC of t. + body, compare_digest",
                               note="parse the header, check the timestamp, HMAC, compare"))
        for name, summary in (("sign", sig), ("hmac", mac), ("verify", ver), ("check", chk)):
            p50[name][kib] = summary.p50
    low, high = SIGN_SIZES_KIB[0], SIGN_SIZES_KIB[-1]
    slopes = {name: (values[high] - values[low]) / (high - low) for name, values in p50.items()}
    return rows, {"p50_us": p50, "us_per_kib": slopes}


def format_signing(info: dict[str, Any], *, markdown: bool) -> str:
    labels = {
        "sign": "czo_kit.apps.sign (two HMACs)",
        "hmac": "bare hmac.new(...).hexdigest()",
        "verify": "czo_kit.apps.verify_signature",
        "check": "bare HMAC + compare_digest",
    }
    p50 = info["p50_us"]
    low = SIGN_SIZES_KIB[0]
    body = []
    for name, label in labels.items():
        slope = info["us_per_kib"][name]
        fixed = p50[name][low] - slope * low
        body.append([label, *(format_us(p50[name][k]) for k in SIGN_SIZES_KIB), f"{slope:.2f}",
                     format_us(max(fixed, 0.0)), f"{1024 / slope:,.0f}" if slope > 0 else ""])
    header = ["p50 µs", *(f"{k} KiB" for k in SIGN_SIZES_KIB), "µs per KiB", "fixed µs", "MiB/s"]
    return render(header, body, markdown=markdown)


# -- running ------------------------------------------------------------------------------


def run(
    redis_url: str,
    database_url: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    quick: bool = False,
    progress: Callable[[str], None] = lambda text: None,
) -> tuple[list[tuple[str, list[Comparison]]], list[Check], list[str], list[tuple[str, Any]], dict[str, Any]]:
    import redis

    def n(full: int) -> int:
        return 40 if quick else full

    def w(full: int) -> int:
        return 5 if quick else full

    sign_rows, sign_info = signing(n, w, progress)

    queues = Queues()
    client = redis.Redis.from_url(redis_url)
    client.ping()
    _pg.fresh_schema(database_url, schema)
    receiver = ReceiverProcess().start()
    kit: Any = None
    raw: HandBuilt | None = None
    try:
        kit = make_kit(_pg.schema_url(database_url, schema), redis_url, queues.kit)
        (path,) = kit.db.execute_sql("SHOW search_path").fetchone()
        if path.strip('"') != schema:
            raise RuntimeError(f"search_path is {path!r}, expected {schema!r}")
        install_app(kit, receiver.url)
        raw = HandBuilt(redis_url, queues.raw, receiver.url + "/raw")
        latency_rows, latency_info = latency(kit, raw, receiver, count=20 if quick else LATENCY_EVENTS,
                                             progress=progress)
        result = throughput(kit, raw, receiver, count=100 if quick else THROUGHPUT_DELIVERIES,
                            rounds=1 if quick else 2, progress=progress)
        from benchmarks._webhook_history import history

        history_rows, history_info = history(
            database_url, redis_url, receiver.url, schema=schema, queue_stem=queues.kit + "_",
            make_kit=make_kit, install_app=install_app, order=order,
            rows=2_000 if quick else HISTORY_ROWS, iterations=n(HISTORY_CALLS), warmup=w(30), progress=progress,
        )
        pool_in_use = getattr(kit.db, "_in_use", None)
        result["pool_in_use_after"] = None if pool_in_use is None else len(pool_in_use)
        result["latency"] = latency_info
        result["receiver"] = receiver.stats()
    finally:
        if kit is not None:
            kit.close()
        if raw is not None:
            raw.close()
        receiver.stop()
        removed = _pg.delete_redis_keys(client, [queues.pattern])
        progress(f"deleted {removed:,} Redis keys")
        client.close()
        _pg.drop_schema(database_url, schema)

    checks = []
    for row, label in ((latency_rows[0], "emit_async → receiver"), (latency_rows[1], "atomic(): emit_async → receiver")):
        checks.append(Check(f"{label} p95 (requirement)", row.kit.p95 / 1000, LATENCY_REQUIREMENT_MS, unit="ms"))
        checks.append(Check(f"{label} p95 (target)", row.kit.p95 / 1000, LATENCY_TARGET_MS, unit="ms"))
    kit_rate = statistics.mean(r["per_s"] for r in result["kit"])
    plain_rate = statistics.mean(r["per_s"] for r in result["urllib3"])
    notes = [
        f"Latency: {latency_info['events']:,} events per side after a warm-up, one at a time, sides rotating; "
        f"the kit's consumer (kit.consumer(workers={WORKERS}, sweep_interval=3600), in this process) and the "
        f"hand-built one (Huey's consumer, {WORKERS} threads, in this process) both running and idle; the "
        "receiver stamps each arrival with CLOCK_MONOTONIC in its own process. Kit deliveries at the end: "
        + ", ".join(f"{k} {v}" for k, v in sorted(latency_info["delivery_states"].items()))
        + f" (of {latency_info['expected']:,}).",
        f"Throughput: {result['count']:,} deliveries per run; kit {kit_rate:,.0f}/s with one worker thread, "
        f"{kit_rate / plain_rate:.2f}x plain urllib3 POSTs from one thread. Timed from consumer start until "
        "webhooks.stats() shows every delivery delivered (polled every 50 ms). The events' own outbox "
        "dispatch tasks (no in-process subscribers) wait in the same queue at a lower priority (50 against "
        "the webhooks' 60), so they run after the clock stops.",
        "PostgreSQL pool connections checked out after every consumer stopped: "
        f"{result['pool_in_use_after']} (the kit's default pool of 10).",
        f"History: {history_info['rows']:,} delivered deliveries, one attempt each, aged 1 to 6 days (inside the "
        f"7-day retention, so the sweep keeps them), loaded in {history_info['load_seconds']:.1f}s into one "
        "schema; an identical kit on empty tables in another. Autovacuum is off on this machine: both sides "
        f"were vacuumed (VACUUM ANALYZE) after loading. Delivered rows before/after: "
        f"{history_info['delivered_before']} / {history_info['delivered_after']} (nothing pruned). Calls alternate "
        "between the sides in one round-robin loop per group; ratio = with history / empty, p50.",
    ]
    sections = [
        ("Enqueue to receiver", latency_rows),
        ("Signing", sign_rows),
        (f"With {history_info['rows']:,} old delivered rows against empty tables", history_rows),
    ]
    tables = [
        ("Deliveries per second, one worker thread", "throughput"),
        ("Signing cost per KiB (p50, from the 1 and 64 KiB rows)", "signing"),
    ]
    return sections, checks, notes, tables, {"throughput": result, "signing": sign_info}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.webhooks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--schema", default=DEFAULT_SCHEMA, help=f"scratch schema (default {DEFAULT_SCHEMA})")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    import psycopg2
    import redis

    redis_url, database_url = _pg.redis_url(), _pg.database_url()
    env = environment(["huey", "redis", "urllib3", "msgspec", "peewee", "psycopg2-binary"])
    started = time.monotonic()
    try:
        sections, checks, notes, tables, info = run(
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
    rendered = {
        "throughput": format_throughput(info["throughput"], markdown=args.markdown),
        "signing": format_signing(info["signing"], markdown=args.markdown),
    }
    print(compose_report(env, sections, checks, notes=notes, markdown=args.markdown, elapsed=elapsed,
                         tables=[(title, rendered[key]) for title, key in tables]))
    if args.json:
        write_json(args.json, env=env, quick=args.quick, sections=sections, checks=checks, notes=notes, **info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
