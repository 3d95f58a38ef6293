"""The HTTP API: app management for users, the order module's payment route for apps, status
codes for every kind of bad request; once through a real waitress server, and once through
the whole loop with the payment app (plugins/czo-app-stripe)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import falcon.testing
import pytest
import urllib3

from apps_support import OWNER, Receiver, Reply, app_kit, app_settings, manifest, wait_for
from czo_kit import Kit
from czo_kit.http import BackgroundServer, create_api, issue_user_token
from czo_kit.http.sessions import issue_session
from czo_kit.settings import Settings
from czo_order import OrderService

SettingsFor = Callable[..., Settings]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def kit(db_url: str, settings_for: SettingsFor, tmp_path: Path) -> Iterator[Kit]:
    with app_kit(app_settings(settings_for, db_url, str(tmp_path))) as kit:
        kit.permission_service.grant("vera", 1, "viewer")
        yield kit


@pytest.fixture
def client(kit: Kit) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_api(kit))


@pytest.fixture
def lite_kit(sqlite_url: str, settings_for: SettingsFor, tmp_path: Path) -> Iterator[Kit]:
    """For checks of request validation, which no database changes: SQLite only."""
    with app_kit(app_settings(settings_for, sqlite_url, str(tmp_path))) as kit:
        yield kit


@pytest.fixture
def lite_client(lite_kit: Kit) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_api(lite_kit))


@pytest.fixture
def app_server() -> Iterator[Receiver]:
    """Serves an app's manifest at /manifest (and takes webhooks at /hook)."""
    with Receiver() as server:
        body = json.dumps(manifest(server.url)).encode()
        server.script = lambda request: Reply(200, body) if request.path == "/manifest" else Reply(200)
        yield server


def user(kit: Kit, user_id: str = OWNER) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_user_token(kit.secret_key, user_id)}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def install_body(server: Receiver, shop_id: Any = 1) -> dict[str, Any]:
    return {"manifestUrl": server.url + "/manifest", "shopId": shop_id}


# -- app management ---------------------------------------------------------------------------


def test_install_list_and_uninstall(kit: Kit, client: falcon.testing.TestClient, app_server: Receiver) -> None:
    created = client.simulate_post("/api/apps/install", json=install_body(app_server), headers=user(kit))
    assert created.status_code == 201, created.text
    app = created.json["app"]
    assert (app["appId"], app["shopId"], app["installedBy"], app["version"]) == ("acme", 1, OWNER, "1.0.0")
    assert app["permissions"] == ["order:read", "order:write"]
    assert "token" not in created.text and "whsec_" not in created.text  # the token goes to the app only
    assert [r.path for r in app_server.requests] == ["/manifest"]

    listed = client.simulate_get("/api/apps", params={"shopId": "1"}, headers=user(kit))
    assert listed.status_code == 200
    assert [a["appId"] for a in listed.json["apps"]] == ["acme"]
    assert client.simulate_get("/api/apps", params={"shopId": "2"}, headers=user(kit)).json == {"apps": []}
    viewer = client.simulate_get("/api/apps", params={"shopId": "1"}, headers=user(kit, "vera"))
    assert viewer.status_code == 200  # apps:read is enough to look

    deleted = client.simulate_delete("/api/apps/acme", params={"shopId": "1"}, headers=user(kit))
    assert deleted.status_code == 204
    assert client.simulate_get("/api/apps", params={"shopId": "1"}, headers=user(kit)).json == {"apps": []}
    assert kit.apps.list(1) == []


