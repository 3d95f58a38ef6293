"""The circuit breaker's failure count under concurrency: every failure counts, however many
workers report one at the same moment, and the circuit opens exactly at the threshold."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apps_support import app_kit, app_settings, wait_for
from czo_kit import Kit
from czo_kit.default_plugins.postgres import parse_postgresql_url
from czo_kit.settings import Settings

THREADS = 8


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def kit(db_url: str, settings_for: Callable[..., Settings], tmp_path: Path) -> Iterator[Kit]:
    settings = app_settings(
        settings_for, db_url, str(tmp_path), queue_url="", db_pool_size=THREADS + 2,
        webhooks_breaker_threshold=5, webhooks_breaker_cooldown=600,
    )
    with app_kit(settings) as made:
        yield made


def paused_warnings(caplog: pytest.LogCaptureFixture, origin: str) -> int:
    messages = [r.getMessage() for r in caplog.records if r.name == "czo_kit.webhooks"]
    return sum(1 for message in messages if origin in message and "paused" in message)


def test_the_breaker_opens_exactly_at_the_threshold(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    breaker = kit.webhooks.breaker
    origin = "https://threshold.example"
    now = dt.datetime.now(dt.UTC)
    for n in range(1, 5):
        breaker.result(origin, False, now, breaker.row(origin))
        assert breaker.row(origin) == (n, None), f"open after {n} failures, below the threshold of 5"
    breaker.result(origin, False, now, breaker.row(origin))
    failures, opened_until = breaker.row(origin) or (0, None)
    assert failures == 5 and opened_until == now + dt.timedelta(seconds=600)
    breaker.result(origin, False, now, breaker.row(origin))  # a late failure keeps it open
    assert (breaker.row(origin) or (0, None))[0] == 6
    assert paused_warnings(caplog, origin) == 1  # said once, when it opened
    breaker.result(origin, True, now, breaker.row(origin))
    assert breaker.row(origin) is None


def test_concurrent_failures_each_count(kit: Kit, caplog: pytest.LogCaptureFixture) -> None:
    breaker = kit.webhooks.breaker
    origin = f"https://many-{uuid.uuid4().hex[:8]}.example"
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def fail_often() -> None:
        try:
            start.wait()
            for _ in range(10):
                breaker.result(origin, False, dt.datetime.now(dt.UTC), None)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            kit.db.close()

    threads = [threading.Thread(target=fail_often) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    failures, opened_until = breaker.row(origin) or (0, None)
    assert failures == THREADS * 10 and opened_until is not None
    assert paused_warnings(caplog, origin) == 1


@pytest.mark.postgres
def test_failures_racing_on_postgresql_each_count_and_open_the_circuit_once(
    pg_url: str, settings_for: Callable[..., Settings], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import psycopg2

    settings = app_settings(
        settings_for, pg_url, str(tmp_path), queue_url="", db_pool_size=THREADS + 2,
        webhooks_breaker_threshold=THREADS, webhooks_breaker_cooldown=600,
    )
    origin = f"https://race-{uuid.uuid4().hex[:12]}.example"
    dbname, params = parse_postgresql_url(pg_url)
    locker = psycopg2.connect(dbname=dbname, **params)
    watcher = psycopg2.connect(dbname=dbname, **params)
    watcher.autocommit = True
    with app_kit(settings) as kit:
        breaker = kit.webhooks.breaker
        breaker.result(origin, False, dt.datetime.now(dt.UTC), None)  # one failure on record
        # Hold the row so that every worker's report reaches the database before any lands:
        # the widest race there can be, the same on every run.
        with locker.cursor() as cur:
            cur.execute("SELECT failures FROM czo_webhook_circuit WHERE origin = %s FOR UPDATE", (origin,))
        errors: list[BaseException] = []

        def fail() -> None:
            try:
                breaker.result(origin, False, dt.datetime.now(dt.UTC), (1, None))
            except BaseException as exc:
                errors.append(exc)
            finally:
                kit.db.close()

        threads = [threading.Thread(target=fail) for _ in range(THREADS)]
        for thread in threads:
            thread.start()

        def all_waiting() -> bool:
            with watcher.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                    (f"%{origin}%",),
                )
                row = cur.fetchone()
            return row is not None and row[0] == THREADS

        try:
            wait_for(all_waiting, what=f"{THREADS} reports waiting on the row")
        finally:
            locker.commit()  # let them through
            for thread in threads:
                thread.join()
            locker.close()
            watcher.close()
        assert errors == []
        failures, opened_until = breaker.row(origin) or (0, None)
        assert failures == 1 + THREADS  # none lost
        assert opened_until is not None  # the threshold was crossed
        assert paused_warnings(caplog, origin) == 1
