"""Bounded claims for sweeps: several workers sweeping at once share one pass.

A sweep finds rows that look stuck and queues a task for each. Done as "select them all,
then enqueue and mark each", two sweepers at once both queue every row, and a large backlog
is read and queued in one go. Here a sweep claims its rows a batch at a time, in one
statement that reads them and moves them out of the sweep's reach (its condition is on a
timestamp the statement moves forward)::

    UPDATE t SET <claim> WHERE key = ANY(ARRAY(SELECT key FROM t WHERE <due> ORDER BY ...
                                  LIMIT n FOR UPDATE SKIP LOCKED)) AND <due> RETURNING ...

On PostgreSQL a concurrent sweeper skips the rows another one holds (``SKIP LOCKED``) and
the repeated ``<due>`` drops those another one claimed since its snapshot: no row is claimed
twice in one pass. SQLite has one writer at a time, so the plain bounded statement is enough
there (Peewee refuses ``FOR UPDATE`` on it). The caller then queues the batch in one call
and, if the queue refuses it, gives the claim back (``release``).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

import peewee

__all__ = ["SWEEP_BATCH", "SWEEP_BUDGET", "claim", "drain", "release"]

SWEEP_BATCH = 500
"""Rows one claim takes at most."""

SWEEP_BUDGET = 10.0
"""Seconds one sweep spends claiming and queueing; the sweeper runs the next one at once when
there was more (a backlog goes over several passes, with heartbeats between them)."""


def claim(
    db: peewee.Database,
    model: type[peewee.Model],
    key: peewee.Field,
    due: peewee.Expression,
    changes: dict[Any, Any],
    returning: Sequence[peewee.Field],
    *,
    order: peewee.Field | None = None,
    limit: int = SWEEP_BATCH,
) -> list[tuple[Any, ...]]:
    """Apply ``changes`` to at most ``limit`` rows matching ``due`` that no concurrent claim
    holds, in one statement (its own transaction); returns ``returning`` of each row claimed.

    ``due`` must no longer match a row once ``changes`` are applied: that is what keeps a
    second sweeper (or the next pass) off it. ``order`` (the column of the live index after
    the state, with ``due`` naming one state) takes the oldest first, straight from that
    index: without it PostgreSQL may scan the table from its start at each batch, over the
    rows earlier batches claimed, which makes a pass over a large backlog quadratic."""
    chosen = model.select(key).where(due).limit(limit)
    if order is not None:
        chosen = chosen.order_by(order)
    where = key.in_(chosen)
    if db.for_update:  # PostgreSQL: skip what another sweeper holds rather than wait for it,
        chosen = chosen.for_update(skip_locked=True)
        # ... as an array (an InitPlan: run once, then found by key), not ``IN (SELECT ...)``,
        # which a planner misled by stale statistics runs again for each candidate row; and
        # drop what another sweeper claimed since this statement began.
        where = (key == peewee.fn.ANY(peewee.fn.ARRAY(chosen))) & due
    # (SQLite runs one writing statement at a time: the rows it chose are still due, and
    # without the repeated condition it finds them by key instead of reading the live index.)
    query = model.update(changes).where(where).returning(*returning).tuples()
    return list(query.execute(db))


def release(
    db: peewee.Database,
    model: type[peewee.Model],
    key: peewee.Field,
    keys: Sequence[Any],
    column: peewee.Field,
    claimed_at: Any,
    due_again: Any,
    restore: dict[Any, Any] | None = None,
) -> None:
    """Give back a claim whose tasks the queue did not take: ``column`` (the timestamp the
    claim moved to ``claimed_at``) is set to ``due_again``, where nobody moved it since, so
    that the next sweep finds these rows again instead of waiting out a lease; ``restore``
    puts back what else the claim changed (a state)."""
    for start in range(0, len(keys), SWEEP_BATCH):
        model.update({**(restore or {}), column: due_again}).where(
            key.in_(list(keys[start : start + SWEEP_BATCH])) & (column == claimed_at)
        ).execute(db)


def drain(
    take: Callable[[], list[tuple[Any, ...]]],
    hand: Callable[[list[tuple[Any, ...]]], None],
    deadline: float,
) -> tuple[int, bool]:
    """Claim (``take``) and queue (``hand``) batch after batch until a batch comes back short
    or ``deadline`` (monotonic) has passed; returns how many rows were handed, and whether
    the pass finished (False: there may be more)."""
    total = 0
    while True:
        batch = take()
        if batch:
            hand(batch)
            total += len(batch)
        if len(batch) < SWEEP_BATCH:
            return total, True
        if time.monotonic() >= deadline:
            return total, False


CLOCK_MARGIN = 10.0
"""Seconds by which the clocks of the processes that enqueue and sweep may disagree: a row is
taken for lost only if it was queued that long before the queue's oldest waiting task."""


def lost_cut(queue: Any, stale: dt.datetime) -> dt.datetime:
    """Rows queued (or due) before this have lost their task: a lease ago (``stale``), and
    before the oldest task still waiting in ``queue``, where the queue can say (a task enqueued
    before that one has left the queue; if its row was not claimed, it was lost)."""
    oldest = getattr(queue, "oldest_waiting", None)
    try:
        first: dt.datetime | None = oldest() if oldest is not None else None
    except Exception:  # an outage: the sweep's enqueues fail too; fall back to the lease
        first = None
    if first is None:
        return stale
    return min(stale, first - dt.timedelta(seconds=CLOCK_MARGIN))