def test_health_needs_no_credentials(client: falcon.testing.TestClient) -> None:
    assert client.simulate_get("/api/health").json == {"status": "ok"}


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer    ",
        "Basic b3duZXI6cGFzcw==",
        "Token czo_user_abc",
        "czo_user_abc.def",
        "Bearer not-a-token",
        "Bearer czo_user_",
        "Bearer czo_user_abc",
        "Bearer czo_user_!!!.???",
        "Bearer czo_user_" + "a" * 500,
        "Bearer czo_app_" + "a" * 43,
    ],
)
def test_401_for_missing_and_malformed_credentials(
    lite_kit: Kit, lite_client: falcon.testing.TestClient, app_server: Receiver, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    for result in (
        lite_client.simulate_get("/api/apps", params={"shopId": "1"}, headers=headers),
        lite_client.simulate_post("/api/apps/install", json=install_body(app_server), headers=headers),
        lite_client.simulate_delete("/api/apps/acme", params={"shopId": "1"}, headers=headers),
    ):
        assert result.status_code == 401, (authorization, result.text)
        assert result.json["error"] == "unauthorized"
        assert result.headers["WWW-Authenticate"] == 'Bearer realm="czo"'
    assert app_server.requests == []
    assert lite_kit.apps.list(1) == []


def test_401_for_expired_and_forged_user_tokens(kit: Kit, client: falcon.testing.TestClient) -> None:
    expired = issue_user_token(kit.secret_key, OWNER, ttl=60, now=time.time() - 3600)
    forged = issue_user_token(b"another-secret-" + b"x" * 32, OWNER)
    good = issue_user_token(kit.secret_key, OWNER)
    payload, _, signature = good.partition(".")
    other = issue_user_token(kit.secret_key, "mallory")
    spliced = other.partition(".")[0] + "." + signature  # mallory's claims, owner's signature
    for token, words in (
        (expired, "expired"),
        (forged, "signature"),
        (spliced, "signature"),
        (good[:-3], "signature"),
        (payload, "malformed"),
    ):
        result = client.simulate_get("/api/apps", params={"shopId": "1"}, headers=bearer(token))
        assert result.status_code == 401
        assert words in result.json["message"]
    assert client.simulate_get("/api/apps", params={"shopId": "1"}, headers=bearer(good)).status_code == 200


def test_an_app_token_is_not_a_user(kit: Kit, client: falcon.testing.TestClient, app_server: Receiver) -> None:
    token = kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(app_server.url)).token
    result = client.simulate_get("/api/apps", params={"shopId": "1"}, headers=bearer(token))
    assert result.status_code == 401
    assert "user token is required" in result.json["message"]


def test_403_lists_what_is_missing(kit: Kit, client: falcon.testing.TestClient, app_server: Receiver) -> None:
    listed = client.simulate_get("/api/apps", params={"shopId": "1"}, headers=user(kit, "mallory"))
    assert listed.status_code == 403
    assert listed.json["missing"] == ["apps:read"]
    for who in ("vera", "mallory"):
        installed = client.simulate_post("/api/apps/install", json=install_body(app_server), headers=user(kit, who))
        assert installed.status_code == 403
        assert installed.json == {"error": "forbidden", "message": installed.json["message"], "missing": ["apps:manage"]}
    other_shop = client.simulate_post("/api/apps/install", json=install_body(app_server, 3), headers=user(kit))
    assert other_shop.status_code == 403  # the owner of shops 1 and 2 is nobody in shop 3
    kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(app_server.url))
    removed = client.simulate_delete("/api/apps/acme", params={"shopId": "1"}, headers=user(kit, "vera"))
    assert (removed.status_code, removed.json["missing"]) == (403, ["apps:manage"])
    assert [a.app_id for a in kit.apps.list(1)] == ["acme"]


