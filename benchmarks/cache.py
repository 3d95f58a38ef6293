"""czo_kit.cache against redis-py, dogpile.cache and the database, in the same run.

    python -m benchmarks.cache            # full run, about 40 seconds
    python -m benchmarks.cache --quick    # smoke run, seconds
    python -m benchmarks.cache --markdown # tables as markdown (for docs/benchmarks.md)

Redis is ``CZO_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/14``; the test suite uses
db 15), PostgreSQL ``CZO_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Every Redis key the run writes starts with
``czo-bench-<pid>-`` and is deleted at the end; the cached-queries table lives in the scratch
schema ``czo_bench_cache``, created at the start and dropped at the end.

Each kit call and its baseline alternate call by call, after a warm-up, on the same Redis,
with the same value (a 10-field mapping, 208 bytes of msgpack): the baselines encode and
decode it with msgspec too, so both sides take and return Python values.

The Redis driver keeps a near cache in the process by default (``CZO_CACHE_NEAR_ENTRIES``).
The comparisons with redis-py and dogpile.cache run with it off, so that both sides do the
same round trip; rows marked "near cache" run with it on, as a module gets it by default.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import peewee

from benchmarks import _pg
from benchmarks._stats import (
    Call,
    Check,
    Comparison,
    Pair,
    compose_report,
    environment,
    run_pairs,
    summarize,
    time_round_robin,
    write_json,
)
from czo_kit.db import Model

SECRET = "czo-bench-secret-" + "x" * 32
DEFAULT_SCHEMA = "czo_bench_cache"

REDIS_TARGET = 1.3  # kit get / set p50 vs redis-py
DOGPILE_TARGET = 1.0  # kit get_or_set hit p50 vs dogpile get_or_create hit: faster
CACHED_TARGET = 1 / 3  # cached find_by_id hit p50 vs uncached: at least 3x faster
INVALIDATE_TARGET = 1.25  # invalidate_tags, 100,000 tagged keys vs 1: about the same
MEMORY_P99_LIMIT = 20.0  # µs, memory driver get hit
READ_P95_LIMIT_MS = 50.0  # the read latency requirement

KEYS = 1_000  # distinct keys each side cycles through
BULK = 20
ROWS = 10_000  # rows of the cached-queries table
CACHED_IDS = 1_000
TAGGED_FULL = 100_000
TAGGED_QUICK = 10_000
FILL_BATCH = 1_000

# About 200 bytes once encoded: a product-ish mapping, what a module typically caches.
VALUE: dict[str, Any] = {
    "id": 12345,
    "sku": "SKU-0012345",
    "name": "Bench product with a plausible name",
    "price": 1999,
    "currency": "EUR",
    "stock": 42,
    "tags": ["a", "b", "c"],
    "description": "x" * 80,
    "active": True,
}

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class CachedRow(Model):
    shop_id = peewee.IntegerField(index=True)
    name = peewee.CharField(max_length=200)
    price = peewee.IntegerField()

    class Meta:
        table_name = "bench_cached"


def _same(what: str, kit: Any, base: Any) -> None:
    if kit != base:
        raise AssertionError(f"{what}: kit and baseline disagree: {kit!r} != {base!r}")


class Keys:
    """Prefixes of every key one run writes, so that the run can delete them all."""

    def __init__(self) -> None:
        stem = f"czo-bench-{os.getpid()}-"
        self.kit = stem + "kit:"
        self.near = stem + "near:"  # a prefix of its own: its key tracking hears only its keys
        self.raw = stem + "raw:"
        self.dogpile = stem + "dogpile:"
        self.pattern = stem + "*"


# -- setup --------------------------------------------------------------------------------


def open_database(base_url: str, schema: str) -> peewee.Database:
    from czo_kit.default_plugins.postgres import create_postgresql_database
    from czo_kit.settings import Settings

    url = _pg.schema_url(base_url, schema)
    db = create_postgresql_database(url, settings=Settings(database_url=url, secret_key=SECRET))
    db.bind([CachedRow])
    db.connect()
    (path,) = db.execute_sql("SHOW search_path").fetchone()
    if path.strip('"') != schema:
        raise RuntimeError(f"search_path is {path!r}, expected {schema!r}; check the database URL")
    db.create_tables([CachedRow])
    db.execute_sql(
        "INSERT INTO bench_cached (created_at, updated_at, version, deleted_at, shop_id, name, price) "
        "SELECT now() AT TIME ZONE 'utc', now() AT TIME ZONE 'utc', 1, "
        "CASE WHEN mod(g, 100) = 0 THEN now() AT TIME ZONE 'utc' END, "
        f"mod(g, 20) + 1, 'item ' || g, mod(g * 7919, 5000) FROM generate_series(1, {ROWS}) AS g"
    )
    db.execute_sql("VACUUM ANALYZE bench_cached")
    return db


# -- the cases ----------------------------------------------------------------------------


def redis_pairs(cache: Any, near: Any, client: Any, keys: Keys, n: Callable[[int], int],
                w: Callable[[int], int]) -> list[Pair]:
    """get / set / get_many / set_many against redis-py doing the same work."""
    kit_keys = [f"v:{i}" for i in range(KEYS)]
    raw_keys = [f"{keys.raw}v:{i}" for i in range(KEYS)]
    encoded = _encode(VALUE)
    cache.set_many(dict.fromkeys(kit_keys, VALUE), ttl=3600)
    near.set_many(dict.fromkeys(kit_keys, VALUE), ttl=3600)
    for key in kit_keys:
        near.get(key)  # held in the process from now on
    tagged_keys = [f"t:{i}" for i in range(KEYS)]
    for start in range(0, KEYS, 100):
        cache.set_many(dict.fromkeys(tagged_keys[start:start + 100], VALUE), ttl=3600, tags=["bench-one-tag"])
    pipe = client.pipeline(transaction=False)
    for key in raw_keys:
        pipe.set(key, encoded, px=3_600_000)
    pipe.execute()

    def key_of(i: int) -> int:
        return i % KEYS

    def raw_get(i: int) -> Any:
        value = client.get(raw_keys[i])
        return None if value is None else _decode(value)

    def raw_set(i: int) -> Any:
        return client.set(raw_keys[i], _encode(VALUE), px=300_000)

    set_keys = [f"s:{i}" for i in range(KEYS)]
    raw_set_keys = [f"{keys.raw}s:{i}" for i in range(KEYS)]

    groups = [kit_keys[i:i + BULK] for i in range(0, KEYS, BULK)]
    raw_groups = [raw_keys[i:i + BULK] for i in range(0, KEYS, BULK)]

    def raw_mget(i: int) -> Any:
        return [None if v is None else _decode(v) for v in client.mget(raw_groups[i])]

    set_groups = [{f"m:{i + k}": VALUE for k in range(BULK)} for i in range(0, KEYS, BULK)]
    raw_set_groups = [[f"{keys.raw}m:{i + k}" for k in range(BULK)] for i in range(0, KEYS, BULK)]

    def raw_set_many(i: int) -> Any:
        pipe = client.pipeline(transaction=False)
        for key in raw_set_groups[i]:
            pipe.set(key, _encode(VALUE), px=300_000)
        return pipe.execute()

    def check_get(kit: Any, base: Any) -> None:
        _same("value", kit, base)

    def check_get_many(kit: dict[str, Any], base: list[Any]) -> None:
        _same("values", list(kit.values()), base)

    def group_of(i: int) -> int:
        return i % len(groups)

    return [
        Pair("get hit", Call(lambda k: cache.get(kit_keys[k]), key_of), Call(raw_get, key_of),
             "redis-py GET + decode", n(5000), w(300), REDIS_TARGET, group="get", check=check_get,
             note="one GET each; the kit also opens its envelope header"),
        Pair("get hit (near cache)", Call(lambda k: near.get(kit_keys[k]), key_of), Call(raw_get, key_of),
             "redis-py GET + decode", n(5000), w(300), None, group="get", check=check_get,
             note="the default: served from the process, after a non-blocking poll of the tracking socket"),
        Pair("get hit, 1-tag entry, tag named", Call(lambda k: cache.get(tagged_keys[k], tags=["bench-one-tag"]), key_of),
             Call(raw_get, key_of), "redis-py GET + decode", n(5000), w(300), None, group="get", check=check_get,
             note="get(key, tags=[tag]): one MGET of the entry and the tag's version"),
        Pair("get hit, 1-tag entry, tag not named", Call(lambda k: cache.get(tagged_keys[k]), key_of),
             Call(raw_get, key_of), "redis-py GET + decode", n(5000), w(300), None, group="get", check=check_get,
             note="the tag's version costs a second round trip"),
        Pair("set (TTL)", Call(lambda k: cache.set(set_keys[k], VALUE, ttl=300), key_of), Call(raw_set, key_of),
             "redis-py SET PX + encode", n(5000), w(300), REDIS_TARGET, note="one SET PX each"),
        Pair(f"get_many ({BULK} keys)", Call(lambda g: cache.get_many(groups[g]), group_of), Call(raw_mget, group_of),
             f"redis-py MGET {BULK} + decode", n(3000), w(200), None, check=check_get_many,
             note="both one MGET of the 20 keys"),
        Pair(f"set_many ({BULK} keys, TTL)", Call(lambda g: cache.set_many(set_groups[g], ttl=300), group_of),
             Call(raw_set_many, group_of), f"redis-py pipeline of {BULK} SET PX", n(3000), w(200), None,
             note="both one pipeline of SET PX"),
    ]


def dogpile_pairs(cache: Any, memory: Any, keys: Keys, url: str,
                  n: Callable[[int], int], w: Callable[[int], int]) -> tuple[list[Pair], list[Any]]:
    """get_or_set hits against dogpile.cache's get_or_create hits, on Redis and in memory."""
    from dogpile.cache import make_region

    redis_region = make_region(key_mangler=lambda key: keys.dogpile + key).configure(
        "dogpile.cache.redis",
        expiration_time=300,
        arguments={"url": url, "redis_expiration_time": 600},
    )
    memory_region = make_region().configure("dogpile.cache.memory", expiration_time=300)
    names = [f"g:{i}" for i in range(KEYS)]

    def factory() -> dict[str, Any]:
        return VALUE

    for name in names:  # warm every key on every side: all timed calls are hits
        cache.get_or_set(name, factory, ttl=3600)
        cache.get_or_set("tagged-" + name, factory, ttl=3600, tags=["bench-gos-tag"])
        memory.get_or_set(name, factory, ttl=3600)
        redis_region.get_or_create(name, factory)
        memory_region.get_or_create(name, factory)

    def key_of(i: int) -> str:
        return names[i % KEYS]

    def check(kit: Any, base: Any) -> None:
        _same("value", kit, base)

    pairs = [
        Pair("get_or_set hit", Call(lambda k: cache.get_or_set(k, factory, ttl=300), key_of),
             Call(lambda k: redis_region.get_or_create(k, factory), key_of),
             "dogpile redis get_or_create", n(5000), w(300), DOGPILE_TARGET, group="dogpile-redis",
             check=check, note="both one GET; dogpile pickles"),
        Pair("get_or_set hit, 1 tag", Call(lambda k: cache.get_or_set("tagged-" + k, factory, ttl=300,
                                                                       tags=["bench-gos-tag"]), key_of),
             Call(lambda k: redis_region.get_or_create(k, factory), key_of),
             "dogpile redis get_or_create", n(5000), w(300), None, group="dogpile-redis", check=check,
             note="tags=[...]: one MGET of the entry and the tag's version"),
        Pair("memory get hit", Call(lambda k: memory.get(k), key_of),
             Call(lambda k: memory_region.get_or_create(k, factory), key_of),
             "dogpile memory get_or_create", n(20000), w(1000), None, group="memory", check=check,
             note="memory:// driver (LRU of envelopes, msgpack decode)"),
        Pair("memory get_or_set hit", Call(lambda k: memory.get_or_set(k, factory, ttl=300), key_of),
             Call(lambda k: memory_region.get_or_create(k, factory), key_of),
             "dogpile memory get_or_create", n(20000), w(1000), None, group="memory", check=check),
    ]
    return pairs, [redis_region, memory_region]


