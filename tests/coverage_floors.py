"""A pytest plugin: every package coverage measures is held to the floor on its own.

pytest-cov's ``--cov-fail-under`` checks the total of everything measured. With the example
modules and apps measured next to ``czo_kit`` (``[coverage:run] source`` in setup.cfg), a
well-covered kit could carry a poorly covered module past the floor, or the reverse; so after
pytest-cov has made its report, each package of ``source`` is checked against the same floor,
and the run fails naming the packages under it. Loaded by tests/conftest.py.
"""

from __future__ import annotations

import io
from collections.abc import Generator, Sequence
from typing import Any

import pytest

__all__ = ["below_floor", "package_percentages"]


def package_percentages(cov: Any, packages: Sequence[str]) -> dict[str, float]:
    """The coverage (as ``coverage report`` computes it) of each package's own files.

    ``cov`` is a ``coverage.Coverage`` with data. A package with no measured file counts as 0.
    """
    from coverage.exceptions import NoDataError

    found: dict[str, float] = {}
    for package in packages:
        try:
            found[package] = float(cov.report(include=[f"*/{package}/*"], file=io.StringIO()))
        except NoDataError:
            found[package] = 0.0
    return found


def below_floor(percentages: dict[str, float], floor: float) -> list[str]:
    """One message per package under ``floor``, naming it, its figure and the floor."""
    return [
        f"Coverage failure: {package} is at {percent:.2f}%, under the floor of {floor:g}% that "
        f"every measured package must reach on its own"
        for package, percent in sorted(percentages.items())
        if percent < floor
    ]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> Generator[None, Any, Any]:
    # tryfirst makes this the outermost wrapper: pytest-cov's report is done when it resumes.
    result = yield
    plugin = session.config.pluginmanager.getplugin("_cov")
    floor = getattr(session.config.option, "cov_fail_under", None)
    if plugin is None or getattr(plugin, "cov_total", None) is None or not floor:
        return result  # coverage off (--no-cov), a worker, or no floor asked for
    cov = plugin.cov_controller.cov
    packages = [str(name) for name in (cov.config.source or ())]
    messages = below_floor(package_percentages(cov, packages), float(floor))
    if messages:
        reporter = session.config.pluginmanager.getplugin("terminalreporter")
        for message in messages:
            reporter.write(f"\nERROR: {message}\n", red=True, bold=True)
        session.testsfailed += len(messages)
    return result
