"""Shared benchmark plumbing: interleaved timing, percentiles, and the comparison table.

Every benchmark in this directory compares the kit with the library a module author would
otherwise use, measured in the same run: absolute figures drift between runs and machines,
ratios much less. Timings alternate the two sides call by call (and which side goes first),
so a slow stretch of the machine lands on both.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, NamedTuple

__all__ = [
    "Call",
    "Comparison",
    "Summary",
    "environment",
    "format_ratio",
    "format_table",
    "format_us",
    "percentile",
    "render",
    "summarize",
    "time_interleaved",
    "time_round_robin",
]

_ns = time.perf_counter_ns


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of already sorted values, linearly interpolated.

    The same definition as ``numpy.percentile``'s default and ``statistics.quantiles(...,
    method="inclusive")``, so figures compare with other tools.
    """
    if not ordered:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0-100, got {q}")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Summary:
    """Percentiles of one side of a comparison, in microseconds."""

    n: int
    p50: float
    p95: float
    p99: float
    mean: float
    min: float
    max: float


def summarize(samples_ns: Iterable[int]) -> Summary:
    """Percentiles in microseconds from raw ``perf_counter_ns`` durations."""
    ordered = sorted(s / 1000 for s in samples_ns)
    if not ordered:
        raise ValueError("no samples")
    return Summary(
        n=len(ordered),
        p50=percentile(ordered, 50),
        p95=percentile(ordered, 95),
        p99=percentile(ordered, 99),
        mean=sum(ordered) / len(ordered),
        min=ordered[0],
        max=ordered[-1],
    )


class Call(NamedTuple):
    """One side of a timed comparison.

    ``fn(arg(i))`` is timed for call ``i``; preparing the argument and ``after(result)`` (to
    keep state such as row versions) happen outside the timed region.
    """

    fn: Callable[[Any], Any]
    arg: Callable[[int], Any] = lambda i: None
    after: Callable[[Any], Any] | None = None


def time_round_robin(calls: Sequence[Call], *, iterations: int, warmup: int = 0) -> list[list[int]]:
    """Time every call once per iteration; one list of nanosecond durations per call.

    A slow stretch of the machine lands on all the calls alike, so ratios between any two of
    them stay fair on a busy machine. Two calls alternate which goes first. Three or more go
    in a fresh (seeded) random order each iteration: a fixed rotation would keep each call
    right after the same neighbour, and a call that follows a heavy one (a deep OFFSET scan
    that flushes the CPU caches) is measurably slower.
    """
    out: list[list[int]] = [[] for _ in calls]
    order = list(range(len(calls)))
    shuffle = random.Random(len(calls)).shuffle
    gc.collect()
    for i in range(-warmup, iterations):
        if len(order) == 2:
            sequence = order if i % 2 == 0 else order[::-1]
        else:
            shuffle(order)
            sequence = order
        for k in sequence:
            fn, make_arg, after = calls[k]
            arg = make_arg(i)
            start = _ns()
            result = fn(arg)
            elapsed = _ns() - start
            if after is not None:
                after(result)
            if i >= 0:
                out[k].append(elapsed)
    return out


def time_interleaved(
    kit: Callable[[Any], Any],
    base: Callable[[Any], Any],
    *,
    iterations: int,
    warmup: int = 0,
    kit_arg: Callable[[int], Any] = lambda i: None,
    base_arg: Callable[[int], Any] | None = None,
    kit_after: Callable[[Any], Any] | None = None,
    base_after: Callable[[Any], Any] | None = None,
) -> tuple[list[int], list[int]]:
    """Two-sided ``time_round_robin``: ``kit`` and ``base`` alternately, durations in ns.

    ``base_arg`` defaults to ``kit_arg``, so both sides do the same work on the same input.
    """
    kit_ns, base_ns = time_round_robin(
        [Call(kit, kit_arg, kit_after), Call(base, kit_arg if base_arg is None else base_arg, base_after)],
        iterations=iterations,
        warmup=warmup,
    )
    return kit_ns, base_ns


@dataclass(slots=True)
class Comparison:
    """One table row: the kit against its baseline for one operation."""

    operation: str
    kit: Summary
    base: Summary
    target: float | None = None  # the kit p50 / baseline p50 must be at most this
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.kit.p50 / self.base.p50

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target


def format_us(value: float) -> str:
    """Microseconds, with one decimal below 100 and thousands separators above."""
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def format_ratio(value: float) -> str:
    return f"{value:.2f}x"


def _met(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "NO")


def format_table(
    rows: Sequence[Comparison],
    *,
    kit_label: str = "kit",
    base_label: str = "raw",
    markdown: bool = False,
) -> str:
    """The comparison as an aligned text table, or as a GitHub markdown table."""
    header = [
        "operation",
        f"{kit_label} p50", f"{kit_label} p95", f"{kit_label} p99",
        f"{base_label} p50", f"{base_label} p95", f"{base_label} p99",
        "ratio", "target", "met?",
    ]
    body = [
        [
            row.operation,
            format_us(row.kit.p50), format_us(row.kit.p95), format_us(row.kit.p99),
            format_us(row.base.p50), format_us(row.base.p95), format_us(row.base.p99),
            format_ratio(row.ratio),
            "" if row.target is None else f"<= {row.target:.2f}x",
            _met(row.met),
        ]
        for row in rows
    ]
    return render(header, body, markdown=markdown, numeric_from=1)


def render(
    header: Sequence[str],
    body: Sequence[Sequence[str]],
    *,
    markdown: bool = False,
    numeric_from: int = 1,
) -> str:
    """A generic table: columns from ``numeric_from`` on are right-aligned."""
    if markdown:
        align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i < numeric_from else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for text in f:
                if text.startswith("model name"):
                    return text.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(distributions: Sequence[str] = ()) -> dict[str, str]:
    """What the figures depend on: CPU, cores, Python, and the given packages' versions."""
    info = {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "os": platform.platform(terse=True),
        "python": sys.version.split()[0],
    }
    for name in distributions:
        info[name] = _version(name)
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = ""
    if revision:
        info["commit"] = revision
    return info
