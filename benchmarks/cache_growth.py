"""Invalidation as the keyspace grows: czo_kit.cache against redis-py by hand, at 1,000 and
1,000,000 keys, with what a concurrent PING sees meanwhile.

    python -m benchmarks.cache_growth             # 1,000 and 1,000,000 keys, a few minutes
    python -m benchmarks.cache_growth --quick     # 1,000 and 20,000 keys, seconds
    python -m benchmarks.cache_growth --markdown  # tables as markdown

Redis is ``CZO_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/14``). Every key the run
writes starts with ``czo-bench-<pid>-`` and is deleted at the end (and expires within an hour
if the run dies). Use a database nothing else writes to: a pattern invalidation SCANs the whole
database, so other keys there slow both sides alike and blur the growth figures.

What is timed, one side at a time on a database holding only that side's keys (refilled
before every round, outside the timed region; the two sides alternate which goes first):

- ``invalidate("g:*")`` over N kit entries, against redis-py ``SCAN MATCH ... COUNT 1000``
  with one ``UNLINK`` per 1,000 keys (what a careful user writes by hand);
- ``invalidate_tags([tag])`` with N entries carrying the tag, against the naive way to drop a
  tag's entries when the tag is part of the key name: ``SCAN MATCH`` + ``DEL`` per 1,000 keys.
  The kit removes one version key, so its entries become misses at once but stay in Redis
  until their TTL (they are deleted after the timed call, outside the timing).

A separate process PINGs Redis in a loop on its own connection while each invalidation runs
(and while nothing runs, for the floor): Redis runs one command at a time, so a PING's latency
is what every other client waits for meanwhile. A KEYS or a DEL of a million keys would show
as a PING taking hundreds of milliseconds; batches keep it to a few. A PING spike can also be
the scheduler of a busy machine, so Redis's SLOWLOG (commands that held it longer than its
threshold, in server time) is read after every invalidation as well.
dogpile.cache's ``region.invalidate()`` is not compared: it marks the region invalid in the
calling process only (other processes keep serving the old values), so it is not the same work.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec

from benchmarks import _pg
from benchmarks.cache import VALUE  # the same ~200-byte mapping
from benchmarks._stats import (
    Check,
    Comparison,
    Summary,
    compose_report,
    environment,
    format_ratio,
    format_us,
    render,
    summarize,
    write_json,
)

SECRET = "czo-bench-secret-" + "x" * 32
SMALL = 1_000
LARGE = 1_000_000
LARGE_QUICK = 20_000
BATCH = 1_000  # SCAN COUNT and keys per UNLINK / DEL, on both sides (the kit's default)
FILL_CHUNK = 10_000  # keys per fill script: a few milliseconds of Redis each
ENTRY_TTL_MS = 3_600_000
IDLE_SECONDS = 2.0

# The slowest kit command Redis ran (server time) at the large size. Not the 0.8 ms a batch
# takes on a quiet server: on a loaded machine Redis itself is preempted, and the baseline's
# UNLINKs of 1,000 keys logged up to 23 ms here (its DELs up to 60 ms). A KEYS or one DEL over
# a million keys holds Redis for seconds.
SLOW_COMMAND_LIMIT_MS = 50.0
TAG_GROWTH_LIMIT = 3.0  # kit invalidate_tags p50 at the large size / at the small size


# Writes ARGV[1] .. i for i in ARGV[3]..ARGV[4], each holding ARGV[2], expiring after ARGV[5] ms.
# Server-side, in chunks of FILL_CHUNK: a million keys in seconds without blocking Redis for
# longer than a few milliseconds at a time (it is shared).
_FILL = """
local prefix, value, ttl = ARGV[1], ARGV[2], ARGV[5]
for i = tonumber(ARGV[3]), tonumber(ARGV[4]) do
  redis.call('SET', prefix .. i, value, 'PX', ttl)