def cached_queries(db: peewee.Database, cache: Any, near: Any, memory: Any, n: Callable[[int], int],
                   w: Callable[[int], int]) -> Callable[[Callable[[str], None]], list[Comparison]]:
    """create_cached_queries(...).find_by_id hits (Redis with and without its near cache,
    memory) against the kit's uncached create_queries(...).find_by_id and raw Peewee, the five
    calls in one round-robin loop.

    Fills the caches now (every timed read is a hit); returns the function that times them.
    """
    from czo_kit.db import create_cached_queries, create_queries

    uncached = create_queries(CachedRow, db=db, secret_key=SECRET)
    cached = create_cached_queries(CachedRow, db=db, cache=cache, ttl=3600, secret_key=SECRET)
    near_cached = create_cached_queries(CachedRow, db=db, cache=near, ttl=3600, secret_key=SECRET)
    in_memory = create_cached_queries(CachedRow, db=db, cache=memory, ttl=3600, secret_key=SECRET)
    live = [row[0] for row in db.execute_sql("SELECT id FROM bench_cached WHERE deleted_at IS NULL")]
    rng = random.Random(20261127)
    ids = rng.sample(live, CACHED_IDS)
    for id in ids:  # first reads fill the caches; every timed call is a hit
        cached.find_by_id(id)
        near_cached.find_by_id(id)
        near_cached.find_by_id(id)  # the second read is the one the near cache keeps
        in_memory.find_by_id(id)
    sequence = [rng.choice(ids) for _ in range(20_000)]

    def id_of(i: int) -> int:
        return int(sequence[i % len(sequence)])

    def raw_peewee(id: int) -> Any:
        # Peewee's get_by_id with the soft-delete filter the kit applies (the repository
        # benchmark's raw find_by_id).
        return CachedRow.get_or_none(CachedRow.id == id, CachedRow.deleted_at.is_null())

    calls = [Call(near_cached.find_by_id, id_of), Call(cached.find_by_id, id_of), Call(in_memory.find_by_id, id_of),
             Call(uncached.find_by_id, id_of), Call(raw_peewee, id_of)]
    probe = id_of(0)
    results = [call.fn(probe) for call in calls]
    if any(r is None or r.__data__ != results[3].__data__ for r in results):
        raise AssertionError(f"find_by_id({probe}) differs between the cached, uncached and raw reads")
    iterations, warmup = n(5000), w(300)

    note = "get_or_set with the row's tag (one MGET), then a model from the cached values"
    uncached_label = "kit uncached find_by_id (PostgreSQL)"
    raw_label = "raw Peewee get (id, live) (PostgreSQL)"

    near_note = "the default Redis driver: the entry and its tag version held in the process"
    plain_note = note + "; Redis driver with CZO_CACHE_NEAR_ENTRIES=0"

    def timed(progress: Callable[[str], None]) -> list[Comparison]:
        progress(f"cached find_by_id (Redis near, Redis, memory), uncached, raw Peewee: {iterations:,} x 5 calls")
        near_hit, redis_hit, memory_hit, uncached_read, raw_read = (
            summarize(samples) for samples in time_round_robin(calls, iterations=iterations, warmup=warmup)
        )
        return [
            Comparison("cached find_by_id hit (Redis)", near_hit, uncached_read, CACHED_TARGET, near_note,
                       baseline=uncached_label),
            Comparison("cached find_by_id hit (Redis, no near cache)", redis_hit, uncached_read, None, plain_note,
                       baseline=uncached_label),
            Comparison("cached find_by_id hit (memory)", memory_hit, uncached_read, None, "the memory:// driver",
                       baseline=uncached_label),
            Comparison("cached find_by_id hit (Redis)", near_hit, raw_read, None, near_note, baseline=raw_label),
            Comparison("cached find_by_id hit (Redis, no near cache)", redis_hit, raw_read, None, plain_note,
                       baseline=raw_label),
            Comparison("cached find_by_id hit (memory)", memory_hit, raw_read, None, "the memory:// driver",
                       baseline=raw_label),
            Comparison("kit uncached find_by_id", uncached_read, raw_read, None, "precompiled SQL",
                       baseline=raw_label),
        ]

    return timed


