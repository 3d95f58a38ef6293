"""The ``czo-kit`` command line, through click's CliRunner and once as the real console script."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

import czo_kit
from czo_kit import plugins as plugins_module
from czo_kit.cli import build_cli, cli
from czo_kit.plugins import DEFAULT_PLUGINS, create_plugin_manager

SECRET = "cli-secret-key-" + "c" * 32


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """A private database and settings; the product module's migrations copied to tmp_path.

    The copy keeps ``db makemigrations`` from ever writing into the installed package.
    """
    import czo_product.plugin

    for name in ("CZO_LOG_LEVEL", "CZO_DB_POOL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    # Only the product module: the output must not depend on what else is installed.
    monkeypatch.setenv("CZO_PLUGINS", "czo_product")
    monkeypatch.setenv("CZO_DISABLE_PLUGINS", "events")
    monkeypatch.setenv("CZO_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("CZO_SECRET_KEY", SECRET)
    migrations = tmp_path / "product_migrations"
    shutil.copytree(czo_product.plugin.MIGRATIONS, migrations)
    monkeypatch.setattr(czo_product.plugin, "MIGRATIONS", migrations)
    # build_cli() loads the process-wide plugin manager: give it a fresh one for this test.
    monkeypatch.setattr(plugins_module, "pm", create_plugin_manager())
    monkeypatch.setattr(plugins_module, "_global_loaded", False)
    yield migrations


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="czo-kit")


def assert_clean_failure(result: Result, *fragments: str) -> None:
    """Non-zero exit, a one-line ``Error: ...`` naming the problem, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # click's handled exit, not a crash
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Error: ")
    assert result.stderr.count("\n") == 1
    for fragment in fragments:
        assert fragment in result.stderr


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


# -- help and version -----------------------------------------------------------------------------


def test_help_on_every_command(env: Path) -> None:
    root = build_cli()
    paths = list(command_paths(root))
    # The walk reaches the nested commands (so new ones are covered automatically).
    assert {("plugins",), ("db",), ("db", "init"), ("db", "makemigrations")} <= set(paths)
    for path in paths:
        for flag in ("--help", "-h"):
            result = CliRunner().invoke(root, [*path, flag], prog_name="czo-kit")
            assert result.exit_code == 0, (path, result.output)
            assert result.output.startswith(f"Usage: czo-kit {' '.join(path)}".rstrip()), path
            command = root
            for name in path:
                assert isinstance(command, click.Group)
                command = command.commands[name]
            opening = " ".join((command.help or "").split()[:4])
            assert opening and opening in " ".join(result.output.split()), path


def test_version(env: Path) -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.output == f"czo-kit, version {czo_kit.__version__}\n"


def test_no_command_shows_usage(env: Path) -> None:
    result = run()
    assert "Usage: czo-kit" in result.output
    assert "Commands:" in result.output


# -- plugins -------------------------------------------------------------------------------------------


def test_plugins_text(env: Path) -> None:
    result = run("plugins")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "czo_kit.default_plugins.sqlite  (czo-kit)" in out
    assert "database_backends: sqlite" in out
    assert "czo_product  (czo-product 0.1.0)" in out
    assert "models: Product" in out
    assert "services: czo_product.repository" in out