def test_403_when_the_app_asks_more_than_the_installer_holds(
    kit: Kit, client: falcon.testing.TestClient
) -> None:
    from czo_kit import hookimpl

    with Receiver() as server:
        data = manifest(server.url, permissions=[{"resource": "order", "actions": ["read"]},
                                                 {"resource": "customer", "actions": ["read"]}])
        server.script = lambda request: Reply(200, json.dumps(data).encode())

        class Roles:
            @hookimpl
            def czo_register_permissions(self, register: Any) -> None:
                register.role("app_admin", {"apps": ["manage", "read"], "order": ["read"]})

        with Kit(kit.settings, plugins=[Roles()]) as roles_kit:
            roles_kit.permission_service.grant("ann", 1, "app_admin")
            api = falcon.testing.TestClient(create_api(roles_kit))
            result = api.simulate_post("/api/apps/install", json=install_body(server), headers=user(roles_kit, "ann"))
    assert result.status_code == 403
    assert result.json["missing"] == ["customer:read"]
    assert kit.apps.list(1) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"manifestUrl": "http://x/m", "shopId": "1"}, "$.shopId"),
        ({"manifestUrl": "http://x/m", "shopId": True}, "$.shopId"),
        ({"manifestUrl": "http://x/m", "shopId": 1.5}, "$.shopId"),
        ({"manifestUrl": "http://x/m", "shopId": None}, "$.shopId"),
        ({"manifestUrl": "http://x/m", "shopId": 0}, "$.shopId"),
        ({"manifestUrl": "http://x/m", "shopId": -4}, "$.shopId"),
        ({"manifestUrl": "http://x/m", "shopId": 1180591620717411303424}, "$.shopId"),  # 2**70
        ({"manifestUrl": "http://x/m", "shopId": 2**31}, "$.shopId"),  # shops are 32-bit
        ({"manifestUrl": "http://x/m", "shopId": 2**63}, "$.shopId"),
        ({"manifestUrl": "http://x/m", "shopId": -(2**70)}, "$.shopId"),
        ({"shopId": 1}, "$.manifestUrl"),
        ({"manifestUrl": "http://x/m"}, "$.shopId"),
        ({"manifestUrl": 5, "shopId": 1}, "$.manifestUrl"),
        ({"manifestUrl": "http://x/m", "shopId": 1, "admin": True}, "$.admin"),
        ([], "$"),
        ("install", "$"),
    ],
)
def test_400_names_the_field_of_a_bad_body(
    lite_kit: Kit, lite_client: falcon.testing.TestClient, body: Any, field: str
) -> None:
    result = lite_client.simulate_post("/api/apps/install", json=body, headers=user(lite_kit))
    assert result.status_code == 400, result.text
    assert result.json["field"] == field
    assert result.json["message"]


@pytest.mark.parametrize("raw", [b"{", b"", b"not json", b"\xff\xfe", b'{"manifestUrl": "x", "shopId": 1,}'])
def test_400_for_invalid_json(lite_kit: Kit, lite_client: falcon.testing.TestClient, raw: bytes) -> None:
    result = lite_client.simulate_post(
        "/api/apps/install", body=raw, headers={**user(lite_kit), "Content-Type": "application/json"}
    )
    assert result.status_code == 400
    assert result.json["field"] == "$"
    assert "not valid JSON" in result.json["message"]


def test_413_for_a_body_over_one_mebibyte(lite_kit: Kit, lite_client: falcon.testing.TestClient) -> None:
    huge = json.dumps({"manifestUrl": "http://x/" + "a" * (1024 * 1024), "shopId": 1}).encode()
    result = lite_client.simulate_post("/api/apps/install", body=huge, headers={**user(lite_kit), "Content-Type": "application/json"})
    assert result.status_code == 413
    assert "1048576" in result.json["message"]


def test_400_for_a_manifest_that_cannot_be_installed(
    kit: Kit, client: falcon.testing.TestClient, app_server: Receiver
) -> None:
    for url, field in (
        ("ftp://example.com/manifest", "manifestUrl"),
        (app_server.url + "/missing", "manifestUrl"),
    ):
        app_server.script = lambda request: Reply(404)
        result = client.simulate_post("/api/apps/install", json={"manifestUrl": url, "shopId": 1}, headers=user(kit))
        assert result.status_code == 400
        assert result.json["error"] == "invalid_manifest"
        assert result.json["field"] == field
    bad = manifest(app_server.url)
    bad["webhooks"][0]["events"] = ["Not An Event"]
    app_server.script = lambda request: Reply(200, json.dumps(bad).encode())
    result = client.simulate_post("/api/apps/install", json=install_body(app_server), headers=user(kit))
    assert (result.status_code, result.json["field"]) == (400, "$.webhooks[0].events[0]")


def test_400_for_a_webhook_event_the_apps_permissions_do_not_cover(
    kit: Kit, client: falcon.testing.TestClient, app_server: Receiver
) -> None:
    uncovered = manifest(app_server.url, permissions=[{"resource": "customer", "actions": ["read"]}])
    app_server.script = lambda request: Reply(200, json.dumps(uncovered).encode())
    result = client.simulate_post("/api/apps/install", json=install_body(app_server), headers=user(kit))
    assert result.status_code == 400, result.text
    assert result.json["error"] == "invalid_manifest"
    assert result.json["field"] == "$.webhooks[0].events[0]"
    assert "needs order:read" in result.json["message"]
    assert kit.apps.list(1) == []