def invalidation(cache: Any, *, quick: bool, progress: Callable[[str], None]) -> tuple[Comparison, dict[str, Any]]:
    """invalidate_tags on a tag carried by 1 key vs by 100,000 keys; plus the pattern delete."""
    tagged = TAGGED_QUICK if quick else TAGGED_FULL
    many, one = "bench-inv-many", "bench-inv-one"
    reps = 1 if quick else 3
    first_many: list[int] = []
    first_one: list[int] = []
    fill_seconds: list[float] = []
    for rep in range(reps):
        progress(f"invalidate_tags: tagging {tagged:,} keys (round {rep + 1} of {reps})")
        started = time.perf_counter()
        for start in range(0, tagged, FILL_BATCH):
            cache.set_many({f"inv:{i}": VALUE for i in range(start, start + FILL_BATCH)}, ttl=3600, tags=[many])
        fill_seconds.append(time.perf_counter() - started)
        cache.set("inv-one", VALUE, ttl=3600, tags=[one])
        if cache.get(f"inv:{tagged - 1}") != VALUE or cache.get("inv-one") != VALUE:
            raise RuntimeError("tagged entries were not stored")
        # The first bump after a fill, one call each (order alternates between rounds).
        for tag, into in ((many, first_many), (one, first_one))[:: 1 if rep % 2 == 0 else -1]:
            start_ns = time.perf_counter_ns()
            cache.invalidate_tags([tag])
            into.append(time.perf_counter_ns() - start_ns)
        if cache.get("inv:0") is not None or cache.get(f"inv:{tagged - 1}") is not None or cache.get("inv-one") is not None:
            raise RuntimeError("invalidate_tags left a tagged entry readable")
    iterations = 40 if quick else 5000
    warmup = 5 if quick else 300
    progress(f"invalidate_tags: {iterations:,} x 2 calls")
    pair = Pair(
        f"invalidate_tags, tag on {tagged:,} keys",
        Call(lambda _: cache.invalidate_tags([many])),
        Call(lambda _: cache.invalidate_tags([one])),
        "same, tag on 1 key", iterations, warmup, INVALIDATE_TARGET,
        note="one UNLINK of the tag's version key either way",
    )
    (row,) = run_pairs([pair])
    progress(f"invalidate('inv:*'): deleting {tagged:,} keys by pattern")
    started = time.perf_counter()
    removed = cache.invalidate("inv:*")
    pattern_ms = (time.perf_counter() - started) * 1000
    extra = {
        "tagged_keys": tagged,
        "first_invalidation_many_us": [v / 1000 for v in first_many],
        "first_invalidation_one_us": [v / 1000 for v in first_one],
        "fill_seconds": fill_seconds,
        "fill_keys_per_s": tagged / min(fill_seconds),
        "pattern_delete_ms": pattern_ms,
        "pattern_deleted": removed,
    }
    row.extra.update(extra)
    return row, extra


