"""In-process apps (``czo_register_apps``): their manifests, their registration, their
install by app id, and their deliveries through the webhook machinery (delivery rows,
retries, dead letters, the CLI, redelivery after a killed worker), with a queue and without
one, on SQLite and PostgreSQL; their routes under ``/apps/<app id>``.

The app is ``probe`` (``tests/inprocess_probe.py``), registered by hand on each kit.
"""

from __future__ import annotations

import hashlib
import os
import textwrap
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import falcon.testing
import peewee
import pytest
from click.testing import CliRunner

import inprocess_probe as probe
from apps_support import (
    BOTH_MODES,
    OWNER,
    KitFactory,
    Receiver,
    app_kit,
    app_settings,
    consuming,
    drop_tables,
    kill_9,
    kit_factory,
    manifest,
    raw_rows,
    wait_for,
    worker_processes,
)
from czo_kit import Kit, hookimpl
from czo_kit.apps import AppManifest, InstalledApp, PermissionSpec, WebhookSpec, parse_manifest
from czo_kit.apps.registry import AppToken
from czo_kit.cli import cli
from czo_kit.errors import ManifestError, PermissionDeniedError, PluginError
from czo_kit.http import create_api
from czo_kit.plugins import describe_plugins
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]
ORDER = {"shop_id": 1, "id": 7, "total": 1999, "currency": "EUR", "customer_email": "grace@example.com"}
TESTS = Path(__file__).resolve().parent


@contextmanager
def probe_kit(settings: Settings, *plugins: object) -> Iterator[Kit]:
    """An app kit with the probe app (and ``plugins``), its tables made."""
    drop_tables(settings.database_url, "probe_row")
    with app_kit(settings, probe, *plugins) as kit:
        yield kit


@pytest.fixture
def make_kit(db_url: str, settings_for: SettingsFor, tmp_path: Path, queue_mode: str) -> Iterator[KitFactory]:
    yield from kit_factory(probe_kit, settings_for, db_url, str(tmp_path), queue_mode)


@pytest.fixture
def kit(make_kit: KitFactory) -> Kit:
    return make_kit()


@pytest.fixture(autouse=True)
def _fresh_probe() -> Iterator[None]:
    probe.CALLS.clear()
    probe.BEHAVIOUR["fail"] = 0
    yield
    probe.CALLS.clear()
    probe.BEHAVIOUR["fail"] = 0
    probe.PAUSE.clear()


def states(kit: Kit) -> dict[str, int]:
    return kit.webhooks.stats(delivered=True)


# -- manifests ------------------------------------------------------------------------------

IN_PROCESS = {
    "id": "probe", "name": "Probe", "version": "1.0.0",
    "permissions": [{"resource": "order", "actions": ["read"]}],
    "webhooks": [{"name": "orders", "events": ["order.created"]}],
}


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"app_url": "https://probe.example.com/"}, "$.app_url"),
        ({"token_target_url": "https://probe.example.com/token"}, "$.token_target_url"),
        (
            {"webhooks": [{"name": "orders", "events": ["order.created"], "target_url": "https://p.example.com/h"}]},
            "$.webhooks[0].target_url",
        ),
        (
            {"extensions": [{"label": "x", "mount": "ORDER_DETAILS", "url": "https://p.example.com/x"}]},
            "$.extensions",
        ),
    ],
)
def test_an_in_process_manifest_carrying_a_url_is_refused_naming_the_field(change: dict[str, Any], path: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest({**IN_PROCESS, **change}, in_process=True)
    assert info.value.path == path
    assert "in-process app" in str(info.value)
    parse_manifest(IN_PROCESS, in_process=True)  # without it, the manifest is fine


def test_a_remote_manifest_lacking_its_urls_is_refused_naming_the_field(kit: Kit) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(IN_PROCESS)
    assert info.value.path == "$.app_url"
    assert "missing required field `app_url`" in str(info.value)
    with pytest.raises(ManifestError) as info:
        parse_manifest({**IN_PROCESS, "app_url": "https://probe.example.com/"})
    assert info.value.path == "$.webhooks[0].target_url"
    # A Struct built in code skips parse_manifest: install checks it all the same.
    built = AppManifest(id="remote", name="Remote", version="1", permissions=[PermissionSpec("order", ["read"])])
    with pytest.raises(ManifestError) as info:
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest=built)
    assert info.value.path == "$.app_url"
    hook = WebhookSpec(name="orders", events=["order.created"])
    with pytest.raises(ManifestError) as info:
        kit.apps.install(
            shop_id=1, installer_id=OWNER,
            manifest=AppManifest(id="remote", name="R", version="1", app_url="https://r.example.com/", webhooks=[hook],
                                 permissions=[PermissionSpec("order", ["read"])]),
        )
    assert info.value.path == "$.webhooks[0].target_url"


