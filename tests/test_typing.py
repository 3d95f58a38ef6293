"""mypy --strict passes on czo_kit/, and catches the mistakes shown in tests/typing/.

Each line in tests/typing/*.py marked ``# E: <code>`` must produce exactly that mypy error;
every other line must type-check.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
MARK = re.compile(r"#\s*E:\s*([a-z-]+)")
ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "setup.cfg"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_mypy_strict_passes_on_the_package() -> None:
    result = _mypy("czo_kit")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_flags_exactly_the_marked_lines() -> None:
    files = sorted(TYPING.glob("*.py"))
    assert files
    expected: set[tuple[str, int, str]] = set()
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = MARK.search(line)
            if match:
                expected.add((path.name, number, match.group(1)))
    assert expected, "the typing examples must contain expected errors"
    result = _mypy(*(str(p.relative_to(ROOT)) for p in files))
    found: set[tuple[str, int, str]] = set()
    for line in result.stdout.splitlines():
        match = ERROR.match(line.strip())
        if match:
            found.add((Path(match["path"]).name, int(match["line"]), match["code"]))
    assert found == expected, (
        f"missing errors: {sorted(expected - found)}\n"
        f"unexpected errors: {sorted(found - expected)}\n{result.stdout}"
    )
