"""The plugin host: built-ins, entry-point discovery, allow / block lists, validation."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Annotated, Any

import click
import peewee
import pluggy
import pytest

from czo_kit import Kit, hookimpl
from czo_kit import plugins as plugins_module
from czo_kit.default_plugins.sqlite import SqliteDatabase, create_sqlite_database
from czo_kit.errors import ConfigurationError, PluginError
from czo_kit.plugins import (
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    create_plugin_manager,
    describe_plugins,
    load_plugins,
)
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]


@pytest.fixture
def fresh_global_pm(monkeypatch: pytest.MonkeyPatch) -> Iterator[pluggy.PluginManager]:
    """Stand a new, unloaded manager in for the process-wide ``pm`` during one test."""
    manager = create_plugin_manager()
    monkeypatch.setattr(plugins_module, "pm", manager)
    monkeypatch.setattr(plugins_module, "_global_loaded", False)
    monkeypatch.delenv("CZO_PLUGINS", raising=False)
    monkeypatch.delenv("CZO_DISABLE_PLUGINS", raising=False)
    yield manager


def names(manager: pluggy.PluginManager) -> set[str]:
    return {name for name, plugin in manager.list_name_plugin() if plugin is not None}


# -- built-ins and discovery ------------------------------------------------------------------


def test_builtin_plugins_load() -> None:
    manager = load_plugins(create_plugin_manager(), allow=())
    assert names(manager) == set(DEFAULT_PLUGINS)
    for module_name in DEFAULT_PLUGINS:
        assert manager.get_plugin(module_name).__name__ == module_name


def test_example_plugin_is_installed_as_an_entry_point() -> None:
    found = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert "czo_product" in found
    ep = found["czo_product"]
    assert ep.value == "czo_product.plugin"
    assert ep.dist is not None
    assert ep.dist.name == "czo-product"


def test_kit_discovers_installed_plugin_without_registration(
    sqlite_url: str, settings_for: SettingsFor
) -> None:
    from czo_product.models import Product

    with Kit(settings_for(sqlite_url)) as kit:
        assert kit.plugins.has_plugin("czo_product")
        assert "czo_product" in names(kit.plugins)
        assert kit.models["czo_product"] == [Product]


def test_each_manager_is_independent() -> None:
    first = load_plugins(create_plugin_manager())
    second = load_plugins(create_plugin_manager())
    assert first is not second
    assert names(first) == names(second)
    assert first.get_plugin("czo_product") is second.get_plugin("czo_product")  # same module


def test_loading_twice_into_one_manager_is_harmless() -> None:
    manager = load_plugins(create_plugin_manager())
    before = names(manager)
    assert load_plugins(manager) is manager
    assert names(manager) == before


# -- allow-list and block-list ---------------------------------------------------------------------


def test_allow_list_limits_installed_plugins(sqlite_url: str, settings_for: SettingsFor) -> None:
    with Kit(settings_for(sqlite_url, plugins=())) as kit:
        assert not kit.plugins.has_plugin("czo_product")
        assert "czo_product" not in kit.models
        assert set(kit.models) <= set(DEFAULT_PLUGINS)  # only built-ins register models
        # Built-ins are not subject to the allow-list.
        assert set(DEFAULT_PLUGINS) <= names(kit.plugins)
    with Kit(settings_for(sqlite_url, plugins=("czo_product",))) as kit:
        assert kit.plugins.has_plugin("czo_product")


def test_block_list_skips_installed_plugin(sqlite_url: str, settings_for: SettingsFor) -> None:
    with Kit(settings_for(sqlite_url, disable_plugins=("czo_product",))) as kit:
        assert not kit.plugins.has_plugin("czo_product")
        assert "czo_product" not in kit.models


def test_block_list_wins_over_allow_list() -> None:
    manager = load_plugins(create_plugin_manager(), allow=("czo_product",), block=("czo_product",))
    assert not manager.has_plugin("czo_product")


@pytest.mark.parametrize("blocked", ["sqlite", "czo_kit.default_plugins.sqlite"])
def test_blocking_a_builtin_removes_its_scheme(
    blocked: str, sqlite_url: str, settings_for: SettingsFor
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Kit(settings_for(sqlite_url, disable_plugins=(blocked,)))
    message = str(caught.value)
    assert caught.value.variable == "CZO_DATABASE_URL"
    assert "no database backend for scheme 'sqlite'" in message
    assert "allowed: postgres, postgresql" in message


def test_blocking_every_backend_says_so(sqlite_url: str, settings_for: SettingsFor) -> None:
    with pytest.raises(ConfigurationError, match="allowed: none"):
        Kit(settings_for(sqlite_url, disable_plugins=("sqlite", "postgres")))


def test_unknown_names_in_lists_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="czo_kit.plugins"):
        load_plugins(create_plugin_manager(), allow=("czo_prodcut",), block=("sqlit",))
    text = caplog.text
    assert "CZO_PLUGINS names 'czo_prodcut', but no plugin of that name is installed" in text
    assert "CZO_DISABLE_PLUGINS names 'sqlit'" in text
    assert "czo_product" in text  # the message lists what is installed
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="czo_kit.plugins"):
        load_plugins(create_plugin_manager(), allow=("czo_prodcut",), block=("sqlit",))
    assert caplog.records == []  # once per process: the CLI loads plugins twice per command


# -- the process-wide manager ----------------------------------------------------------------------


def test_global_load_is_idempotent(fresh_global_pm: pluggy.PluginManager) -> None:
    first = load_plugins()
    loaded = names(first)
    second = load_plugins()
    assert first is second is fresh_global_pm is plugins_module.pm
    assert names(second) == loaded
    assert {"czo_product", *DEFAULT_PLUGINS} <= loaded
    # Each plugin registered once: the hook has one implementation per plugin.
    impls = first.hook.czo_register_database_backends.get_hookimpls()
    assert len(impls) == len({impl.plugin_name for impl in impls}) == 2


def test_global_load_reads_environment(
    fresh_global_pm: pluggy.PluginManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CZO_PLUGINS", "")
    monkeypatch.setenv("CZO_DISABLE_PLUGINS", "postgres")
    manager = load_plugins()
    assert names(manager) == set(DEFAULT_PLUGINS) - {"czo_kit.default_plugins.postgres"}


def test_global_load_is_thread_safe(fresh_global_pm: pluggy.PluginManager) -> None:
    results: list[pluggy.PluginManager] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def load() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(load_plugins())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert len(results) == 8
    assert all(result is fresh_global_pm for result in results)
    impls = fresh_global_pm.hook.czo_register_models.get_hookimpls()
    assert len(impls) == len({impl.plugin_name for impl in impls})  # each plugin once


# -- validation --------------------------------------------------------------------------------------


class Misspelled:
    @hookimpl
    def czo_register_modles(self, register: Any) -> None:  # sic: no such hookspec
        raise AssertionError("never called")


def test_check_pending_rejects_misspelled_hookimpl() -> None:
    with pytest.raises(PluginError) as caught:
        load_plugins(create_plugin_manager(), extra=[Misspelled()])
    message = str(caught.value)
    assert "czo_register_modles" in message
    assert "check the spelling" in message
    assert isinstance(caught.value.__cause__, pluggy.PluginValidationError)


def test_kit_rejects_misspelled_hookimpl(sqlite_url: str, settings_for: SettingsFor) -> None:
    with pytest.raises(PluginError, match="czo_register_modles"):
        Kit(settings_for(sqlite_url), plugins=[Misspelled()])


def test_wrong_argument_name_is_rejected_at_registration() -> None:
    class WrongArgument:
        @hookimpl
        def czo_register_models(self, registrar: Any) -> None:
            raise AssertionError("never called")

    with pytest.raises(pluggy.PluginValidationError, match="registrar"):
        load_plugins(create_plugin_manager(), extra=[WrongArgument()])


def test_broken_entry_point_names_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = metadata.EntryPoint(
        name="czo_broken", value="czo_no_such_module_xyz.plugin", group=ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: [broken])
    with pytest.raises(PluginError) as caught:
        load_plugins(create_plugin_manager())
    message = str(caught.value)
    assert "'czo_broken'" in message
    assert "czo_no_such_module_xyz.plugin" in message
    assert "failed to import" in message
    assert "CZO_DISABLE_PLUGINS=czo_broken" in message
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_broken_entry_point_can_be_blocked_or_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = metadata.EntryPoint(
        name="czo_broken", value="czo_no_such_module_xyz.plugin", group=ENTRY_POINT_GROUP
    )
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: [broken])
    blocked = load_plugins(create_plugin_manager(), block=("czo_broken",))
    assert not blocked.has_plugin("czo_broken")
    allowed_others = load_plugins(create_plugin_manager(), allow=("something_else",))
    assert not allowed_others.has_plugin("czo_broken")


def test_entry_point_raising_on_import(monkeypatch: pytest.MonkeyPatch) -> None:
    # An attribute that does not exist in an importable module fails on load too.
    bad = metadata.EntryPoint(name="czo_bad_attr", value="czo_kit.plugins:nope", group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins_module, "_entry_points", lambda: [bad])
    with pytest.raises(PluginError, match="'czo_bad_attr'"):
        load_plugins(create_plugin_manager())


# -- describe_plugins ---------------------------------------------------------------------------------


class Reporter:
    """A hand-registered plugin touching several registration hooks."""

    __name__ = "czo_reporter"  # a stable plugin name (pluggy uses __name__)

    def __init__(self) -> None:
        self.started = 0

    @hookimpl
    def czo_register_commands(self, cli: click.Group) -> None:
        @cli.command("hello")
        def hello() -> None:
            """Say hello."""

    @hookimpl
    def czo_register_hooks(self, hooks: Any) -> None:
        hooks.after("item.create", lambda result, ctx: None)

    @hookimpl
    def czo_startup(self, kit: Kit) -> None:
        self.started += 1  # a lifecycle hook: implemented, but it registers nothing


def test_describe_plugins_reports_registrations(sqlite_url: str, settings_for: SettingsFor) -> None:
    reporter_plugin = Reporter()
    with Kit(settings_for(sqlite_url), plugins=[reporter_plugin]) as kit:
        infos = {info.name: info for info in describe_plugins(kit)}

    sqlite = infos["czo_kit.default_plugins.sqlite"]
    assert sqlite.distribution == "czo-kit"
    assert sqlite.hooks == ["czo_register_database_backends"]
    assert sqlite.registers == {"database_backends": ["sqlite"]}
    assert infos["czo_kit.default_plugins.postgres"].registers == {
        "database_backends": ["postgresql", "postgres"]
    }
    assert infos["czo_kit.default_plugins.http_auth"].registers == {"authenticators": ["default_authenticator"]}

    product = infos["czo_product"]
    assert product.distribution == "czo-product"
    assert product.version == metadata.version("czo-product")
    assert product.hooks == [
        "czo_register_dashboard",
        "czo_register_hooks",
        "czo_register_migrations",
        "czo_register_models",
        "czo_register_permissions",
        "czo_register_services",
    ]
    assert product.registers["permissions"] == [
        "resource product", "role staff",
        "event product.created", "event product.updated", "event product.deleted", "event product.restored",
    ]
    assert product.registers["dashboard"] == ["mount PRODUCT_DETAILS", "mount PRODUCT_LIST", "page products"]
    assert product.registers["models"] == ["Product"]
    assert product.registers["services"] == ["czo_product.repository"]
    assert product.registers["hooks"] == ["before product.create", "before product.create_many"]
    assert len(product.registers["migrations"]) == 1
    assert product.registers["migrations"][0].endswith("migrations")

    order = infos["czo_order"]
    assert order.registers["events"] == ["on product.deleted", "on product.restored"]
    assert order.registers["http_routes"] == [
        "/api/shops/{shop_id:shop}/orders/{order_id:id}",
        "/api/shops/{shop_id:shop}/orders/{order_id:id}/payments",
        "/api/shops/{shop_id:shop}/orders/{order_id:id}/refunds",
    ]
    assert infos["czo_demo"].registers == {"commands": ["demo"]}

    reporter = infos["czo_reporter"]
    assert reporter.distribution is None  # registered by hand
    assert reporter.version is None
    assert reporter.hooks == ["czo_register_commands", "czo_register_hooks", "czo_startup"]
    assert reporter.registers == {"commands": ["hello"], "hooks": ["after item.create"]}
    assert reporter_plugin.started == 1


def test_describe_plugins_is_sorted_and_complete(sqlite_url: str, settings_for: SettingsFor) -> None:
    with Kit(settings_for(sqlite_url)) as kit:
        infos = describe_plugins(kit)
    assert [info.name for info in infos] == sorted(names(kit.plugins))


class _Shelf:
    """Two plugins register into the same registries; each item must be listed under the
    plugin that registered it, not under the other, and not under whoever runs the hook."""

    def __init__(self, name: str) -> None:
        self.__name__ = name
        self.word = name.rsplit("_", 1)[-1]

    @hookimpl
    def czo_register_hooks(self, hooks: Any) -> None:
        hooks.before(f"{self.word}.create", lambda ctx: None)
        hooks.on_error(f"{self.word}.create", lambda error, ctx: None)

    @hookimpl
    def czo_register_events(self, events: Any) -> None:
        events.on(f"{self.word}.created", lambda payload, ctx: None)
        events.once(f"{self.word}.gone", lambda payload, ctx: None)

    @hookimpl
    def czo_register_services(self, registry: Any) -> None:
        registry.register_value(Annotated[str, f"{self.word}.label"], self.word)

    @hookimpl
    def czo_register_permissions(self, register: Any) -> None:
        register.resource(self.word, ["read"])
        register.role(f"{self.word}-reader", {self.word: ["read"]})
        register.event(f"{self.word}.created", resource=self.word)

    @hookimpl
    def czo_register_dashboard(self, register: Any, kit: Kit) -> None:
        register.mount(f"{self.word.upper()}_DETAILS", resource=self.word, context=lambda kit, shop, obj: None)
        register.page(f"{self.word}s", title=self.word, resource=self.word, render=lambda kit, shop, obj: None)

    @hookimpl
    def czo_register_authenticators(self, register: Any) -> None:
        def nobody(token: str, kit: Kit) -> None:
            return None

        register(nobody, priority=5)

    @hookimpl
    def czo_register_http_routes(self, api: Any, kit: Kit) -> None:
        class Resource:
            def on_get(self, req: Any, resp: Any) -> None:
                resp.media = {}

        api.add_route(f"/api/{self.word}s", Resource())

    @hookimpl
    def czo_register_cache_drivers(self, register: Any) -> None:
        register(f"{self.word}cache", create_sqlite_database)

    @hookimpl
    def czo_register_queue_backends(self, register: Any) -> None:
        register(f"{self.word}queue", create_sqlite_database)

    @hookimpl
    def czo_register_database_backends(self, register: Any) -> None:
        register(f"{self.word}db", create_sqlite_database)

    @hookimpl
    def czo_register_commands(self, cli: click.Group) -> None:
        cli.add_command(click.Command(self.word, callback=lambda: None))


def test_each_registry_lists_an_item_under_the_plugin_that_registered_it(
    sqlite_url: str, settings_for: SettingsFor
) -> None:
    with Kit(settings_for(sqlite_url, plugins=()), plugins=[_Shelf("czo_apples"), _Shelf("czo_pears")]) as kit:
        infos = {info.name: info for info in describe_plugins(kit)}
        # Run time subscriptions, outside a registration hook, belong to no plugin.
        kit.events.on("apples.created", lambda payload, ctx: None)
        kit.hooks.after("apples.create", lambda result, ctx: None)
        assert kit.events.contributions()["czo_apples"] == ["on apples.created", "once apples.gone"]
        assert kit.hooks.contributions()["czo_apples"] == ["before apples.create", "on_error apples.create"]
        # The kit's own services (Kit, Settings, ...) are registered outside any hook: nobody's.
        assert set(kit.services.contributions()) == {"czo_apples", "czo_pears"}
    for word in ("apples", "pears"):
        info = infos[f"czo_{word}"]
        assert info.registers == {
            "authenticators": ["_Shelf.czo_register_authenticators.<locals>.nobody"],
            "cache_drivers": [f"{word}cache"],
            "commands": [word],
            "dashboard": [f"mount {word.upper()}_DETAILS", f"page {word}s"],
            "database_backends": [f"{word}db"],
            "events": [f"on {word}.created", f"once {word}.gone"],
            "hooks": [f"before {word}.create", f"on_error {word}.create"],
            "http_routes": [f"/api/{word}s"],
            "permissions": [f"resource {word}", f"role {word}-reader", f"event {word}.created"],
            "queue_backends": [f"{word}queue"],
            "services": [f"{word}.label"],
        }, word


def test_every_registration_hook_has_a_registry() -> None:
    """A new ``czo_register_*`` hookspec without a line in ``registries`` would vanish from
    ``czo-kit plugins``: the table and the hookspecs must name the same hooks."""
    import inspect

    from czo_kit import hookspecs

    specs = {name.removeprefix("czo_register_") for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)
             if name.startswith("czo_register_")}
    source = inspect.getsource(plugins_module.registries)
    listed = set(re.findall(r'\("(\w+)", ', source))
    assert listed == specs


# -- replacing a built-in ----------------------------------------------------------------------------


class TracingSqlite(SqliteDatabase):
    """What a third-party plugin might put in place of the built-in SQLite backend."""


class ReplacementBackend:
    def __init__(self) -> None:
        self.urls: list[str] = []

    @hookimpl(trylast=True)
    def czo_register_database_backends(self, register: Any) -> None:
        register("sqlite", self.create)

    def create(self, url: str, *, settings: Settings) -> peewee.Database:
        self.urls.append(url)
        db = create_sqlite_database(url, settings=settings)
        return TracingSqlite(db.database, pragmas=db._pragmas, returning_clause=True)


def test_third_party_plugin_replaces_a_backend(sqlite_url: str, settings_for: SettingsFor) -> None:
    replacement = ReplacementBackend()
    with Kit(settings_for(sqlite_url), plugins=[replacement]) as kit:
        assert type(kit.db) is TracingSqlite
        assert replacement.urls == [sqlite_url]
        assert kit.database_backends["sqlite"] == replacement.create
        # The other built-in schemes are untouched.
        assert "postgresql" in kit.database_backends
        assert kit.db.execute_sql("SELECT 1").fetchone() == (1,)


def test_backend_plugin_returning_a_non_database_is_refused(
    sqlite_url: str, settings_for: SettingsFor
) -> None:
    class Bad:
        @hookimpl(trylast=True)
        def czo_register_database_backends(self, register: Any) -> None:
            register("sqlite", lambda url, *, settings: object())

    with pytest.raises(PluginError, match="not a peewee.Database"):
        Kit(settings_for(sqlite_url), plugins=[Bad()])


@pytest.mark.parametrize("scheme", ["", "has space", "a/b", 3])
def test_backend_scheme_must_be_a_word(scheme: Any, sqlite_url: str, settings_for: SettingsFor) -> None:
    class Bad:
        @hookimpl
        def czo_register_database_backends(self, register: Any) -> None:
            register(scheme, create_sqlite_database)

    with pytest.raises(PluginError, match="scheme must be a word"):
        Kit(settings_for(sqlite_url), plugins=[Bad()])


def test_call_each_plugin_names_the_plugin_behind_each_registration() -> None:
    manager = create_plugin_manager()
    seen: list[tuple[str | None, str]] = []

    class First:
        @hookimpl(tryfirst=True)
        def czo_register_cache_drivers(self, register: Any) -> None:
            register("first", None)

    class Second:
        @hookimpl
        def czo_register_cache_drivers(self, register: Any) -> None:
            register("second", None)

    manager.register(Second(), name="second-plugin")
    manager.register(First(), name="first-plugin")
    plugins_module.call_each_plugin(
        manager.hook.czo_register_cache_drivers,
        register=lambda scheme, factory: seen.append((plugins_module.registering_plugin(), scheme)),
    )
    assert seen == [("first-plugin", "first"), ("second-plugin", "second")]
    assert plugins_module.registering_plugin() is None


def test_call_each_plugin_refuses_a_wrapper_on_a_registration_hook() -> None:
    manager = create_plugin_manager()

    class Wrapping:
        @hookimpl(wrapper=True)
        def czo_register_cache_drivers(self, register: Any) -> Any:
            return (yield)

    manager.register(Wrapping(), name="wrapping")
    with pytest.raises(PluginError, match="wrapping.*cannot be a wrapper"):
        plugins_module.call_each_plugin(manager.hook.czo_register_cache_drivers, register=lambda *a: None)


@pytest.mark.parametrize(
    ("fn", "priority", "message"),
    [
        ("not a function", 0, "authenticator 'not a function' is not callable; register fn(token, kit)"),
        (lambda token, kit: None, "high", "priority must be an int, got 'high'"),
    ],
)
def test_a_malformed_authenticator_is_refused_naming_it(
    fn: Any, priority: Any, message: str, sqlite_url: str, settings_for: SettingsFor
) -> None:
    class Bad:
        @hookimpl
        def czo_register_authenticators(self, register: Any) -> None:
            register(fn, priority=priority)

    with Kit(settings_for(sqlite_url, plugins=()), plugins=[Bad()]) as kit:
        with pytest.raises(PluginError, match=re.escape(message)):
            kit.authenticators
