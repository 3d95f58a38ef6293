"""The coverage floor holds for each measured package (the kit, the example modules and apps),
not only for their total: tests/coverage_floors.py, run here on a small project of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coverage_floors import below_floor, package_percentages

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _project(tmp_path: Path, *, small_covered: bool) -> Path:
    """``big`` (40 lines, all run) and ``small`` (4 lines, half run unless ``small_covered``):
    their total is over 85% either way."""
    big = tmp_path / "big"
    big.mkdir()
    (big / "__init__.py").write_text("".join(f"V{n} = {n}\n" for n in range(40)))
    small = tmp_path / "small"
    small.mkdir()
    (small / "__init__.py").write_text(textwrap.dedent("""
        def used():
            return 1
        def unused():
            return 2
    """))
    (tmp_path / "test_it.py").write_text(textwrap.dedent(f"""
        import big, small
        def test_it():
            assert big.V39 == 39 and small.used() == 1
            {"assert small.unused() == 2" if small_covered else ""}
    """))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / ".coveragerc").write_text("[run]\nsource = big, small\n")
    return tmp_path


def _pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(project)])}
    env.pop("COV_CORE_SOURCE", None)  # not the measurement of the run that runs this test
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "coverage_floors", "-p", "no:cacheprovider", "--cov",
         "--cov-fail-under=85", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )


def test_a_package_under_the_floor_fails_the_run_though_the_total_passes(tmp_path: Path) -> None:
    result = _pytest(_project(tmp_path, small_covered=False))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout
    assert "Required test coverage of 85% reached" in result.stdout  # the total alone passes
    assert "Coverage failure: small is at 75.00%, under the floor of 85%" in result.stdout
    assert "big is at" not in result.stdout


def test_every_package_over_the_floor_passes(tmp_path: Path) -> None:
    result = _pytest(_project(tmp_path, small_covered=True))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Coverage failure" not in result.stdout


def test_without_coverage_nothing_is_checked(tmp_path: Path) -> None:
    result = _pytest(_project(tmp_path, small_covered=False), "--no-cov")
    assert result.returncode == 0, result.stdout + result.stderr


def test_percentages_per_package_and_messages(tmp_path: Path) -> None:
    import coverage

    project = _project(tmp_path, small_covered=False)
    # Measured in a child process: a second tracer here would disturb this run's own coverage.
    subprocess.run(
        [sys.executable, "-m", "coverage", "run", "--source=big,small", "-m", "pytest", "-q",
         "-p", "no:cacheprovider", "test_it.py"],
        cwd=project, check=True, capture_output=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(project)},
    )
    cov = coverage.Coverage(data_file=str(project / ".coverage"), config_file=False)
    cov.load()
    found = package_percentages(cov, ["big", "small", "absent"])
    assert found == {"big": 100.0, "small": 75.0, "absent": 0.0}
    assert below_floor(found, 85) == [
        "Coverage failure: absent is at 0.00%, under the floor of 85% that every measured package must reach on its own",
        "Coverage failure: small is at 75.00%, under the floor of 85% that every measured package must reach on its own",
    ]
    assert below_floor(found, 50) == [below_floor(found, 85)[0].replace("85%", "50%")]


@pytest.mark.parametrize("package", ["czo_kit", "czo_product", "czo_order", "czo_app_stripe", "czo_app_loyalty"])
def test_the_suite_measures_the_kit_and_every_example_package(package: str) -> None:
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert package in config["coverage:run"]["source"].replace(",", " ").split()
    addopts = config["tool:pytest"]["addopts"].split()
    assert "--cov" in addopts and "--cov-fail-under=85" in addopts
