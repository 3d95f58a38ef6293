"""The in-process apps that ship as packages, found by their entry points only, end to end:
``czo-app-loyalty`` (plugins/) credits points on orders, and the ``review-alerts`` app of the
outside test module ``czo-test-reviews`` flags poor reviews. Deliveries run on threads of this
process (a SQLite queue, or none) and in a real ``czo-kit worker`` process, on SQLite and on
PostgreSQL + Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import falcon.testing
import pytest

from apps_support import OWNER, app_kit, app_settings, consuming, drop_tables, wait_for
from czo_kit import Kit
from czo_kit.http import create_api
from czo_kit.settings import Settings
from czo_order import OrderService

SettingsFor = Callable[..., Settings]
TEA = SimpleNamespace(id=1, name="Tea", price=1250)
LOYALTY_TABLES = ("loyalty_credit", "loyalty_account")
REVIEW_TABLES = ("czo_test_reviews_alert", "czo_test_reviews_review")


@contextmanager
def example_kit(settings: Settings, tables: tuple[str, ...]) -> Iterator[Kit]:
    drop_tables(settings.database_url, *tables)
    with app_kit(settings) as kit:
        yield kit


def czo_kit_worker(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The real ``czo-kit worker``, finding the apps by their entry points."""
    script = Path(sys.executable).with_name("czo-kit")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "czo_kit.cli"]
    with open(tmp_path / "worker.log", "wb") as log:
        return subprocess.Popen([*command, "worker", "-w", "2"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


@contextmanager
def real_worker(servers: str, settings_for: SettingsFor, tmp_path: Path, request: pytest.FixtureRequest,
                tables: tuple[str, ...]) -> Iterator[Kit]:
    """A kit on ``servers`` and a ``czo-kit worker`` process serving its queue."""
    from conftest import SECRET

    if servers == "sqlite":
        db_url = str(request.getfixturevalue("sqlite_url"))
        queue_url = f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    else:
        db_url, queue_url = str(request.getfixturevalue("pg_url")), str(request.getfixturevalue("redis_url"))
    queue_name = f"czo_examples_{uuid.uuid4().hex[:8]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CZO_")},
        "CZO_DATABASE_URL": db_url, "CZO_QUEUE_URL": queue_url, "CZO_QUEUE_NAME": queue_name,
        "CZO_SECRET_KEY": SECRET, "CZO_EVENTS_SWEEP_INTERVAL": "1", "CZO_LOG_LEVEL": "WARNING",
    }
    settings = app_settings(settings_for, db_url, str(tmp_path), queue_url=queue_url, queue_name=queue_name)
    with example_kit(settings, tables) as kit:
        worker = czo_kit_worker(tmp_path, env)
        try:
            yield kit
        finally:
            worker.send_signal(signal.SIGINT)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(timeout=10)
            if kit.queue is not None:
                kit.queue.flush()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_both_apps_are_found_by_their_entry_points_only(sqlite_url: str, settings_for: SettingsFor) -> None:
    names = {ep.name for ep in metadata.entry_points(group="czo_kit")}
    assert {"czo_app_loyalty", "czo_test_reviews"} <= names
    with Kit(settings_for(sqlite_url, queue_url="")) as kit:
        found = kit.apps.in_process.contributions()
    assert found["czo_app_loyalty"] == ["app loyalty"]
    assert found["czo_test_reviews"] == ["app review-alerts"]


# -- loyalty ----------------------------------------------------------------------------------


def points(shop_id: int, email: str) -> int:
    from czo_app_loyalty import points_of

    return points_of(shop_id, email)


