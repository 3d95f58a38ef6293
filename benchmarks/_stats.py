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
    "Check",
    "Comparison",
    "Pair",
    "Summary",
    "compose_report",
    "environment",
    "environment_line",
    "format_checks",
    "format_ratio",
    "format_table",
    "format_us",
    "percentile",
    "render",
    "run_pairs",
    "summarize",
    "time_interleaved",
    "time_round_robin",
    "to_json",
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
    baseline: str = ""  # what the kit is compared with, when a table mixes baselines

    @property
    def ratio(self) -> float:
        return self.kit.p50 / self.base.p50

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target


@dataclass
class Pair:
    """One table row to measure: the kit call and its baseline, timed alternately.

    Pairs with the same ``group`` are timed in one round-robin loop (every call once per
    iteration, in a shuffled order), so ratios between them compare figures taken side by side.
    ``check(kit_result, base_result)`` runs once before timing and raises ``AssertionError``
    when the two sides did different work.
    """

    name: str
    kit: Call
    base: Call
    baseline: str
    iterations: int
    warmup: int
    target: float | None = None
    note: str = ""
    group: str = ""
    check: Callable[[Any, Any], None] | None = None


def run_pairs(
    pairs: Sequence[Pair], *, progress: Callable[[str], None] = lambda text: None
) -> list[Comparison]:
    """Time every pair (grouped as declared), in declaration order of the groups."""
    groups: dict[str, list[Pair]] = {}
    for pair in pairs:
        groups.setdefault(pair.group or pair.name, []).append(pair)
    rows: list[Comparison] = []
    for group in groups.values():
        iterations = max(p.iterations for p in group)
        warmup = max(p.warmup for p in group)
        progress(", ".join(p.name for p in group) + f": {iterations:,} x {2 * len(group)} calls")
        mismatches = []
        for pair in group:
            mismatch = ""
            if pair.check is not None:
                index = -warmup - 2  # before the warm-up: never an input the timing uses
                kit_result = pair.kit.fn(pair.kit.arg(index))
                base_result = pair.base.fn(pair.base.arg(index))
                try:
                    pair.check(kit_result, base_result)
                except AssertionError as exc:
                    mismatch = str(exc)  # still timed, but reported
            mismatches.append(mismatch)
        calls = [call for pair in group for call in (pair.kit, pair.base)]
        samples = time_round_robin(calls, iterations=iterations, warmup=warmup)
        for j, (pair, mismatch) in enumerate(zip(group, mismatches)):
            row = Comparison(
                pair.name, summarize(samples[2 * j]), summarize(samples[2 * j + 1]),
                pair.target, pair.note, baseline=pair.baseline,
            )
            if mismatch:
                row.extra["mismatch"] = mismatch
            rows.append(row)
    return rows


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
    show_calls: bool = False,
) -> str:
    """The comparison as an aligned text table, or as a GitHub markdown table.

    When any row names its ``baseline``, a second column says what each row is compared with;
    ``show_calls`` adds how many calls were timed per side.
    """
    with_baseline = any(row.baseline for row in rows)
    header = [
        "operation",
        *(["baseline"] if with_baseline else []),
        f"{kit_label} p50", f"{kit_label} p95", f"{kit_label} p99",
        f"{base_label} p50", f"{base_label} p95", f"{base_label} p99",
        "ratio", "target", "met?",
        *(["calls"] if show_calls else []),
    ]
    body = [
        [
            row.operation,
            *([row.baseline] if with_baseline else []),
            format_us(row.kit.p50), format_us(row.kit.p95), format_us(row.kit.p99),
            format_us(row.base.p50), format_us(row.base.p95), format_us(row.base.p99),
            format_ratio(row.ratio),
            "" if row.target is None else f"<= {row.target:.2f}x",
            _met(row.met),
            *([f"{row.kit.n:,}"] if show_calls else []),
        ]
        for row in rows
    ]
    return render(header, body, markdown=markdown, numeric_from=2 if with_baseline else 1)


@dataclass(frozen=True, slots=True)
class Check:
    """A target that is not a p50 ratio: an absolute latency, a throughput, a derived ratio.

    ``value`` must be below ``limit`` (strictly), or at least ``limit`` when ``at_least``.
    """

    what: str
    value: float
    limit: float
    unit: str = "µs"  # "µs", "ms", "x" (a ratio), "/s"
    at_least: bool = False
    note: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value < self.limit

    def show(self, value: float) -> str:
        if self.unit == "x":
            return format_ratio(value)
        if self.unit == "µs":
            return format_us(value) + " µs"
        return f"{value:,.0f} {self.unit}" if value >= 100 else f"{value:,.2f} {self.unit}"


