"""Part of ``benchmarks.webhooks``: what a week of delivered history costs the webhook hot and
maintenance paths, against empty tables, in the same run.

Two kits, each in a scratch schema of its own with the same app installed: one on empty
webhook tables, one whose tables hold ``rows`` delivered deliveries (one attempt each), aged
1 to 6 days, so inside the 7-day retention period: the history a busy installation keeps,
which the sweep must not prune. Autovacuum is off on the benchmark machine, so after loading
both sides get ``VACUUM ANALYZE`` (the report says so): without it PostgreSQL plans on the
statistics of an empty table. Each operation is then timed on both sides call by call, in
one round-robin loop:

- ``sweep()``: the worker's sweep (lost and stuck deliveries, pruning past retention, the app
  registry's leftovers), with nothing to recover or prune on either side;
- ``stats()``: deliveries by state (live work and dead letters);
- dispatch: ``emit_async`` of a shop event with one subscription (delivery and outbox rows
  written, the delivery handed to the relay thread), and the worker's ``deliver(id)`` of a
  queued delivery (claim, circuit, secrets, signed POST to the receiver, record);
- for contrast, ``stats(delivered=True)``, which counts the history too.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from benchmarks import _pg
from benchmarks._stats import Call, Comparison, Pair, run_pairs

__all__ = ["history"]

TARGET = 1.5  # with history / empty, p50: "costs the same", with room for a noisy machine


def _load_history(kit: Any, rows: int, target: str) -> float:
    """``rows`` delivered deliveries to ``target`` with one attempt each, aged 1 to 6 days;
    returns the seconds it took. PostgreSQL writes them itself (``generate_series``): the
    benchmark is about reading past them, not about writing them."""
    from czo_kit.apps.net import parse_target
    from czo_kit.apps.webhooks import WebhookDelivery

    [installation] = kit.apps.list(1)
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    started = time.perf_counter()
    with kit.db.atomic():
        kit.db.execute_sql(
            """
            INSERT INTO czo_webhook_delivery (message_id, installation_id, shop_id, webhook_name, event_id,
                event_name, target_url, origin, body, state, attempts, max_attempts, last_status,
                created_at, updated_at, delivered_at)
            SELECT 'msg_history_' || g, %s, 1, 'orders', 'history-' || g, 'order.created', %s, %s, %s,
                'delivered', 1, 8, 200, t.at, t.at, t.at
            FROM generate_series(1, %s) AS g,
                LATERAL (SELECT %s::timestamp - interval '1 day' - (g %% 432000) * interval '1 second') AS t(at)
            """,
            (installation.id, target, parse_target(target).origin, b'{"id":"msg_history","data":{"total":4990}}' * 5,
             rows, now),
        )
        kit.db.execute_sql(
            """
            INSERT INTO czo_webhook_attempt (delivery_id, attempt, at, status, duration_ms, response)
            SELECT id, 1, delivered_at, 200, 1.5, '{"ok": true}' FROM czo_webhook_delivery WHERE state = 'delivered'
            """
        )
    elapsed = time.perf_counter() - started
    found = WebhookDelivery.select().where(WebhookDelivery.state == "delivered").count(kit.db)
    if found != rows:
        raise RuntimeError(f"loaded {found} delivered rows, expected {rows}")
    return elapsed


def _vacuum(kit: Any) -> None:
    conn = kit.db.connection()
    autocommit = conn.autocommit
    conn.autocommit = True  # VACUUM cannot run inside a transaction block
    try:
        with conn.cursor() as cursor:
            for table in ("czo_webhook_delivery", "czo_webhook_attempt", "czo_webhook_circuit", "czo_event_outbox"):
                cursor.execute(f'VACUUM ANALYZE "{table}"')  # fixed names, not input
    finally:
        conn.autocommit = autocommit


def history(
    database_url: str,
    redis_url: str,
    receiver_url: str,
    *,
    schema: str,
    queue_stem: str,
    make_kit: Callable[[str, str, str], Any],
    install_app: Callable[[Any, str], None],
    order: Callable[..., dict[str, Any]],
    rows: int,
    iterations: int,
    warmup: int,
    progress: Callable[[str], None],
) -> tuple[list[Comparison], dict[str, Any]]:
    schemas = {"empty": _pg.check_schema_name(schema + "_empty"), "full": _pg.check_schema_name(schema + "_history")}
    kits: dict[str, Any] = {}
    try:
        for side, name in schemas.items():
            _pg.fresh_schema(database_url, name)
            kit = kits[side] = make_kit(_pg.schema_url(database_url, name), redis_url, f"{queue_stem}{side}")
            install_app(kit, receiver_url)
        progress(f"history: loading {rows:,} delivered deliveries (and their attempts) into one side")
        load_seconds = _load_history(kits["full"], rows, receiver_url + "/kit")
        for kit in kits.values():
            _vacuum(kit)
        delivered = {side: kit.webhooks.stats(delivered=True).get("delivered", 0) for side, kit in kits.items()}

        # Deliveries for deliver() to take, one per timed call, made before any timing.
        calls = iterations + warmup + 4
        pending: dict[str, list[int]] = {}
        seq = 0
        for side, kit in kits.items():
            with kit.db.atomic():
                for _ in range(calls):
                    seq += 1
                    kit.events.emit_async("order.created", order(seq, notify=False))
            kit.webhooks.flush()
            pending[side] = sorted(d.id for d in kit.webhooks.deliveries(state="queued", limit=calls + 10))
        for kit in kits.values():
            kit.queue.flush()  # no consumer here: deliver() is called directly

        def deliver(side: str) -> Callable[[int], str]:
            kit, ids = kits[side], pending[side]
            return lambda i: kit.webhooks.deliver(ids.pop(0))

        def emit(side: str) -> Callable[[Any], Any]:
            kit = kits[side]
            counter = iter(range(10**9))
            return lambda _: kit.events.emit_async("order.created", order(10**6 + next(counter), notify=False))

        def ok(kit_result: Any, base_result: Any) -> None:
            assert kit_result == base_result, (kit_result, base_result)

        note = f"{rows:,} delivered rows on one side, none on the other"
        pairs = [
            Pair("sweep()", Call(lambda _: kits["full"].webhooks.sweep()), Call(lambda _: kits["empty"].webhooks.sweep()),
                 baseline="same, empty tables", iterations=iterations, warmup=warmup, target=TARGET, note=note,
                 group="maintenance", check=ok),
            Pair("stats()", Call(lambda _: kits["full"].webhooks.stats()), Call(lambda _: kits["empty"].webhooks.stats()),
                 baseline="same, empty tables", iterations=iterations, warmup=warmup, target=TARGET, note=note,
                 group="maintenance", check=ok),
            Pair("stats(delivered=True)", Call(lambda _: kits["full"].webhooks.stats(delivered=True)),
                 Call(lambda _: kits["empty"].webhooks.stats(delivered=True)), baseline="same, empty tables",
                 iterations=iterations, warmup=warmup, note="counts the history too (for contrast; not the hot path)",
                 group="maintenance"),
            Pair("deliver(id): claim, sign, POST, record", Call(deliver("full")), Call(deliver("empty")),
                 baseline="same, empty tables", iterations=iterations, warmup=warmup, target=TARGET, note=note,
                 group="dispatch", check=ok),
            Pair("emit_async (shop event, 1 subscription)", Call(emit("full")), Call(emit("empty")),
                 baseline="same, empty tables", iterations=iterations, warmup=warmup, target=TARGET, note=note,
                 group="dispatch"),
        ]
        comparisons = run_pairs(pairs, progress=progress)
        left = {side: kit.webhooks.stats(delivered=True).get("delivered", 0) for side, kit in kits.items()}
        info = {
            "rows": rows, "load_seconds": load_seconds, "vacuumed": True,
            "delivered_before": delivered, "delivered_after": left,
        }
        return comparisons, info
    finally:
        for kit in kits.values():
            try:
                kit.queue.flush()
            finally:
                kit.close()
        for name in schemas.values():
            _pg.drop_schema(database_url, name)