@pytest.mark.parametrize("query", [{}, {"shopId": ""}, {"shopId": "abc"}, {"shopId": "-1"}, {"shopId": "0"},
                                   {"shopId": "1.5"}, {"shopId": "9" * 13}, {"shopId": "١"}, {"shopId": "²"},
                                   {"shopId": "2147483648"}, {"shopId": "999999999999"}, {"shopId": "9" * 5000},
                                   {"shopId": "+1"}, {"shopId": " 1"}, {"shopId": "0x10"}, {"shop": "1"}])
def test_400_for_bad_shop_id_parameters(lite_kit: Kit, lite_client: falcon.testing.TestClient, query: dict[str, str]) -> None:
    for result in (
        lite_client.simulate_get("/api/apps", params=query, headers=user(lite_kit)),
        lite_client.simulate_delete("/api/apps/acme", params=query, headers=user(lite_kit)),
    ):
        assert result.status_code == 400, (query, result.text)
        assert result.json["field"] == "shopId"


@pytest.mark.parametrize(
    "app_id", ["a%00b", "x" * 65, "Acme", "%C3%A9t%C3%A9", "a", "-acme", "acme%20", ".."]
)
def test_400_for_a_malformed_app_id_in_the_path(
    lite_kit: Kit, lite_client: falcon.testing.TestClient, app_id: str
) -> None:
    result = lite_client.simulate_delete(f"/api/apps/{app_id}", params={"shopId": "1"}, headers=user(lite_kit))
    assert result.status_code == 400, (app_id, result.text)
    assert result.json["field"] == "appId"
    assert "2 to 64 characters" in result.json["message"]


def test_404_uninstalling_an_unknown_app(kit: Kit, client: falcon.testing.TestClient) -> None:
    result = client.simulate_delete("/api/apps/ghost", params={"shopId": "1"}, headers=user(kit))
    assert result.status_code == 404
    assert result.json["error"] == "not_found"


def test_409_reinstalling(kit: Kit, client: falcon.testing.TestClient, app_server: Receiver) -> None:
    assert client.simulate_post("/api/apps/install", json=install_body(app_server), headers=user(kit)).status_code == 201
    again = client.simulate_post("/api/apps/install", json=install_body(app_server), headers=user(kit))
    assert again.status_code == 409
    assert "uninstall it first" in again.json["message"]


# -- the order module's payment route, for apps -----------------------------------------------


def place(kit: Kit, shop_id: int, total: int = 2500) -> Any:
    orders = kit.services.get(OrderService)
    mug = SimpleNamespace(id=7, name="Mug", price=total)
    return orders.place(shop_id=shop_id, customer_email="grace@example.com", items=[(mug, 1)])


def pay_path(shop_id: int, order_id: int) -> str:
    return f"/api/shops/{shop_id}/orders/{order_id}/payments"


def test_an_app_records_a_payment(kit: Kit, client: falcon.testing.TestClient, app_server: Receiver) -> None:
    token = kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(app_server.url)).token
    order = place(kit, 1)
    result = client.simulate_post(
        pay_path(1, order.id), json={"amount": 1000, "reference": "pi_1"}, headers=bearer(token)
    )
    assert result.status_code == 201, result.text
    assert result.json["order"] == {"id": order.id, "status": "open", "paid": 1000, "total": 2500}
    result = client.simulate_post(
        pay_path(1, order.id), json={"amount": 1500, "reference": "pi_2", "currency": "EUR"}, headers=bearer(token)
    )
    assert result.json["order"]["status"] == "paid"
    stored = kit.services.get(OrderService).orders.get_by_id(order.id)
    assert (stored.status, stored.paid_amount, stored.payment_reference) == ("paid", 2500, "pi_2")
    unknown = client.simulate_post(pay_path(1, 999999), json={"amount": 1, "reference": "x"}, headers=bearer(token))
    assert unknown.status_code == 404