def format_checks(checks: Sequence[Check], *, markdown: bool = False) -> str:
    """Targets other than p50 ratios: what, measured, target, met?"""
    body = [
        [
            check.what,
            check.show(check.value),
            (">= " if check.at_least else "< ") + check.show(check.limit),
            "yes" if check.met else "NO",
        ]
        for check in checks
    ]
    return render(["target", "measured", "limit", "met?"], body, markdown=markdown, numeric_from=1)


def environment_line(env: dict[str, str], *, markdown: bool) -> str:
    if markdown:
        return "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items())
    return "  ".join(f"{k}={v}" for k, v in env.items())


def to_json(row: Comparison) -> dict[str, Any]:
    """One comparison with its ratio and verdict, for ``--json``."""
    return {
        "operation": row.operation,
        "baseline": row.baseline,
        "kit": {name: getattr(row.kit, name) for name in Summary.__slots__},
        "base": {name: getattr(row.base, name) for name in Summary.__slots__},
        "ratio": row.ratio,
        "target": row.target,
        "met": row.met,
        "note": row.note,
        "extra": row.extra,
    }


def write_json(
    path: str,
    *,
    env: dict[str, str],
    quick: bool,
    sections: Sequence[tuple[str, Sequence[Comparison]]],
    checks: Sequence[Check],
    notes: Sequence[str],
    **extra: Any,
) -> None:
    """Write a benchmark's ``--json`` output: every comparison, every check, its own extras."""
    import json

    document = {
        "environment": env,
        "quick": quick,
        "results": [to_json(row) for _, section in sections for row in section],
        "checks": [
            {"what": c.what, "value": c.value, "limit": c.limit, "unit": c.unit, "at_least": c.at_least, "met": c.met}
            for c in checks
        ],
        **extra,
        "notes": list(notes),
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2, default=str)


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
        try:
            changed = subprocess.run(
                ["git", "status", "--porcelain", "--", "czo_kit"],
                capture_output=True, text=True, timeout=5,
                cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            ).stdout.splitlines()
        except (OSError, subprocess.SubprocessError):
            changed = []
        if changed:
            # The figures are of the working tree, not of the commit alone.
            info["commit"] += f" + uncommitted changes to {len(changed)} file(s) in czo_kit/"
    return info


def compose_report(
    env: dict[str, str],
    sections: Sequence[tuple[str, Sequence[Comparison]]],
    checks: Sequence[Check],
    *,
    notes: Sequence[str] = (),
    tables: Sequence[tuple[str, str]] = (),
    markdown: bool,
    elapsed: float,
) -> str:
    """Environment, one table per section, any pre-rendered ``tables`` (title, text), the
    other targets, notes, and what was missed."""
    parts = [environment_line(env, markdown=markdown), ""]
    rows = [row for _, section in sections for row in section]
    show_calls = len({row.kit.n for row in rows}) > 1
    for title, section in sections:
        if not section:
            continue
        parts.append(f"**{title}**" if markdown else f"== {title}")
        parts.append("")
        parts.append(format_table(section, kit_label="kit", base_label="base", markdown=markdown,
                                  show_calls=show_calls))
        parts.append("")
    for title, table in tables:
        parts.append(f"**{title}**" if markdown else f"== {title}")
        parts.append("")
        parts.append(table)
        parts.append("")
    if checks:
        parts.append("**Other targets**" if markdown else "== Other targets")
        parts.append("")
        parts.append(format_checks(checks, markdown=markdown))
        parts.append("")
    for row in rows:
        if "mismatch" in row.extra:
            parts.append(f"RESULTS DIFFER in {row.operation!r}: {row.extra['mismatch']}")
    for note in notes:
        parts.append(note)
        if markdown:
            parts.append("")  # one paragraph each
    missed = [row.operation for row in rows if row.met is False]
    missed += [check.what for check in checks if not check.met]
    samples = "in the calls column" if show_calls else f"{rows[0].kit.n:,}" if rows else "none"
    parts.append(
        "Latencies in microseconds; ratio = kit p50 / base p50 (below 1: the kit is faster). "
        f"Calls timed per side: {samples}."
    )
    parts.append(f"Targets missed: {', '.join(missed) if missed else 'none'}. Run took {elapsed:.0f} s.")
    return "\n".join(parts)