end
return 0
"""


# -- the PING probe ------------------------------------------------------------------------


def _probe_loop(url: str, active: Any, stop: Any, conn: Any) -> None:
    """PING ``url`` back to back while ``active`` is set; send (start, duration) pairs in ns
    (``time.monotonic_ns``: the same clock in every process) when ``stop`` is set."""
    import redis

    client = redis.Redis.from_url(url, client_name="czo-bench-ping-probe")
    client.ping()
    starts, durations = array("q"), array("q")
    clock = time.monotonic_ns
    conn.send("ready")
    while not stop.is_set():
        if not active.value:
            time.sleep(0.001)
            continue
        began = clock()
        client.ping()
        starts.append(began)
        durations.append(clock() - began)
    conn.send_bytes(starts.tobytes())
    conn.send_bytes(durations.tobytes())
    client.close()


class Probe:
    """A process PINGing Redis during the windows the benchmark opens."""

    def __init__(self, url: str) -> None:
        context = multiprocessing.get_context("spawn")  # no redis-py state inherited
        self.active = context.Value("b", 0, lock=False)
        self.stop = context.Event()
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_probe_loop, args=(url, self.active, self.stop, child), daemon=True
        )
        self.process.start()
        if not self.conn.poll(30) or self.conn.recv() != "ready":
            raise RuntimeError("the PING probe did not start")
        self.windows: list[tuple[str, int, int]] = []
        self.starts = array("q")
        self.durations = array("q")

    @contextmanager
    def window(self, name: str) -> Iterator[None]:
        """Record PINGs while the block runs, under ``name``."""
        self.active.value = 1
        time.sleep(0.005)  # the probe is pinging before the block starts
        began = time.monotonic_ns()
        try:
            yield
        finally:
            self.windows.append((name, began, time.monotonic_ns()))
            self.active.value = 0

    def finish(self) -> None:
        self.stop.set()
        self.starts.frombytes(self.conn.recv_bytes())
        self.durations.frombytes(self.conn.recv_bytes())
        self.process.join(10)

    def close(self) -> None:
        if self.process.is_alive():
            self.process.terminate()  # our own child, by its handle
            self.process.join(5)

    def summaries(self) -> dict[str, Summary]:
        """PING latencies per window name: every PING that overlapped one of its windows."""
        by_name: dict[str, list[int]] = {}
        windows = sorted(self.windows, key=lambda w: w[1])
        pings = sorted(zip(self.starts, self.durations))
        j = 0
        for name, began, ended in windows:
            while j < len(pings) and pings[j][0] + pings[j][1] < began:
                j += 1
            k = j
            into = by_name.setdefault(name, [])
            while k < len(pings) and pings[k][0] < ended:
                into.append(pings[k][1])
                k += 1
        return {name: summarize(samples) for name, samples in by_name.items() if samples}


# -- the cases -----------------------------------------------------------------------------


@dataclass
class Side:
    """One side of a case: how to fill N keys, the timed invalidation, the check and the
    cleanup after it."""

    label: str
    fill: Callable[[int], None]
    invalidate: Callable[[], Any]
    check: Callable[[int, Any], None]
    cleanup: Callable[[], None] = lambda: None
    samples: dict[int, list[int]] = field(default_factory=dict)
    slow: dict[int, list[float]] = field(default_factory=dict)  # SLOWLOG durations, ms
    slow_lost: int = 0


@dataclass
class Case:
    name: str
    kit: Side
    base: Side
    baseline: str
    note: str


class Bench:
    def __init__(self, redis_url: str) -> None:
        import redis

        from czo_kit.cache import create_cache
        from czo_kit.settings import Settings

        stem = f"czo-bench-{os.getpid()}-"
        self.stem = stem.encode()
        self.pattern = stem + "*"
        self.kit_prefix = stem + "kit:"
        self.raw_prefix = stem + "raw:"
        self.client = redis.Redis.from_url(redis_url)
        self.client.ping()
        settings = Settings(secret_key=SECRET, cache_near_entries=0)
        self.cache = create_cache(redis_url, settings=settings, prefix=self.kit_prefix, strict=True)
        self._fill = self.client.register_script(_FILL)
        self.tag_round = 0
        self.tag = ""

    def close(self) -> int:
        self.cache.close()
        removed = _pg.delete_redis_keys(self.client, [self.pattern])
        self.client.close()
        return removed

    def slowlog_mark(self) -> int:
        """The id of the newest SLOWLOG entry (-1 when empty)."""
        entries = self.client.slowlog_get(1)
        return int(entries[0]["id"]) if entries else -1

    def slow_since(self, mark: int) -> tuple[list[float], int]:
        """Durations (ms) of this run's commands Redis logged as slow after entry ``mark``,
        and how many entries after it the log no longer holds (it keeps the newest 128)."""
        entries = [e for e in self.client.slowlog_get(1024) if int(e["id"]) > mark]
        lost = (max(int(e["id"]) for e in entries) - mark - len(entries)) if entries else 0
        ours = [e for e in entries if self.stem in bytes(e["command"])]
        fill = b"EVALSHA " + self._fill.sha.encode()
        return [int(e["duration"]) / 1000 for e in ours if not bytes(e["command"]).startswith(fill)], lost

    def fill(self, prefix: str, value: bytes, n: int) -> None:
        for first in range(0, n, FILL_CHUNK):
            last = min(first + FILL_CHUNK, n) - 1
            self._fill(keys=[], args=[prefix, value, first, last, ENTRY_TTL_MS])

    def kit_envelope(self, tags: Sequence[str]) -> bytes:
        """The bytes the kit stores for VALUE with ``tags``: copied to N keys by the fill."""
        self.cache.set("probe", VALUE, ttl=ENTRY_TTL_MS / 1000, tags=tags)
        raw = self.client.get(self.kit_prefix + "probe")
        self.client.unlink(self.kit_prefix + "probe")
        if raw is None:
            raise RuntimeError("the kit did not store its probe entry")
        return bytes(raw)

    def count(self, prefix: str) -> int:
        return sum(1 for _ in self.client.scan_iter(match=prefix + "*", count=10_000))

    def scan_delete(self, pattern: str, command: str) -> int:
        """What a user writes by hand: SCAN MATCH COUNT 1000, one UNLINK (or DEL) per batch."""
        remove = self.client.unlink if command == "UNLINK" else self.client.delete
        removed = 0
        batch: list[Any] = []
        for key in self.client.scan_iter(match=pattern, count=BATCH):
            batch.append(key)
            if len(batch) >= BATCH:
                removed += remove(*batch)
                batch.clear()
        if batch:
            removed += remove(*batch)
        return removed

    def expect_removed(self, prefix: str) -> Callable[[int, Any], None]:
        def check(n: int, removed: Any) -> None:
            if removed != n:
                raise AssertionError(f"removed {removed} keys, expected {n}")
            if self.client.exists(prefix + "0", prefix + str(n - 1)):
                raise AssertionError("keys are left after the invalidation")

        return check

    def cases(self) -> list[Case]:
        raw_value = msgspec.msgpack.encode(VALUE)
        plain = self.kit_envelope(())
        cache = self.cache

        def new_tag() -> str:
            self.tag_round += 1
            self.tag = f"grow-{self.tag_round}"
            return self.tag

        def fill_tagged(n: int) -> None:
            self.fill(self.kit_prefix + "t:", self.kit_envelope([new_tag()]), n)
            if cache.get("t:0", tags=[self.tag]) != VALUE:
                raise RuntimeError("the tagged entries do not read back")

        def check_tagged(n: int, _: Any) -> None:
            if cache.get("t:0") is not None or cache.get(f"t:{n - 1}") is not None:
                raise AssertionError("invalidate_tags left a tagged entry readable")

        def drop_tagged() -> None:
            self.scan_delete(self.kit_prefix + "t:*", "UNLINK")

        return [
            Case(
                "invalidate(pattern)",
                Side("kit", lambda n: self.fill(self.kit_prefix + "g:", plain, n),
                     lambda: cache.invalidate("g:*"), self.expect_removed(self.kit_prefix + "g:")),
                Side("base", lambda n: self.fill(self.raw_prefix + "g:", raw_value, n),
                     lambda: self.scan_delete(self.raw_prefix + "g:*", "UNLINK"),
                     self.expect_removed(self.raw_prefix + "g:")),
                "redis-py SCAN + UNLINK per 1,000",
                "every key matches; both SCAN COUNT 1000 and UNLINK 1,000 keys a command",
            ),
            Case(
                "invalidate_tags([tag])",
                Side("kit", fill_tagged, lambda: cache.invalidate_tags([self.tag]), check_tagged, drop_tagged),
                Side("base", lambda n: self.fill(self.raw_prefix + "tag:t:", raw_value, n),
                     lambda: self.scan_delete(self.raw_prefix + "tag:t:*", "DEL"),
                     self.expect_removed(self.raw_prefix + "tag:t:")),
                "redis-py SCAN + DEL per 1,000 (tag in the key name)",
                "every key carries the tag; the kit removes the tag's version key (one UNLINK)",
            ),
        ]


def measure(bench: Bench, probe: Probe, cases: Sequence[Case], n: int, rounds: int,
            progress: Callable[[str], None]) -> None:
    for case in cases:
        for r in range(rounds):
            sides = (case.kit, case.base) if r % 2 == 0 else (case.base, case.kit)
            for side in sides:
                side.fill(n)
                mark = bench.slowlog_mark()
                with probe.window(f"{case.name}|{side.label}|{n}"):
                    began = time.perf_counter_ns()
                    result = side.invalidate()
                    elapsed = time.perf_counter_ns() - began
                slow, lost = bench.slow_since(mark)
                side.slow.setdefault(n, []).extend(slow)
                side.slow_lost += lost
                side.check(n, result)
                side.cleanup()
                side.samples.setdefault(n, []).append(elapsed)
            if rounds <= 10 or (r + 1) % 10 == 0:
                progress(f"{case.name} over {n:,} keys: round {r + 1} of {rounds}")


# -- running -------------------------------------------------------------------------------


def _ms(us: float) -> str:
    return f"{us / 1000:,.2f}" if us < 100_000 else f"{us / 1000:,.0f}"


def run(redis_url: str, *, large: int, rounds: int, small_rounds: int,
        progress: Callable[[str], None] = lambda text: None) -> tuple[
            list[tuple[str, list[Comparison]]], list[Check], tuple[list[tuple[str, str]], list[tuple[str, str]]],
            list[str], dict[str, Any]]:
    """The comparison tables, checks, (text, markdown) extra tables, notes and JSON extras."""
    bench = Bench(redis_url)
    probe = Probe(redis_url)
    try:
        bench_threshold_us = bench.client.config_get("slowlog-log-slower-than").get("slowlog-log-slower-than", 10000)
        others = bench.client.dbsize()
        if others:
            progress(f"note: the database already holds {others:,} keys; every SCAN walks them too")
        cases = bench.cases()
        progress(f"PING floor: {IDLE_SECONDS:.0f} s with nothing else running")
        with probe.window("idle"):
            time.sleep(IDLE_SECONDS)
        measure(bench, probe, cases, SMALL, small_rounds, progress)
        measure(bench, probe, cases, large, rounds, progress)
        with probe.window("idle"):
            time.sleep(IDLE_SECONDS)
        probe.finish()
    finally:
        probe.close()
        removed = bench.close()
        progress(f"deleted {removed:,} Redis keys")
    pings = probe.summaries()

    def size(n: int) -> str:
        return f"{n:,} keys"

    sections = []
    for n in (SMALL, large):
        rows = []
        for case in cases:
            row = Comparison(f"{case.name}, {size(n)}", summarize(case.kit.samples[n]),
                             summarize(case.base.samples[n]), None, case.note, baseline=case.baseline)
            for side in ("kit", "base"):
                s = pings.get(f"{case.name}|{side}|{n}")
                row.extra[f"ping_{side}"] = None if s is None else vars_of(s)
            rows.append(row)
        sections.append((f"Invalidation over {size(n)} (µs per call)", rows))

    growth_body = []
    growth: dict[str, dict[str, float]] = {}
    for case in cases:
        kit_small, kit_large = (summarize(case.kit.samples[n]).p50 for n in (SMALL, large))
        base_small, base_large = (summarize(case.base.samples[n]).p50 for n in (SMALL, large))
        growth[case.name] = {"kit": kit_large / kit_small, "base": base_large / base_small}
        growth_body.append([
            case.name, _ms(kit_small), _ms(kit_large), format_ratio(kit_large / kit_small),
            _ms(base_small), _ms(base_large), format_ratio(base_large / base_small),
            format_ratio(kit_large / base_large),
        ])
    growth_header = ["operation", f"kit p50 ms, {size(SMALL)}", f"kit p50 ms, {size(large)}", "kit growth",
                     f"base p50 ms, {size(SMALL)}", f"base p50 ms, {size(large)}", "base growth",
                     f"kit / base, {size(large)}"]

    ping_body = []
    idle = pings.get("idle")
    if idle is not None:
        ping_body.append(["nothing else running", "", f"{idle.n:,}", format_us(idle.p50), format_us(idle.p95),
                          format_us(idle.p99), format_us(idle.max)])
    for n in (SMALL, large):
        for case in cases:
            for side, label in ((case.kit, "kit"), (case.base, case.baseline)):
                s = pings.get(f"{case.name}|{side.label}|{n}")
                if s is None:
                    ping_body.append([f"{case.name}, {size(n)}", label, "0", "", "", "", ""])
                    continue
                ping_body.append([f"{case.name}, {size(n)}", label, f"{s.n:,}", format_us(s.p50),
                                  format_us(s.p95), format_us(s.p99), format_us(s.max)])
    ping_header = ["during", "side", "PINGs", "p50 µs", "p95 µs", "p99 µs", "max µs"]

    def tables(markdown: bool) -> list[tuple[str, str]]:
        return [
            ("Growth: p50 at the large size / at the small size",
             render(growth_header, growth_body, markdown=markdown, numeric_from=1)),
            ("A concurrent client's PING latency (another process, its own connection)",
             render(ping_header, ping_body, markdown=markdown, numeric_from=2)),
            (f"Commands Redis logged as slow (SLOWLOG, over {threshold_us / 1000:g} ms of server time)",
             render(slow_header, slow_body, markdown=markdown, numeric_from=2)),
        ]

    threshold_us = int(bench_threshold_us)
    slow_body = []
    for n in (SMALL, large):
        for case in cases:
            for side, label in ((case.kit, "kit"), (case.base, case.baseline)):
                logged = side.slow.get(n, [])
                slow_body.append([f"{case.name}, {size(n)}", label, f"{len(logged):,}",
                                  f"{max(logged):,.1f}" if logged else ""])
    slow_header = ["during", "side", "commands logged", "slowest ms"]

    checks = []
    tags = cases[1].name
    for case in cases:
        logged = case.kit.slow.get(large, [])
        checks.append(Check(f"slowest kit command SLOWLOG logged, {case.name}, {size(large)}",
                            max(logged, default=0.0), SLOW_COMMAND_LIMIT_MS, unit="ms"))
    checks.append(Check(f"kit {tags} growth, {size(SMALL)} -> {size(large)}", growth[tags]["kit"],
                        TAG_GROWTH_LIMIT, unit="x"))
    lost = sum(side.slow_lost for case in cases for side in (case.kit, case.base))
    notes = [
        "PING max is also the machine's: with nothing else running it reached "
        f"{(idle.max / 1000) if idle is not None else 0:,.1f} ms here. SLOWLOG is Redis's own record of "
        "commands that held it longer than its threshold, in server time, so it names a blocking "
        "command where a PING spike may be the scheduler"
        + (f" ({lost:,} entries were pushed out of the log before they were read)." if lost else "."),
        f"Each invalidation ran {small_rounds} times at {size(SMALL)} and {rounds} times at {size(large)}, "
        "each time on a freshly filled database holding only that side's keys.",
        "The kit's invalidate_tags leaves the tagged entries in Redis until their TTL (they are misses "
        "from the moment the version key goes); the baseline deletes them.",
    ]
    extra = {"growth": growth, "pings": {name: vars_of(s) for name, s in pings.items()},
             "small": SMALL, "large": large, "rounds": rounds, "small_rounds": small_rounds}
    return sections, checks, (tables(False), tables(True)), notes, extra


def vars_of(s: Summary) -> dict[str, float]:
    return {name: getattr(s, name) for name in Summary.__slots__}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache_growth", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a smoke run: {LARGE_QUICK:,} keys for the large size")
    parser.add_argument("--keys", type=int, default=None, help=f"the large size (default {LARGE:,})")
    parser.add_argument("--rounds", type=int, default=None, help="invalidations per side at the large size (default 5)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    import redis

    large = args.keys or (LARGE_QUICK if args.quick else LARGE)
    rounds = args.rounds or (3 if args.quick else 5)
    small_rounds = 20 if args.quick else 100
    redis_url = _pg.redis_url()
    env = environment(["redis", "msgspec"])
    started = time.monotonic()
    try:
        sections, checks, both_tables, notes, extra = run(
            redis_url, large=large, rounds=rounds, small_rounds=small_rounds,
            progress=lambda text: print(text, file=sys.stderr, flush=True),
        )
    except redis.exceptions.ConnectionError as exc:
        print(f"Redis at {redis_url} is not usable ({exc}); set CZO_BENCH_REDIS_URL", file=sys.stderr)
        return 2
    elapsed = time.monotonic() - started
    tables = both_tables[1] if args.markdown else both_tables[0]
    print(compose_report(env, sections, checks, notes=notes, tables=tables, markdown=args.markdown, elapsed=elapsed))
    if args.json:
        write_json(args.json, env=env, quick=args.quick, sections=sections, checks=checks, notes=notes, **extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
