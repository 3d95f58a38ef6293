"""One ``CZO_SECRET_KEY`` for every process of a deployment: a web server or a worker on a
shared database refuses to start without one (one line naming the setting and how to make
one), the embedded SQLite default still starts without, and what one process signs with the
shared key another accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import SECRET
from czo_kit import Kit
from czo_kit.errors import ConfigurationError
from czo_kit.settings import Settings
from test_cli_failures import czo, free_port, one_line_error


def assert_names_the_key_and_how_to_make_one(line: str, process: str) -> None:
    assert line.startswith("Error: CZO_SECRET_KEY is not set"), line
    assert f"{process} on postgresql needs it" in line
    assert "secrets.token_urlsafe(48)" in line


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_refuse_a_shared_database_without_a_key(tmp_path: Path, pg_url: str, command: str) -> None:
    args = [command, "--port", str(free_port())] if command == "serve" else [command, "-w", "1"]
    # With a queue and without one (the worker then delivers in-process): refused alike.
    for queue in ("", f"sqlite:///{tmp_path / 'queue.sqlite3'}"):
        line = one_line_error(czo(tmp_path, *args, CZO_DATABASE_URL=pg_url, CZO_QUEUE_URL=queue, CZO_PLUGINS=""))
        assert_names_the_key_and_how_to_make_one(line, f"`czo-kit {command}`")


@pytest.mark.postgres
def test_huey_consumer_refuses_a_shared_database_without_a_key(tmp_path: Path, pg_url: str) -> None:
    binary = shutil.which("huey_consumer", path=os.path.dirname(sys.executable))
    command = [binary] if binary else [sys.executable, "-m", "huey.bin.huey_consumer"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
    env.update(CZO_DATABASE_URL=pg_url, CZO_QUEUE_URL=f"sqlite:///{tmp_path / 'queue.sqlite3'}", CZO_PLUGINS="")
    done = subprocess.run([*command, "czo_kit.worker.huey", "-w", "1"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert_names_the_key_and_how_to_make_one(one_line_error(done), "`huey_consumer czo_kit.worker.huey`")


def test_the_embedded_sqlite_default_worker_starts_without_a_key(tmp_path: Path) -> None:
    script = shutil.which("czo-kit", path=os.path.dirname(sys.executable)) or "czo-kit"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
    env.update(CZO_DATABASE_URL=f"sqlite:///{tmp_path / 'kit.sqlite3'}",
               CZO_QUEUE_URL=f"sqlite:///{tmp_path / 'queue.sqlite3'}")
    init = subprocess.run([script, "db", "init"], env=env, cwd=tmp_path, capture_output=True, timeout=120)
    assert init.returncode == 0, init.stderr
    worker = subprocess.Popen([script, "worker", "-w", "1"], stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert worker.stderr is not None
        lines = []
        for line in worker.stderr:  # ends when it exits: then the assertion below shows why
            lines.append(line)
            if line.startswith("czo-kit worker:"):
                break
        assert lines and lines[-1].startswith("czo-kit worker:"), "".join(lines)
    finally:
        worker.terminate()
        worker.communicate(timeout=30)


def test_the_check_names_the_setting_and_lets_sqlite_or_a_key_through(
    pg_url: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Kit(Settings(database_url=sqlite_url, queue_url="")) as kit:
        kit.require_shared_secret_key("a web server")  # one embedded database: allowed
    with Kit(Settings(database_url=pg_url, queue_url="", secret_key=SECRET)) as kit:
        kit.require_shared_secret_key("a web server")
    with Kit(Settings(database_url=pg_url, queue_url="")) as kit:
        with pytest.raises(ConfigurationError) as refused:
            kit.require_shared_secret_key("gunicorn")
    assert refused.value.variable == "CZO_SECRET_KEY"
    assert "gunicorn on postgresql needs it" in str(refused.value)


@pytest.mark.parametrize("process", ["", "   ", None, 7])
def test_the_check_names_a_bad_process_name(sqlite_url: str, process: object) -> None:
    with Kit(Settings(database_url=sqlite_url, queue_url="")) as kit:
        with pytest.raises(ValueError, match="the name of the process it guards, such as 'gunicorn', got"):
            kit.require_shared_secret_key(process)  # type: ignore[arg-type]


def test_huey_consumer_on_embedded_sqlite_starts_without_a_key_and_says_so(tmp_path: Path) -> None:
    binary = shutil.which("huey_consumer", path=os.path.dirname(sys.executable))
    command = [binary] if binary else [sys.executable, "-m", "huey.bin.huey_consumer"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
    env.update(CZO_DATABASE_URL=f"sqlite:///{tmp_path / 'kit.sqlite3'}",
               CZO_QUEUE_URL=f"sqlite:///{tmp_path / 'queue.sqlite3'}", CZO_PLUGINS="")
    consumer = subprocess.Popen([*command, "czo_kit.worker.huey", "-w", "1"], stderr=subprocess.PIPE, text=True,
                                env=env, cwd=tmp_path)
    try:
        assert consumer.stderr is not None
        lines = []
        for line in consumer.stderr:  # ends when it exits: then the assertion below shows why
            lines.append(line)
            if "Huey consumer started" in line:
                break
        text = "".join(lines)
        assert "Huey consumer started" in text, text
        assert "CZO_SECRET_KEY is not set: this consumer signs with a random key of its own" in text
    finally:
        consumer.terminate()
        consumer.communicate(timeout=30)


PAGER = textwrap.dedent(
    """
    import sys

    import peewee

    from czo_kit import Kit
    from czo_kit.db import Model, create_queries
    from czo_kit.errors import InvalidCursorError

    class Note(Model):
        body = peewee.CharField()

        class Meta:
            table_name = "czo_test_shared_note"

    with Kit.from_env() as kit:
        Note.bind(kit.db)
        notes = create_queries(Note, db=kit.db)
        if sys.argv[1] == "first":
            kit.db.create_tables([Note], safe=True)
            Note.delete().execute()
            for n in range(3):
                Note.create(body=f"note {n}")
            print(notes.find_many(order_by="id", limit=1).next_cursor)
        else:
            try:
                page = notes.find_many(order_by="id", limit=1, cursor=sys.argv[2])
            except InvalidCursorError as exc:
                print("refused:", exc)
            else:
                print("accepted:", [note.body for note in page.items])
    """
)


@pytest.mark.postgres
def test_a_cursor_one_process_signs_is_accepted_by_another(tmp_path: Path, pg_url: str, sqlite_url: str) -> None:
    script = tmp_path / "pager.py"
    script.write_text(PAGER)
    base = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}

    def run(env: dict[str, str], *args: str) -> str:
        done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                              env={**base, **env}, cwd=tmp_path, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    shared = {"CZO_DATABASE_URL": pg_url, "CZO_QUEUE_URL": "", "CZO_SECRET_KEY": SECRET}
    cursor = run(shared, "first")
    assert run(shared, "next", cursor) == "accepted: ['note 1']"
    # What the key prevents: without one, each process signs with its own, and the next
    # process refuses the cursor (which is why serve and worker will not start so).
    alone = {"CZO_DATABASE_URL": sqlite_url, "CZO_QUEUE_URL": ""}
    cursor = run(alone, "first")
    assert run(alone, "next", cursor).startswith("refused:")


def wsgi_module_of_the_docs() -> str:
    text = (Path(__file__).resolve().parent.parent / "docs" / "scaling.md").read_text(encoding="utf-8")
    start = text.index("  # wsgi.py")
    block = text[start : text.index("```", start)]
    return textwrap.dedent(block)


@pytest.mark.postgres
def test_the_wsgi_module_of_the_docs_checks_the_key_and_serves(tmp_path: Path, pg_url: str) -> None:
    (tmp_path / "wsgi.py").write_text(wsgi_module_of_the_docs())
    probe = (
        "import io, wsgi\n"
        "seen = []\n"
        "environ = {'REQUEST_METHOD': 'GET', 'PATH_INFO': '/metrics', 'SERVER_NAME': 'x', 'SERVER_PORT': '80',\n"
        "           'wsgi.url_scheme': 'http', 'wsgi.input': io.BytesIO(), 'QUERY_STRING': ''}\n"
        "body = b''.join(wsgi.application(environ, lambda status, headers, *rest: seen.append(status)))\n"
        "print(seen[0], b'czo_' in body)\n"
        "wsgi.kit.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CZO_")}
    env.update(CZO_DATABASE_URL=pg_url, CZO_QUEUE_URL="", CZO_PLUGINS="", PYTHONPATH=str(tmp_path))
    refused = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path,
                             timeout=120)
    assert refused.returncode != 0 and "CZO_SECRET_KEY is not set, and the WSGI app on postgresql" in refused.stderr
    served = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**env, "CZO_SECRET_KEY": SECRET}, cwd=tmp_path, timeout=120)
    assert served.returncode == 0, served.stderr
    assert served.stdout.split() == ["200", "OK", "True"]
