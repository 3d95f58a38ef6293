"""What an operator sees of async events: tracebacks of failed handlers, ``events status``,
``--json`` listings.

Kits come from ``tests/test_outbox.py``'s fixtures: a queue on the backend under test and a
consumer on threads of this process.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from czo_kit import Kit
from czo_kit.events import EventContext
from czo_kit.events._heartbeat import WorkerHeartbeat
from czo_kit.events._retention import prune
from czo_kit.events.outbox import TRACEBACK_LIMIT, DeadLetter, EventDelivery, EventOutbox, ProcessedEvent
from czo_kit.testing.cache import wait_until
from test_outbox import DATABASES, NO_QUEUE, PAIRED, TIMEOUT, backend, cli_env, make_kit, run_cli  # noqa: F401

EVENT = "test.review.posted"


def _call_review_service(payload: Any) -> None:
    raise ConnectionError(f"review service down for review {payload['review']}")


def post_review(payload: Any, ctx: EventContext) -> None:
    try:
        _call_review_service(payload)
    except ConnectionError as exc:
        raise RuntimeError("could not index the review") from exc


def shout(payload: Any, ctx: EventContext) -> None:
    raise ValueError("x" * 20_000 + " the end")


@pytest.mark.parametrize("backend", PAIRED, indirect=True)
def test_a_failing_handler_logs_and_keeps_its_traceback(
    make_kit: Callable[..., Kit], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    kit = make_kit()
    assert kit.outbox is not None
    kit.events.on(EVENT, post_review, id="index")
    kit.events.on(EVENT, shout, id="shout")
    with caplog.at_level(logging.WARNING, logger="czo_kit.events"):
        with kit.consumer(workers=2, sweep_interval=0.2):
            ctx = kit.events.emit_async(EVENT, {"review": 7}, retries=1)
            assert wait_until(lambda: len(kit.outbox.dead_letters()) == 2, timeout=TIMEOUT)

    # Logged with its traceback at every failed attempt, not only its repr.
    failed = [r for r in caplog.records if "failed (attempt" in r.getMessage() and "|index" in r.getMessage()]
    assert len(failed) == 2, [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.WARNING and r.exc_info and r.exc_info[0] is RuntimeError for r in failed)

    letters = {letter.subscriber: letter for letter in kit.outbox.dead_letters()}
    index = letters[f"{EVENT}|index"]
    trace = index.traceback or ""
    assert trace.startswith("Traceback (most recent call last):")
    assert "in _call_review_service" in trace and "ConnectionError: review service down for review 7" in trace
    assert "The above exception was the direct cause of the following exception" in trace
    assert trace.rstrip().endswith("RuntimeError: could not index the review")
    delivery = EventDelivery.get_by_id(index.delivery_id)
    assert delivery.last_traceback == trace  # the attempt's record keeps it too
    assert any(f"czo-kit events dead {index.id}" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)

    # Bounded: a long one keeps its end, where it raised.
    long = letters[f"{EVENT}|shout"].traceback or ""
    assert TRACEBACK_LIMIT < len(long) <= TRACEBACK_LIMIT + 60
    assert long.startswith("[... ") and long.rstrip().endswith("xxx the end")

    cli_env(monkeypatch, kit)
    shown = run_cli("events", "dead", str(index.id))
    assert shown.exit_code == 0, shown.output
    assert f"subscriber:  {EVENT}|index" in shown.output
    assert "after 2 attempt(s)" in shown.output
    assert trace.rstrip() in shown.output
    as_json = json.loads(run_cli("events", "dead", str(index.id), "--json").output)
    assert as_json["traceback"] == trace and as_json["event_id"] == ctx.event_id
    assert as_json["attempts"] == 2 and as_json["replayed_at"] is None
    listed = json.loads(run_cli("events", "dead", "--json").output)
    assert sorted(item["subscriber"] for item in listed) == [f"{EVENT}|index", f"{EVENT}|shout"]
    missing = run_cli("events", "dead", "99999")
    assert missing.exit_code == 1 and "99999" in missing.output


# -- events status ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", DATABASES + NO_QUEUE[:1], indirect=True)
def test_events_status_counts_live_work_with_the_age_of_the_oldest(
    make_kit: Callable[..., Kit], monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    kit = make_kit(events_retry_base=60.0, events_retry_max=60.0)
    assert kit.outbox is not None
    outbox = kit.outbox
    assert msgspec.to_builtins(outbox.status()) == {
        "at": ANY, "outbox": {"pending": {"count": 0, "oldest_age": None, "scheduled": 0},
                              "queued": {"count": 0, "oldest_age": None, "scheduled": 0}},
        "deliveries": {s: {"count": 0, "oldest_age": None, "scheduled": 0}
                       for s in ("queued", "running", "retry", "waiting")},
        "dead_letters": 0, "waiting_subscribers": {}, "finished": None,
    }
    kit.events.on(EVENT, post_review, id="index")  # fails: retried, then dead
    kit.events.on(EVENT, lambda payload, ctx: None, id="ok")
    with kit.db.atomic():  # rows written straight into each state, with known ages
        ids = [kit.events.emit_async("test.status.nobody", {"n": n}).event_id for n in range(3)]
        later = kit.events.emit_async("test.status.nobody", {"n": 9}, delay=3600).event_id
    kit.outbox.flush()
    now = dt.datetime.now(dt.timezone.utc)
    EventOutbox.update(state="pending", deliver_at=now - dt.timedelta(minutes=5)).where(
        EventOutbox.event_id == ids[0]).execute(kit.db)
    EventOutbox.update(state="queued", deliver_at=now - dt.timedelta(seconds=30)).where(
        EventOutbox.event_id.in_(ids[1:])).execute(kit.db)
    EventOutbox.update(state="queued").where(EventOutbox.event_id == later).execute(kit.db)
    retried = kit.events.emit_async(EVENT, {"review": 1}, retries=3).event_id
    dead = kit.events.emit_async(EVENT, {"review": 2}, retries=0).event_id
    for event_id in (retried, dead):
        if kit.queue is not None:
            kit.outbox.flush()
            kit.outbox.dispatch(event_id)
            for delivery in EventDelivery.select().where(EventDelivery.event_id == event_id).execute(kit.db):
                kit.outbox.deliver(delivery.id)
    EventDelivery.update(created_at=now - dt.timedelta(hours=2)).where(
        (EventDelivery.event_id == retried) & (EventDelivery.state == "retry")).execute(kit.db)

    status = outbox.status(finished=True)
    assert status.outbox["pending"].count == 1 and status.outbox["pending"].oldest_age >= 300
    queued = status.outbox["queued"]
    assert (queued.count, queued.scheduled) == (3, 1) and 30 <= queued.oldest_age < 300
    assert status.deliveries["retry"].count == 1 and status.deliveries["retry"].oldest_age >= 7200
    assert status.deliveries["queued"].count == status.deliveries["running"].count == 0
    assert status.dead_letters == 1
    assert status.finished == {"dispatched": 2, "done": 2}  # ("ok" of both events)

    cli_env(monkeypatch, kit)
    shown = run_cli("events", "status")
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert re.search(r"^  pending\s+1  oldest due 5m \d\ds ago$", shown.output, re.M), shown.output
    assert re.search(r"^  queued\s+3  oldest due \d+s ago  1 delayed, not due yet$", shown.output, re.M), lines
    assert re.search(r"^  retry\s+1  oldest 2h 0\dm$", shown.output, re.M), lines
    assert re.search(r"^  dead\s+1  \(czo-kit events dead\)$", shown.output, re.M), lines
    assert "finished" not in shown.output  # not counted unless asked: it reads every row
    everything = run_cli("events", "status", "--all")
    assert re.search(r"^  dispatched\s+2$", everything.output, re.M), everything.output
    data = json.loads(run_cli("events", "status", "--json").output)
    assert data["outbox"]["queued"] == {"count": 3, "oldest_age": ANY, "scheduled": 1}
    assert data["deliveries"]["retry"]["count"] == 1 and data["dead_letters"] == 1
    assert data["finished"] is None


class _Any:
    def __eq__(self, other: object) -> bool:
        return True


ANY: Any = _Any()


def _statements(kit: Kit, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every statement the kit's database runs from now on, with its parameters."""
    seen: list[tuple[str, Any]] = []
    real = kit.db.execute_sql

    def record(sql: str, params: Any = None, *args: Any, **kwargs: Any) -> Any:
        seen.append((sql, params))
        return real(sql, params, *args, **kwargs)

    monkeypatch.setattr(kit.db, "execute_sql", record)
    return seen


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_sweeps_and_status_read_live_rows_through_their_partial_indexes(
    make_kit: Callable[..., Kit], monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    kit = make_kit()
    assert kit.outbox is not None
    kit.events.on(EVENT, lambda payload, ctx: None, id="ok")
    for n in range(3):
        ctx = kit.events.emit_async(EVENT, {"n": n})
        kit.outbox.flush()
        kit.outbox.dispatch(ctx.event_id)
    seen = _statements(kit, monkeypatch)
    kit.outbox.status()
    kit.outbox.sweep()
    kit.outbox.waiting()
    monkeypatch.undo()
    scans = [
        (sql, params) for sql, params in seen
        if re.match(r"\s*(SELECT|UPDATE|DELETE)", sql, re.I) and "czo_event_" in sql
        and not re.search(r'WHERE \(?"t\d+"\."(event_)?id" = ', sql)  # by primary key
    ]
    assert len(scans) >= 6, seen
    postgres = kit.db.__class__.__name__.lower().startswith("postgres")
    for sql, params in scans:
        if postgres:
            with kit.db.atomic():
                # Without a usable index PostgreSQL still scans the table; with one it must
                # take it (a few rows would make it scan anyway: hence no sequential scans).
                kit.db.execute_sql("SET LOCAL enable_seqscan = off")
                plan = "\n".join(r[0] for r in kit.db.execute_sql("EXPLAIN " + sql, params).fetchall())
            assert not re.search(r"Seq Scan on czo_event_(outbox|delivery|dead_letter)", plan), (sql, plan)
            assert re.search(r"czo_event_\w+_(live|open)\b", plan), (sql, plan)
        else:
            plan = "\n".join(str(r[-1]) for r in kit.db.execute_sql("EXPLAIN QUERY PLAN " + sql, params).fetchall())
            # SEARCH through an index, or SCAN one of the partial indexes (live rows only).
            assert not re.search(r"^SCAN \S+$", plan, re.M), (sql, plan)
            assert re.search(r"INDEX czo_event_\w+_(live|open)\b", plan), (sql, plan)


# -- retention ----------------------------------------------------------------------------------


def _insert_rows(kit: Kit, now: dt.datetime) -> dict[str, Any]:
    """Rows in every state, old (8 days) unless named young, as a long run leaves them."""
    old, young = now - dt.timedelta(days=8), now - dt.timedelta(hours=1)
    names: dict[str, Any] = {}

    def event(label: str, state: str, at: dt.datetime) -> str:
        event_id = str(uuid.uuid4())
        EventOutbox.insert(
            event_id=event_id, name="test.retention", payload=b"\x80", correlation_id="c", created_at=at,
            deliver_at=at, retries=3, priority=50, state=state, updated_at=at,
        ).execute(kit.db)
        names[label] = event_id
        return event_id

    def delivery(label: str, event_id: str, state: str, at: dt.datetime) -> int:
        finished = at if state in ("done", "discarded", "dead") else None
        delivery_id = EventDelivery.insert(
            event_id=event_id, subscriber=f"test.retention|{label}", state=state, attempts=1, max_attempts=4,
            created_at=at, updated_at=at, finished_at=finished,
        ).execute(kit.db)
        names[label] = int(delivery_id)
        return int(delivery_id)

    event("pending", "pending", old)
    event("queued", "queued", old)
    done_all = event("all done", "dispatched", old)
    delivery("done", done_all, "done", old)
    delivery("discarded", done_all, "discarded", old)
    for state in ("queued", "running", "retry", "waiting", "dead"):
        delivery(f"{state} delivery", event(f"with {state}", "dispatched", old), state, old)
    young_event = event("young", "dispatched", young)
    delivery("young done", young_event, "done", young)
    event("no subscriber", "dispatched", old)
    for label, replayed, discarded in (("open", None, None), ("replayed", old, None), ("discarded", None, old),
                                       ("young replayed", young, None)):
        names[f"letter {label}"] = int(DeadLetter.insert(
            delivery_id=names["dead delivery"], event_id=names["with dead"], name="test.retention",
            subscriber="test.retention|dead delivery", attempts=4, died_at=old, replayed_at=replayed,
            discarded_at=discarded,
        ).execute(kit.db))
    ProcessedEvent.insert_many([{"key": "old", "processed_at": old}, {"key": "young", "processed_at": young}]).execute(
        kit.db)
    for label, seen in (("gone worker", old), ("live worker", now)):
        WorkerHeartbeat.insert(id=uuid.uuid4().hex, host="h", pid=1, kind=label, queue="", plugins="[]",
                               started_at=seen, last_seen=seen).execute(kit.db)
    return names


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_prune_deletes_what_is_finished_and_old_and_nothing_at_work(
    make_kit: Callable[..., Kit], monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    kit = make_kit()
    assert kit.outbox is not None and kit.settings.events_retention == 7 * 86400
    now = dt.datetime.now(dt.timezone.utc)
    names = _insert_rows(kit, now)

    assert kit.outbox.prune() == {"deliveries": 2, "events": 2, "dead_letters": 2, "markers": 1, "workers": 1}
    kept_events = set(EventOutbox.select(EventOutbox.event_id).tuples().execute(kit.db))
    assert {e for (e,) in kept_events} == {names[label] for label in (
        "pending", "queued", "with queued", "with running", "with retry", "with waiting", "with dead", "young")}
    kept_deliveries = {d for (d,) in EventDelivery.select(EventDelivery.id).tuples().execute(kit.db)}
    assert kept_deliveries == {names[f"{s} delivery"] for s in ("queued", "running", "retry", "waiting", "dead")} | {
        names["young done"]}
    assert {i for (i,) in DeadLetter.select(DeadLetter.id).tuples().execute(kit.db)} == {
        names["letter open"], names["letter young replayed"]}
    assert [k for (k,) in ProcessedEvent.select(ProcessedEvent.key).tuples().execute(kit.db)] == ["young"]
    assert [k for (k,) in WorkerHeartbeat.select(WorkerHeartbeat.kind).tuples().execute(kit.db)] == ["live worker"]
    assert kit.outbox.prune() == {"deliveries": 0, "events": 0, "dead_letters": 0, "markers": 0, "workers": 0}

    # In batches: the same result, a statement per batch of at most `batch` rows.
    with kit.db.atomic():
        for model in (EventOutbox, EventDelivery, DeadLetter, ProcessedEvent, WorkerHeartbeat):
            model.delete().execute(kit.db)
    names = _insert_rows(kit, now)
    seen = _statements(kit, monkeypatch)
    assert prune(kit.db, before=now - dt.timedelta(days=7), batch=1)["deliveries"] == 2
    monkeypatch.undo()
    # One row per statement, and one more statement per kind that finds none left.
    assert sum(1 for sql, _ in seen if sql.lstrip().upper().startswith("DELETE")) == (2 + 2 + 2 + 1 + 1) + 5

    # By hand, with another age.
    cli_env(monkeypatch, kit)
    pruned = run_cli("events", "prune", "--older-than", "30m", "--json")
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(pruned.output) == {"deliveries": 1, "events": 1, "dead_letters": 1, "markers": 1, "workers": 0}
    assert run_cli("events", "prune", "--older-than", "soon").exit_code == 2


@pytest.mark.parametrize("backend", DATABASES, indirect=True)
def test_discarded_dead_letters_are_not_replayed_and_go_with_the_retention(
    make_kit: Callable[..., Kit], monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    kit = make_kit()
    assert kit.outbox is not None
    kit.events.on(EVENT, post_review, id="index")
    for n in range(3):
        ctx = kit.events.emit_async(EVENT, {"review": n}, retries=0)
        kit.outbox.flush()
        kit.outbox.dispatch(ctx.event_id)
    for delivery in EventDelivery.select().execute(kit.db):
        assert kit.outbox.deliver(delivery.id) == "dead"
    first, second, third = sorted(kit.outbox.dead_letters(), key=lambda letter: letter.id)
    DeadLetter.update(died_at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)).where(
        DeadLetter.id == second.id).execute(kit.db)

    cli_env(monkeypatch, kit)
    one = run_cli("events", "discard", str(first.id))
    assert one.exit_code == 0 and f"dead letter {first.id} discarded" in one.output, one.output
    again = run_cli("events", "discard", str(first.id))
    assert again.exit_code == 1 and "already discarded" in again.output
    replay = run_cli("events", "replay", str(first.id))
    assert replay.exit_code == 1 and "was discarded" in replay.output, replay.output
    assert run_cli("events", "discard", "--older-than", "30d").exit_code == 1  # asks first
    old = run_cli("events", "discard", "--older-than", "30d", "--yes")
    assert old.exit_code == 0 and "discarded 1 dead letter" in old.output, old.output
    assert run_cli("events", "discard").exit_code == 2
    assert run_cli("events", "discard", str(third.id), "--older-than", "1d").exit_code == 2

    assert [letter.id for letter in kit.outbox.dead_letters()] == [third.id]  # the open one
    listed = run_cli("events", "dead", "--all").output
    assert listed.count("(discarded ") == 2, listed
    states = dict(EventDelivery.select(EventDelivery.id, EventDelivery.state).tuples().execute(kit.db))
    assert sorted(states.values()) == ["dead", "discarded", "discarded"]
    assert kit.outbox.status().dead_letters == 1
    # A discarded letter (and its delivery, and their event) goes once the retention has run out.
    assert kit.outbox.prune(older_than=0.0) == {"deliveries": 2, "events": 2, "dead_letters": 2, "markers": 0,
                                                "workers": 0}
    assert [letter.id for letter in kit.outbox.dead_letters(include_replayed=True)] == [third.id]
