"""What an operator sees when a command fails for a reason they can fix: one line naming the
setting and the cause, exit status 1; `--traceback` (or DEBUG logging) shows the rest."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from czo_kit.cli import cli
from czo_kit.errors import ConflictError

PG_PASSWORD = "s3cret-pw"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def czo(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("czo-kit", path=os.path.dirname(sys.executable)) or "czo-kit"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
    environ.update({"CZO_DATABASE_URL": f"sqlite:///{tmp_path / 'kit.sqlite3'}", "CZO_QUEUE_URL": ""}, **env)
    return subprocess.run([script, *args], capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120)


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_an_unreachable_database_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    url = f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{free_port()}/test"
    line = one_line_error(czo(tmp_path, "apps", "list", "--shop", "1", CZO_DATABASE_URL=url))
    assert "CZO_DATABASE_URL=postgresql://postgres:***@127.0.0.1:" in line
    assert "Connection refused" in line and PG_PASSWORD not in line


def test_a_missing_database_is_one_line(tmp_path: Path, pg_base_url: str) -> None:
    url = pg_base_url.rsplit("/", 1)[0] + "/czo_no_such_database"
    line = one_line_error(czo(tmp_path, "apps", "list", "--shop", "1", CZO_DATABASE_URL=url))
    assert 'database "czo_no_such_database" does not exist' in line


def test_a_missing_sqlite_directory_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nowhere' / 'kit.sqlite3'}"
    line = one_line_error(czo(tmp_path, "db", "init", CZO_DATABASE_URL=url))
    assert line.startswith("Error: CZO_DATABASE_URL: ")
    assert f"the directory '{tmp_path / 'nowhere'}' of its file does not exist" in line
    queue = one_line_error(czo(tmp_path, "db", "init", CZO_QUEUE_URL=url))
    assert queue.startswith("Error: CZO_QUEUE_URL: ")


def test_an_unreachable_queue_redis_is_one_line_naming_it(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    # `events status` reads the database and works through an outage; `events sweep` needs
    # the queue.
    line = one_line_error(czo(tmp_path, "events", "sweep", CZO_QUEUE_URL=url))
    assert line.startswith(f"Error: Redis does not answer (CZO_QUEUE_URL={url})")


def test_traceback_shows_the_rest(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    done = czo(tmp_path, "--traceback", "apps", "list", "--shop", "1", CZO_DATABASE_URL=url)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "OperationalError" in done.stderr
    logged = czo(tmp_path, "apps", "list", "--shop", "1", CZO_DATABASE_URL=url, CZO_LOG_LEVEL="DEBUG")
    assert logged.returncode == 1
    assert "Traceback (most recent call last)" in logged.stderr  # in the DEBUG log ...
    assert logged.stderr.rstrip().splitlines()[-1].startswith("Error: database error")  # ... then the line


def test_a_bad_sqlite_pragma_is_refused_naming_the_allowed_values(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kit.sqlite3'}?journal_mode=bogus"
    line = one_line_error(czo(tmp_path, "db", "init", CZO_DATABASE_URL=url))
    assert "journal_mode='bogus'; allowed: delete, truncate, persist, memory, wal, off" in line
    line = one_line_error(czo(tmp_path, "db", "init", CZO_DATABASE_URL=url.replace("journal_mode", "synchronous")))
    assert "synchronous='bogus'; allowed: off, normal, full, extra" in line


def test_one_shot_commands_do_not_warn_about_the_secret_key_but_serve_does(tmp_path: Path) -> None:
    done = czo(tmp_path, "apps", "list", "--shop", "1")
    assert done.returncode == 0, done.stderr
    assert "CZO_SECRET_KEY" not in done.stderr
    script = shutil.which("czo-kit", path=os.path.dirname(sys.executable)) or "czo-kit"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
    environ.update(CZO_DATABASE_URL=f"sqlite:///{tmp_path / 'kit.sqlite3'}", CZO_QUEUE_URL="")
    server = subprocess.Popen(
        [script, "serve", "--port", str(free_port())], stderr=subprocess.PIPE, text=True, env=environ, cwd=tmp_path
    )
    try:
        assert server.stderr is not None
        first = server.stderr.readline()
        assert first.startswith("warning: CZO_SECRET_KEY is not set"), first
        assert server.stderr.readline().startswith("czo-kit API on http://")
    finally:
        server.terminate()
        server.communicate(timeout=30)


@pytest.fixture
def failing_plugin_command() -> Iterator[str]:
    """A command as a plugin adds it (czo_register_commands), failing with the kit's error."""

    @click.command("czo-test-fails")
    def fails() -> None:
        raise ConflictError("the plugin's resource is busy; try again in a minute")

    cli.add_command(fails)
    try:
        yield "czo-test-fails"
    finally:
        cli.commands.pop("czo-test-fails")


def test_a_plugin_commands_kit_error_is_one_line_too(failing_plugin_command: str) -> None:
    result = CliRunner().invoke(cli, [failing_plugin_command])
    assert result.exit_code == 1
    assert result.output == "Error: the plugin's resource is busy; try again in a minute\n"
    assert isinstance(result.exception, SystemExit)  # reported, not raised as a traceback