def test_a_remote_app_cannot_take_the_id_of_an_in_process_one(kit: Kit) -> None:
    with pytest.raises(ManifestError) as info:
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest("https://probe.example.com", app_id="probe"))
    assert info.value.path == "$.id"
    assert "app_id='probe'" in str(info.value)


# -- registration ---------------------------------------------------------------------------


def registering(register_app: Callable[[Any], None]) -> object:
    class Plugin:
        @hookimpl
        def czo_register_apps(self, register: Any) -> None:
            register_app(register)

    return Plugin()


def startup_error(sqlite_url: str, settings_for: SettingsFor, *plugins: object) -> str:
    with pytest.raises(PluginError) as info:
        Kit(settings_for(sqlite_url, queue_url=""), plugins=plugins)
    return str(info.value)


def on_any(payload: Any, ctx: Any, app: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("register_app", "words"),
    [
        (
            lambda r: r(IN_PROCESS, handlers={"order.created": on_any, "order.updated": on_any}),
            ["'order.updated', an event no webhook of the manifest subscribes to", "subscribed: order.created"],
        ),
        (
            lambda r: r({**IN_PROCESS, "permissions": [{"resource": "product", "actions": ["read"]}]},
                        handlers={"order.created": on_any}),
            ["'order.created', which needs order:read", "asks only for product:read"],
        ),
        (
            lambda r: r({**IN_PROCESS, "webhooks": [{"name": "orders", "events": ["order.created", "order.updated"]}]},
                        handlers={"order.created": on_any}),
            ["subscribes to order.updated but handlers has none for it"],
        ),
        (lambda r: r(IN_PROCESS, handlers={"order.created": "on_any"}), ["is 'on_any', not a function"]),
        (lambda r: r(IN_PROCESS, handlers=[on_any]), ["handlers must map event names to functions, got list"]),
        (lambda r: r("probe", handlers={}), ["takes an AppManifest (or a mapping of one), got str"]),
        (
            lambda r: r({**IN_PROCESS, "app_url": "https://probe.example.com/"}, handlers={"order.created": on_any}),
            ["the manifest of in-process app 'probe' is refused: $.app_url: an in-process app"],
        ),
        (
            lambda r: r(IN_PROCESS, handlers={"order.created": on_any}, routes={"../up": object()}),
            ["route '../up' must be a path such as '/things'"],
        ),
        (
            lambda r: r(IN_PROCESS, handlers={"order.created": on_any}, routes={"/x": None}),
            ["route '/x' needs a Falcon resource"],
        ),
        (
            lambda r: r(IN_PROCESS, handlers={"order.created": on_any}, routes=["/x"]),
            ["routes must map paths to Falcon resources, got list"],
        ),
    ],
)
def test_a_wrong_app_stops_the_kit_at_startup_saying_what_is_wrong(
    sqlite_url: str, settings_for: SettingsFor, register_app: Callable[[Any], None], words: list[str]
) -> None:
    plugin = registering(register_app)
    message = startup_error(sqlite_url, settings_for, plugin)
    assert "in-process app" in message or "czo_register_apps" in message
    for expected in words:
        assert expected in message, message


def test_two_plugins_registering_one_app_id_is_an_error_naming_both(sqlite_url: str, settings_for: SettingsFor) -> None:
    other = registering(lambda r: r(IN_PROCESS, handlers={"order.created": on_any}))
    message = startup_error(sqlite_url, settings_for, probe, other)
    assert "app id 'probe' is already registered by plugin" in message
    assert "inprocess_probe" in message  # the plugin that came first is named