def test_the_payment_route_refuses_other_shops_and_missing_permissions(
    kit: Kit, client: falcon.testing.TestClient, app_server: Receiver
) -> None:
    token = kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(app_server.url)).token
    reader = kit.apps.install(
        shop_id=1, installer_id=OWNER,
        manifest=manifest(app_server.url, app_id="reader", permissions=[{"resource": "order", "actions": ["read"]}]),
    ).token
    mine, theirs = place(kit, 1), place(kit, 2)
    body = {"amount": 100, "reference": "pi_x"}
    other_shop = client.simulate_post(pay_path(2, theirs.id), json=body, headers=bearer(token))
    assert other_shop.status_code == 403
    assert "not installed in shop 2" in other_shop.json["message"]
    # Shop 1's token naming shop 1 cannot reach shop 2's order either.
    assert client.simulate_post(pay_path(1, theirs.id), json=body, headers=bearer(token)).status_code == 404
    without = client.simulate_post(pay_path(1, mine.id), json=body, headers=bearer(reader))
    assert (without.status_code, without.json["missing"]) == (403, ["order:write"])
    as_user = client.simulate_post(pay_path(1, mine.id), json=body, headers=user(kit))
    assert as_user.status_code == 401
    assert client.simulate_post(pay_path(1, mine.id), json=body).status_code == 401
    orders = kit.services.get(OrderService).orders
    assert orders.get_by_id(mine.id).paid_amount == 0 and orders.get_by_id(theirs.id).paid_amount == 0


def test_revoked_and_uninstalled_app_tokens_get_401(
    kit: Kit, client: falcon.testing.TestClient, app_server: Receiver
) -> None:
    result = kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(app_server.url))
    spare_id, spare = kit.apps.create_token(shop_id=1, app_id="acme")
    order = place(kit, 1)
    body = {"amount": 100, "reference": "pi_x"}
    assert client.simulate_post(pay_path(1, order.id), json=body, headers=bearer(spare)).status_code == 201
    kit.apps.revoke_token(shop_id=1, app_id="acme", token_id=spare_id)
    revoked = client.simulate_post(pay_path(1, order.id), json=body, headers=bearer(spare))
    assert revoked.status_code == 401
    assert revoked.json["error"] == "unauthorized"
    assert client.simulate_post(pay_path(1, order.id), json=body, headers=bearer(result.token)).status_code == 201
    kit.apps.uninstall(shop_id=1, app_id="acme")
    assert client.simulate_post(pay_path(1, order.id), json=body, headers=bearer(result.token)).status_code == 401


HOSTILE_PATH_IDS = [
    ("abc", "not a whole number"),
    ("-5", "not a whole number"),
    ("0", "out of range"),
    ("1.5", "not a whole number"),
    ("1e3", "not a whole number"),
    ("0x1f", "not a whole number"),
    ("%D9%A1", "not a whole number"),  # an Arabic-Indic one
    ("%C2%B2", "not a whole number"),  # a superscript two
    ("%201", "not a whole number"),
    (str(2**63), "out of range"),
    (str(2**70), "out of range"),
    ("9" * 5000, "out of range"),
]


@pytest.mark.parametrize(("raw", "reason"), HOSTILE_PATH_IDS)
def test_400_for_hostile_ids_in_module_route_paths(
    lite_kit: Kit, lite_client: falcon.testing.TestClient, app_server: Receiver, raw: str, reason: str
) -> None:
    token = lite_kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(app_server.url)).token
    order = place(lite_kit, 1)
    body = {"amount": 100, "reference": "pi_1"}
    for path, field in ((pay_path(1, raw), "order_id"), (f"/api/shops/{raw}/orders/{order.id}/payments", "shop_id")):  # type: ignore[arg-type]
        result = lite_client.simulate_post(path, json=body, headers=bearer(token))
        assert result.status_code == 400, (path, result.text)
        assert result.json["field"] == field
        assert f"{field} must be a whole number from 1 to" in result.json["message"]
        assert reason in result.json["message"]
    # 2**31 is a valid row id, but no shop id (shops are 32-bit).
    big_shop = lite_client.simulate_post(f"/api/shops/{2**31}/orders/{order.id}/payments", json=body, headers=bearer(token))
    assert (big_shop.status_code, big_shop.json["field"]) == (400, "shop_id")
    assert lite_kit.services.get(OrderService).orders.get_by_id(order.id).paid_amount == 0


