"""Migrations of several modules: a file runs after what it names in ``depends_on``; a missing
dependency, a malformed declaration or a cycle is refused before anything runs."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from czo_kit import Kit, hookimpl
from czo_kit.errors import CzoError
from czo_kit.settings import Settings

B_TABLE = '''
def up(migrator, db):
    db.execute_sql('CREATE TABLE "czo_test_b_thing" ("id" INTEGER PRIMARY KEY)')
'''
A_TABLE = '''
def up(migrator, db):
    db.execute_sql('CREATE TABLE "czo_test_a_thing" ("id" INTEGER PRIMARY KEY)')
'''
A_NEEDS_B = '''
depends_on = [("czo_test_b", "0001_b_table")]

def up(migrator, db):
    # Fails unless B's table exists: which is what depends_on promises.
    db.execute_sql('INSERT INTO "czo_test_b_thing" ("id") VALUES (1)')
'''


class Module:
    """A module registered by hand with a migrations directory (no models)."""

    def __init__(self, name: str, directory: Path) -> None:
        self.__name__ = name  # pluggy names a plugin by __name__
        self.directory = directory

    @hookimpl
    def czo_register_migrations(self, register: Any) -> None:
        register(str(self.directory))


@pytest.fixture
def modules(tmp_path: Path) -> Callable[[dict[str, dict[str, str]]], list[Module]]:
    def make(files: dict[str, dict[str, str]]) -> list[Module]:
        made = []
        for module, scripts in files.items():
            directory = tmp_path / module
            directory.mkdir()
            for name, body in scripts.items():
                (directory / f"{name}.py").write_text(textwrap.dedent(body))
            made.append(Module(module, directory))
        return made

    return make


@pytest.fixture
def kit_with(database_url: str, settings_for: Callable[..., Settings]) -> Iterator[Callable[[list[Module]], Kit]]:
    kits: list[Kit] = []

    def make(plugins: list[Module]) -> Kit:
        kit = Kit(settings_for(database_url, queue_url="", plugins=()), plugins=plugins)
        kits.append(kit)
        return kit

    yield make
    for kit in kits:
        for table in kit.db.get_tables():
            if table.startswith(("czo_test_a", "czo_test_b", "czo_migrations_czo_test")):
                kit.db.execute_sql(f'DROP TABLE "{table}"')
        kit.close()


def test_a_migration_runs_after_the_other_modules_migration_it_depends_on(
    modules: Callable[..., list[Module]], kit_with: Callable[..., Kit]
) -> None:
    # By name alone czo_test_a would run first, and its 0002 would find no table to fill.
    kit = kit_with(modules({
        "czo_test_a": {"0001_a_table": A_TABLE, "0002_refers_to_b": A_NEEDS_B},
        "czo_test_b": {"0001_b_table": B_TABLE},
    }))
    report = kit.migrations.up()
    assert (report["czo_test_a"], report["czo_test_b"]) == (["0001_a_table", "0002_refers_to_b"], ["0001_b_table"])
    assert kit.db.execute_sql('SELECT "id" FROM "czo_test_b_thing"').fetchall() == [(1,)]
    assert kit.migrations.up() == {"czo_test_a": [], "czo_test_b": []}


def test_db_init_applies_in_dependency_order_too(
    modules: Callable[..., list[Module]], kit_with: Callable[..., Kit]
) -> None:
    kit = kit_with(modules({
        "czo_test_a": {"0001_a_table": A_TABLE, "0002_refers_to_b": A_NEEDS_B},
        "czo_test_b": {"0001_b_table": B_TABLE},
    }))
    report = kit.create_tables()
    assert report["czo_test_a"] == ["applied 0001_a_table", "applied 0002_refers_to_b"]
    assert report["czo_test_b"] == ["applied 0001_b_table"]


def test_migrating_one_module_whose_dependency_is_pending_says_what_to_do(
    modules: Callable[..., list[Module]], kit_with: Callable[..., Kit]
) -> None:
    kit = kit_with(modules({
        "czo_test_a": {"0001_a_table": A_TABLE, "0002_refers_to_b": A_NEEDS_B},
        "czo_test_b": {"0001_b_table": B_TABLE},
    }))
    with pytest.raises(CzoError, match=r"czo_test_a 0002_refers_to_b depends on czo_test_b 0001_b_table, "
                                        r"which is not applied yet: migrate czo_test_b first"):
        kit.migrations.up("czo_test_a")
    assert kit.migrations.pending()["czo_test_a"] == ["0001_a_table", "0002_refers_to_b"]  # nothing ran
    assert kit.migrations.up("czo_test_b") == {"czo_test_b": ["0001_b_table"]}
    assert kit.migrations.up("czo_test_a") == {"czo_test_a": ["0001_a_table", "0002_refers_to_b"]}


def test_a_cycle_is_refused_before_anything_runs(
    modules: Callable[..., list[Module]], kit_with: Callable[..., Kit]
) -> None:
    kit = kit_with(modules({
        "czo_test_a": {"0001_a_table": A_TABLE, "0002_refers_to_b": A_NEEDS_B},
        "czo_test_b": {"0001_b_table": 'depends_on = [("czo_test_a", "0002_refers_to_b")]\n' + B_TABLE},
    }))
    with pytest.raises(CzoError, match=r"cycle: .*czo_test_a 0002_refers_to_b.*czo_test_b 0001_b_table"):
        kit.migrations.up()
    assert kit.migrations.pending() == {
        "czo_test_a": ["0001_a_table", "0002_refers_to_b"], "czo_test_b": ["0001_b_table"]
    }


@pytest.mark.parametrize(
    ("declaration", "message"),
    [
        ('[("czo_test_nope", "0001_x")]', r"no loaded module is called 'czo_test_nope' \(modules with migrations: czo_test_a, czo_test_b\)"),
        ('[("czo_test_b", "0009_missing")]', r"depends on czo_test_b 0009_missing, which czo_test_b does not have"),
        ('"czo_test_b"', r"depends_on must be a list of \(module, migration name\) pairs"),
        ('[("czo_test_b",)]', r"depends_on must be a list of \(module, migration name\) pairs"),
        ('[("czo_test_b", 1)]', r"depends_on must be a list of \(module, migration name\) pairs"),
    ],
)
def test_a_bad_dependency_is_refused_naming_it(
    declaration: str, message: str, modules: Callable[..., list[Module]], kit_with: Callable[..., Kit]
) -> None:
    kit = kit_with(modules({
        "czo_test_a": {"0001_a_table": f"depends_on = {declaration}\n" + A_TABLE},
        "czo_test_b": {"0001_b_table": B_TABLE},
    }))
    with pytest.raises(CzoError, match=r"migration czo_test_a 0001_a_table") as caught:
        kit.migrations.up()
    assert caught.match(message)
    assert kit.migrations.pending()["czo_test_a"] == ["0001_a_table"]


def test_a_dependency_already_applied_is_satisfied(
    modules: Callable[..., list[Module]], kit_with: Callable[..., Kit]
) -> None:
    plugins = modules({
        "czo_test_a": {"0001_a_table": A_TABLE},
        "czo_test_b": {"0001_b_table": B_TABLE},
    })
    kit = kit_with(plugins)
    kit.migrations.up()
    (plugins[0].directory / "0002_refers_to_b.py").write_text(A_NEEDS_B)  # shipped in a later release
    assert kit.migrations.up("czo_test_a") == {"czo_test_a": ["0002_refers_to_b"]}


# -- the example modules: orders refer to products --------------------------------------------


def test_the_order_module_migrates_after_the_product_module(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``czo-kit db migrate`` on an empty database: by name czo_order would run first (and
    the allow-list names it first too); its 0001 declares that it needs czo_product's."""
    import sqlite3

    from click.testing import CliRunner

    from czo_kit.cli import cli

    for variable, value in {"CZO_DATABASE_URL": sqlite_url, "CZO_QUEUE_URL": "", "CZO_SECRET_KEY": "m" * 40,
                            "CZO_PLUGINS": "czo_order,czo_product"}.items():
        monkeypatch.setenv(variable, value)
    result = CliRunner().invoke(cli, ["db", "migrate"])
    assert result.exit_code == 0, result.output
    assert "czo_order: 0001_initial, 0002_payments" in result.output.splitlines()
    assert "czo_product: 0001_initial" in result.output.splitlines()
    tables = {"czo_order": "czo_migrations_czo_order", "czo_product": "czo_migrations_czo_product"}
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as conn:
        applied = {
            (module, name): at
            for module, table in tables.items()
            for name, at in conn.execute(f'SELECT "name", "applied" FROM "{table}"')
        }
    assert sorted(applied) == [("czo_order", "0001_initial"), ("czo_order", "0002_payments"),
                               ("czo_product", "0001_initial")]
    # The history's times, to the microsecond: product's table was made first.
    assert applied[("czo_product", "0001_initial")] < applied[("czo_order", "0001_initial")]
