"""The documentation keeps up with the code: every hookspec is documented and tested.

In the manner of datasette's ``tests/test_docs.py``: adding a hookspec to
``czo_kit/hookspecs.py`` fails this file until ``docs/plugin-hooks.md`` has a section for it and
a ``test_hook_<name>`` exists somewhere under ``tests/``.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest

from czo_kit import hookspecs
from czo_kit.cli import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TESTS = ROOT / "tests"
SPEC_MARKER = hookspecs.PROJECT_NAME + "_spec"  # the attribute pluggy's HookspecMarker sets


def _hookspecs() -> dict[str, Callable[..., Any]]:
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if inspect.isfunction(fn) and hasattr(fn, SPEC_MARKER)
    }


HOOKSPECS = _hookspecs()


def _sections(text: str) -> dict[str, str]:
    """``## heading`` -> the text up to the next ``## `` heading."""
    parts = re.split(r"^## +(.+?)\s*$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def _test_function_names() -> set[str]:
    names: set[str] = set()
    for path in TESTS.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names.update(
            node.name
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        )
    return names


@pytest.fixture(scope="module")
def hook_sections() -> dict[str, str]:
    sections = _sections((DOCS / "plugin-hooks.md").read_text(encoding="utf-8"))
    return {name: body for name, body in sections.items() if name.startswith("czo_")}


def test_hookspecs_are_found() -> None:
    # Guards the discovery itself: an empty dict would make every test below pass vacuously.
    assert "czo_startup" in HOOKSPECS
    assert len(HOOKSPECS) >= 8


@pytest.mark.parametrize("hook", sorted(HOOKSPECS))
def test_hookspec_is_documented(hook: str, hook_sections: dict[str, str]) -> None:
    assert hook in hook_sections, f"docs/plugin-hooks.md has no '## {hook}' section"
    body = hook_sections[hook]
    parameters = ", ".join(inspect.signature(HOOKSPECS[hook]).parameters)
    assert f"{hook}({parameters}" in body, f"the {hook} section does not show its signature"
    assert "**When:**" in body, f"the {hook} section does not say when it is called"
    assert "@hookimpl" in body and f"def {hook}(" in body, f"the {hook} section has no example"


def test_no_documented_hook_is_stale(hook_sections: dict[str, str]) -> None:
    stale = sorted(set(hook_sections) - set(HOOKSPECS))
    assert stale == [], f"docs/plugin-hooks.md documents hooks that do not exist: {stale}"


def test_hookspecs_have_docstrings() -> None:
    missing = sorted(name for name, fn in HOOKSPECS.items() if not inspect.getdoc(fn))
    assert missing == []


@pytest.mark.parametrize("hook", sorted(HOOKSPECS))
def test_hookspec_has_a_test(hook: str) -> None:
    assert f"test_hook_{hook}" in _test_function_names(), (
        f"no test function named test_hook_{hook} under tests/ (add one to tests/test_hookspecs.py)"
    )


def test_migrations_doc_covers_every_db_command() -> None:
    text = (DOCS / "migrations.md").read_text(encoding="utf-8")
    db = cli.commands["db"]
    assert isinstance(db, click.Group)
    for name in db.commands:
        assert f"czo-kit db {name}" in text, f"docs/migrations.md does not mention `czo-kit db {name}`"


def test_doc_links_resolve() -> None:
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def _shown(value: Any) -> str:
    """A setting's default as the docs write it (the form its variable takes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return ",".join(_shown(item) for item in value)
    return str(value)


def test_readme_settings_table_gives_the_codes_defaults() -> None:
    """A default in README's settings table is the one `Settings` has (prose such as
    'random per process' is left to the reader)."""
    from czo_kit.settings import Settings

    defaults = Settings()
    rows = re.findall(r"^\| `CZO_([A-Z_]+)` \| `([^`]*)` \|", (ROOT / "README.md").read_text(encoding="utf-8"), re.M)
    assert len(rows) >= 10
    for variable, documented in rows:
        assert _shown(getattr(defaults, variable.lower())) == documented, f"CZO_{variable}"


def test_the_cli_logs_at_the_documented_default_level(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    documented = re.search(r"^\| `CZO_LOG_LEVEL` \| `([A-Z]+)` \|", (ROOT / "README.md").read_text(encoding="utf-8"), re.M)
    assert documented
    levels: list[str] = []
    monkeypatch.setattr("logging.basicConfig", lambda **options: levels.append(options["level"]))
    monkeypatch.delenv("CZO_LOG_LEVEL", raising=False)
    monkeypatch.setenv("CZO_DATABASE_URL", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    result = CliRunner().invoke(cli, ["db", "status"])
    assert result.exit_code == 0, result.output
    assert levels == [documented.group(1)]