def check_loyalty(kit: Kit, deliver: Callable[[], Any]) -> None:
    """Install in shop 1, order in shops 1 and 2, see points credited in shop 1 only, read
    them through the app's route, uninstall, order again: nothing more is credited."""
    from czo_app_loyalty import LoyaltyCredit

    installed = kit.apps.install(shop_id=1, installer_id=OWNER, app_id="loyalty")
    orders = kit.services.get(OrderService)
    with deliver():
        orders.place(shop_id=1, customer_email="grace@example.com", items=[(TEA, 2)])  # 2,500: 25 points
        orders.place(shop_id=1, customer_email="grace@example.com", items=[(TEA, 1)])  # 12 more
        orders.place(shop_id=2, customer_email="grace@example.com", items=[(TEA, 4)])  # not installed there
        wait_for(lambda: points(1, "grace@example.com") == 37, timeout=60, what="the points of both orders")
        assert kit.webhooks.stats(delivered=True) == {"delivered": 2}
    assert points(2, "grace@example.com") == 0
    client = falcon.testing.TestClient(create_api(kit))
    auth = {"Authorization": f"Bearer {installed.token}"}
    one = client.simulate_get("/apps/loyalty/points", params={"email": "grace@example.com"}, headers=auth)
    assert one.json == {"shopId": 1, "email": "grace@example.com", "points": 37}
    assert client.simulate_get("/apps/loyalty/points", headers=auth).json == {
        "shopId": 1, "accounts": [{"email": "grace@example.com", "points": 37}]
    }
    assert client.simulate_get("/apps/loyalty/points").status_code == 401

    kit.apps.uninstall(shop_id=1, app_id="loyalty")
    orders.place(shop_id=1, customer_email="grace@example.com", items=[(TEA, 8)])
    # Deliveries are written with the event, in its transaction: none was, so none will run.
    assert kit.webhooks.stats(delivered=True) == {}  # the old ones went with the installation
    assert points(1, "grace@example.com") == 37
    assert LoyaltyCredit.select().count() == 2
    assert client.simulate_get("/apps/loyalty/points", headers=auth).status_code == 401


@pytest.mark.parametrize("queue_mode", ["queue", "no-queue"])
def test_loyalty_credits_each_order_until_uninstalled(
    sqlite_url: str, settings_for: SettingsFor, tmp_path: Path, queue_mode: str
) -> None:
    changes = {"queue_url": ""} if queue_mode == "no-queue" else {}
    with example_kit(app_settings(settings_for, sqlite_url, str(tmp_path), **changes), LOYALTY_TABLES) as kit:
        check_loyalty(kit, lambda: consuming(kit))


@pytest.mark.slow
@pytest.mark.parametrize(
    "servers", ["sqlite", pytest.param("postgresql+redis", marks=[pytest.mark.postgres, pytest.mark.redis])]
)
def test_loyalty_with_a_real_worker(
    servers: str, settings_for: SettingsFor, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with real_worker(servers, settings_for, tmp_path, request, LOYALTY_TABLES) as kit:
        check_loyalty(kit, nullcontext)  # the worker process delivers


def test_loyalty_credits_an_order_once_however_often_it_is_delivered(
    sqlite_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    from czo_app_loyalty import credit_order
    from czo_kit.apps import InstalledApp
    from czo_kit.events import EventContext

    with example_kit(app_settings(settings_for, sqlite_url, str(tmp_path), queue_url=""), LOYALTY_TABLES) as kit:
        app = InstalledApp(installation_id=1, shop_id=1, app_id="loyalty", permissions=frozenset(), kit=kit)
        order = {"id": 9, "shop_id": 1, "total": 990, "customer_email": "ada@example.com"}
        for _ in range(3):
            credit_order(order, EventContext(name="order.created"), app)
        credit_order({"id": 10, "shop_id": 1, "total": 500}, EventContext(name="order.created"), app)  # no email
        assert points(1, "ada@example.com") == 9


# -- review alerts (the outside test module) ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "servers", ["sqlite", pytest.param("postgresql+redis", marks=[pytest.mark.postgres, pytest.mark.redis])]
)
def test_the_reviews_module_app_flags_poor_reviews_with_a_real_worker(
    servers: str, settings_for: SettingsFor, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from czo_test_reviews.plugin import ReviewAlert, post_review

    with real_worker(servers, settings_for, tmp_path, request, REVIEW_TABLES) as kit:
        kit.permissions.role("moderator-and-apps", {"review": ["read"], "apps": ["manage"]})
        kit.permission_service.grant("mod", 1, "moderator-and-apps")
        kit.apps.install(shop_id=1, installer_id="mod", app_id="review-alerts")
        posted = [post_review(kit, shop_id=1, rating=rating, body="...", author_email="x@example.com").id
                  for rating in (5, 1, 2)]
        post_review(kit, shop_id=2, rating=1, body="...", author_email="y@example.com")  # not installed there
        wait_for(lambda: kit.webhooks.stats(delivered=True) == {"delivered": 3}, timeout=60, what="three deliveries")
        flagged = [(r.shop_id, r.review_id, r.rating) for r in ReviewAlert.select().order_by(ReviewAlert.review_id)]
    assert flagged == [(1, posted[1], 1), (1, posted[2], 2)]