def test_plugins_json(env: Path) -> None:
    result = run("plugins", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_name = {item["name"]: item for item in data}
    # The env fixture blocks the built-in events plugin to keep outputs focused.
    assert {*DEFAULT_PLUGINS, "czo_product"} - {"czo_kit.default_plugins.events"} <= set(by_name)
    product = by_name["czo_product"]
    assert product["distribution"] == "czo-product"
    assert product["version"] == "0.1.0"
    assert "czo_register_models" in product["hooks"]
    assert product["registers"]["models"] == ["Product"]
    assert by_name["czo_kit.default_plugins.sqlite"]["registers"] == {"database_backends": ["sqlite"]}


def test_plugins_while_the_database_cache_and_queue_are_down(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What plugins registered comes from a kit's registries; a kit starts during an outage.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens here once the probe is closed
    monkeypatch.setenv("CZO_DATABASE_URL", f"postgresql://czo@127.0.0.1:{closed}/none")
    monkeypatch.setenv("CZO_CACHE_URL", f"redis://127.0.0.1:{closed}/0")
    monkeypatch.setenv("CZO_QUEUE_URL", f"redis://127.0.0.1:{closed}/0")
    result = run("plugins", "--json")
    assert result.exit_code == 0, result.output
    by_name = {item["name"]: item for item in json.loads(result.output)}
    assert by_name["czo_product"]["registers"]["models"] == ["Product"]
    assert by_name["czo_kit.default_plugins.redis_cache"]["registers"] == {"cache_drivers": ["redis", "rediss"]}


def test_plugins_lists_what_an_outside_plugin_registered(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # czo_test_reviews is found by its entry point only; what it registered comes from the
    # kit's registries, under its own name.
    monkeypatch.setenv("CZO_PLUGINS", "czo_test_reviews")
    result = run("plugins", "--json")
    assert result.exit_code == 0, result.output
    reviews = {item["name"]: item for item in json.loads(result.output)}["czo_test_reviews"]
    assert reviews["distribution"] == "czo-test-reviews"
    assert reviews["registers"]["dashboard"] == ["mount REVIEW_DETAILS", "page reviews"]
    assert reviews["registers"]["models"] == ["Review", "ReviewAlert", "ReviewStats"]
    assert reviews["registers"]["settings"] == ["ReviewSettings"]
    assert reviews["registers"]["migrations"][0].endswith("czo_test_reviews/migrations")
    assert reviews["registers"]["hooks"][0] == "before czo_test_reviews_review.create"
    assert reviews["registers"]["events"] == ["on review.created"]
    assert reviews["registers"]["http_routes"] == ["/api/shops/{shop_id:shop}/reviews"]
    assert reviews["registers"]["authenticators"] == ["authenticate_widget"]
    assert reviews["registers"]["commands"] == ["reviews"]
    assert reviews["registers"]["permissions"][:2] == ["resource review", "role moderator"]
    assert reviews["registers"]["tasks"] == [
        "task czo_test_reviews.recompute_rating", "periodic czo_test_reviews.refresh_ratings (* * * * *)"
    ]


def test_plugins_respects_block_list(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CZO_DISABLE_PLUGINS", "czo_product,postgres")
    result = run("plugins", "--json")
    assert result.exit_code == 0, result.output
    loaded = [item["name"] for item in json.loads(result.output)]
    assert sorted(loaded) == sorted(set(DEFAULT_PLUGINS) - {"czo_kit.default_plugins.postgres"})


# -- db ---------------------------------------------------------------------------------------------------


def product_lines(output: str) -> list[str]:
    """The lines about the product module (the kit's own built-in tables come too)."""
    return [line for line in output.splitlines() if line.startswith("czo_product")]


def test_db_init(env: Path) -> None:
    result = run("db", "init")
    assert result.exit_code == 0, result.output
    assert product_lines(result.output) == ["czo_product: created table product; marked applied 0001_initial"]
    # The kit's own tables too, whatever plugins are loaded: the first shop event must not
    # have to make them inside the caller's transaction.
    from czo_kit.kit import KIT_MODELS

    kit_line = next(line for line in result.output.splitlines() if line.startswith("czo-kit: "))
    assert kit_line == "czo-kit: " + "; ".join(f"created table {m._meta.table_name}" for m in KIT_MODELS)
    again = run("db", "init")
    assert again.exit_code == 0, again.output
    assert product_lines(again.output) == ["czo_product: up to date"]
    assert "czo-kit: up to date" in again.output.splitlines()


def test_db_init_without_models(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CZO_PLUGINS", "")
    result = run("db", "init")
    assert result.exit_code == 0, result.output
    # Only the kit's own tables: no installed module is loaded.
    assert product_lines(result.output) == []
    assert all(line.startswith(("czo-kit: ", "czo_kit.default_plugins.")) for line in result.output.splitlines())


def test_db_status(env: Path) -> None:
    pending = run("db", "status")
    assert pending.exit_code == 0, pending.output
    assert "czo_product\n  0001_initial: pending\n" in pending.output
    run("db", "init")
    applied = run("db", "status")
    assert applied.exit_code == 0, applied.output
    assert re.search(
        r"(^|\n)czo_product\n  0001_initial: applied \d{4}-\d\d-\d\d \d\d:\d\d\n", applied.output
    )


def test_db_migrate(env: Path) -> None:
    result = run("db", "migrate")
    assert result.exit_code == 0, result.output
    assert product_lines(result.output) == ["czo_product: 0001_initial"]
    again = run("db", "migrate", "czo_product")
    assert again.exit_code == 0, again.output
    assert again.output == "czo_product: up to date\n"


def test_db_migrate_unknown_module(env: Path) -> None:
    assert_clean_failure(
        run("db", "migrate", "nope"),
        "unknown module 'nope'; modules with models or migrations: ",
    )


def test_db_makemigrations_no_changes(env: Path) -> None:
    run("db", "init")
    result = run("db", "makemigrations", "czo_product", "nothing")
    assert result.exit_code == 0, result.output
    assert result.output == "no changes\n"
    assert sorted(p.name for p in env.glob("*.py")) == ["0001_initial.py"]


def test_db_makemigrations_writes_then_migrate_applies(env: Path) -> None:
    run("db", "init")
    # The product model has a column that the database lacks.
    import sqlite3

    database = os.environ["CZO_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(database) as conn:
        conn.execute('ALTER TABLE "product" DROP COLUMN "currency"')
    conn.close()

    result = run("db", "makemigrations", "czo_product", "add currency")
    assert result.exit_code == 0, result.output
    written = env / "0002_add_currency.py"
    assert result.output == f"wrote {written}; review it, then run: czo-kit db migrate\n"
    assert "add_column('product', 'currency'" in written.read_text()

    status = run("db", "status")
    assert "0002_add_currency: pending" in status.output
    migrate = run("db", "migrate")
    assert migrate.output == "czo-kit: up to date\nczo_product: 0002_add_currency\n"
    assert run("db", "makemigrations", "czo_product", "again").output == "no changes\n"


def test_db_makemigrations_unknown_module(env: Path) -> None:
    assert_clean_failure(run("db", "makemigrations", "nope", "x"), "unknown module 'nope'")


def test_db_makemigrations_needs_arguments(env: Path) -> None:
    result = run("db", "makemigrations")
    assert result.exit_code == 2
    assert "Missing argument 'MODULE'" in result.output


# -- bad settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("plugins",),
        ("db", "init"),
        ("db", "status"),
        ("db", "migrate"),
        ("db", "makemigrations", "czo_product", "x"),
    ],
)
def test_bad_setting_is_a_clean_error(
    args: tuple[str, ...], env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CZO_DB_POOL_SIZE", "lots")
    assert_clean_failure(
        run(*args), "invalid setting CZO_DB_POOL_SIZE='lots'", "an integer >= 1 and <= 1000"
    )


def test_bad_database_scheme_is_a_clean_error(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CZO_DATABASE_URL", "oracle://scott:tiger@db/orcl")
    result = run("db", "status")
    assert_clean_failure(result, "no database backend for scheme 'oracle'", "allowed: postgres, postgresql, sqlite")
    assert "tiger" not in result.output


def test_short_secret_is_a_clean_error(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CZO_SECRET_KEY", "too-short-secret")
    result = run("db", "init")
    assert_clean_failure(result, "CZO_SECRET_KEY", "at least 32 characters")
    assert "too-short-secret" not in result.output


def test_bad_log_level_is_a_clean_error(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CZO_LOG_LEVEL", "chatty")
    assert_clean_failure(
        run("db", "status"),
        "invalid setting CZO_LOG_LEVEL='chatty'",
        "allowed: CRITICAL, DEBUG, ERROR, INFO, WARNING",
    )


def test_log_level_option_is_case_insensitive(env: Path) -> None:
    result = run("--log-level", "error", "db", "status")
    assert result.exit_code == 0, result.output
    bad = run("--log-level", "loud", "db", "status")
    assert bad.exit_code == 2
    assert "Invalid value for '--log-level'" in bad.output


# -- the real console script ------------------------------------------------------------------------------------


def clean_environ() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("CZO_")}


def console_script() -> str:
    found = shutil.which("czo-kit", path=str(Path(sys.executable).parent)) or shutil.which("czo-kit")
    assert found, "the czo-kit console script is not installed"
    return found


def test_console_script_help(tmp_path: Path) -> None:
    environ = {**clean_environ(), "CZO_DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}"}
    done = subprocess.run(
        [console_script(), "--help"], capture_output=True, text=True, env=environ, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: czo-kit [OPTIONS] COMMAND [ARGS]...")
    assert "db" in done.stdout and "plugins" in done.stdout


def test_console_script_bad_setting_has_no_traceback(tmp_path: Path) -> None:
    environ = {
        **clean_environ(),
        "CZO_DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}",
        "CZO_DB_POOL_SIZE": "many",
    }
    done = subprocess.run(
        [console_script(), "db", "status"], capture_output=True, text=True, env=environ, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stderr.startswith("Error: invalid setting CZO_DB_POOL_SIZE='many'")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.sqlite3").exists()


# -- failing migrations ---------------------------------------------------------------------------------------------


BROKEN_MIGRATION = "def up(migrator, db):\n    db.execute_sql('ALTER TABLE \"no_such_table\" ADD COLUMN \"x\" INTEGER')\n"


def test_db_migrate_failure_names_the_file(env: Path) -> None:
    (env / "0002_broken.py").write_text(BROKEN_MIGRATION)
    result = run("db", "migrate")
    assert_clean_failure(result, "migrations of czo_product: 0002_broken failed:", "no_such_table")
    status = run("db", "status")
    assert "0001_initial: applied" in status.output
    assert "0002_broken: pending" in status.output


def test_db_init_failure_on_existing_database_is_clean(env: Path) -> None:
    assert run("db", "init").exit_code == 0
    (env / "0002_broken.py").write_text(BROKEN_MIGRATION)
    assert_clean_failure(run("db", "init"), "migrations of czo_product: 0002_broken failed:")


def test_db_init_migration_without_up_is_clean(env: Path) -> None:
    assert run("db", "init").exit_code == 0
    (env / "0002_empty.py").write_text("x = 1\n")
    assert_clean_failure(run("db", "init"), "migrations of czo_product: 0002_empty does not define up()")


# Every command that lists things speaks JSON too, for scripts and dashboards.
LISTINGS = [
    ("plugins",), ("settings",), ("status",), ("db", "status"), ("events", "status"), ("events", "dead"),
    ("apps", "list"), ("apps", "tokens"), ("webhooks", "deliveries"), ("webhooks", "dead"), ("webhooks", "circuits"),
]


@pytest.mark.parametrize("path", LISTINGS, ids=" ".join)
def test_every_listing_command_has_json(path: tuple[str, ...]) -> None:
    command: Any = build_cli()
    for name in path:
        command = command.commands[name]
    assert "--json" in {opt for param in command.params for opt in getattr(param, "opts", [])}, path


def test_db_status_json(env: Path) -> None:
    run("db", "init")
    result = run("db", "status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    [initial] = data["czo_product"]
    assert initial["name"] == "0001_initial" and initial["applied"] and initial["file"] is True