@pytest.mark.parametrize(("raw", "reason"), HOSTILE_PATH_IDS)
def test_400_for_hostile_ids_in_dashboard_paths(
    lite_kit: Kit, lite_client: falcon.testing.TestClient, raw: str, reason: str
) -> None:
    cookie = {"Cookie": f"czo_session={issue_session(lite_kit.secret_key, OWNER, lifetime=600)}"}
    for path in (f"/dashboard/shops/{raw}", f"/dashboard/shops/{raw}/orders", f"/dashboard/shops/1/orders/{raw}"):
        result = lite_client.simulate_get(path, headers=cookie)
        assert result.status_code == 400, (path, result.text)
        assert result.headers["content-type"].startswith("text/html")
        assert "must be a whole number from 1 to" in result.text and reason in result.text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"appId": "acme", "shopId": 2**70}, "$.shopId"),
        ({"appId": "acme", "shopId": 2**31}, "$.shopId"),
        ({"appId": "acme", "shopId": 0}, "$.shopId"),
        ({"appId": "a\x00b", "shopId": 1}, "$.appId"),
        ({"appId": "x" * 5000, "shopId": 1}, "$.appId"),
    ],
)
def test_400_for_hostile_ids_in_the_extension_token_body(
    lite_kit: Kit, lite_client: falcon.testing.TestClient, body: dict[str, Any], field: str
) -> None:
    headers = {"Cookie": f"czo_session={issue_session(lite_kit.secret_key, OWNER, lifetime=600)}", "X-CZO-Dashboard": "1"}
    result = lite_client.simulate_post("/dashboard/api/extension-token", json=body, headers=headers)
    assert result.status_code == 400, result.text
    assert result.json["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"amount": "100", "reference": "pi"}, "$.amount"),
        ({"amount": 1.5, "reference": "pi"}, "$.amount"),
        ({"amount": 0, "reference": "pi"}, "$.amount"),
        ({"amount": -100, "reference": "pi"}, "$.amount"),
        ({"reference": "pi"}, "$.amount"),
        ({"amount": 100}, "$.reference"),
        ({"amount": 100, "reference": ""}, "$.reference"),
        ({"amount": 100, "reference": "r" * 201}, "$.reference"),
        ({"amount": 100, "reference": 5}, "$.reference"),
        ({"amount": 100, "reference": "pi", "status": "paid"}, "$.status"),
        ([100, "pi"], "$"),
    ],
)
def test_400_for_bad_payment_bodies(
    lite_kit: Kit, lite_client: falcon.testing.TestClient, app_server: Receiver, body: Any, field: str
) -> None:
    token = lite_kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(app_server.url)).token
    order = place(lite_kit, 1)
    result = lite_client.simulate_post(pay_path(1, order.id), json=body, headers=bearer(token))
    assert result.status_code == 400, result.text
    assert result.json["field"] == field
    invalid = lite_client.simulate_post(
        pay_path(1, order.id), body=b"{amount", headers={**bearer(token), "Content-Type": "application/json"}
    )
    assert (invalid.status_code, invalid.json["field"]) == (400, "$")
    assert lite_kit.services.get(OrderService).orders.get_by_id(order.id).paid_amount == 0


# -- over real HTTP ---------------------------------------------------------------------------


def test_the_api_over_a_real_waitress_server(kit: Kit, app_server: Receiver) -> None:
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False)
    try:
        with BackgroundServer(create_api(kit)) as server:
            assert http.request("GET", f"{server.url}/api/health").json() == {"status": "ok"}
            denied = http.request("GET", f"{server.url}/api/apps?shopId=1")
            assert denied.status == 401 and denied.headers["WWW-Authenticate"] == 'Bearer realm="czo"'
            installed = http.request(
                "POST", f"{server.url}/api/apps/install",
                body=json.dumps(install_body(app_server)).encode(),
                headers={**user(kit), "Content-Type": "application/json"},
            )
            assert installed.status == 201, installed.data
            assert installed.headers["Content-Type"].startswith("application/json")
            listed = http.request("GET", f"{server.url}/api/apps?shopId=1", headers=user(kit))
            assert [a["appId"] for a in listed.json()["apps"]] == ["acme"]
            bad = http.request(
                "POST", f"{server.url}/api/apps/install", body=b"{", headers={**user(kit), "Content-Type": "application/json"}
            )
            assert bad.status == 400 and bad.json()["field"] == "$"
            gone = http.request("DELETE", f"{server.url}/api/apps/acme?shopId=1", headers=user(kit))
            assert gone.status == 204
            assert http.request("DELETE", f"{server.url}/api/apps/acme?shopId=1", headers=user(kit)).status == 404
    finally:
        http.clear()


