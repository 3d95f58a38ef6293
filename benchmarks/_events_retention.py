"""Does the kit's event work cost the same when its tables hold a long history?

Two kits on the same database server, in the same run: one whose event tables are empty, one
whose tables hold ``OLD_ROWS`` delivered events (dispatched outbox rows and their finished
deliveries, eight days old: what a retention of a week keeps under steady traffic). Each
operation is timed on both, call by call, and reported as old rows / empty:

- ``emit_async`` outside a transaction (the INSERT of its outbox row);
- the relay's database work for a hand-over of ``RELAYED`` events: their ``queued`` mark (the
  relay thread is kept out of it, so the timed call is the only one to mark them);
- a worker's work for one event, as its dispatch task does it: ``dispatch_many`` (mark the
  event dispatched, write its delivery already claimed, run a no-op handler, mark it done),
  without the queue's round trip (the queue is a stub: its cost does not depend on the tables);
- a sweep and ``status()``, which read only live rows through their partial indexes.

Then the old kit prunes its history (``Outbox.prune``), timed as a whole.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks._stats import Call, Comparison, summarize, time_round_robin

__all__ = ["OLD_ROWS", "load_history", "retention_rows"]

OLD_ROWS = 200_000
EVENT = "bench.retention"
RELAYED = 10
"""Events per timed relay hand-over."""


class _NoQueue:
    """An enqueuer that keeps no task (what is timed is the database), but remembers the
    deliveries a dispatch queued, for the timed loop to run them as a worker would."""

    inline = False

    def __init__(self) -> None:
        self.delivered: list[int] = []

    def dispatch(self, event_id: str, *, delay: float, priority: int) -> None:
        return None

    def dispatch_many(self, event_ids: list[str], *, delay: float, priority: int) -> None:
        return None

    def deliver(self, delivery_id: int, *, delay: float, priority: int) -> None:
        self.delivered.append(int(delivery_id))

    def pending(self) -> int:
        return 0

    def committed(self, event_id: str, *, delay: float, priority: int) -> None:  # pragma: no cover
        raise NotImplementedError


def load_history(kit: Any, rows: int, progress: Callable[[str], None]) -> str:
    """Insert ``rows`` delivered events (one finished delivery each), eight days old, then
    bring the planner's statistics up to date (autovacuum, which would, is off here); how it
    left the tables, for the report."""
    from czo_kit.events.outbox import EventDelivery, EventOutbox

    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=8)
    chunk = 2_000
    progress(f"retention: loading {rows:,} delivered events and their deliveries")
    for start in range(0, rows, chunk):
        ids = [str(uuid.uuid4()) for _ in range(min(chunk, rows - start))]
        with kit.db.atomic():
            EventOutbox.insert_many([
                {"event_id": event_id, "name": EVENT, "payload": b"\x80", "correlation_id": event_id,
                 "created_at": old, "deliver_at": old, "retries": 5, "priority": 50, "state": "dispatched",
                 "updated_at": old}
                for event_id in ids
            ]).execute(kit.db)
            EventDelivery.insert_many([
                {"event_id": event_id, "subscriber": f"{EVENT}|noop", "state": "done", "attempts": 1,
                 "max_attempts": 6, "priority": 50, "created_at": old, "updated_at": old, "finished_at": old}
                for event_id in ids
            ]).execute(kit.db)
    # Rows only inserted leave nothing to vacuum; the statistics are what the planner lacks.
    kit.db.execute_sql("ANALYZE")
    return "ANALYZE after loading; no VACUUM (the loaded rows were only inserted: no dead rows to reclaim)"


def retention_rows(
    label: str, empty: Any, old: Any, *, iterations: int, warmup: int, progress: Callable[[str], None]
) -> tuple[list[Comparison], dict[str, Any]]:
    """Time each operation on both kits, alternately; then prune the old kit's history."""
    for kit in (empty, old):
        kit.outbox.queue = _NoQueue()  # dispatch hands its tasks to nothing
        kit.outbox._relayer.add = lambda item: None  # committed events stay pending: marked below
        kit.events.on(EVENT, lambda payload, ctx: None, id="noop")
    fresh: dict[int, list[str]] = {id(empty): [], id(old): []}  # emitted, not yet relayed
    handed: dict[int, list[str]] = {id(empty): [], id(old): []}  # relayed, not yet dispatched

    def emit(kit: Any) -> Call:
        def call(_: Any) -> str:
            event_id: str = kit.events.emit_async(EVENT, {"n": 1}).event_id
            return event_id

        return Call(call, after=fresh[id(kit)].append)

    def relay(kit: Any) -> Call:
        def pick(i: int) -> list[str]:
            ready = fresh[id(kit)]
            while len(ready) < RELAYED:  # more hand-overs than emits so far: emit, untimed
                ready.append(kit.events.emit_async(EVENT, {"n": 2}).event_id)
            ids, ready[:] = ready[:RELAYED], ready[RELAYED:]
            return ids

        def call(ids: list[str]) -> list[str]:
            kit.outbox._mark_queued(ids)  # what the relay thread writes after a hand-over
            return ids

        return Call(call, pick, after=handed[id(kit)].extend)

    def work(kit: Any) -> Call:
        def pick(i: int) -> str:
            ready = handed[id(kit)]
            if not ready:  # more worker calls than hand-overs so far: emit one, untimed
                return str(kit.events.emit_async(EVENT, {"n": 3}).event_id)
            return ready.pop()

        def call(event_id: str) -> None:
            counts = kit.outbox.dispatch_many([event_id])  # what the dispatch task does
            if counts.get("done") != 1:
                raise RuntimeError(f"{event_id} did not run its one subscriber: {counts}")

        return Call(call, pick)

    progress(f"retention ({label}): emit_async, the relay's mark and a worker's dispatch, {iterations:,} x 6 calls")
    emit_empty, emit_old, relay_empty, relay_old, work_empty, work_old = time_round_robin(
        [emit(empty), emit(old), relay(empty), relay(old), work(empty), work(old)],
        iterations=iterations, warmup=warmup,
    )
    few = max(10, iterations // 20)
    progress(f"retention ({label}): sweep and status, {few:,} x 4 calls")
    sweep_empty, sweep_old, status_empty, status_old = time_round_robin(
        [Call(lambda _: empty.outbox.sweep()), Call(lambda _: old.outbox.sweep()),
         Call(lambda _: empty.outbox.status()), Call(lambda _: old.outbox.status())],
        iterations=few, warmup=3,
    )
    note = f"old: {OLD_ROWS:,} delivered events + their deliveries, 8 days old; baseline: empty tables"
    rows = [
        Comparison(f"emit_async ({label}), old rows", summarize(emit_old), summarize(emit_empty),
                   baseline="same, empty tables", note=note),
        Comparison(f"relay: queued mark of {RELAYED} events ({label}), old rows", summarize(relay_old),
                   summarize(relay_empty), baseline="same, empty tables",
                   note="the relay's UPDATE after a hand-over; the queue's round trip left out (a stub)"),
        Comparison(f"worker: dispatch + run + done ({label}), old rows", summarize(work_old), summarize(work_empty),
                   baseline="same, empty tables",
                   note="one event, one no-op subscriber, as a dispatch task runs it; the queue left out (a stub)"),
        Comparison(f"sweep ({label}), old rows", summarize(sweep_old), summarize(sweep_empty),
                   baseline="same, empty tables", note="reads live rows only, through partial indexes"),
        Comparison(f"status() ({label}), old rows", summarize(status_old), summarize(status_empty),
                   baseline="same, empty tables", note="live rows by state, oldest ages, open dead letters"),
    ]
    progress(f"retention ({label}): pruning the history")
    started = time.perf_counter()
    pruned = old.outbox.prune()
    took = time.perf_counter() - started
    deleted = pruned["events"] + pruned["deliveries"]
    return rows, {"label": label, "pruned": pruned, "seconds": took, "rows_per_s": deleted / took if took else 0.0}
