"""What an operator sees of async events: tracebacks of failed handlers, ``events status``,
``--json`` listings.

Kits come from ``tests/test_outbox.py``'s fixtures: a queue on the backend under test and a
consumer on threads of this process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from czo_kit import Kit
from czo_kit.events import EventContext
from czo_kit.events.outbox import TRACEBACK_LIMIT, EventDelivery
from czo_kit.testing.cache import wait_until
from test_outbox import PAIRED, TIMEOUT, backend, cli_env, make_kit, run_cli  # noqa: F401

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