def test_the_whole_loop_with_the_payment_app(kit: Kit, tmp_path: Path) -> None:
    """As ``czo-kit demo`` shows it: install through the API, order, the app gets the signed
    webhook, has localstripe charge the card, and pays the order through the API with its
    token. (tests/test_app_stripe.py covers the app's payments in depth.)"""
    from czo_app_stripe import LocalStripe, create_app

    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False)
    api = BackgroundServer(create_api(kit)).start()
    with LocalStripe() as stripe_server:
        wsgi, stripe_app = create_app(
            public_url="", czo_api_url=api.url, database_url=f"sqlite:///{tmp_path / 'stripe-app.sqlite3'}",
            stripe_api_key=LocalStripe.api_key, stripe_api_base=stripe_server.url,
        )
        app_server = BackgroundServer(wsgi)
        stripe_app.public_url = app_server.url
        app_server.start()
        try:
            installed = http.request(
                "POST", f"{api.url}/api/apps/install",
                body=json.dumps({"manifestUrl": f"{app_server.url}/manifest", "shopId": 1}).encode(),
                headers={**user(kit), "Content-Type": "application/json"},
            )
            assert installed.status == 201, installed.data
            assert installed.json()["app"]["appId"] == "stripe"
            installation = stripe_app.installations[1]  # the token reached its token_target_url
            assert kit.apps.authenticate(installation.token).shop_id == 1

            with kit.consumer(workers=2, sweep_interval=0.5):
                order = place(kit, 1, total=4200)
                orders = kit.services.get(OrderService).orders
                wait_for(lambda: orders.get_by_id(order.id).status == "paid", timeout=20, what="the order to be paid")
                wait_for(lambda: kit.webhooks.stats(delivered=True) == {"delivered": 1}, what="the webhook to be recorded")
                # The app marks its own record once c-zo has answered the payment: just after
                # the order turns paid, not before.
                wait_for(lambda: [p.state for p in stripe_app.payments] == ["paid"], what="the app's record of it")
            final = orders.get_by_id(order.id)
            assert (final.status, final.paid_amount) == ("paid", 4200)
            [payment] = stripe_app.payments
            assert (payment.shop_id, payment.order_id, payment.amount, payment.state) == (1, order.id, 4200, "paid")
            assert final.payment_reference == payment.intent_id
            intent = json.loads(stripe_server.get(f"/v1/payment_intents/{payment.intent_id}").data)
            assert (intent["status"], intent["amount"], intent["currency"]) == ("succeeded", 4200, "eur")
            assert stripe_app.errors == []
            assert len(stripe_app.seen_webhooks) == 1
        finally:
            http.clear()
            stripe_app.http.clear()
            stripe_app.store.close()
            app_server.stop()
            api.stop()


