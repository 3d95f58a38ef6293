"""The example modules, the example apps and the outside test plugins use only the kit's
public API: no ``czo_kit._x`` or ``czo_kit.x._y`` module, no ``_name``, and only names a
module lists in its ``__all__``. What they need, a third party needs too, so it must be public.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(
    path for path in [*(ROOT / "plugins").iterdir(), *(ROOT / "tests" / "plugins").iterdir()]
    if (path / "pyproject.toml").is_file()
)


def kit_imports(source: str) -> list[tuple[int, str, str | None]]:
    """(line, module, name or None) of every import of czo_kit in ``source``."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names if alias.name.split(".")[0] == "czo_kit"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "czo_kit":
            found += [(node.lineno, node.module or "", alias.name) for alias in node.names]
    return found


def private_uses(source: str) -> list[str]:
    problems: list[str] = []
    for line, module, name in kit_imports(source):
        private = [part for part in module.split(".") if part.startswith("_")]
        if private:
            problems.append(f"{line}: {module} is a private module")
            continue
        if name is None:
            continue
        if name.startswith("_"):
            problems.append(f"{line}: {module}.{name} is private")
            continue
        public = getattr(importlib.import_module(module), "__all__", None)
        if public is not None and name not in public and not _is_module(f"{module}.{name}"):
            problems.append(f"{line}: {module}.{name} is not in {module}.__all__")
    return problems


def _is_module(dotted: str) -> bool:
    try:
        importlib.import_module(dotted)
    except ImportError:
        return False
    return True


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from czo_kit.db._tables import KitTable", "czo_kit.db._tables is a private module"),
        ("import czo_kit._status", "czo_kit._status is a private module"),
        ("from czo_kit.plugins import _entry_points", "czo_kit.plugins._entry_points is private"),
        ("from czo_kit.kit import log", "czo_kit.kit.log is not in czo_kit.kit.__all__"),
    ],
)
def test_the_scan_catches_private_imports(source: str, expected: str) -> None:
    assert private_uses(source) == [f"1: {expected}"]


def test_the_scan_accepts_public_imports() -> None:
    assert private_uses("from czo_kit import Kit, hookimpl\nfrom czo_kit.db import Model\nimport czo_kit.http\n") == []


def test_example_and_outside_plugins_use_only_the_public_api() -> None:
    assert {path.name for path in PACKAGES} >= {"czo-product", "czo-order", "czo-app-stripe", "czo-test-reviews"}
    problems = [
        f"{path.relative_to(ROOT)}:{problem}"
        for package in PACKAGES
        for path in sorted(package.rglob("*.py"))
        if "build" not in path.relative_to(package).parts
        for problem in private_uses(path.read_text(encoding="utf-8"))
    ]
    assert problems == [], "\n".join(problems)
