"""``Kit``: wiring on SQLite and PostgreSQL, lifecycle, URL errors, and schema migrations."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import peewee
import pytest

from czo_kit import Kit, hookimpl
from czo_kit.db import Model
from czo_kit.errors import ConfigurationError, CzoError
from czo_kit.hooks import HookRegistry
from czo_kit.services import ServiceNotFoundError
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]
PASSWORD = "hunter2-never-shown"


def drop_everything(kit: Kit) -> None:
    """Leave the (session-wide) PostgreSQL schema as the test found it."""
    kit.db.drop_tables(kit.all_models(), safe=True)
    for table in kit.db.get_tables():
        if table.startswith("czo_migrations_"):
            kit.db.execute_sql(f'DROP TABLE "{table}"')


@pytest.fixture
def make_kit(database_url: str, settings_for: SettingsFor) -> Iterator[Callable[..., Kit]]:
    """Build kits on the backend under test; every table they made is dropped afterwards."""
    kits: list[Kit] = []

    def make(*, plugins: list[object] | tuple[object, ...] = (), **changes: Any) -> Kit:
        # Only the product module and the test's own plugins: the outcome must not depend on
        # which other modules happen to be installed.
        changes.setdefault("plugins", ("czo_product",))
        changes.setdefault("disable_plugins", ("events", "permissions"))
        kit = Kit(settings_for(database_url, **changes), plugins=plugins)
        kits.append(kit)
        return kit

    yield make
    for kit in reversed(kits):
        try:
            kit.db.bind(kit.all_models())  # models follow the last kit built; drop this one's
            drop_everything(kit)
        finally:
            kit.close()
            # Dropping reopened the connection of a kit the test had already closed.
            close_all = getattr(kit.db, "close_all", None)
            if callable(close_all):
                close_all()
            kit.db.close()


# -- wiring ---------------------------------------------------------------------------------------


def test_database_matches_url(make_kit: Callable[..., Kit], database_url: str) -> None:
    kit = make_kit()
    expected = peewee.SqliteDatabase if database_url.startswith("sqlite") else peewee.PostgresqlDatabase
    assert isinstance(kit.db, expected)
    assert kit.db.execute_sql("SELECT 1").fetchone() == (1,)
    assert kit.settings.database_url == database_url


def test_core_services(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    assert kit.services.get(Kit) is kit
    assert kit.services.get(Settings) is kit.settings
    assert kit.services.get(peewee.Database) is kit.db  # type: ignore[type-abstract]
    assert kit.services.get(HookRegistry) is kit.hooks
    assert kit.services.get(Kit, Settings) == (kit, kit.settings)
    assert Kit in kit.services
    assert kit.services.types()[:4] == [Kit, Settings, peewee.Database, HookRegistry]


def test_product_repository_end_to_end(make_kit: Callable[..., Kit]) -> None:
    from czo_product import Product, ProductRepository

    kit = make_kit()
    kit.create_tables()
    repo = kit.services.get_abstract(ProductRepository)
    assert kit.services.get_abstract(ProductRepository) is repo  # a singleton
    created = repo.create({"shop_id": 1, "name": "Crème Brûlée Dish", "price": 1250})
    assert created.slug == "creme-brulee-dish"  # the plugin's before-hook ran
    assert created.version == 1
    assert repo.get_by_id(created.id).name == "Crème Brûlée Dish"
    assert repo.find_by_slug(1, "creme-brulee-dish").id == created.id
    assert Product.select().count() == 1
    repo.delete(created.id)
    assert repo.find_by_id(created.id) is None
    assert repo.count(only_deleted=True) == 1


def test_product_cursor_pages_each_row_once(make_kit: Callable[..., Kit]) -> None:
    from czo_product import ProductRepository

    kit = make_kit()
    kit.create_tables()
    repo = kit.services.get_abstract(ProductRepository)
    repo.create_many([{"shop_id": 1, "name": f"Mug {n}", "price": 100 * n} for n in range(1, 8)])
    pages: list[list[int]] = []
    cursor = None
    for _ in range(10):
        page = repo.find_many({"shop_id": 1}, order_by="price", limit=3, cursor=cursor)
        pages.append([p.price for p in page.items])
        if not page.has_next:
            break
        cursor = page.next_cursor
    assert pages == [[100, 200, 300], [400, 500, 600], [700]]
    back = repo.find_many({"shop_id": 1}, order_by="price", limit=3, cursor=page.prev_cursor)
    assert [p.price for p in back.items] == [400, 500, 600]


def test_missing_service_lists_registered_ones(make_kit: Callable[..., Kit]) -> None:
    class NotRegistered:
        pass

    kit = make_kit()
    with pytest.raises(ServiceNotFoundError) as caught:
        kit.services.get(NotRegistered)
    message = str(caught.value)
    assert "no service registered for" in message
    assert "NotRegistered" in message
    for name in ("Kit", "Settings", "Database", "HookRegistry", "czo_product.repository"):
        assert name in message


class Lifecycle:
    __name__ = "czo_test_lifecycle"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Kit]] = []
        self.db_usable_at_shutdown: bool | None = None

    @hookimpl
    def czo_startup(self, kit: Kit) -> None:
        # Everything is wired by now.
        assert kit.services.get(Kit) is kit
        self.calls.append(("startup", kit))

    @hookimpl
    def czo_shutdown(self, kit: Kit) -> None:
        self.calls.append(("shutdown", kit))
        self.db_usable_at_shutdown = kit.db.execute_sql("SELECT 1").fetchone() == (1,)


def test_startup_and_shutdown_called_once(database_url: str, settings_for: SettingsFor) -> None:
    plugin = Lifecycle()
    kit = Kit(settings_for(database_url), plugins=[plugin])
    assert plugin.calls == [("startup", kit)]
    kit.close()
    kit.close()  # idempotent: shutdown is not called again
    assert plugin.calls == [("startup", kit), ("shutdown", kit)]
    assert plugin.db_usable_at_shutdown is True


def test_context_manager_closes(database_url: str, settings_for: SettingsFor) -> None:
    plugin = Lifecycle()
    with Kit(settings_for(database_url), plugins=[plugin]) as kit:
        kit.db.connect(reuse_if_open=True)
        assert not kit.db.is_closed()
    assert kit.db.is_closed()
    assert [name for name, _ in plugin.calls] == ["startup", "shutdown"]


def test_context_manager_closes_on_error(sqlite_url: str, settings_for: SettingsFor) -> None:
    plugin = Lifecycle()
    with pytest.raises(RuntimeError, match="boom"):
        with Kit(settings_for(sqlite_url), plugins=[plugin]) as kit:
            kit.db.connect(reuse_if_open=True)
            raise RuntimeError("boom")
    assert kit.db.is_closed()
    assert [name for name, _ in plugin.calls] == ["startup", "shutdown"]


def test_close_closes_services(sqlite_url: str, settings_for: SettingsFor) -> None:
    closed: list[str] = []

    class Resource:
        pass

    class WithCleanup:
        @hookimpl
        def czo_register_services(self, registry: Any) -> None:
            def factory() -> Iterator[Resource]:
                yield Resource()
                closed.append("resource")

            registry.register_factory(Resource, factory)

    kit = Kit(settings_for(sqlite_url), plugins=[WithCleanup()])
    assert isinstance(kit.services.get(Resource), Resource)
    kit.close()
    assert closed == ["resource"]


def test_from_env(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    monkeypatch.setenv("CZO_DATABASE_URL", "sqlite:///never-used.sqlite3")
    monkeypatch.setenv("CZO_SECRET_KEY", "e" * 40)
    with Kit.from_env(database_url=sqlite_url) as kit:
        assert kit.settings.database_url == sqlite_url  # the override wins
        assert kit.secret_key == b"e" * 40
        assert kit.db.czo_secret_key == b"e" * 40  # type: ignore[attr-defined]


def test_without_secret_key_a_random_one_is_used(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Kit(Settings(database_url=sqlite_url)) as first, Kit(Settings(database_url=sqlite_url)) as second:
        assert len(first.secret_key) == 32
        assert first.secret_key != second.secret_key
    assert "CZO_SECRET_KEY is not set" in caplog.text


# -- URL errors -------------------------------------------------------------------------------------


def test_unknown_scheme_names_allowed(settings_for: SettingsFor) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Kit(settings_for(f"mysql://root:{PASSWORD}@localhost/shop"))
    message = str(caught.value)
    assert caught.value.variable == "CZO_DATABASE_URL"
    assert "no database backend for scheme 'mysql'" in message
    assert "allowed: postgres, postgresql, sqlite" in message
    assert PASSWORD not in message


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("?foo=1", "invalid SQLite URL option 'foo'; allowed: cache_size, journal_mode, synchronous, timeout, transaction_mode"),
        ("?timeout=soon", "invalid SQLite URL option timeout='soon': expected float"),
        ("?cache_size=big", "invalid SQLite URL option cache_size='big': expected int"),
    ],
)
def test_bad_sqlite_url_options(
    query: str, expected: str, sqlite_url: str, settings_for: SettingsFor
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Kit(settings_for(sqlite_url + query))
    assert str(caught.value) == expected
    assert caught.value.variable == "CZO_DATABASE_URL"


def test_good_sqlite_url_options(sqlite_url: str, settings_for: SettingsFor) -> None:
    with Kit(settings_for(sqlite_url + "?timeout=2&journal_mode=delete")) as kit:
        assert kit.db.execute_sql("PRAGMA journal_mode").fetchone() == ("delete",)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite://somehost/x.db", "(no host part)"),
        ("sqlite:///", "no file path"),
    ],
)
def test_bad_sqlite_url(url: str, expected: str, settings_for: SettingsFor) -> None:
    with pytest.raises(ConfigurationError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        Kit(settings_for(url))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"postgresql://shop:{PASSWORD}@127.0.0.1:5432/", "no database name"),
        (f"postgresql://shop:{PASSWORD}@127.0.0.1", "no database name"),
        (f"postgresql://shop:{PASSWORD}@127.0.0.1:99999/shop", "the port is not a number in 1-65535"),
        (f"postgresql://shop:{PASSWORD}@127.0.0.1:abc/shop", "the port is not a number in 1-65535"),
        (f"postgres://shop:{PASSWORD}@127.0.0.1:-1/shop", "the port is not a number in 1-65535"),
    ],
)
def test_bad_postgresql_url(url: str, expected: str, settings_for: SettingsFor) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Kit(settings_for(url))
    message = str(caught.value)
    assert expected in message
    assert caught.value.variable == "CZO_DATABASE_URL"
    assert PASSWORD not in message
    assert "shop:***@127.0.0.1" in message


def test_password_not_in_repr(settings_for: SettingsFor) -> None:
    # Building the pool does not connect, so no server is needed here.
    url = f"postgresql://shop:{PASSWORD}@127.0.0.1:5432/shop?sslmode=disable"
    with Kit(settings_for(url)) as kit:
        for text in (repr(kit), str(kit), repr(kit.settings), repr(kit.settings.public_dict())):
            assert PASSWORD not in text
        assert repr(kit).startswith(
            "<Kit db='postgresql://shop:***@127.0.0.1:5432/shop?sslmode=disable' plugins="
        )


def test_repr_shows_sqlite_url_unchanged(sqlite_url: str, settings_for: SettingsFor) -> None:
    with Kit(settings_for(sqlite_url)) as kit:
        assert repr(kit) == f"<Kit db={sqlite_url!r} plugins={len(kit.plugins.get_plugins())}>"


# -- migrations ------------------------------------------------------------------------------------


class Widget(Model):
    name = peewee.CharField(max_length=50)
    colour = peewee.CharField(max_length=20, default="red")

    class Meta:
        table_name = "czo_test_widget"


MIGRATION_0001 = '''\
"""Create the widget table as first shipped (without colour)."""
from peewee import *


def up(migrator, db):
    # A frozen copy of the model as it was then, independent of today's Widget.
    class Widget(Model):
        created_at = DateTimeField()
        updated_at = DateTimeField()
        version = IntegerField()
        deleted_at = DateTimeField(null=True)
        name = CharField(max_length=50)

        class Meta:
            database = db
            table_name = "czo_test_widget"

    db.create_tables([Widget], safe=True)
'''

MIGRATION_0002 = '''\
"""Add the colour column."""
from peewee import *


def up(migrator, db):
    migrator.migrate(
        migrator.add_column("czo_test_widget", "colour", CharField(max_length=20, default="red")))
'''


class WidgetPlugin:
    """A module registered by hand, with its own migrations directory."""

    __name__ = "czo_test_widgets"  # pluggy names a plugin by __name__: a stable history table

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @hookimpl
    def czo_register_models(self, register: Any) -> None:
        register(Widget)

    @hookimpl
    def czo_register_migrations(self, register: Any) -> None:
        register(str(self.directory))


@pytest.fixture
def widget_plugin(tmp_path: Path) -> WidgetPlugin:
    directory = tmp_path / "widget_migrations"
    directory.mkdir()
    (directory / "0001_initial.py").write_text(MIGRATION_0001)
    (directory / "0002_add_colour.py").write_text(MIGRATION_0002)
    return WidgetPlugin(directory)


class OldWidget(peewee.Model):
    """The widget table as migration 0001 creates it."""

    created_at = peewee.DateTimeField()
    updated_at = peewee.DateTimeField()
    version = peewee.IntegerField()
    deleted_at = peewee.DateTimeField(null=True)
    name = peewee.CharField(max_length=50)

    class Meta:
        table_name = "czo_test_widget"


def columns(kit: Kit, table: str) -> set[str]:
    return {column.name for column in kit.db.get_columns(table)}


def test_create_tables_on_fresh_database(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    assert kit.migrations.pending()["czo_product"] == ["0001_initial"]
    report = kit.create_tables()
    assert report["czo_product"] == ["created table product", "marked applied 0001_initial"]
    assert "product" in kit.db.get_tables()
    assert kit.migrations.pending()["czo_product"] == []
    status = kit.migrations.status()["czo_product"]
    assert [row.name for row in status] == ["0001_initial"]
    assert status[0].applied is not None
    # A second init changes nothing.
    assert kit.create_tables()["czo_product"] == []


def test_fresh_database_marks_every_migration_applied(
    make_kit: Callable[..., Kit], widget_plugin: WidgetPlugin
) -> None:
    kit = make_kit(plugins=[widget_plugin])
    assert kit.migrations.pending()["czo_test_widgets"] == ["0001_initial", "0002_add_colour"]
    report = kit.create_tables()
    assert report["czo_test_widgets"] == [
        "created table czo_test_widget",
        "marked applied 0001_initial",
        "marked applied 0002_add_colour",
    ]
    # The table comes from today's model, so it already has the column 0002 would add.
    assert "colour" in columns(kit, "czo_test_widget")
    assert kit.migrations.pending()["czo_test_widgets"] == []
    assert "czo_migrations_czo_test_widgets" in kit.db.get_tables()


def test_existing_tables_get_pending_migrations_applied(
    make_kit: Callable[..., Kit], widget_plugin: WidgetPlugin
) -> None:
    kit = make_kit(plugins=[widget_plugin])
    # A database from before the module had migrations: the first table shape, no history.
    with kit.db.bind_ctx([OldWidget]):
        OldWidget.create_table()
    assert "colour" not in columns(kit, "czo_test_widget")
    assert "czo_migrations_czo_test_widgets" not in kit.db.get_tables()
    report = kit.create_tables()
    assert report["czo_test_widgets"] == ["applied 0001_initial", "applied 0002_add_colour"]
    assert "colour" in columns(kit, "czo_test_widget")
    assert kit.migrations.pending()["czo_test_widgets"] == []
    Widget.create(name="sprocket")
    assert Widget.get(Widget.name == "sprocket").colour == "red"


def test_module_without_models_gets_its_migrations_run(
    make_kit: Callable[..., Kit], tmp_path: Path
) -> None:
    directory = tmp_path / "data_migrations"
    directory.mkdir()
    (directory / "0001_settings_table.py").write_text(
        textwrap.dedent(
            '''
            def up(migrator, db):
                db.execute_sql('CREATE TABLE "czo_test_setting" ("key" VARCHAR(20) PRIMARY KEY)')
            '''
        )
    )

    class DataOnly:
        __name__ = "czo_test_data_only"

        @hookimpl
        def czo_register_migrations(self, register: Any) -> None:
            register(str(directory))

    kit = make_kit(plugins=[DataOnly()])
    try:
        report = kit.create_tables()
        # No table here stands in for the migration: it must run, not be marked applied.
        assert report["czo_test_data_only"] == ["applied 0001_settings_table"]
        assert "czo_test_setting" in kit.db.get_tables()
    finally:
        kit.db.execute_sql('DROP TABLE IF EXISTS "czo_test_setting"')


def test_up_applies_pending_migrations(
    make_kit: Callable[..., Kit], widget_plugin: WidgetPlugin
) -> None:
    kit = make_kit(plugins=[widget_plugin])
    assert kit.migrations.up("czo_test_widgets") == {
        "czo_test_widgets": ["0001_initial", "0002_add_colour"]
    }
    assert "colour" in columns(kit, "czo_test_widget")
    assert kit.migrations.up() == {"czo_product": ["0001_initial"], "czo_test_widgets": []}


def test_unknown_module_is_named(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit()
    with pytest.raises(CzoError, match="unknown module 'nope'; modules with models or migrations: czo_product"):
        kit.migrations.up("nope")
    with pytest.raises(CzoError, match="unknown module 'nope'"):
        kit.migrations.make("nope", "x")


def test_failing_migration_is_reported_with_module(
    make_kit: Callable[..., Kit], widget_plugin: WidgetPlugin
) -> None:
    (widget_plugin.directory / "0003_broken.py").write_text("def down(migrator, db):\n    pass\n")
    kit = make_kit(plugins=[widget_plugin])
    with pytest.raises(CzoError, match="migrations of czo_test_widgets: 0003_broken does not define up"):
        kit.migrations.up("czo_test_widgets")


def test_failing_sql_names_the_migration_and_keeps_earlier_ones(
    make_kit: Callable[..., Kit], widget_plugin: WidgetPlugin
) -> None:
    (widget_plugin.directory / "0003_broken.py").write_text(
        "def up(migrator, db):\n"
        "    db.execute_sql('ALTER TABLE \"czo_no_such_table\" ADD COLUMN \"x\" INTEGER')\n"
    )
    (widget_plugin.directory / "0004_after.py").write_text("def up(migrator, db):\n    pass\n")
    kit = make_kit(plugins=[widget_plugin])
    with pytest.raises(CzoError) as caught:
        kit.migrations.up("czo_test_widgets")
    message = str(caught.value)
    assert message.startswith("migrations of czo_test_widgets: 0003_broken failed: ")
    assert "czo_no_such_table" in message
    assert isinstance(caught.value.__cause__, peewee.DatabaseError)
    assert kit.migrations.pending()["czo_test_widgets"] == ["0003_broken", "0004_after"]


def test_init_reports_migration_errors_as_czo_errors(
    make_kit: Callable[..., Kit], widget_plugin: WidgetPlugin
) -> None:
    kit = make_kit(plugins=[widget_plugin])
    kit.create_tables()
    (widget_plugin.directory / "0003_no_up.py").write_text("x = 1\n")
    with pytest.raises(CzoError, match="migrations of czo_test_widgets: 0003_no_up does not define up"):
        kit.create_tables()


def test_make_writes_migration_when_model_gained_a_column(
    make_kit: Callable[..., Kit], widget_plugin: WidgetPlugin
) -> None:
    # The module shipped 0001 (no colour column); its author has since added Widget.colour.
    (widget_plugin.directory / "0002_add_colour.py").unlink()
    kit = make_kit(plugins=[widget_plugin])
    # A database that ran 0001 as shipped.
    assert kit.migrations.up("czo_test_widgets") == {"czo_test_widgets": ["0001_initial"]}
    assert "colour" not in columns(kit, "czo_test_widget")

    path = kit.migrations.make("czo_test_widgets", "Add colour")
    assert path is not None
    written = Path(path)
    assert written.parent == widget_plugin.directory
    assert written.name == "0002_add_colour.py"
    body = written.read_text()
    assert "def up(migrator, db):" in body
    assert "migrator.add_column('czo_test_widget', 'colour', CharField(" in body
    assert kit.migrations.pending()["czo_test_widgets"] == ["0002_add_colour"]

    assert kit.migrations.up("czo_test_widgets") == {"czo_test_widgets": ["0002_add_colour"]}
    assert "colour" in columns(kit, "czo_test_widget")
    assert kit.migrations.make("czo_test_widgets", "again") is None
    assert sorted(p.name for p in widget_plugin.directory.glob("*.py")) == [
        "0001_initial.py",
        "0002_add_colour.py",
    ]


def test_make_returns_none_when_nothing_changed(
    make_kit: Callable[..., Kit], tmp_path: Path
) -> None:
    kit = make_kit()
    # Point the installed module at a copy, so that a failure cannot write into the package.
    entry = kit.migrations.modules["czo_product"]
    copy = tmp_path / "product_migrations"
    shutil.copytree(entry.directory or "", copy)
    entry.directory = str(copy)
    kit.create_tables()
    assert kit.migrations.make("czo_product", "noop") is None
    assert sorted(p.name for p in copy.glob("*.py")) == ["0001_initial.py"]


def test_make_against_an_empty_database_says_to_run_db_init(
    make_kit: Callable[..., Kit], widget_plugin: WidgetPlugin
) -> None:
    kit = make_kit(plugins=[widget_plugin])
    with pytest.raises(CzoError, match=r"none of 'czo_test_widgets'.s tables yet.*czo-kit db init"):
        kit.migrations.make("czo_test_widgets", "everything again")
    assert sorted(p.name for p in widget_plugin.directory.glob("*.py")) == ["0001_initial.py", "0002_add_colour.py"]


def test_make_refuses_to_write_into_an_installed_package(
    make_kit: Callable[..., Kit], widget_plugin: WidgetPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sysconfig

    kit = make_kit(plugins=[widget_plugin])
    kit.create_tables()
    site = str(widget_plugin.directory.parent)  # as if the module were pip-installed there
    real = sysconfig.get_paths()
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {**real, "purelib": site, "platlib": site})
    with pytest.raises(CzoError, match=r"inside the installed packages of .*pip install -e") as caught:
        kit.migrations.make("czo_test_widgets", "add size")
    assert str(widget_plugin.directory) in str(caught.value)  # where it would have written
    assert sorted(p.name for p in widget_plugin.directory.glob("*.py")) == ["0001_initial.py", "0002_add_colour.py"]


def test_status_lists_applied_and_pending(
    make_kit: Callable[..., Kit], widget_plugin: WidgetPlugin
) -> None:
    kit = make_kit(plugins=[widget_plugin])
    status = kit.migrations.status()
    assert sorted(status) == ["czo_product", "czo_test_widgets"]
    assert [(row.idx, row.name, row.applied) for row in status["czo_test_widgets"]] == [
        (1, "0001_initial", None),
        (2, "0002_add_colour", None),
    ]
    kit.migrations.up("czo_test_widgets")
    rows = kit.migrations.status()["czo_test_widgets"]
    assert all(row.applied is not None for row in rows)
    assert kit.migrations.pending() == {"czo_product": ["0001_initial"], "czo_test_widgets": []}


def test_history_tables_are_per_module(
    make_kit: Callable[..., Kit], widget_plugin: WidgetPlugin
) -> None:
    kit = make_kit(plugins=[widget_plugin])
    kit.create_tables()
    tables = set(kit.db.get_tables())
    assert {"czo_migrations_czo_product", "czo_migrations_czo_test_widgets"} <= tables
    rows = kit.db.execute_sql('SELECT name FROM "czo_migrations_czo_product"').fetchall()
    assert [name for name, in rows] == ["0001_initial"]


# -- less common wiring -------------------------------------------------------------------------------


def test_explicit_plugin_manager(sqlite_url: str, settings_for: SettingsFor) -> None:
    from czo_kit.plugins import create_plugin_manager, load_plugins

    manager = load_plugins(create_plugin_manager(), allow=())
    plugin = Lifecycle()
    with Kit(settings_for(sqlite_url), plugin_manager=manager, plugins=[plugin]) as kit:
        assert kit.plugins is manager
        assert manager.is_registered(plugin)
        assert not manager.has_plugin("czo_product")  # the manager's own selection is kept
        assert plugin.calls == [("startup", kit)]


def test_make_for_module_without_migrations_directory(
    sqlite_url: str, settings_for: SettingsFor
) -> None:
    class ModelsOnly:
        __name__ = "czo_test_models_only"

        @hookimpl
        def czo_register_models(self, register: Any) -> None:
            register(Widget)

    with Kit(settings_for(sqlite_url), plugins=[ModelsOnly()]) as kit:
        assert "czo_test_models_only" not in kit.migrations.status()
        with pytest.raises(CzoError, match="module 'czo_test_models_only' registers no migrations directory"):
            kit.migrations.make("czo_test_models_only", "first")
        with pytest.raises(CzoError, match="registers no migrations directory"):
            kit.migrations.up("czo_test_models_only")
        assert kit.create_tables()["czo_test_models_only"] == ["created table czo_test_widget"]


def test_two_migration_directories_are_refused(
    tmp_path: Path, sqlite_url: str, settings_for: SettingsFor
) -> None:
    from czo_kit.errors import PluginError

    class Greedy:
        @hookimpl
        def czo_register_migrations(self, register: Any) -> None:
            register(str(tmp_path / "a"))
            register(str(tmp_path / "a"))  # the same one again is fine
            register(str(tmp_path / "b"))

    with pytest.raises(PluginError, match="registered two migration directories"):
        Kit(settings_for(sqlite_url), plugins=[Greedy()])


def test_backend_factory_must_be_callable(sqlite_url: str, settings_for: SettingsFor) -> None:
    from czo_kit.errors import PluginError

    class Bad:
        @hookimpl
        def czo_register_database_backends(self, register: Any) -> None:
            register("nothing", "not a factory")

    with pytest.raises(PluginError, match="database backend 'nothing': factory 'not a factory' is not callable"):
        Kit(settings_for(sqlite_url), plugins=[Bad()])


def test_short_lived_containers_share_the_registry(make_kit: Callable[..., Kit]) -> None:
    import svcs

    kit = make_kit()
    assert isinstance(kit.services.registry, svcs.Registry)
    with kit.services.container() as container:
        assert container.get(Kit) is kit
    assert peewee.Database in kit.services
    assert object not in kit.services


def test_a_plugin_failing_at_startup_leaves_no_open_connection(sqlite_url: str) -> None:
    from czo_kit import hookimpl

    opened: list[peewee.Database] = []

    class Failing:
        @hookimpl
        def czo_startup(self, kit: Kit) -> None:
            opened.append(kit.db)
            kit.db.connect(reuse_if_open=True)
            raise RuntimeError("plugin broke at startup")

    with pytest.raises(RuntimeError, match="plugin broke"):
        Kit(Settings(database_url=sqlite_url, secret_key="s" * 40), plugins=[Failing()])
    assert opened and opened[0].is_closed()


def test_extra_plugins_on_a_given_manager_are_validated(sqlite_url: str) -> None:
    from czo_kit import hookimpl
    from czo_kit.errors import PluginError
    from czo_kit.plugins import create_plugin_manager, load_plugins

    class Misspelt:
        @hookimpl
        def czo_startpu(self, kit: Kit) -> None:  # typo: matches no hookspec
            raise AssertionError("never called")

    manager = load_plugins(create_plugin_manager())
    with pytest.raises(PluginError, match="czo_startpu"):
        Kit(Settings(database_url=sqlite_url, secret_key="s" * 40), plugin_manager=manager, plugins=[Misspelt()])
