"""Idempotent POSTs for apps: ``Idempotency-Key`` honoured by the kit's HTTP layer on every
app-authenticated POST route (a module route of this test's own, and the order module's
payment route), and payments recorded once per reference. On SQLite and PostgreSQL, the
concurrent cases over a real waitress server."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import falcon
import falcon.testing
import msgspec
import pytest
import urllib3

from apps_support import OWNER, Receiver, Reply, app_kit, app_settings, manifest, raw_rows
from czo_kit import Kit, hookimpl
from czo_kit.apps import _idempotency
from czo_kit.apps._models import IdempotencyKey
from czo_kit.db.model import utcnow
from czo_kit.http import BackgroundServer, create_api, read_json, require_app
from czo_kit.settings import Settings
from czo_order import OrderService

SettingsFor = Callable[..., Settings]


class CountBody(msgspec.Struct):
    n: int
    fail: int = 0  # answer with this status instead of running


class Counter:
    """A module route of the test's own: ``POST /api/test/shops/{shop}/count`` counts its runs,
    and can hold a request in flight until released."""

    def __init__(self) -> None:
        self.runs = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    @hookimpl
    def czo_register_http_routes(self, api: Any, kit: Kit) -> None:
        counter = self

        class Count:
            def on_post(self, req: falcon.Request, resp: falcon.Response, shop_id: int) -> None:
                require_app(req, "order", "write", shop_id=shop_id)
                body = read_json(req, CountBody)
                counter.entered.set()
                assert counter.release.wait(timeout=120)  # a hang guard, not a pace
                if body.fail:
                    raise falcon.HTTPError(falcon.code_to_http_status(body.fail), title="Asked to fail")
                counter.runs += 1
                resp.status = falcon.HTTP_201
                resp.media = {"n": body.n, "run": counter.runs}

        api.add_route("/api/test/shops/{shop_id:shop}/count", Count())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def kit(db_url: str, settings_for: SettingsFor, tmp_path: Path) -> Iterator[Kit]:
    with app_kit(app_settings(settings_for, db_url, str(tmp_path), queue_url="")) as kit:
        yield kit


@pytest.fixture
def counter(kit: Kit) -> Counter:
    counter = Counter()
    kit.plugins.register(counter)
    return counter


@pytest.fixture
def client(kit: Kit, counter: Counter) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_api(kit))


@pytest.fixture
def tokens(kit: Kit) -> Iterator[dict[str, str]]:
    with Receiver() as app:
        yield {
            name: kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(app.url, app_id=name)).token
            for name in ("acme", "other")
        }


COUNT = "/api/test/shops/1/count"


def headers(token: str, key: str | None = None) -> dict[str, str]:
    sent = {"Authorization": f"Bearer {token}"}
    if key is not None:
        sent["Idempotency-Key"] = key
    return sent


def test_the_same_key_and_request_replay_the_saved_answer(
    client: falcon.testing.TestClient, counter: Counter, tokens: dict[str, str]
) -> None:
    first = client.simulate_post(COUNT, json={"n": 1}, headers=headers(tokens["acme"], "k-1"))
    assert (first.status_code, first.json) == (201, {"n": 1, "run": 1})
    assert "Idempotent-Replayed" not in first.headers
    again = client.simulate_post(COUNT, json={"n": 1}, headers=headers(tokens["acme"], "k-1"))
    assert (again.status_code, again.content) == (201, first.content)  # the saved answer, byte for byte
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["content-type"] == first.headers["content-type"]
    assert counter.runs == 1
    # Without a key, or with another one, the request runs again.
    assert client.simulate_post(COUNT, json={"n": 1}, headers=headers(tokens["acme"])).json["run"] == 2
    assert client.simulate_post(COUNT, json={"n": 1}, headers=headers(tokens["acme"], "k-2")).json["run"] == 3


def test_the_same_key_with_another_request_is_an_idempotency_error(
    client: falcon.testing.TestClient, counter: Counter, tokens: dict[str, str]
) -> None:
    assert client.simulate_post(COUNT, json={"n": 1}, headers=headers(tokens["acme"], "k-1")).status_code == 201
    for path, body in ((COUNT, {"n": 2}), (COUNT + "?x=1", {"n": 1}), (COUNT, {"n": 1, "fail": 0})):
        result = client.simulate_post(path, json=body, headers=headers(tokens["acme"], "k-1"))
        assert result.status_code == 400, (path, body, result.text)
        assert result.json["error"] == "idempotency_error"
        assert result.json["field"] == "Idempotency-Key"
        assert "used with another request" in result.json["message"]
    assert counter.runs == 1


def test_keys_are_scoped_to_the_app_installation(
    client: falcon.testing.TestClient, counter: Counter, tokens: dict[str, str]
) -> None:
    one = client.simulate_post(COUNT, json={"n": 1}, headers=headers(tokens["acme"], "shared"))
    other = client.simulate_post(COUNT, json={"n": 1}, headers=headers(tokens["other"], "shared"))
    assert (one.json["run"], other.json["run"]) == (1, 2)
    assert "Idempotent-Replayed" not in other.headers


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "a\tb"])
def test_a_malformed_key_is_refused(
    client: falcon.testing.TestClient, counter: Counter, tokens: dict[str, str], key: str
) -> None:
    result = client.simulate_post(COUNT, json={"n": 1}, headers=headers(tokens["acme"], key))
    assert result.status_code == 400, result.text
    assert (result.json["error"], result.json["field"]) == ("idempotency_error", "Idempotency-Key")
    assert counter.runs == 0


def test_5xx_409_and_429_save_nothing_so_a_retry_runs_again(
    client: falcon.testing.TestClient, counter: Counter, tokens: dict[str, str]
) -> None:
    for status in (500, 503, 409, 429):
        failed = client.simulate_post(COUNT, json={"n": 1, "fail": status}, headers=headers(tokens["acme"], f"k{status}"))
        assert failed.status_code == status
        # Stripe would replay a 500; here a retry of the same request runs again.
        retried = client.simulate_post(COUNT, json={"n": 1, "fail": status}, headers=headers(tokens["acme"], f"k{status}"))
        assert retried.status_code == status and "Idempotent-Replayed" not in retried.headers
    saved = client.simulate_post(COUNT, json={"n": 1, "fail": 404}, headers=headers(tokens["acme"], "k404"))
    replayed = client.simulate_post(COUNT, json={"n": 1, "fail": 404}, headers=headers(tokens["acme"], "k404"))
    assert saved.status_code == replayed.status_code == 404 and replayed.headers["Idempotent-Replayed"] == "true"


def test_keys_are_kept_24_hours_then_forgotten_and_pruned(
    kit: Kit, client: falcon.testing.TestClient, counter: Counter, tokens: dict[str, str]
) -> None:
    assert client.simulate_post(COUNT, json={"n": 1}, headers=headers(tokens["acme"], "k-1")).status_code == 201
    saved = IdempotencyKey.select().get(kit.db)
    assert saved.expires_at - saved.created_at == dt.timedelta(hours=24)
    # 24 hours later (moved back in time, rather than waited for):
    IdempotencyKey.update(
        created_at=utcnow() - dt.timedelta(hours=24, seconds=1), expires_at=utcnow() - dt.timedelta(seconds=1)
    ).execute(kit.db)
    reused = client.simulate_post(COUNT, json={"n": 9}, headers=headers(tokens["acme"], "k-1"))
    assert (reused.status_code, reused.json) == (201, {"n": 9, "run": 2})  # a new request, not an error
    IdempotencyKey.update(expires_at=utcnow() - dt.timedelta(seconds=1)).execute(kit.db)
    assert kit.apps.sweep()["expired_idempotency_keys"] == 1
    assert raw_rows(kit, "czo_app_idempotency_key") == []


def test_a_key_still_in_flight_is_a_409_and_the_first_request_still_answers(
    kit: Kit, counter: Counter, tokens: dict[str, str]
) -> None:
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=60), retries=False)
    answers: list[Any] = []
    counter.release.clear()
    with BackgroundServer(create_api(kit)) as server:
        url = server.url + COUNT
        body = json.dumps({"n": 1}).encode()
        sent = {**headers(tokens["acme"], "k-1"), "Content-Type": "application/json"}
        first = threading.Thread(target=lambda: answers.append(http.request("POST", url, body=body, headers=sent)))
        first.start()
        try:
            assert counter.entered.wait(timeout=60), "the first request never reached the route"
            second = http.request("POST", url, body=body, headers=sent)
            assert second.status == 409
            assert second.json()["error"] == "idempotency_error"
            assert "still being processed" in second.json()["message"]
        finally:
            counter.release.set()
            first.join(timeout=60)
        [answer] = answers
        assert (answer.status, answer.json()) == (201, {"n": 1, "run": 1})
        third = http.request("POST", url, body=body, headers=sent)
        assert third.status == 201 and third.headers["Idempotent-Replayed"] == "true"
        assert third.data == answer.data
    http.clear()
    assert counter.runs == 1


def test_a_request_whose_process_died_gives_its_key_back_after_the_lease(
    kit: Kit, client: falcon.testing.TestClient, counter: Counter, tokens: dict[str, str]
) -> None:
    principal = kit.apps.authenticate(tokens["acme"])
    claim = _idempotency.begin(kit.db, installation_id=principal.installation_id, key="k-1", fingerprint="f" * 64)
    assert claim.outcome == "run"  # ... and the process holding it dies here
    held = client.simulate_post(COUNT, json={"n": 1}, headers=headers(tokens["acme"], "k-1"))
    assert held.status_code == 400  # another fingerprint: the key is taken by another request
    IdempotencyKey.update(lease_until=utcnow() - dt.timedelta(seconds=1)).execute(kit.db)
    assert _idempotency.begin(
        kit.db, installation_id=principal.installation_id, key="k-1", fingerprint="f" * 64
    ).outcome == "run"


def test_user_routes_do_not_take_keys(kit: Kit, client: falcon.testing.TestClient) -> None:
    from czo_kit.http import issue_user_token

    user = {"Authorization": f"Bearer {issue_user_token(kit.secret_key, OWNER)}", "Idempotency-Key": "k-1"}
    with Receiver() as app:
        app.script = lambda request: Reply(200, json.dumps(manifest(app.url)).encode())
        body = {"manifestUrl": app.url + "/manifest", "shopId": 1}
        assert client.simulate_post("/api/apps/install", json=body, headers=user).status_code == 201
        again = client.simulate_post("/api/apps/install", json=body, headers=user)
    assert again.status_code == 409 and "Idempotent-Replayed" not in again.headers
    assert raw_rows(kit, "czo_app_idempotency_key") == []


# -- the order module's payment route ----------------------------------------------------------


def place(kit: Kit, total: int = 200) -> Any:
    mug = SimpleNamespace(id=7, name="Mug", price=total)
    return kit.services.get(OrderService).place(shop_id=1, customer_email="ada@example.com", items=[(mug, 1)])


def pay(order_id: int) -> str:
    return f"/api/shops/1/orders/{order_id}/payments"


def test_a_payment_is_recorded_once_per_reference(
    kit: Kit, client: falcon.testing.TestClient, tokens: dict[str, str]
) -> None:
    order = place(kit, total=200)
    body = {"amount": 100, "reference": "ref-1"}
    first = client.simulate_post(pay(order.id), json=body, headers=headers(tokens["acme"]))
    again = client.simulate_post(pay(order.id), json=body, headers=headers(tokens["acme"]))  # a retry, no key
    assert first.status_code == again.status_code == 201
    assert again.json["order"] == {"id": order.id, "status": "open", "paid": 100, "total": 200}
    stored = kit.services.get(OrderService).orders.get_by_id(order.id)
    assert (stored.status, stored.paid_amount) == ("open", 100)  # not 200, not paid
    for other in ({"amount": 50, "reference": "ref-1"}, {"amount": 100, "reference": "ref-1", "currency": "USD"}):
        clash = client.simulate_post(pay(order.id), json=other, headers=headers(tokens["acme"]))
        assert clash.status_code == 409 and "ref-1" in clash.json["message"]
    second_order = place(kit, total=100)
    clash = client.simulate_post(pay(second_order.id), json=body, headers=headers(tokens["acme"]))
    assert clash.status_code == 409 and f"order {order.id}" in clash.json["message"]
    assert kit.services.get(OrderService).orders.get_by_id(second_order.id).paid_amount == 0
    done = client.simulate_post(pay(order.id), json={"amount": 100, "reference": "ref-2"}, headers=headers(tokens["acme"]))
    assert done.json["order"]["status"] == "paid"


def test_two_concurrent_payments_with_one_reference_pay_once(kit: Kit, tokens: dict[str, str]) -> None:
    order = place(kit, total=200)
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=60), retries=False)
    body = json.dumps({"amount": 100, "reference": "ref-1"}).encode()
    sent = {**headers(tokens["acme"]), "Content-Type": "application/json"}
    start = threading.Barrier(2)
    answers: list[int] = []

    def paying(url: str) -> None:
        start.wait(timeout=30)
        answers.append(http.request("POST", url, body=body, headers=sent).status)

    with BackgroundServer(create_api(kit)) as server:
        threads = [threading.Thread(target=paying, args=(server.url + pay(order.id),)) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    http.clear()
    # One records the payment; the other, held by the unique reference until the first
    # committed, finds it recorded and answers the same.
    assert answers == [201, 201]
    assert kit.services.get(OrderService).orders.get_by_id(order.id).paid_amount == 100
    assert len(raw_rows(kit, "order_payment")) == 1


def test_the_payment_route_replays_a_retry_with_the_same_key(
    kit: Kit, client: falcon.testing.TestClient, tokens: dict[str, str]
) -> None:
    order = place(kit, total=200)
    body = {"amount": 100, "reference": "ref-1"}
    first = client.simulate_post(pay(order.id), json=body, headers=headers(tokens["acme"], "pay-ref-1"))
    client.simulate_post(pay(order.id), json={"amount": 100, "reference": "ref-2"}, headers=headers(tokens["acme"]))
    again = client.simulate_post(pay(order.id), json=body, headers=headers(tokens["acme"], "pay-ref-1"))
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json == {"order": {"id": order.id, "status": "open", "paid": 100, "total": 200}}
    assert kit.services.get(OrderService).orders.get_by_id(order.id).paid_amount == 200