# -- running ------------------------------------------------------------------------------


def run(
    redis_url: str,
    database_url: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    quick: bool = False,
    progress: Callable[[str], None] = lambda text: None,
) -> tuple[list[tuple[str, list[Comparison]]], list[Check], list[str], dict[str, Any]]:
    import redis

    from czo_kit.cache import create_cache
    from czo_kit.settings import Settings

    def n(full: int) -> int:
        return 40 if quick else full

    def w(full: int) -> int:
        return 5 if quick else full

    keys = Keys()
    settings = Settings(secret_key=SECRET)
    client = redis.Redis.from_url(redis_url)
    client.ping()
    plain = msgspec.structs.replace(settings, cache_near_entries=0)
    cache = create_cache(redis_url, settings=plain, prefix=keys.kit, strict=True)
    near = create_cache(redis_url, settings=settings, prefix=keys.near, strict=True)
    memory = create_cache("memory://", settings=settings, prefix=keys.kit, strict=True)
    db: peewee.Database | None = None
    regions: list[Any] = []
    _pg.fresh_schema(database_url, schema)
    try:
        db = open_database(database_url, schema)
        progress("filling Redis and the caches")
        pairs = redis_pairs(cache, near, client, keys, n, w)
        more, regions = dogpile_pairs(cache, memory, keys, redis_url, n, w)
        pairs += more
        time_cached = cached_queries(db, cache, near, memory, n, w)
        caches = (cache, near, memory)
        misses_before = [c.stats()["misses"] for c in caches]
        near_counts: dict[str, int] = near.driver.near.counts  # type: ignore[attr-defined]  # the Redis driver
        near_misses_before = near_counts["misses"]
        rows = run_pairs(pairs, progress=progress)
        rows += time_cached(progress)
        misses_after = [c.stats()["misses"] for c in caches]
        near_misses = near_counts["misses"] - near_misses_before
        invalidate_row, inv = invalidation(cache, quick=quick, progress=progress)
        by_name: dict[str, Comparison] = {}
        for row in rows:
            by_name.setdefault(row.operation, row)  # the first row of a name: its own baseline
        if misses_after != misses_before:
            # Every timed read is meant to be a hit; a miss would time the database instead.
            for row in rows:
                row.extra["misses_during_timing"] = [a - b for a, b in zip(misses_after, misses_before)]
        sections = [
            ("Redis: kit vs redis-py", [r for r in rows if r.baseline.startswith("redis-py")]),
            ("Cache-aside: kit get_or_set vs dogpile.cache get_or_create", [
                r for r in rows if r.baseline.startswith("dogpile")]),
            ("Cached queries vs the database", [r for r in rows if "find_by_id" in r.operation]),
            ("Tag invalidation", [invalidate_row]),
        ]
        memory_get = by_name["memory get hit"]
        cached_hit = by_name["cached find_by_id hit (Redis)"]  # the first: vs the kit's uncached read
        checks = [
            Check("memory get hit p99", memory_get.kit.p99, MEMORY_P99_LIMIT),
            Check("cached find_by_id hit (Redis) p95", cached_hit.kit.p95 / 1000, READ_P95_LIMIT_MS, unit="ms"),
            Check("uncached find_by_id (PostgreSQL) p95", cached_hit.base.p95 / 1000, READ_P95_LIMIT_MS, unit="ms"),
        ]
        many = inv["first_invalidation_many_us"]
        one = inv["first_invalidation_one_us"]
        notes = [
            f"First invalidate_tags right after tagging {inv['tagged_keys']:,} keys: "
            + ", ".join(f"{v:,.0f}" for v in many) + " µs (vs " + ", ".join(f"{v:,.0f}" for v in one)
            + " µs for the tag on 1 key); tagging ran at "
            f"{inv['fill_keys_per_s']:,.0f} keys/s (set_many of {FILL_BATCH:,}).",
            f"For comparison, deleting the same {inv['pattern_deleted']:,} keys by pattern "
            f"(invalidate('inv:*'), SCAN + UNLINK) took {inv['pattern_delete_ms']:,.0f} ms.",
        ]
        if misses_after != misses_before:
            redis_misses, near_cache_misses, memory_misses = (a - b for a, b in zip(misses_after, misses_before))
            notes.append(f"WARNING: {redis_misses} Redis / {near_cache_misses} Redis (near) / {memory_misses} "
                         "memory misses while timing hits.")
        notes.append(f"Near cache: {near_misses} reads went to Redis while timing (a non-zero count means "
                     "some timed near-cache rows include round trips); no key was written meanwhile, so no "
                     "copy was invalidated: this is the best case, a read-mostly key.")
        return sections, checks, notes, inv
    finally:
        for region in regions:
            try:
                region.backend.writer_client.close()
            except Exception:
                pass
        cache.close()
        near.close()
        memory.close()
        removed = _pg.delete_redis_keys(client, [keys.pattern])
        progress(f"deleted {removed:,} Redis keys")
        client.close()
        if db is not None:
            db.close()
            db.close_all()  # type: ignore[attr-defined]  # a pooled database
        _pg.drop_schema(database_url, schema)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (40 calls per side)")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--schema", default=DEFAULT_SCHEMA, help=f"scratch schema (default {DEFAULT_SCHEMA})")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    import psycopg2
    import redis

    redis_url, database_url = _pg.redis_url(), _pg.database_url()
    env = environment(["redis", "dogpile.cache", "msgspec", "peewee", "psycopg2-binary"])
    started = time.monotonic()
    try:
        sections, checks, notes, _ = run(
            redis_url, database_url, schema=args.schema, quick=args.quick,
            progress=lambda text: print(text, file=sys.stderr, flush=True),
        )
    except redis.exceptions.ConnectionError as exc:
        print(f"Redis at {redis_url} is not usable ({exc}); set CZO_BENCH_REDIS_URL", file=sys.stderr)
        return 2
    except (peewee.OperationalError, psycopg2.OperationalError) as exc:
        print(f"PostgreSQL at {database_url} is not usable ({str(exc).strip()}); set CZO_BENCH_DATABASE_URL",
              file=sys.stderr)
        return 2
    elapsed = time.monotonic() - started
    print(compose_report(env, sections, checks, notes=notes, markdown=args.markdown, elapsed=elapsed))
    rows = [row for _, section in sections for row in section]
    if args.json:
        write_json(args.json, env=env, quick=args.quick, sections=sections, checks=checks, notes=notes)
    return 1 if any("mismatch" in row.extra for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
