"""``czo-kit demo``: a plugin shipped with the example modules (entry point ``czo_demo``), not
a command of the kit, which names no module."""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from czo_kit import plugins as plugins_module
from czo_kit.cli import build_cli, cli
from czo_kit.plugins import ENTRY_POINT_GROUP, create_plugin_manager

SECRET = "demo-secret-key-" + "d" * 32


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The product module and the demo only, on a private database."""
    for name in ("CZO_LOG_LEVEL", "CZO_DB_POOL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CZO_PLUGINS", "czo_product,czo_demo")
    monkeypatch.setenv("CZO_DISABLE_PLUGINS", "events")
    monkeypatch.setenv("CZO_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("CZO_SECRET_KEY", SECRET)
    # build_cli() loads the process-wide plugin manager: give it a fresh one for this test.
    monkeypatch.setattr(plugins_module, "pm", create_plugin_manager())
    monkeypatch.setattr(plugins_module, "_global_loaded", False)
    yield tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(build_cli(), list(args), prog_name="czo-kit")


def assert_clean_failure(result: Result, *fragments: str) -> None:
    """Non-zero exit, a one-line ``Error: ...`` naming the problem, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Error: ")
    assert result.stderr.count("\n") == 1
    for fragment in fragments:
        assert fragment in result.stderr


def test_the_demo_is_a_plugin_of_the_example_modules() -> None:
    found = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert found["czo_demo"].value == "czo_order.demo"
    assert found["czo_demo"].dist is not None and found["czo_demo"].dist.name == "czo-order"
    assert "demo" not in cli.commands  # the kit's own command line has none


def test_demo_report(env: Path) -> None:
    result = run("demo")
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("czo-kit demo\n")
    assert re.search(r"^   czo_demo +commands: demo$", out, re.MULTILINE)
    assert "== Cursor pagination" in out
    pages = re.findall(r"page (\d+): .*next_cursor=(\S+)", out)
    assert [number for number, _ in pages] == ["1", "2", "3", "4"]
    tails = [tail for _, tail in pages[:-1]]
    assert len(set(tails)) == len(tails)  # each page shows a different cursor
    assert pages[-1][1] == "-"
    assert "24 rows, each once" in out
    assert "a cursor reused with another order is refused" in out
    assert "a stale writer is refused" in out
    assert "modified concurrently: expected version 1, found 2" in out  # the version conflict
    assert "restore refused: cannot restore Product" in out
    assert "Events (skipped: pip install ./plugins/czo-order" in out  # czo_order is not allowed here
    assert "== Done in" in out
    assert not (Path.cwd() / "czo-demo.sqlite3").exists()


def test_demo_on_given_database(env: Path) -> None:
    url = f"sqlite:///{env / 'demo-here.sqlite3'}"
    result = run("demo", "--database-url", url)
    assert result.exit_code == 0, result.output
    assert (env / "demo-here.sqlite3").exists()


def test_demo_without_product_module(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CZO_DISABLE_PLUGINS", "czo_product")
    assert_clean_failure(
        run("demo"),
        "the czo_product plugin is installed but not loaded (check CZO_PLUGINS and "
        "CZO_DISABLE_PLUGINS)",
    )


def test_demo_bad_setting_is_a_clean_error(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CZO_DB_POOL_SIZE", "lots")
    assert_clean_failure(run("demo"), "invalid setting CZO_DB_POOL_SIZE='lots'", "an integer >= 1 and <= 1000")


def test_without_the_demo_plugin_nothing_mentions_a_demo(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "demo" in run("--help").output  # with it: listed
    monkeypatch.setenv("CZO_PLUGINS", "czo_product")
    monkeypatch.setattr(plugins_module, "pm", create_plugin_manager())
    monkeypatch.setattr(plugins_module, "_global_loaded", False)
    shown = run("--help")
    assert shown.exit_code == 0, shown.output
    assert "demo" not in shown.output
    missing = run("demo")
    assert missing.exit_code == 2
    assert "No such command 'demo'" in missing.output


def test_the_demo_pays_an_order_through_localstripe_and_refunds_a_cancelled_one(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CZO_PLUGINS", "czo_product,czo_order,czo_demo")
    monkeypatch.setenv("CZO_DISABLE_PLUGINS", "")
    result = run("demo")
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"localstripe \(a Stripe emulator\) listening at http://127\.0\.0\.1:\d+", out)
    created = re.search(r"created PaymentIntent (pi_\w+) at Stripe: 6150 eur \(order (\d+)\), status succeeded", out)
    assert created, out
    intent, order = created.groups()
    assert f"order #{order} is paid, 61.50 EUR paid through localstripe (reference {intent})" in out
    assert "Stripe's own payment_intent.succeeded came to /stripe/webhooks, verified: yes" in out
    assert re.search(r"order #\d+ paid, then cancelled: .* is refunded, 22\.00 EUR back", out)
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[-2].endswith(f"order #{order} is paid through localstripe") and lines[-1].startswith("== Done in")