def test_what_each_plugin_registered_is_recorded(sqlite_url: str, settings_for: SettingsFor) -> None:
    with Kit(settings_for(sqlite_url, queue_url=""), plugins=(probe,)) as kit:
        found = kit.apps.in_process.contributions()
        assert found["czo_app_loyalty"] == ["app loyalty"]
        [(name, labels)] = [(n, v) for n, v in found.items() if "inprocess_probe" in n]
        assert labels == ["app probe"]
        # Outside a hook: registered, but not credited to any plugin.
        kit.apps.in_process(dict(IN_PROCESS, id="by-hand"), handlers={"order.created": on_any})
        assert kit.apps.in_process.get("by-hand") is not None
        assert "app by-hand" not in [label for labels in kit.apps.in_process.contributions().values() for label in labels]
        # `czo-kit plugins` lists them, as the registry recorded them.
        [info] = [i for i in describe_plugins(kit) if i.name == name]
        assert info.registers["apps"] == ["app probe"]


# -- install --------------------------------------------------------------------------------


class NoNetwork:
    """Stands for kit.http: any outbound call fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"an in-process install touched the network (http.{name})")


def test_install_by_app_id_checks_permissions_and_issues_a_hashed_token_without_network(kit: Kit) -> None:
    kit.apps.http = NoNetwork()  # type: ignore[assignment]
    with pytest.raises(PermissionDeniedError) as denied:
        kit.apps.install(shop_id=1, installer_id="stranger", app_id="probe")
    assert "cannot manage apps" in str(denied.value)
    kit.permission_service.grant("reader", 1, "owner")
    result = kit.apps.install(shop_id=1, installer_id=OWNER, app_id="probe")
    assert result.app_id == "probe" and result.token.startswith("czo_app_")
    [token] = kit.apps.tokens(shop_id=1, app_id="probe")
    assert token.token_hash == hashlib.sha256(result.token.encode()).hexdigest()
    assert result.token not in str(raw_rows(kit, "czo_app_token"))
    principal = kit.apps.authenticate(result.token)
    assert (principal.app_id, principal.shop_id, principal.permissions) == ("probe", 1, frozenset({("order", "read")}))
    assert [row.app_id for row in kit.apps.list(1)] == ["probe"]
    [subscription] = kit.apps.subscriptions(1)
    assert subscription.target_url == "czo-app://probe/orders"
    kit.apps.uninstall(shop_id=1, app_id="probe")
    assert kit.apps.list(1) == [] and AppToken.select().count(kit.db) == 0


def test_the_installer_must_hold_what_the_app_asks_for(kit: Kit) -> None:
    kit.permission_service.grant("clerk", 1, "staff")  # order read/write, customer read, no apps:manage
    kit.permissions.role("app-admin", {"apps": ["manage"]})
    kit.permission_service.grant("admin", 1, "app-admin")
    with pytest.raises(PermissionDeniedError) as info:
        kit.apps.install(shop_id=1, installer_id="admin", app_id="probe")
    assert "missing: order:read" in str(info.value)


@pytest.mark.parametrize("app_id", ["nope", "", 7, "x" * 500])
def test_installing_an_unknown_app_id_lists_the_known_ones(kit: Kit, app_id: Any) -> None:
    with pytest.raises(ManifestError) as info:
        kit.apps.install(shop_id=1, installer_id=OWNER, app_id=app_id)
    assert info.value.path == "appId"
    assert "the in-process apps of this installation are: loyalty, probe" in str(info.value)
    assert len(str(info.value)) < 400


def test_install_takes_one_source(kit: Kit) -> None:
    with pytest.raises(ManifestError) as info:
        kit.apps.install(shop_id=1, installer_id=OWNER, app_id="probe", manifest_url="https://x.example.com/m")
    assert "give one of manifest_url, manifest (a remote app) or app_id (an in-process app)" in str(info.value)


# -- delivery -------------------------------------------------------------------------------


@BOTH_MODES
def test_the_handler_gets_the_payload_a_remote_app_gets(kit: Kit) -> None:
    with Receiver() as receiver:
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(
            receiver.url, permissions=[{"resource": "order", "actions": ["read"]}]))
        installed = kit.apps.install(shop_id=1, installer_id=OWNER, app_id="probe")
        with consuming(kit):
            ctx = kit.events.emit_async("order.created", ORDER, actor="user:9")
            wait_for(lambda: states(kit) == {"delivered": 2}, what="both deliveries")
        [post] = receiver.posts("/hook")
    [(payload, event, app)] = probe.CALLS
    assert payload == post.json()["data"]
    assert "customer_email" not in payload and payload["total"] == 1999  # filtered by permission
    assert (event.name, event.event_id, event.correlation_id) == ("order.created", ctx.event_id, ctx.correlation_id)
    assert event.timestamp == ctx.timestamp
    assert isinstance(app, InstalledApp)
    assert (app.app_id, app.shop_id, app.installation_id) == ("probe", 1, int(installed.installation.id))
    assert app.permissions == frozenset({("order", "read")}) and app.has("order", "read") and not app.has("order", "write")
    assert app.kit is kit and app.attempt == 1
    [delivery] = [d for d in kit.webhooks.deliveries() if d.target_url.startswith("czo-app:")]
    assert app.message_id == delivery.message_id
    assert [(r["message_id"], r["attempt"]) for r in raw_rows(kit, "probe_row")] == [(delivery.message_id, 1)]


@BOTH_MODES
def test_a_failed_attempt_rolls_the_handler_back_and_is_retried(kit: Kit) -> None:
    probe.BEHAVIOUR["fail"] = 1
    kit.apps.install(shop_id=1, installer_id=OWNER, app_id="probe")
    with consuming(kit):
        kit.events.emit_async("order.created", ORDER)
        wait_for(lambda: states(kit) == {"delivered": 1}, what="the retry to deliver")
    [delivery] = kit.webhooks.deliveries()
    assert delivery.attempts == 2
    first, second = kit.webhooks.attempts(delivery.id)
    assert first.error.startswith("ProbeFailure: the probe fails attempt 1 on purpose")
    assert "Traceback" in first.error_detail and "in on_order" in first.error_detail
    assert second.error is None and second.status is None
    # The write of the failed attempt went with it; the one of the good attempt stayed.
    assert [r["attempt"] for r in raw_rows(kit, "probe_row")] == [2]
    assert [c[2].attempt for c in probe.CALLS] == [1, 2]


def test_a_handler_that_keeps_failing_is_a_dead_letter_listed_and_replayed_by_the_cli(
    kit: Kit, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import SECRET

    monkeypatch.setenv("CZO_DATABASE_URL", db_url)
    monkeypatch.setenv("CZO_QUEUE_URL", f"sqlite:///{tmp_path / 'queue.sqlite3'}")
    monkeypatch.setenv("CZO_SECRET_KEY", SECRET)
    probe.BEHAVIOUR["fail"] = 99
    kit.apps.install(shop_id=1, installer_id=OWNER, app_id="probe")
    runner = CliRunner()
    with consuming(kit):
        kit.events.emit_async("order.created", ORDER)
        wait_for(lambda: states(kit) == {"dead": 1}, what="the dead letter")
        [delivery] = kit.webhooks.deliveries()
        assert (delivery.attempts, delivery.max_attempts) == (4, 4)  # the same schedule as a POST
        assert "Traceback" in delivery.last_error_detail and "ProbeFailure" in delivery.last_error_detail
        dead = runner.invoke(cli, ["webhooks", "dead"], catch_exceptions=False).output
        assert f"{delivery.id}  dead" in dead and "czo-app://probe/orders" in dead
        assert "ProbeFailure: the probe fails attempt 4 on purpose" in dead
        detail = runner.invoke(cli, ["webhooks", "dead", str(delivery.id)], catch_exceptions=False).output
        assert "in on_order" in detail
        probe.BEHAVIOUR["fail"] = 0  # the app is fixed
        replay = runner.invoke(cli, ["webhooks", "redeliver", str(delivery.id)], catch_exceptions=False)
        assert replay.output == f"queued again: {delivery.id}\n"
        wait_for(lambda: states(kit) == {"delivered": 1}, what="the replay")
    assert [r["attempt"] for r in raw_rows(kit, "probe_row")] == [1]  # a fresh set of attempts


@BOTH_MODES
def test_uninstall_stops_the_deliveries(kit: Kit) -> None:
    kit.apps.install(shop_id=1, installer_id=OWNER, app_id="probe")
    kit.apps.install(shop_id=2, installer_id=OWNER, app_id="probe")
    kit.apps.uninstall(shop_id=1, app_id="probe")
    with consuming(kit):
        kit.events.emit_async("order.created", ORDER)
        kit.events.emit_async("order.created", dict(ORDER, shop_id=2, id=8))
        wait_for(lambda: states(kit) == {"delivered": 1}, what="shop 2's delivery")
    assert [(c[2].shop_id, c[0]["id"]) for c in probe.CALLS] == [(2, 8)]


@pytest.mark.postgres
def test_an_uninstall_during_the_handler_rolls_its_writes_back(
    pg_url: str, settings_for: SettingsFor, tmp_path: Path
) -> None:
    # PostgreSQL only: there the uninstall commits while the handler's transaction is open
    # (SQLite would queue it behind the handler's write lock).
    import threading

    with probe_kit(app_settings(settings_for, pg_url, str(tmp_path))) as kit:
        kit.apps.install(shop_id=1, installer_id=OWNER, app_id="probe")
        probe.PAUSE.update(entered=threading.Event(), resume=threading.Event())
        outcomes: list[str] = []
        real = kit.webhooks.deliver
        kit.webhooks.deliver = lambda delivery_id: outcomes.append(real(delivery_id)) or outcomes[-1]  # type: ignore[method-assign]
        with consuming(kit):
            kit.events.emit_async("order.created", ORDER)
            assert probe.PAUSE["entered"].wait(30), "the handler never ran"
            kit.apps.uninstall(shop_id=1, app_id="probe")
            probe.PAUSE["resume"].set()
            wait_for(lambda: outcomes == ["skipped"], what="the attempt to end")
        assert raw_rows(kit, "probe_row") == []
        assert kit.webhooks.deliveries() == [] and raw_rows(kit, "czo_webhook_attempt") == []


def test_a_worker_without_the_app_fails_the_attempt_saying_so(kit: Kit) -> None:
    kit.apps.install(shop_id=1, installer_id=OWNER, app_id="probe")
    kit.apps.in_process.apps.pop("probe")  # as in a worker where its package is missing
    with consuming(kit):
        kit.events.emit_async("order.created", ORDER)
        wait_for(lambda: states(kit) == {"dead": 1}, what="the dead letter")
    [delivery] = kit.webhooks.deliveries()
    assert "in-process app 'probe' is not registered in this process" in delivery.last_error


# -- routes ---------------------------------------------------------------------------------


def test_routes_answer_the_apps_own_token_only(kit: Kit) -> None:
    client = falcon.testing.TestClient(create_api(kit))
    installed = kit.apps.install(shop_id=2, installer_id=OWNER, app_id="probe")
    loyalty = kit.apps.install(shop_id=2, installer_id=OWNER, app_id="loyalty")

    def get(token: str | None) -> falcon.testing.Result:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return client.simulate_get("/apps/probe/whoami", headers=headers)

    assert get(installed.token).json == {"appId": "probe", "shopId": 2}
    missing = get(None)
    assert missing.status_code == 401 and "take that app's token" in missing.text
    other = get(loyalty.token)
    assert other.status_code == 403 and "app loyalty cannot call the routes of app probe" in other.text
    kit.apps.uninstall(shop_id=2, app_id="probe")
    assert get(installed.token).status_code == 401
    assert client.simulate_get("/apps/probe/elsewhere", headers={"Authorization": f"Bearer {loyalty.token}"}).status_code == 404


def test_a_route_falcon_refuses_stops_the_api_naming_the_app(sqlite_url: str, settings_for: SettingsFor) -> None:
    class Resource:
        def on_get(self, req: Any, resp: Any) -> None:
            pass

    plugin = registering(lambda r: r(dict(IN_PROCESS, id="twice"), handlers={"order.created": on_any},
                                     routes={"/{a}/{a}": Resource()}))
    with Kit(settings_for(sqlite_url, queue_url=""), plugins=(plugin,)) as kit:
        with pytest.raises(PluginError) as info:
            create_api(kit)
    assert "in-process app 'twice': route '/apps/twice/{a}/{a}' is refused" in str(info.value)


# -- a real worker killed mid-delivery --------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os
    import threading

    import inprocess_probe
    from czo_kit import Kit, Settings
    from czo_kit.events.queue import Sweeper

    kit = Kit(Settings.from_env(), plugins=[inprocess_probe])
    if kit.queue is None:  # CZO_QUEUE_URL="": this process's in-process deliverer does the work
        kit.deliverer.start()
        if os.environ.get("PROBE_EMIT"):
            kit.events.emit_async("order.created", {"shop_id": 1, "id": 7, "total": 1999})
        threading.Event().wait()
    sweeper = Sweeper(kit.outbox, 0.5, kit.webhooks)
    consumer = kit.queue.create_consumer(workers=2)
    sweeper.start()
    consumer.run()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "servers",
    ["sqlite", "sqlite, no queue", pytest.param("postgresql+redis", marks=[pytest.mark.postgres, pytest.mark.redis])],
)
def test_a_delivery_whose_worker_is_killed_is_redelivered_not_lost(
    servers: str, settings_for: SettingsFor, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from conftest import SECRET

    if servers.startswith("sqlite"):
        db_url = str(request.getfixturevalue("sqlite_url"))
        queue_url = "" if "no queue" in servers else f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    else:
        db_url, queue_url = str(request.getfixturevalue("pg_url")), str(request.getfixturevalue("redis_url"))
    queue_name = f"czo_inprocess_kill_{uuid.uuid4().hex[:8]}"
    marker = tmp_path / "blocked"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CZO_")},
        "CZO_DATABASE_URL": db_url, "CZO_QUEUE_URL": queue_url, "CZO_QUEUE_NAME": queue_name,
        "CZO_SECRET_KEY": SECRET, "CZO_WEBHOOKS_LEASE": "2", "CZO_LOG_LEVEL": "WARNING",
        "CZO_EVENTS_SWEEP_INTERVAL": "0.5",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
        "PROBE_BLOCK_MARKER": str(marker),
    }
    settings = app_settings(settings_for, db_url, str(tmp_path), queue_url=queue_url, queue_name=queue_name,
                            webhooks_lease=2.0)
    with probe_kit(settings) as kit, worker_processes(kit, script, env, tmp_path) as start_worker:
        kit.apps.install(shop_id=1, installer_id=OWNER, app_id="probe")
        if kit.queue is None:
            # Without a queue the process that emits delivers: the first worker does both.
            first = start_worker("first", PROBE_EMIT="1")
        else:
            kit.events.emit_async("order.created", ORDER)
            kit.webhooks.flush()
            first = start_worker("first")
        wait_for(marker.exists, timeout=60, what="the handler to start in the first worker")
        assert states(kit) == {"running": 1}
        kill_9(first)
        second = start_worker("second")
        wait_for(lambda: states(kit) == {"delivered": 1}, timeout=60, what="the redelivery")
        [delivery] = kit.webhooks.deliveries()
        rows = raw_rows(kit, "probe_row")
    # The killed attempt wrote nothing (its transaction died with it); the second one did.
    assert delivery.attempts == 2
    assert [(r["attempt"], r["pid"]) for r in rows] == [(2, second.pid)]


# -- installing through the API and the command line -------------------------------------------


def test_the_api_installs_an_in_process_app_by_app_id(kit: Kit) -> None:
    from czo_kit.http import issue_user_token

    client = falcon.testing.TestClient(create_api(kit))
    headers = {"Authorization": f"Bearer {issue_user_token(kit.secret_key, OWNER)}"}
    created = client.simulate_post("/api/apps/install", json={"appId": "probe", "shopId": 1}, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json["app"]["appId"] == "probe"
    assert [row.app_id for row in kit.apps.list(1)] == ["probe"]
    for body, field in (
        ({"appId": "probe", "manifestUrl": "https://x.example.com/m", "shopId": 1}, "$.appId"),
        ({"appId": "Not An Id", "shopId": 1}, "$.appId"),
        ({"shopId": 1}, "$.manifestUrl"),
    ):
        refused = client.simulate_post("/api/apps/install", json=body, headers=headers)
        assert (refused.status_code, refused.json["field"]) == (400, field), refused.text
    unknown = client.simulate_post("/api/apps/install", json={"appId": "nope", "shopId": 1}, headers=headers)
    assert unknown.status_code == 400 and "loyalty, probe" in unknown.json["message"]


def test_the_cli_installs_an_in_process_app_by_app_id(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kit: Kit
) -> None:
    from conftest import SECRET

    monkeypatch.setenv("CZO_DATABASE_URL", db_url)
    monkeypatch.setenv("CZO_QUEUE_URL", "")
    monkeypatch.setenv("CZO_SECRET_KEY", SECRET)
    result = CliRunner().invoke(cli, ["apps", "install", "loyalty", "--shop", "2", "--user", OWNER])
    assert result.exit_code == 0, result.output
    assert "installed loyalty in shop 2" in result.output and "czo_app_" in result.output
    assert [row.app_id for row in kit.apps.list(2)] == ["loyalty"]
    wrong = CliRunner().invoke(cli, ["apps", "install", "nope", "--shop", "2", "--user", OWNER])
    assert wrong.exit_code == 1 and "the in-process apps of this installation are: loyalty" in wrong.output
