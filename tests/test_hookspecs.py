"""One ``test_hook_<name>`` per hookspec: a small plugin implements it and the effect is checked.

``tests/test_docs.py`` fails when a hookspec has no test here (or anywhere under tests/).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import peewee
import pytest
import svcs
from click.testing import CliRunner

from czo_kit import Kit, hookimpl
from czo_kit import cli as cli_module
from czo_kit import plugins as plugins_module
from czo_kit.db import Model
from czo_kit.default_plugins.sqlite import SqliteDatabase
from czo_kit.hooks import HookRegistry
from czo_kit.plugins import create_plugin_manager, load_plugins
from czo_kit.services import ServiceRegistry
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until

SettingsFor = Callable[..., Settings]


def test_hook_czo_register_database_backends(tmp_path: Path, settings_for: SettingsFor) -> None:
    opened: list[tuple[str, Settings]] = []

    class MemoryBackend:
        @hookimpl
        def czo_register_database_backends(self, register: Any) -> None:
            register("memsqlite", self.create)

        def create(self, url: str, *, settings: Settings) -> peewee.Database:
            opened.append((url, settings))
            return SqliteDatabase(":memory:")

    settings = settings_for("memsqlite://anything")
    with Kit(settings, plugins=[MemoryBackend()]) as kit:
        assert opened == [("memsqlite://anything", settings)]
        assert "memsqlite" in kit.database_backends
        assert kit.db.database == ":memory:"
        assert kit.db.execute_sql("SELECT 40 + 2").fetchone() == (42,)


def test_hook_czo_register_cache_drivers(sqlite_url: str, settings_for: SettingsFor) -> None:
    from czo_kit.cache import CacheManager
    from czo_kit.default_plugins.memory_cache import MemoryDriver

    made: list[str] = []

    class TinyCache:
        @hookimpl
        def czo_register_cache_drivers(self, register: Any) -> None:
            register("tiny", self.create)

        def create(self, url: str, *, settings: Settings) -> MemoryDriver:
            made.append(url)
            return MemoryDriver(max_entries=3)

    with Kit(settings_for(sqlite_url, cache_url="tiny://x"), plugins=[TinyCache()]) as kit:
        assert made == ["tiny://x"]
        assert isinstance(kit.cache, CacheManager) and isinstance(kit.cache.driver, MemoryDriver)
        kit.cache.set("k", "v")
        assert kit.cache.get("k") == "v"
        assert kit.services.get(CacheManager) is kit.cache


def test_hook_czo_register_queue_backends(tmp_path: Path, sqlite_url: str, settings_for: SettingsFor) -> None:
    from huey import MemoryHuey

    from czo_kit.events.queue import MsgspecSerializer

    made: list[tuple[str, str]] = []

    class MemoryQueue:
        @hookimpl
        def czo_register_queue_backends(self, register: Any) -> None:
            register("memq", self.create)

        def create(self, url: str, *, settings: Settings, name: str) -> MemoryHuey:
            made.append((url, name))
            return MemoryHuey(name, results=False, serializer=MsgspecSerializer())

    with Kit(settings_for(sqlite_url, queue_url="memq://", queue_name="q1"), plugins=[MemoryQueue()]) as kit:
        assert made == [("memq://", "q1")]
        assert isinstance(kit.queue, MemoryHuey) and kit.outbox is not None
        received: list[int] = []
        kit.events.on("widget.made", lambda payload, ctx: received.append(payload["n"]), id="t.widget")
        kit.events.emit_async("widget.made", {"n": 7})
        # The relay thread hands the dispatch task to the plugin's queue, where it waits.
        assert wait_until(lambda: len(kit.queue) == 1, timeout=10)
        assert received == []


def test_hook_czo_register_events(sqlite_url: str, settings_for: SettingsFor) -> None:
    from czo_kit.events import EventContext, EventEmitter

    seen: list[tuple[str, Any]] = []

    class Listener:
        @hookimpl
        def czo_register_events(self, events: EventEmitter, kit: Kit) -> None:
            def handler(payload: Any, ctx: EventContext) -> None:
                seen.append((ctx.name, kit.services.get(Kit) is kit))

            events.on("gadget.shipped", handler, id="listener.gadget")

    with Kit(settings_for(sqlite_url, queue_url=""), plugins=[Listener()]) as kit:
        assert [s.id for s in kit.events.subscribers("gadget.shipped")] == ["gadget.shipped|listener.gadget"]
        kit.events.emit("gadget.shipped", {"id": 1})
        assert seen == [("gadget.shipped", True)]


def test_hook_czo_register_permissions(sqlite_url: str, settings_for: SettingsFor) -> None:
    from czo_kit.apps.permissions import PermissionRegistry

    class Shipping:
        @hookimpl
        def czo_register_permissions(self, register: PermissionRegistry) -> None:
            register.resource("shipment", ["read", "write"])
            register.role("courier", {"shipment": ["read"]})
            register.resource("customer", ["read"])
            register.event("shipment.sent", resource="shipment",
                           fields={"id": None, "address": ("customer", "read")})

    class FixedPermissions:
        def permissions(self, user_id: str, shop_id: int) -> frozenset[tuple[str, str]]:
            return frozenset({("shipment", "read")}) if user_id == "ann" else frozenset()

    class AuthModule:
        @hookimpl
        def czo_register_permissions(self, register: PermissionRegistry) -> None:
            register.service(lambda kit: FixedPermissions(), priority=10)

    with Kit(settings_for(sqlite_url, queue_url=""), plugins=[Shipping()]) as kit:
        assert kit.permissions.resources["shipment"] == frozenset({"read", "write"})
        assert kit.permissions.rule_for("shipment.sent").fields == {"id": None, "address": ("customer", "read")}
        sent = {"id": 4, "address": "1 Rue X", "secret": "s"}
        assert kit.permissions.payload_for("shipment.sent", sent, {("shipment", "read")}) == {"id": 4}
        assert kit.permissions.payload_for("shipment.sent", sent, {("shipment", "read"), ("customer", "read")}) == {
            "id": 4, "address": "1 Rue X"}
        kit.permission_service.grant("bob", 3, "courier")  # the built-in service, shop_members
        assert kit.permission_service.permissions("bob", 3) == frozenset({("shipment", "read")})
        assert kit.permission_service.permissions("bob", 4) == frozenset()
    with Kit(settings_for(sqlite_url, queue_url=""), plugins=[Shipping(), AuthModule()]) as kit:
        assert isinstance(kit.permission_service, FixedPermissions)  # the higher priority wins
        assert kit.permission_service.permissions("ann", 1) == frozenset({("shipment", "read")})


def test_hook_czo_register_authenticators(sqlite_url: str, settings_for: SettingsFor) -> None:
    from falcon import testing

    from czo_kit.http import UserIdentity, create_api

    class Sessions:
        @hookimpl
        def czo_register_authenticators(self, register: Any) -> None:
            register(lambda token, kit: UserIdentity("ann") if token == "session-123" else None, priority=5)

    with Kit(settings_for(sqlite_url, queue_url=""), plugins=[Sessions()]) as kit:
        kit.permission_service.grant("ann", 1, "viewer")
        client = testing.TestClient(create_api(kit))
        ok = client.simulate_get("/api/apps", params={"shopId": "1"}, headers={"Authorization": "Bearer session-123"})
        assert ok.status_code == 200 and ok.json == {"apps": []}
        bad = client.simulate_get("/api/apps", params={"shopId": "1"}, headers={"Authorization": "Bearer nope"})
        assert bad.status_code == 401


def test_hook_czo_register_http_routes(sqlite_url: str, settings_for: SettingsFor) -> None:
    from falcon import testing

    from czo_kit.http import create_api

    class Ping:
        def on_get(self, req: Any, resp: Any, shop_id: int) -> None:
            resp.media = {"shop": shop_id}

    class Routes:
        @hookimpl
        def czo_register_http_routes(self, api: Any, kit: Kit) -> None:
            api.add_route("/api/shops/{shop_id:shop}/ping", Ping())

    with Kit(settings_for(sqlite_url, queue_url=""), plugins=[Routes()]) as kit:
        client = testing.TestClient(create_api(kit))
        assert client.simulate_get("/api/shops/7/ping").json == {"shop": 7}
        assert client.simulate_get("/api/shops/x7/ping").json["field"] == "shop_id"  # a 400 naming it


def test_hook_czo_register_dashboard(sqlite_url: str, settings_for: SettingsFor) -> None:
    from falcon import testing

    from czo_kit.apps.extensions import ExtensionContext, Page
    from czo_kit.http import create_api
    from czo_kit.http.sessions import issue_session

    def kettle_page(kit: Kit, shop_id: int, kettle_id: int | None) -> Page | None:
        if kettle_id is None:
            return Page(links=[("Kettle 5", f"/dashboard/shops/{shop_id}/kettles/5")])
        if kettle_id != 5:
            return None
        return Page(title="Kettle <b>", summary={"Price": "<script>x</script>"}, mount="KETTLE_DETAILS")

    def kettle_context(kit: Kit, shop_id: int, kettle_id: int | None) -> ExtensionContext | None:
        return ExtensionContext(data={"kettle": {"id": kettle_id}})

    class Kettles:
        @hookimpl
        def czo_register_permissions(self, register: Any) -> None:
            register.resource("kettle", ["read"])

        @hookimpl
        def czo_register_dashboard(self, register: Any, kit: Kit) -> None:
            register.mount("KETTLE_DETAILS", resource="kettle", context=kettle_context)
            register.page("kettles", title="Kettles", resource="kettle", render=kettle_page)

    settings = settings_for(sqlite_url, queue_url="", plugins=(), disable_plugins=("events",))
    with Kit(settings, plugins=[Kettles()]) as kit:
        assert kit.dashboard.mount_names() == ("NAVIGATION", "KETTLE_DETAILS")
        kit.permission_service.grant("ann", 1, "viewer")
        client = testing.TestClient(create_api(kit))
        cookie = {"Cookie": f"czo_session={issue_session(kit.secret_key, 'ann', lifetime=600)}"}
        home = client.simulate_get("/dashboard/shops/1", headers=cookie)
        assert '<a href="/dashboard/shops/1/kettles">Kettles</a>' in home.text
        listing = client.simulate_get("/dashboard/shops/1/kettles", headers=cookie)
        assert listing.status_code == 200 and "<title>Kettles - c-zo</title>" in listing.text
        page = client.simulate_get("/dashboard/shops/1/kettles/5", headers=cookie)
        assert page.status_code == 200
        assert "<title>Kettle &lt;b&gt; - c-zo</title>" in page.text
        assert "&lt;script&gt;x&lt;/script&gt;" in page.text and "<script>x" not in page.text
        assert client.simulate_get("/dashboard/shops/1/kettles/6", headers=cookie).status_code == 404


class Gadget(Model):
    label = peewee.CharField(max_length=30)

    class Meta:
        table_name = "czo_hookspec_gadget"


def test_hook_czo_register_models(sqlite_url: str, settings_for: SettingsFor) -> None:
    class Gadgets:
        __name__ = "czo_test_gadgets"

        @hookimpl
        def czo_register_models(self, register: Any) -> None:
            register(Gadget)
            register(Gadget)  # a repeat is ignored

    with Kit(settings_for(sqlite_url), plugins=[Gadgets()]) as kit:
        assert kit.models["czo_test_gadgets"] == [Gadget]
        assert Gadget in kit.all_models()
        assert Gadget._meta.database is kit.db  # bound to the kit's database
        report = kit.create_tables()
        assert report["czo_test_gadgets"] == ["created table czo_hookspec_gadget"]
        assert Gadget.create(label="ok").id == 1


def test_hook_czo_register_models_rejects_non_models(
    sqlite_url: str, settings_for: SettingsFor
) -> None:
    from czo_kit.errors import PluginError

    class Wrong:
        @hookimpl
        def czo_register_models(self, register: Any) -> None:
            register(dict)

    with pytest.raises(PluginError, match="which is not a peewee Model"):
        Kit(settings_for(sqlite_url), plugins=[Wrong()])


def test_hook_czo_register_migrations(
    tmp_path: Path, sqlite_url: str, settings_for: SettingsFor
) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_note_table.py").write_text(
        "def up(migrator, db):\n"
        "    db.execute_sql('CREATE TABLE \"czo_hookspec_note\" (\"body\" TEXT)')\n"
    )

    class Notes:
        __name__ = "czo_test_notes"

        @hookimpl
        def czo_register_migrations(self, register: Any) -> None:
            register(str(directory))

    with Kit(settings_for(sqlite_url), plugins=[Notes()]) as kit:
        assert kit.migrations.modules["czo_test_notes"].directory == str(directory)
        assert kit.migrations.pending()["czo_test_notes"] == ["0001_note_table"]
        assert kit.migrations.up("czo_test_notes") == {"czo_test_notes": ["0001_note_table"]}
        assert "czo_hookspec_note" in kit.db.get_tables()
        assert "czo_migrations_czo_test_notes" in kit.db.get_tables()


def test_hook_czo_register_hooks(sqlite_url: str, settings_for: SettingsFor) -> None:
    class Audit:
        @hookimpl
        def czo_register_hooks(self, hooks: HookRegistry) -> None:
            hooks.before("order.create", lambda ctx: {**ctx, "audited": True})
            hooks.after("order.create", lambda result, ctx: f"{result} (audited={ctx['audited']})")

    with Kit(settings_for(sqlite_url), plugins=[Audit()]) as kit:
        assert kit.hooks.has("order.create")
        result = kit.hooks.run("order.create", {"id": 7}, lambda ctx: f"order {ctx['id']}")
        assert result == "order 7 (audited=True)"


def test_hook_czo_register_services(sqlite_url: str, settings_for: SettingsFor) -> None:
    class Clock:
        def now(self) -> str:
            return "12:00"

    class Greeter:
        def __init__(self, kit: Kit) -> None:
            self.kit = kit

    class Services:
        @hookimpl
        def czo_register_services(self, registry: ServiceRegistry) -> None:
            registry.register_value(Clock, Clock())
            # A factory may take the container and look up the kit (or anything else).
            def make_greeter(container: svcs.Container) -> Greeter:
                return Greeter(container.get(Kit))

            registry.register_factory(Greeter, make_greeter)

    with Kit(settings_for(sqlite_url), plugins=[Services()]) as kit:
        assert kit.services.get(Clock).now() == "12:00"
        greeter = kit.services.get(Greeter)
        assert greeter.kit is kit
        assert kit.services.get(Greeter) is greeter  # made once


class HelloCommands:
    @hookimpl
    def czo_register_commands(self, cli: click.Group) -> None:
        @cli.command("hello")
        @click.argument("name")
        def hello(name: str) -> None:
            """Greet NAME."""
            click.echo(f"hello {name}")


def test_hook_czo_register_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    # On a fresh manager and a fresh group: nothing global is touched.
    manager = load_plugins(create_plugin_manager(), extra=[HelloCommands()])
    group = click.Group("czo-kit")
    manager.hook.czo_register_commands(cli=group)
    assert "hello" in group.commands
    result = CliRunner().invoke(group, ["hello", "world"])
    assert result.exit_code == 0, result.output
    assert result.output == "hello world\n"

    # And through build_cli(), the path the console script takes, with the process-wide
    # manager swapped for a fresh one for the duration of the test.
    original = cli_module.cli
    global_pm = create_plugin_manager()
    hello_plugin = HelloCommands()
    global_pm.register(hello_plugin)
    monkeypatch.setattr(plugins_module, "pm", global_pm)
    monkeypatch.setattr(plugins_module, "_global_loaded", False)
    built = cli_module.build_cli()
    assert built is not original  # a new group each time: the module's own stays the kit's
    assert {"hello", "db", "plugins"} <= set(built.commands)
    assert "hello" not in original.commands
    # The group records who added each command: what `czo-kit plugins` reports.
    assert built.contributions()[global_pm.get_name(hello_plugin)] == ["hello"]  # type: ignore[attr-defined]
    result = CliRunner().invoke(built, ["hello", "there"], prog_name="czo-kit")
    assert result.output == "hello there\n"


class Lifecycle:
    def __init__(self) -> None:
        self.events: list[str] = []

    @hookimpl
    def czo_startup(self, kit: Kit) -> None:
        # Called once the kit is wired: database bound, services registered.
        assert kit.services.get(Kit) is kit
        assert not hasattr(self, "kit")
        self.kit = kit
        self.events.append("startup")

    @hookimpl
    def czo_shutdown(self, kit: Kit) -> None:
        assert kit is self.kit
        # Called before connections are released: the database still answers.
        answer = kit.db.execute_sql("SELECT 1").fetchone()
        self.events.append(f"shutdown db={answer[0]}")


def test_hook_czo_startup(sqlite_url: str, settings_for: SettingsFor) -> None:
    plugin = Lifecycle()
    kit = Kit(settings_for(sqlite_url), plugins=[plugin])
    try:
        assert plugin.events == ["startup"]
        assert plugin.kit is kit
    finally:
        kit.close()


def test_hook_czo_shutdown(sqlite_url: str, settings_for: SettingsFor) -> None:
    plugin = Lifecycle()
    with Kit(settings_for(sqlite_url), plugins=[plugin]) as kit:
        assert plugin.events == ["startup"]
    assert plugin.events == ["startup", "shutdown db=1"]
    kit.close()
    assert plugin.events == ["startup", "shutdown db=1"]  # once only
    assert kit.db.is_closed()


def test_hook_czo_register_apps(sqlite_url: str, settings_for: SettingsFor) -> None:
    from czo_kit.apps import AppManifest, PermissionSpec, WebhookSpec

    heard: list[tuple[dict[str, Any], str, int]] = []

    class Notes:
        @hookimpl
        def czo_register_permissions(self, register: Any) -> None:
            register.resource("note", ["read"])
            register.event("note.created", resource="note", fields={"shop_id": None, "id": None})

        @hookimpl
        def czo_register_apps(self, register: Any) -> None:
            manifest = AppManifest(
                id="notes-app", name="Notes", version="1",
                permissions=[PermissionSpec("note", ["read"])],
                webhooks=[WebhookSpec(name="notes", events=["note.created"])],
            )
            register(manifest, handlers={"note.created": lambda payload, ctx, app: heard.append(
                (dict(payload), ctx.name, app.shop_id))})

    with Kit(settings_for(sqlite_url, queue_url=""), plugins=[Notes()]) as kit:
        kit.create_tables()
        kit.permission_service.grant("owner-1", 3, "owner")
        kit.apps.install(shop_id=3, installer_id="owner-1", app_id="notes-app")
        assert kit.deliverer is not None
        kit.deliverer.start()
        kit.events.emit_async("note.created", {"shop_id": 3, "id": 1})
        assert wait_until(lambda: heard != [], timeout=15)
    assert heard == [({"shop_id": 3, "id": 1}, "note.created", 3)]


# -- the outside module keeps up with the hookspecs ---------------------------------------------

BACKEND_HOOKS = {"czo_register_database_backends", "czo_register_cache_drivers", "czo_register_queue_backends"}
"""Exercised by the outside backend plugin, tests/plugins/czo-test-cache, and the contract suites."""


def test_the_outside_reviews_module_implements_every_module_hook(sqlite_url: str, settings_for: SettingsFor) -> None:
    """``czo-test-reviews`` (tests/plugins/) is the proof that a module outside the kit can use
    every hook: a hookspec added to the kit fails here until it uses that one too (and
    tests/test_reviews_module.py drives it)."""
    import inspect
    from importlib import metadata

    from czo_kit import hookspecs

    marker = hookspecs.PROJECT_NAME + "_spec"
    specs = {name for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, marker)}
    assert {"czo_startup", "czo_register_settings"} <= specs and BACKEND_HOOKS <= specs
    (entry,) = [ep for ep in metadata.entry_points(group="czo_kit") if ep.name == "czo_test_reviews"]
    with Kit(settings_for(sqlite_url, queue_url="", plugins=("czo_test_reviews",))) as kit:
        plugin = kit.plugins.get_plugin("czo_test_reviews")
        assert plugin is entry.load()  # found by its entry point, nothing registered by hand
        implemented = {impl_caller.name for impl_caller in kit.plugins.get_hookcallers(plugin) or ()}
    assert sorted(specs - BACKEND_HOOKS - implemented) == []