def test_the_payment_app_verifies_every_webhook(tmp_path: Path) -> None:
    from czo_app_stripe import create_app

    from czo_kit.apps import HandoffSigner, new_webhook_secret, parse_manifest, sign

    kit_key = HandoffSigner(b"k" * 32)
    wsgi, state = create_app(
        public_url="http://pay.example.test", czo_api_url="http://127.0.0.1:9", czo_public_key=kit_key.public_key,
        database_url=f"sqlite:///{tmp_path / 'stripe-app.sqlite3'}",
    )
    app = falcon.testing.TestClient(wsgi)
    try:
        served = parse_manifest(app.simulate_get("/manifest").content)  # a manifest c-zo accepts
        assert (served.id, served.token_target_url) == ("stripe", "http://pay.example.test/token")
        secret = new_webhook_secret()
        grant = {"kind": "install", "target_url": "http://pay.example.test/token", "auth_token": "czo_app_x",
                 "webhook_secret": secret, "shop_id": 1, "installation_id": 3, "app_id": "stripe"}

        def hand_off(payload: dict[str, Any], message_id: str) -> Any:
            raw = json.dumps(payload).encode()
            return app.simulate_post(
                "/token", body=raw, headers={"Content-Type": "application/json", **kit_key.sign(raw, message_id=message_id)}
            )

        assert app.simulate_post("/token", json=grant).status_code == 401  # unsigned
        assert hand_off({"shop_id": 1, "target_url": "http://pay.example.test/token"}, "install-3-a").status_code == 400
        assert hand_off(dict(grant, app_id="other"), "install-3-b").status_code == 400  # not this app's
        assert hand_off(grant, "install-3-c").status_code == 200
        state.errors.clear()

        body = json.dumps({"id": "msg_1", "event": "order.updated", "shop_id": 1, "data": {"id": 1}}).encode()

        def post(headers: dict[str, str], payload: bytes = body) -> Any:
            return app.simulate_post("/webhooks", body=payload, headers={"Content-Type": "application/json", **headers})

        good = sign(body, [secret], message_id="msg_1")
        stale = sign(body, [secret], message_id="msg_1", timestamp=int(time.time()) - 600)
        forged = sign(body, [new_webhook_secret()], message_id="msg_1")
        tampered = body.replace(b'"id": 1', b'"id": 2')
        assert post({"X-CZO-Shop-Id": "1"}).status_code == 401
        assert post({"X-CZO-Shop-Id": "1", **forged}).status_code == 401
        assert post({"X-CZO-Shop-Id": "1", **stale}).status_code == 401
        assert post({"X-CZO-Shop-Id": "1", **good}, tampered).status_code == 401
        assert post({"X-CZO-Shop-Id": "2", **good}).status_code == 404
        assert post({"X-CZO-Shop-Id": "\u00b2", **good}).status_code == 404
        assert len(state.errors) == 4 and all(e.startswith("bad signature") for e in state.errors)
        first = post({"X-CZO-Shop-Id": "1", **good})
        assert (first.status_code, first.json) == (200, {"received": True, "duplicate": False})
        assert post({"X-CZO-Shop-Id": "1", **good}).json["duplicate"] is True  # deduped on its id
        assert state.payments == []
    finally:
        state.http.clear()


# -- dashboard frames -------------------------------------------------------------------------


def test_an_extension_on_the_dashboards_own_origin_never_gets_allow_same_origin(
    lite_kit: Kit, lite_client: falcon.testing.TestClient, app_server: Receiver
) -> None:
    """allow-scripts with allow-same-origin lets a same-origin frame lift its own sandbox: the
    dashboard (here http://falconframework.org, the test client's host) never grants both."""
    import re

    def nav(label: str, url: str) -> dict[str, Any]:
        return {"label": label, "mount": "NAVIGATION", "target": "widget", "url": url}

    extensions = [
        nav("Elsewhere", "https://app.example/widget"),
        nav("Same", "http://falconframework.org/static/czo-extension.js"),
        nav("Same, spelt otherwise", "HTTP://FalconFramework.ORG:80/x"),
        nav("Same host, other port", "http://falconframework.org:8080/x"),
    ]
    lite_kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(app_server.url, extensions=extensions))
    page = lite_client.simulate_get(
        "/dashboard/shops/1", headers={"Cookie": f"czo_session={issue_session(lite_kit.secret_key, OWNER, lifetime=600)}"}
    )
    assert page.status_code == 200, page.text
    sandboxes = {
        title: sandbox for title, sandbox in re.findall(r'<iframe [^>]*title="([^"]+)"[^>]*sandbox="([^"]*)"', page.text)
    }
    assert sandboxes == {
        "Elsewhere": "allow-scripts allow-same-origin allow-forms",
        "Same": "allow-scripts allow-forms",
        "Same, spelt otherwise": "allow-scripts allow-forms",
        "Same host, other port": "allow-scripts allow-same-origin allow-forms",
    }


def test_a_module_route_that_names_ids_otherwise_is_a_clear_plugin_error(lite_kit: Kit) -> None:
    from czo_kit import hookimpl
    from czo_kit.errors import PluginError

    class Stray:
        @hookimpl
        def czo_register_http_routes(self, api: Any, kit: Kit) -> None:
            api.add_route("/api/shops/{shop_id:int}/stray", object())

    lite_kit.plugins.register(Stray())
    with pytest.raises(PluginError, match=r"\{shop_id:shop\} for shops"):
        create_api(lite_kit)
