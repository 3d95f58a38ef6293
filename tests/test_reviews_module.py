"""The outside reviews module (tests/plugins/czo-test-reviews), found by its entry point only,
driven through every hook it implements, end to end: its migrations (``czo-kit db migrate``),
its settings (``CZO_REVIEW_*``, ``czo-kit settings``), its rating hook, its ``review.created``
handler and the task it enqueues, its in-process app (installed per shop, fed the
permission-filtered payload), its API route and widget token, its ``czo-kit reviews``
commands and its dashboard page (over HTTP; tests/test_dashboard_browser.py has Chromium).

On SQLite without a queue (the in-process deliverer), on SQLite with a SQLite queue and on
PostgreSQL + Redis, both with a real ``czo-kit worker`` process.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from conftest import SECRET
from czo_kit import Kit
from czo_kit.errors import ConfigurationError, InvalidDataError
from czo_kit.events.outbox import EventOutbox
from czo_kit.http import create_api, issue_user_token
from czo_kit.http.sessions import issue_session
from test_worker import Proc, child_env, czo_kit_command, private_pg, queue_name, wait_for  # noqa: F401 (fixtures)

OWNER, MODERATOR, STRANGER = "owner-1", "mo", "nobody"
WIDGET = "widget-" + "w" * 40
REVIEW_ENV = {
    # Not the defaults (2, 50, newest, none): each shows it reached the code that reads it.
    "CZO_REVIEW_ALERT_THRESHOLD": "3",
    "CZO_REVIEW_PAGE_SIZE": "2",
    "CZO_REVIEW_PAGE_ORDER": "worst",
    "CZO_REVIEW_WIDGET_TOKEN": WIDGET,
}
RECOMPUTE = "czo_test_reviews.recompute_rating"


@dataclass
class Servers:
    """One backend pair, the environment every process of the test runs with, and its worker."""

    mode: str
    tmp_path: Path
    env: dict[str, str]
    worker: Proc | None = None
    logs: list[str] = field(default_factory=list)

    def czo_kit(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``czo-kit ARGS`` in a process of its own, as an operator runs it."""
        done = subprocess.run([*czo_kit_command(), *args], env=self.env, cwd=self.tmp_path, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
        self.logs.append(f"$ czo-kit {' '.join(args)} -> {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def start_worker(self) -> None:
        proc = Proc([*czo_kit_command(), "worker", "-w", "2", "--max-delay", "0.5"], env=self.env, cwd=self.tmp_path,
                    label="worker")
        self.worker = proc
        wait_for(lambda: "czo-kit worker:" in proc.err_path.read_text() or not proc.alive(), timeout=60,
                 what="the worker's banner", diag=proc.tail)
        assert proc.alive(), proc.tail()

    def diag(self) -> str:
        return "\n".join([*self.logs[-4:], self.worker.tail() if self.worker else "(no worker process)"])


@pytest.fixture(params=["sqlite-no-queue", "sqlite-worker", pytest.param("postgresql+redis-worker", marks=[
    pytest.mark.postgres, pytest.mark.redis])])
def servers(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Servers]:
    mode = str(request.param)
    queue_name = "czo_reviews_e2e"
    if mode.startswith("sqlite"):
        database = f"sqlite:///{tmp_path / 'data.sqlite3'}"
        queue = "" if mode == "sqlite-no-queue" else f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    else:
        database, _pg = request.getfixturevalue("private_pg")  # a schema of its own: an empty database
        queue, queue_name = str(request.getfixturevalue("redis_url")), str(request.getfixturevalue("queue_name"))
    env = child_env(
        CZO_DATABASE_URL=database, CZO_QUEUE_URL=queue, CZO_QUEUE_NAME=queue_name, CZO_SECRET_KEY=SECRET,
        CZO_PLUGINS="czo_test_reviews", CZO_EVENTS_SWEEP_INTERVAL="0.5", CZO_EVENTS_LEASE="3",
        CZO_EVENTS_RETRY_BASE="0.5", **REVIEW_ENV,
    )
    # The test's own kit (Kit.from_env) reads the same variables as its processes.
    for name in [n for n in os.environ if n.startswith("CZO_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("CZO_"):
            monkeypatch.setenv(name, value)
    made = Servers(mode, tmp_path, env)
    try:
        yield made
    finally:
        if made.worker is not None:
            made.worker.kill()


def review_ids(kit: Kit) -> dict[tuple[int, int], int]:
    """(shop, rating) -> id of the reviews in the database."""
    from czo_test_reviews.plugin import Review

    rows = Review.select(Review.shop_id, Review.rating, Review.id).tuples().execute(kit.db)
    return {(shop, rating): review_id for shop, rating, review_id in rows}


def test_the_reviews_module_uses_every_hook_end_to_end(servers: Servers, caplog: pytest.LogCaptureFixture) -> None:
    from czo_test_reviews.settings import ReviewSettings

    # -- czo_register_migrations: an empty database, migrated by the module's own files --------
    migrated = servers.czo_kit("db", "migrate")
    assert migrated.returncode == 0, servers.diag()
    assert "czo_test_reviews: 0001_initial, 0002_rating_index" in migrated.stdout.splitlines()
    status = servers.czo_kit("db", "status", "--json")
    assert [(m["name"], m["applied"] is not None) for m in json.loads(status.stdout)["czo_test_reviews"]] == [
        ("0001_initial", True), ("0002_rating_index", True)]

    # -- czo_register_settings, read by the kit, listed by the CLI (the widget token masked) ---
    listed = servers.czo_kit("settings", "--json")
    assert listed.returncode == 0, servers.diag()
    (section,) = [s for s in json.loads(listed.stdout) if s["plugin"] == "czo_test_reviews"]
    assert (section["prefix"], section["settings"]) == ("CZO_REVIEW_", {
        "alert_threshold": 3, "page_size": 2, "page_order": "worst", "widget_token": "***"})
    assert WIDGET not in listed.stdout

    caplog.set_level(logging.INFO, logger="czo_test_reviews")
    kit = Kit.from_env()
    try:
        assert kit.plugins.get_plugin("czo_test_reviews") is not None  # by its entry point: CZO_PLUGINS
        assert kit.settings_for(ReviewSettings) == ReviewSettings(
            alert_threshold=3, page_size=2, page_order="worst", widget_token=WIDGET)
        # czo_startup: what is in effect, said once the kit is wired.
        assert "reviews: alerts at 3 stars or fewer; pages of 2, worst first; storefront widget on" in caplog.text
        indexes = {index.name for index in kit.db.get_indexes("czo_test_reviews_review")}
        assert "czo_test_reviews_review_shop_id_rating" in indexes  # migration 0002

        if servers.mode == "sqlite-no-queue":
            assert kit.deliverer is not None
            kit.deliverer.start()
        else:
            servers.start_worker()
        drive(kit, servers)
    finally:
        kit.close()
    # czo_shutdown: this process posted three reviews; it heard of them itself only without a queue.
    heard = 3 if servers.mode == "sqlite-no-queue" else 0
    assert f"reviews: {heard} new review(s) heard of by this process" in caplog.text


def drive(kit: Kit, servers: Servers) -> None:
    from czo_test_reviews.plugin import ReviewAlert, ReviewStats, post_review

    kit.permission_service.grant(OWNER, 1, "owner")
    kit.permission_service.grant(MODERATOR, 1, "moderator")  # the module's role: review, not customer
    # -- czo_register_apps: installed in shop 1 only, like any app ------------------------------
    installed = kit.apps.install(shop_id=1, installer_id=OWNER, app_id="review-alerts")

    # -- czo_register_hooks: a rating outside 1..5 is refused, whoever writes it ----------------
    with pytest.raises(InvalidDataError, match=r"rating must be a whole number of stars from 1 to 5, got 0") as refused:
        post_review(kit, shop_id=1, rating=0, body="?", author_email="x@example.com")
    assert refused.value.field == "rating"
    bad = servers.czo_kit("reviews", "add", "1", "6", "Too good", "--email", "x@example.com")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, servers.diag()
    assert "rating must be a whole number of stars from 1 to 5, got 6" in bad.stderr + bad.stdout
    assert review_ids(kit) == {}

    # -- posted here and from the command line (czo_register_commands) --------------------------
    post_review(kit, shop_id=1, rating=5, body="Lovely mugs", author_email="ada@example.com")
    post_review(kit, shop_id=1, rating=1, body="Broken lid", author_email="bob@example.com")
    post_review(kit, shop_id=2, rating=1, body="Never came", author_email="cy@example.com")  # no app there
    added = servers.czo_kit("reviews", "add", "1", "3", "Slow", "--email", "di@example.com")
    assert added.returncode == 0, servers.diag()
    ids = review_ids(kit)
    assert added.stdout == f"review #{ids[(1, 3)]} of shop 1: 3/5\n"

    # -- the in-process app flags reviews of 3 stars or fewer (CZO_REVIEW_ALERT_THRESHOLD) ------
    def flagged() -> set[tuple[int, int, int]]:
        return {(a.shop_id, a.review_id, a.rating) for a in ReviewAlert.select().execute(kit.db)}

    expected = {(1, ids[(1, 1)], 1), (1, ids[(1, 3)], 3)}
    wait_for(lambda: flagged() == expected, timeout=90, what="the app's two alerts",
             diag=lambda: f"{flagged()}\n{servers.diag()}")
    # Its payloads, as the kit filtered them: the app holds review:read, not customer:read.
    bodies = [bytes(row[0]) for row in kit.db.execute_sql(
        f"SELECT body FROM czo_webhook_delivery WHERE installation_id = {kit.db.param}",
        (installed.installation.id,)).fetchall()]
    assert len(bodies) == 3
    for body in bodies:
        data = json.loads(body)["data"]
        assert set(data) == {"id", "shop_id", "rating", "body", "version", "created_at", "updated_at", "deleted_at"}
    assert not any(b"@example.com" in body for body in bodies)

    # -- czo_register_events: review.created enqueued the rating task, which ran ----------------
    task_event = kit.tasks.get(RECOMPUTE).event

    def stats() -> dict[int, tuple[int, float | None]]:
        return {s.shop_id: (s.reviews, s.average) for s in ReviewStats.select().execute(kit.db)}

    wait_for(lambda: stats() == {1: (3, 3.0), 2: (1, 1.0)}, timeout=90, what="both shops' ratings",
             diag=lambda: f"{stats()}\n{servers.diag()}")
    # Once per review, and the test enqueued none itself: the handler did.
    enqueued = EventOutbox.select().where(EventOutbox.name == task_event).count(kit.db)
    assert enqueued == 4

    # -- czo_register_http_routes and czo_register_authenticators --------------------------------
    client = falcon.testing.TestClient(create_api(kit))

    def get(token: str | None, shop: str = "1") -> falcon.testing.Result:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return client.simulate_get(f"/api/shops/{shop}/reviews", headers=headers)

    worst_two = [(ids[(1, 1)], 1), (ids[(1, 3)], 3)]  # CZO_REVIEW_PAGE_ORDER=worst, _PAGE_SIZE=2
    owner = get(issue_user_token(kit.secret_key, OWNER))
    assert owner.status_code == 200, owner.text
    assert [(r["id"], r["rating"]) for r in owner.json["reviews"]] == worst_two
    assert owner.json["reviews"][0]["authorEmail"] == "bob@example.com"  # the owner holds customer:read
    for caller in (issue_user_token(kit.secret_key, MODERATOR), installed.token, WIDGET):
        seen = get(caller)
        assert seen.status_code == 200, seen.text
        assert [(r["id"], r["rating"], "authorEmail" in r) for r in seen.json["reviews"]] == [
            (i, rating, False) for i, rating in worst_two]
    assert get(None).status_code == 401
    assert get("widget-" + "x" * 40).status_code == 401  # not the configured token: nobody's
    denied = get(issue_user_token(kit.secret_key, STRANGER))
    assert denied.status_code == 403 and denied.json["missing"] == ["review:read"]
    assert get(installed.token, shop="2").status_code == 403  # the app is installed in shop 1
    assert get(WIDGET, shop="0").json["field"] == "shop_id"

    # -- czo-kit reviews list: the same page, from another process ------------------------------
    listed = servers.czo_kit("reviews", "list", "1", "--json")
    assert listed.returncode == 0, servers.diag()
    assert [(r["id"], r["rating"]) for r in json.loads(listed.stdout)] == worst_two

    # -- czo_register_dashboard: the Reviews page, over HTTP --------------------------------------
    cookie = {"Cookie": f"czo_session={issue_session(kit.secret_key, OWNER, lifetime=600)}"}
    page = client.simulate_get("/dashboard/shops/1/reviews", headers=cookie)
    assert page.status_code == 200
    links = [f'href="/dashboard/shops/1/reviews/{i}"' for i, _ in worst_two]
    assert all(link in page.text for link in links) and page.text.index(links[0]) < page.text.index(links[1])
    assert f'href="/dashboard/shops/1/reviews/{ids[(1, 5)]}"' not in page.text  # beyond the page size
    detail = client.simulate_get(f"/dashboard/shops/1/reviews/{ids[(1, 1)]}", headers=cookie)
    assert detail.status_code == 200 and "Broken lid" in detail.text


# -- settings: the kit's error quality for a module's own variables --------------------------------


@pytest.fixture
def reviews_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in [n for n in os.environ if n.startswith("CZO_")]:
        monkeypatch.delenv(name)
    env = {"CZO_DATABASE_URL": f"sqlite:///{tmp_path / 'data.sqlite3'}", "CZO_QUEUE_URL": "",
           "CZO_SECRET_KEY": SECRET, "CZO_PLUGINS": "czo_test_reviews"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("CZO_REVIEW_ALERT_THRESHOLD", "9",
         "invalid setting CZO_REVIEW_ALERT_THRESHOLD='9': expected an integer >= 1 and <= 5"),
        ("CZO_REVIEW_PAGE_SIZE", "lots",
         "invalid setting CZO_REVIEW_PAGE_SIZE='lots': expected an integer >= 1 and <= 200"),
        ("CZO_REVIEW_PAGE_ORDER", "random",
         "invalid setting CZO_REVIEW_PAGE_ORDER='random': Invalid enum value 'random'; allowed: best, newest, worst"),
    ],
)
def test_a_bad_review_setting_stops_the_kit_naming_the_variable(
    variable: str, raw: str, message: str, reviews_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigurationError) as caught:
        Kit.from_env()
    assert caught.value.variable == variable
    assert message in str(caught.value)
    # The CLI says the same in one line, and stops.
    done = subprocess.run([*czo_kit_command(), "settings"], env=child_env(**reviews_env, **{variable: raw}),
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert message in done.stderr


def test_a_misspelt_review_variable_is_named_with_a_suggestion(
    reviews_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from czo_test_reviews.settings import ReviewSettings

    monkeypatch.setenv("CZO_REVIEW_PAGESIZE", "5")
    with caplog.at_level(logging.WARNING, logger="czo_kit.kit"), Kit.from_env() as kit:
        assert kit.settings_for(ReviewSettings).page_size == 50  # ignored, not guessed
    assert ("unknown setting CZO_REVIEW_PAGESIZE (did you mean CZO_REVIEW_PAGE_SIZE?) of plugin czo_test_reviews"
            in caplog.text)


def test_a_guessable_widget_token_stops_the_kit_at_startup(
    reviews_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CZO_REVIEW_WIDGET_TOKEN", "letmein")
    with pytest.raises(ConfigurationError, match=r"CZO_REVIEW_WIDGET_TOKEN: it must be at least 32 characters long "
                                                 r"\(got 7\), or unset") as caught:
        Kit.from_env()
    assert caught.value.variable == "CZO_REVIEW_WIDGET_TOKEN"
    assert "letmein" not in str(caught.value)


def test_without_a_widget_token_no_token_is_the_widgets(reviews_env: dict[str, str]) -> None:
    from czo_test_reviews.http import authenticate_widget

    with Kit.from_env() as kit:
        kit.create_tables()
        assert authenticate_widget("", kit) is None and authenticate_widget(WIDGET, kit) is None
        client = falcon.testing.TestClient(create_api(kit))
        assert client.simulate_get("/api/shops/1/reviews", headers={"Authorization": "Bearer x"}).status_code == 401


# -- the rating hook, on every write -----------------------------------------------------------------


@pytest.mark.parametrize("rating", [0, 6, -1, True, "5", 4.5])
def test_the_rating_hook_refuses_every_write_of_a_bad_rating(rating: Any, reviews_env: dict[str, str]) -> None:
    from czo_test_reviews import ReviewInput
    from czo_test_reviews.plugin import Review, reviews_of

    with Kit.from_env() as kit:
        kit.create_tables()
        repo = reviews_of(kit)
        good = repo.create(ReviewInput(shop_id=1, rating=4, body="ok", author_email="a@example.com"))
        with pytest.raises(InvalidDataError, match="rating must be a whole number of stars from 1 to 5") as caught:
            repo.create({"shop_id": 1, "rating": rating, "body": "x", "author_email": "a@example.com"})
        assert caught.value.field == "rating"
        with pytest.raises(InvalidDataError, match=r"rows\[1\]\.rating must be"):
            repo.create_many([{"shop_id": 1, "rating": 5, "body": "a", "author_email": "a@example.com"},
                              {"shop_id": 1, "rating": rating, "body": "b", "author_email": "b@example.com"}])
        with pytest.raises(InvalidDataError, match="rating must be"):
            repo.update(good.id, {"rating": rating}, expected_version=good.version)
        assert [(r.rating, r.version) for r in Review.select().execute(kit.db)] == [(4, 1)]  # nothing written
        assert repo.update(good.id, {"body": "edited"}, expected_version=good.version).rating == 4  # no rating: allowed


# -- the module's migrations -----------------------------------------------------------------------


def test_the_rating_index_migration_says_what_it_depends_on(reviews_env: dict[str, str]) -> None:
    """``db init`` on an empty database makes the tables (index included) and marks both files
    applied; 0002 names 0001 as what it needs, which ``czo-kit db migrate`` honours above."""
    import importlib.util

    from czo_test_reviews.plugin import MIGRATIONS

    spec = importlib.util.spec_from_file_location("rating_index", MIGRATIONS / "0002_rating_index.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.depends_on == [("czo_test_reviews", "0001_initial")]
    with Kit.from_env() as kit:
        report = kit.create_tables()["czo_test_reviews"]
        assert report[-2:] == ["marked applied 0001_initial", "marked applied 0002_rating_index"]
        indexes = {index.name for index in kit.db.get_indexes("czo_test_reviews_review")}
        assert "czo_test_reviews_review_shop_id_rating" in indexes
    path = reviews_env["CZO_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        assert [n for (n,) in conn.execute('SELECT name FROM "czo_migrations_czo_test_reviews" ORDER BY id')] == [
            "0001_initial", "0002_rating_index"]


# -- the commands refuse malformed arguments before they touch the database ---------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "0", "5", "Fine", "--email", "a@example.com"], "Invalid value for 'SHOP_ID': 0 is not in the range"),
        (["add", "1", "five", "Fine", "--email", "a@example.com"],
         "Invalid value for 'RATING': 'five' is not a valid integer"),
        (["add", "1", "5", "Fine"], "Missing option '--email'"),
        (["list", "shop-1"], "Invalid value for 'SHOP_ID': 'shop-1' is not a valid integer"),
    ],
)
def test_the_reviews_commands_name_a_malformed_argument(args: list[str], message: str) -> None:
    from click.testing import CliRunner

    from czo_test_reviews.cli import reviews_group

    result = CliRunner().invoke(reviews_group, args)
    assert result.exit_code == 2 and message in result.output, result.output
