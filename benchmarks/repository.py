"""Repository builders against hand-written Peewee, on PostgreSQL, in the same run.

    python -m benchmarks.repository            # full run, a few minutes
    python -m benchmarks.repository --quick    # smoke run, seconds
    python -m benchmarks.repository --markdown # tables as markdown (for docs/benchmarks.md)

The database comes from ``CZO_BENCH_DATABASE_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``). Everything happens in a dedicated schema
(``czo_bench`` unless ``--schema``), selected with libpq's ``options=-csearch_path=...``,
created at the start and dropped at the end, so the benchmark never touches other tables.

Each operation runs the kit and the raw Peewee equivalent alternately, call by call, on the
same connection and the same input, after a warm-up; both sides return model instances with
every column, so they do the same work. The reads also run the hand-written SELECT through
psycopg2 (``cursor.execute`` + ``fetchall`` on a connection of its own, the same rows as
tuples): the floor a repository could reach, with its own target.

    python -m benchmarks.repository --growth   # a cursor page at depth 100,000 of 1,000,000

The full run ends with the growth point of issue 13: a table of 1,000,000 rows (filled with
one INSERT ... SELECT generate_series, ~10 s) and a cursor page at depth 100,000 against the
first page, for the kit and for psycopg2. ``--growth`` runs only that; ``--quick`` skips it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import peewee

from benchmarks import _pg
from benchmarks._stats import (
    Call,
    Comparison,
    environment,
    environment_line,
    format_ratio,
    format_table,
    render,
    summarize,
    time_round_robin,
)
from czo_kit.db import Model, create_repository

DEFAULT_URL = _pg.DEFAULT_DATABASE_URL
DEFAULT_SCHEMA = "czo_bench"
SECRET = "czo-bench-secret-" + "x" * 32

OVERHEAD_TARGET = 1.15  # kit p50 / raw Peewee p50, per call
DRIVER_TARGET = 1.6  # kit p50 / raw psycopg2 p50, reads (issue 13)
DEPTH_TARGET = 1.5  # cursor page at depth / first page, kit p50

READ_ROWS = 20_000  # find_by_id, find_many, count
PAGE_ROWS = 100_000  # pagination
UPDATE_ROWS = 2_000  # rows the update benchmark cycles through (half per side)
SHOPS = 20
PAGE = 20
DEPTH = 10_000
BATCH = 100


class _Row(Model):
    shop_id = peewee.IntegerField(index=True)
    name = peewee.CharField(max_length=200)
    price = peewee.IntegerField()


class ReadRow(_Row):
    """Static during the run, so reads and counts see the same table throughout."""

    class Meta:
        table_name = "bench_read"
        indexes = ((("shop_id", "price", "id"), False),)


class PageRow(_Row):
    class Meta:
        table_name = "bench_page"
        indexes = ((("price", "id"), False),)


class WriteRow(_Row):
    class Meta:
        table_name = "bench_write"


MODELS: tuple[type[Model], ...] = (ReadRow, PageRow, WriteRow)


@dataclass
class Case:
    """One operation: the kit call, its raw Peewee twin, and how to feed them."""

    name: str
    kit: Callable[[Any], Any]
    raw: Callable[[Any], Any]
    iterations: int
    warmup: int
    kit_arg: Callable[[int], Any] = lambda i: None
    raw_arg: Callable[[int], Any] | None = None
    kit_after: Callable[[Any], Any] | None = None
    raw_after: Callable[[Any], Any] | None = None
    check: Callable[[Any, Any], None] | None = None  # (kit result, raw result) -> raise if unequal
    target: float | None = OVERHEAD_TARGET
    note: str = ""
    group: str = ""  # cases with the same group are timed together, in one loop
    # The same read hand-written for psycopg2: (driver(arg) -> (rows, has_next) or a count).
    driver: Callable[[Any], Any] | None = None
    driver_arg: Callable[[int], Any] | None = None
    driver_check: Callable[[Any, Any], None] | None = None  # (kit result, driver result)
    driver_note: str = ""


# -- setup --------------------------------------------------------------------------------


def schema_url(base_url: str, schema: str) -> str:
    return _pg.schema_url(base_url, schema)


def _admin(base_url: str, sql: str) -> None:
    _pg.admin_sql(base_url, sql)


def open_database(base_url: str, schema: str) -> peewee.Database:
    from czo_kit.default_plugins.postgres import create_postgresql_database
    from czo_kit.settings import Settings

    url = schema_url(base_url, schema)
    db = create_postgresql_database(url, settings=Settings(database_url=url, secret_key=SECRET))
    db.bind(list(MODELS))
    db.connect()
    (path,) = db.execute_sql("SHOW search_path").fetchone()
    if path.strip('"') != schema:
        raise RuntimeError(f"search_path is {path!r}, expected {schema!r}; check the database URL")
    db.create_tables(list(MODELS))
    return db


def _fill(db: peewee.Database, model: type[Model], rows: int, *, deleted_every: int | None) -> None:
    """``rows`` rows; prices repeat twice (so the id tie-breaker matters), 1% soft-deleted."""
    table = model._meta.table_name
    deleted = f"CASE WHEN mod(g, {deleted_every}) = 0 THEN now() AT TIME ZONE 'utc' END" if deleted_every else "NULL"
    db.execute_sql(
        f"INSERT INTO {table} (created_at, updated_at, version, deleted_at, shop_id, name, price) "
        f"SELECT now() AT TIME ZONE 'utc', now() AT TIME ZONE 'utc', 1, {deleted}, "
        f"mod(g, {SHOPS}) + 1, 'item ' || g, mod(g::bigint * 7919, {rows // 2}) "
        f"FROM generate_series(1, {rows}) AS g"
    )
    db.execute_sql(f"VACUUM ANALYZE {table}")


def load_data(db: peewee.Database) -> None:
    _fill(db, ReadRow, READ_ROWS, deleted_every=100)
    _fill(db, PageRow, PAGE_ROWS, deleted_every=100)
    _fill(db, WriteRow, UPDATE_ROWS, deleted_every=None)


# -- the cases ----------------------------------------------------------------------------


def _fields(model: type[Model]) -> list[peewee.Field]:
    return list(model._meta.sorted_fields)


def _ids(rows: Sequence[Model]) -> list[int]:
    return [row.id for row in rows]


def _same(what: str, kit: Any, raw: Any) -> None:
    if kit != raw:
        raise AssertionError(f"{what}: kit and raw Peewee disagree: {kit!r} != {raw!r}")


def _same_row(kit: Model, raw: Model) -> None:
    _same("row", kit.__data__, raw.__data__)


def _same_page(kit: Any, raw: tuple[list[Model], bool]) -> None:
    items, has_next = raw
    _same("page ids", _ids(kit.items), _ids(items))
    _same("page has_next", kit.has_next, has_next)
    _same("page rows", [r.__data__ for r in kit.items], [r.__data__ for r in items])


def _raw_page(query: Any) -> tuple[list[Any], bool]:
    rows = list(query.limit(PAGE + 1))
    return rows[:PAGE], len(rows) > PAGE


def _driver_page(cur: Any, sql: str, params: Sequence[Any]) -> tuple[list[tuple[Any, ...]], bool]:
    """A page the way a psycopg2 user writes it: execute, fetchall, one row more than a page."""
    cur.execute(sql, (*params, PAGE + 1))
    rows = cur.fetchall()
    return rows[:PAGE], len(rows) > PAGE


def _same_driver_page(kit: Any, raw: tuple[list[tuple[Any, ...]], bool]) -> None:
    rows, has_next = raw
    _same("page ids (psycopg2)", _ids(kit.items), [row[0] for row in rows])
    _same("page has_next (psycopg2)", kit.has_next, has_next)
    _same("page columns (psycopg2)", [len(r.__data__) for r in kit.items], [len(row) for row in rows])


def _select_sql(model: type[Model], where: str, order: str = "price, id") -> str:
    """A hand-written SELECT of every column; ``where`` holds only %s placeholders."""
    columns = ", ".join(f.column_name for f in _fields(model))
    return f"SELECT {columns} FROM {model._meta.table_name} WHERE {where} ORDER BY {order} LIMIT %s"


def build_cases(db: peewee.Database, *, quick: bool, driver: Any = None) -> list[Case]:
    def n(full: int) -> int:
        return 40 if quick else full

    def w(full: int) -> int:
        return 5 if quick else full

    rng = random.Random(20261127)
    R, P, W = ReadRow, PageRow, WriteRow
    reads = create_repository(R, db=db, secret_key=SECRET)
    pages = create_repository(P, db=db, secret_key=SECRET)
    writes = create_repository(W, db=db, secret_key=SECRET)
    w_fields = _fields(W)

    live_ids = [row[0] for row in db.execute_sql(f"SELECT id FROM {R._meta.table_name} WHERE deleted_at IS NULL")]
    random_ids = [rng.choice(live_ids) for _ in range(20_000)]

    def shop(i: int) -> int:
        return i % SHOPS + 1

    # -- reads
    def raw_find_by_id(id: int) -> Model | None:
        return R.get_or_none(R.id == id, R.deleted_at.is_null())

    def kit_find_many(shop_id: int) -> Any:
        return reads.find_many({"shop_id": shop_id}, order_by="price", limit=PAGE)

    def raw_find_many(shop_id: int) -> tuple[list[Model], bool]:
        return _raw_page(
            R.select().where(R.shop_id == shop_id, R.deleted_at.is_null()).order_by(R.price, R.id)
        )

    def raw_count(_: Any) -> int:
        return R.select().where(R.deleted_at.is_null()).count()

    def raw_count_shop(shop_id: int) -> int:
        return R.select().where(R.shop_id == shop_id, R.deleted_at.is_null()).count()

    def price_range(i: int) -> tuple[int, int]:
        return shop(i), (i * 37) % 9000  # about 100 rows of the shop in [low, low + 1000)

    def kit_find_range(arg: tuple[int, int]) -> Any:
        shop_id, low = arg
        return reads.find_many(
            {"shop_id": shop_id, "price__gte": low, "price__lt": low + 1000}, order_by="price", limit=PAGE
        )

    def raw_find_range(arg: tuple[int, int]) -> tuple[list[Model], bool]:
        shop_id, low = arg
        return _raw_page(
            R.select()
            .where(R.shop_id == shop_id, R.price >= low, R.price < low + 1000, R.deleted_at.is_null())
            .order_by(R.price, R.id)
        )

    def shops(i: int) -> list[int]:
        return [shop(i), shop(i + 7), shop(i + 13)]

    def kit_find_in(ids: list[int]) -> Any:
        return reads.find_many({"shop_id__in": ids}, order_by="price", limit=PAGE)

    def raw_find_in(ids: list[int]) -> tuple[list[Model], bool]:
        return _raw_page(R.select().where(R.shop_id.in_(ids), R.deleted_at.is_null()).order_by(R.price, R.id))

    # -- the same reads hand-written for psycopg2, on a connection of its own
    cur: Any = driver.cursor() if driver is not None else None
    sql_shop = _select_sql(R, "shop_id = %s AND deleted_at IS NULL")
    sql_range = _select_sql(R, "shop_id = %s AND price >= %s AND price < %s AND deleted_at IS NULL")
    sql_in = _select_sql(R, "shop_id IN (%s, %s, %s) AND deleted_at IS NULL")
    sql_first = _select_sql(P, "deleted_at IS NULL")
    sql_after = _select_sql(P, "deleted_at IS NULL AND (price, id) > (%s, %s)")

    def driver_count(sql: str, params: Sequence[Any]) -> int:
        cur.execute(sql, params)
        return int(cur.fetchone()[0])

    def driver_range(arg: tuple[int, int]) -> Any:
        return _driver_page(cur, sql_range, (arg[0], arg[1], arg[1] + 1000))

    def driver_cursor(after: tuple[int, int]) -> Any:
        return _driver_page(cur, sql_after, after)

    # -- writes
    def new_row(i: int) -> dict[str, Any]:
        return {"shop_id": shop(i), "name": f"new {i}", "price": 100 + i % 5000}

    def raw_create(data: dict[str, Any]) -> Any:
        return next(iter(W.insert(**data).returning(*w_fields).execute()))

    def new_rows(i: int) -> list[dict[str, Any]]:
        return [new_row(i * BATCH + k) for k in range(BATCH)]

    def raw_create_many(rows: list[dict[str, Any]]) -> list[Model]:
        return list(W.insert_many(rows).returning(*w_fields).execute())

    versions = {id: 1 for id in range(1, UPDATE_ROWS + 1)}
    half = UPDATE_ROWS // 2

    def update_arg(offset: int) -> Callable[[int], tuple[int, int, int]]:
        def arg(i: int) -> tuple[int, int, int]:
            id = offset + i % half + 1
            return id, versions[id], 100 + i % 5000

        return arg

    def keep_version(row: Model) -> None:
        versions[row.id] = row.version

    def kit_update(arg: tuple[int, int, int]) -> Model:
        id, version, price = arg
        return writes.update(id, {"price": price}, expected_version=version)

    def raw_update(arg: tuple[int, int, int]) -> Any:
        id, version, price = arg
        query = (
            W.update({W.price: price, W.updated_at: dt.datetime.now(dt.timezone.utc), W.version: W.version + 1})
            .where(W.id == id, W.version == version, W.deleted_at.is_null())
            .returning(*w_fields)
        )
        row = next(iter(query.execute()), None)
        if row is None:
            raise RuntimeError(f"row {id} is gone or not at version {version}")
        return row

    def check_create(kit: Model, raw: Model) -> None:
        _same("returned columns", sorted(kit.__data__), sorted(raw.__data__))

    def check_create_many(kit: list[Any], raw: list[Any]) -> None:
        _same("rows returned", len(kit), len(raw))
        _same("returned columns", sorted(kit[0].__data__), sorted(raw[0].__data__))
        _same("input order", [r.price for r in kit], [r.price for r in raw])

    def check_update(kit: Model, raw: Model) -> None:
        _same("returned columns", sorted(kit.__data__), sorted(raw.__data__))
        # Both were at version 1 on this first call.
        _same("new version", kit.version, raw.version)

    # -- pagination over PAGE_ROWS rows, ordered by (price, id)
    live_page = P.select().where(P.deleted_at.is_null()).order_by(P.price, P.id)
    before = pages.find_many(order_by="price", limit=PAGE, offset=DEPTH - PAGE, with_total=False)
    edge = before.items[-1]
    cursor = before.next_cursor
    assert cursor is not None

    def kit_first(_: Any) -> Any:
        return pages.find_many(order_by="price", limit=PAGE)

    def raw_first(_: Any) -> tuple[list[Model], bool]:
        return _raw_page(P.select().where(P.deleted_at.is_null()).order_by(P.price, P.id))

    def kit_cursor(token: str) -> Any:
        return pages.find_many(order_by="price", limit=PAGE, cursor=token)

    def raw_cursor(after: tuple[int, int]) -> tuple[list[Model], bool]:
        price, id = after
        return _raw_page(
            P.select()
            .where(P.deleted_at.is_null(), peewee.Tuple(P.price, P.id) > peewee.Tuple(price, id))
            .order_by(P.price, P.id)
        )

    def kit_offset(_: Any) -> Any:
        return pages.find_many(order_by="price", limit=PAGE, offset=DEPTH, with_total=False)

    def raw_offset(_: Any) -> tuple[list[Model], bool]:
        return _raw_page(P.select().where(P.deleted_at.is_null()).order_by(P.price, P.id).offset(DEPTH))

    def kit_offset_total(_: Any) -> Any:
        return pages.find_many(order_by="price", limit=PAGE, offset=DEPTH)

    def raw_offset_total(_: Any) -> tuple[tuple[list[Model], bool], int]:
        base = P.select().where(P.deleted_at.is_null())
        return _raw_page(base.order_by(P.price, P.id).offset(DEPTH)), base.count()

    def check_offset_total(kit: Any, raw: tuple[tuple[list[Model], bool], int]) -> None:
        _same_page(kit, raw[0])
        _same("total", kit.total, raw[1])

    at_depth = _ids(list(live_page.offset(DEPTH).limit(PAGE)))

    def check_cursor(kit: Any, raw: tuple[list[Model], bool]) -> None:
        # Rows DEPTH+1 .. DEPTH+PAGE, whichever way they are reached.
        _same("raw keyset page vs offset page", _ids(raw[0]), at_depth)
        _same_page(kit, raw)

    cases = [
        Case("find_by_id", lambda id: reads.find_by_id(id), raw_find_by_id, n(5000), w(300),
             kit_arg=lambda i: random_ids[i % len(random_ids)], check=_same_row,
             note="get_or_none(id == x, deleted_at IS NULL)"),
        Case(f"find_many (shop, by price, {PAGE})", kit_find_many, raw_find_many, n(5000), w(300),
             kit_arg=shop, check=_same_page,
             note="first page, cursor mode; raw: where().order_by(price, id).limit(21)",
             driver=lambda s: _driver_page(cur, sql_shop, (s,)), driver_check=_same_driver_page,
             driver_note="WHERE shop_id = %s AND deleted_at IS NULL ORDER BY price, id LIMIT 21"),
        Case(f"find_many (shop + price range, {PAGE})", kit_find_range, raw_find_range, n(5000), w(300),
             kit_arg=price_range, check=_same_page,
             note="shop_id = ?, price >= ?, price < ?; ~100 rows match",
             driver=driver_range, driver_check=_same_driver_page,
             driver_note="shop_id = %s AND price >= %s AND price < %s ... LIMIT 21"),
        Case(f"find_many (shop in 3, {PAGE})", kit_find_in, raw_find_in, n(3000), w(200),
             kit_arg=shops, check=_same_page, note="shop_id IN (3 values); ~3,000 rows match",
             driver=lambda ids: _driver_page(cur, sql_in, ids), driver_check=_same_driver_page,
             driver_note="shop_id IN (%s, %s, %s) ... LIMIT 21"),
        Case(f"count (all live, {READ_ROWS:,} rows)", lambda _: reads.count(), raw_count, n(2000), w(100),
             check=lambda k, r: _same("count", k, r),
             note="deleted_at IS NULL over the whole table; raw: select().where().count()"),
        Case("count (one shop)", lambda s: reads.count({"shop_id": s}), raw_count_shop, n(5000), w(300),
             kit_arg=shop, check=lambda k, r: _same("count", k, r),
             note=f"~{READ_ROWS // SHOPS:,} rows counted",
             driver=lambda s: driver_count(
                 f"SELECT COUNT(*) FROM {R._meta.table_name} WHERE shop_id = %s AND deleted_at IS NULL", (s,)
             ),
             driver_check=lambda k, r: _same("count (psycopg2)", k, r),
             driver_note="SELECT COUNT(*) ... WHERE shop_id = %s AND deleted_at IS NULL"),
        Case("create", lambda data: writes.create(data), raw_create, n(5000), w(300),
             kit_arg=new_row, raw_arg=lambda i: new_row(-i - 1), check=check_create,
             note="raw: insert(...).returning(all columns)"),
        Case(f"create_many ({BATCH})", lambda rows: writes.create_many(rows), raw_create_many, n(1000), w(50),
             kit_arg=new_rows, raw_arg=new_rows, check=check_create_many,
             note="raw: insert_many(...).returning(all columns)"),
        Case("update (version check)", kit_update, raw_update, n(5000), w(300),
             kit_arg=update_arg(0), raw_arg=update_arg(half), kit_after=keep_version,
             raw_after=keep_version, check=check_update,
             note="raw: update(..., version + 1).where(id, version, live).returning(all)"),
        # First and cursor pages in one loop, so the depth target compares figures taken side
        # by side. The offset page stays out: whatever runs after a deep OFFSET scan is slower.
        Case(f"page: first ({PAGE_ROWS:,} rows)", kit_first, raw_first, n(5000), w(300),
             check=_same_page, note="order by (price, id), no filter but deleted_at IS NULL",
             group="depth", driver=lambda _: _driver_page(cur, sql_first, ()), driver_check=_same_driver_page,
             driver_note="WHERE deleted_at IS NULL ORDER BY price, id LIMIT 21"),
        Case(f"page: cursor @ {DEPTH:,}", kit_cursor, raw_cursor, n(5000), w(300),
             kit_arg=lambda i: cursor, raw_arg=lambda i: (edge.price, edge.id), check=check_cursor,
             note="raw: (price, id) > (?, ?) hand-written keyset", group="depth",
             driver=driver_cursor, driver_arg=lambda i: (edge.price, edge.id), driver_check=_same_driver_page,
             driver_note="deleted_at IS NULL AND (price, id) > (%s, %s) ... LIMIT 21"),
        Case(f"page: offset @ {DEPTH:,}", kit_offset, raw_offset, n(1000), w(50),
             check=_same_page, note="kit: with_total=False; raw: .offset(10000)"),
        Case(f"page: offset @ {DEPTH:,} + total", kit_offset_total, raw_offset_total, n(300), w(20),
             check=check_offset_total, note="kit default offset mode; raw: page + .count()"),
    ]
    if driver is None:
        for case in cases:
            case.driver = None
    return cases


# -- running ------------------------------------------------------------------------------


def _check(case: Case) -> str:
    """Run both sides once and compare; the disagreement, or "" when they agree."""
    if case.check is None:
        return ""
    index = -case.warmup - 2  # before the warm-up: never an input the timing uses
    kit_result = case.kit(case.kit_arg(index))
    if case.driver is not None and case.driver_check is not None:
        try:
            case.driver_check(kit_result, case.driver((case.driver_arg or case.kit_arg)(index)))
        except AssertionError as exc:
            return str(exc)
    raw_result = case.raw((case.raw_arg or case.kit_arg)(index))
    if case.kit_after is not None:
        case.kit_after(kit_result)
    if case.raw_after is not None:
        case.raw_after(raw_result)
    try:
        case.check(kit_result, raw_result)
    except AssertionError as exc:
        # Still timed (the figures stay useful), but the report says the work differed.
        return str(exc)
    return ""


def run_group(cases: Sequence[Case]) -> list[Comparison]:
    """Time the cases of one group together, every call in turn, so their ratios are fair."""
    mismatches = [_check(case) for case in cases]
    calls = []
    for case in cases:
        calls.append(Call(case.kit, case.kit_arg, case.kit_after))
        calls.append(Call(case.raw, case.raw_arg or case.kit_arg, case.raw_after))
        if case.driver is not None:
            calls.append(Call(case.driver, case.driver_arg or case.kit_arg))
    samples = time_round_robin(
        calls,
        iterations=max(case.iterations for case in cases),
        warmup=max(case.warmup for case in cases),
    )
    rows = []
    k = 0
    for case, mismatch in zip(cases, mismatches):
        kit = summarize(samples[k])
        row = Comparison(case.name, kit, summarize(samples[k + 1]), case.target, case.note, baseline="Peewee")
        k += 2
        if mismatch:
            row.extra["mismatch"] = mismatch
        rows.append(row)
        if case.driver is not None:
            rows.append(Comparison(case.name, kit, summarize(samples[k]), DRIVER_TARGET,
                                   case.driver_note, baseline="psycopg2"))
            k += 1
    return rows


def derived(rows: Sequence[Comparison]) -> list[tuple[str, float, float, float | None]]:
    """(what, kit ratio, raw ratio, target) for the pagination depth comparisons."""
    rows = [row for row in rows if row.baseline != "psycopg2"]
    by_name = {row.operation.split(" (")[0]: row for row in rows}
    first = next((r for r in rows if r.operation.startswith("page: first")), None)
    cursor = by_name.get(f"page: cursor @ {DEPTH:,}")
    offset = by_name.get(f"page: offset @ {DEPTH:,}")
    out: list[tuple[str, float, float, float | None]] = []
    if first and cursor:
        out.append((f"cursor @ {DEPTH:,} / first page", cursor.kit.p50 / first.kit.p50,
                    cursor.base.p50 / first.base.p50, DEPTH_TARGET))
    if cursor and offset:
        out.append((f"offset @ {DEPTH:,} / cursor @ {DEPTH:,}", offset.kit.p50 / cursor.kit.p50,
                    offset.base.p50 / cursor.base.p50, None))
    return out


def format_derived(items: Sequence[tuple[str, float, float, float | None]], *, markdown: bool) -> str:
    body = [
        [what, format_ratio(kit), format_ratio(raw),
         "" if target is None else f"<= {target:.2f}x",
         "" if target is None else ("yes" if kit <= target else "NO")]
        for what, kit, raw, target in items
    ]
    return render(["p50 ratio", "kit", "raw", "target", "met?"], body, markdown=markdown)


def report(rows: Sequence[Comparison], env: dict[str, str], *, markdown: bool, elapsed: float) -> str:
    parts = []
    if markdown:
        parts.append("Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    else:
        parts.append("  ".join(f"{k}={v}" for k, v in env.items()))
    parts.append("")
    parts.append(format_table(rows, kit_label="kit", base_label="raw", markdown=markdown))
    parts.append("")
    if derived(rows):
        parts.append(format_derived(derived(rows), markdown=markdown))
        parts.append("")
    missed = [r.operation for r in rows if r.met is False]
    missed += [what for what, kit, _, target in derived(rows) if target is not None and kit > target]
    for row in rows:
        if "mismatch" in row.extra:
            parts.append(f"RESULTS DIFFER in {row.operation!r}: {row.extra['mismatch']}")
    counts: dict[int, list[str]] = {}
    for row in rows:
        if row.baseline != "psycopg2":  # the kit side of a psycopg2 row is its Peewee row's
            counts.setdefault(row.kit.n, []).append(row.operation)
    samples = "; ".join(
        f"{n:,}" if len(counts) == 1 else f"{n:,} ({', '.join(names)})" for n, names in counts.items()
    )
    parts.append(f"Latencies in microseconds; ratio = kit p50 / raw p50. Calls timed per side: {samples}.")
    parts.append(f"Targets missed: {', '.join(missed) if missed else 'none'}. Run took {elapsed:.0f} s.")
    return "\n".join(parts)


def run(
    base_url: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    quick: bool = False,
    only: Sequence[str] = (),
    progress: Callable[[str], None] = lambda text: None,
) -> list[Comparison]:
    """Set up the schema, run every case (or those whose name starts with one of ``only``)."""
    with scratch_schema(base_url, schema) as (db, driver):
        progress(f"loading {READ_ROWS + PAGE_ROWS + UPDATE_ROWS:,} rows into schema {schema}")
        load_data(db)
        cases = build_cases(db, quick=quick, driver=driver)
        if only:
            cases = [c for c in cases if any(c.name.startswith(prefix) for prefix in only)]
        groups: dict[str, list[Case]] = {}
        for case in cases:
            groups.setdefault(case.group or case.name, []).append(case)
        results = []
        for group in groups.values():
            sides = sum(3 if case.driver is not None else 2 for case in group)
            progress(", ".join(case.name for case in group) + f": {group[0].iterations:,} x {sides} calls")
            results.extend(run_group(group))
        return results


@contextmanager
def scratch_schema(base_url: str, schema: str) -> Iterator[tuple[peewee.Database, Any]]:
    """A new, empty ``schema``, with the kit's pooled database and a plain psycopg2 connection
    (``open_driver``) in it; both closed and the schema dropped on the way out."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
        raise ValueError(f"schema must be a lower-case SQL identifier, got {schema!r}")
    # The schema name matched the pattern above before it reaches these statements.
    _admin(base_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE; CREATE SCHEMA "{schema}"')
    db: peewee.Database | None = None
    driver: Any = None
    try:
        db = open_database(base_url, schema)
        driver = open_driver(base_url, schema)
        yield db, driver
    finally:
        if driver is not None:
            driver.close()
        if db is not None:
            db.close()
            db.close_all()  # type: ignore[attr-defined]  # a pooled database
        _admin(base_url, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def open_driver(base_url: str, schema: str) -> Any:
    """A plain psycopg2 connection to the scratch schema, autocommit as Peewee's connections are."""
    import psycopg2

    from czo_kit.default_plugins.postgres import parse_postgresql_url

    dbname, params = parse_postgresql_url(schema_url(base_url, schema))
    conn = psycopg2.connect(dbname=dbname, connect_timeout=10, **params)
    conn.autocommit = True
    return conn


# -- growth: a cursor page deep in a large table (issue 13) ------------------------------------

GROWTH_ROWS = 1_000_000
GROWTH_DEPTH = 100_000


class GrowthRow(_Row):
    class Meta:
        table_name = "bench_growth"
        indexes = ((("price", "id"), False),)


def fill_growth(driver: Any, rows: int) -> None:
    """``rows`` rows in one INSERT ... SELECT, indexes built after, then VACUUM ANALYZE.

    The scratch server runs without autovacuum: without the ANALYZE the planner knows nothing
    of the table, and without the VACUUM an index-only scan would visit the heap anyway.
    """
    table = GrowthRow._meta.table_name
    with driver.cursor() as cur:
        cur.execute(
            f"INSERT INTO {table} (created_at, updated_at, version, deleted_at, shop_id, name, price) "
            "SELECT now() AT TIME ZONE 'utc', now() AT TIME ZONE 'utc', 1, "
            "CASE WHEN mod(g, 100) = 0 THEN now() AT TIME ZONE 'utc' END, "
            f"mod(g, {SHOPS}) + 1, 'item ' || g, mod(g::bigint * 7919, %s) "
            "FROM generate_series(1, %s) AS g",
            (rows // 2, rows),
        )
    GrowthRow._schema.create_indexes(safe=True)  # type: ignore[attr-defined]
    with driver.cursor() as cur:
        cur.execute(f"VACUUM ANALYZE {table}")


def run_growth(
    base_url: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    quick: bool = False,
    progress: Callable[[str], None] = lambda text: None,
) -> list[Comparison]:
    """The first page and a cursor page at ``GROWTH_DEPTH`` of ``GROWTH_ROWS``, kit and psycopg2."""
    with scratch_schema(base_url, schema) as (db, driver):
        db.bind([GrowthRow])
        GrowthRow._schema.create_table(safe=True)  # type: ignore[attr-defined]
        started = time.monotonic()
        progress(f"filling {GROWTH_ROWS:,} rows into {schema}.{GrowthRow._meta.table_name}")
        fill_growth(driver, GROWTH_ROWS)
        progress(f"filled in {time.monotonic() - started:.0f} s")
        G = GrowthRow
        rows = create_repository(G, db=db, secret_key=SECRET)
        before = rows.find_many(order_by="price", limit=PAGE, offset=GROWTH_DEPTH - PAGE, with_total=False)
        cursor = before.next_cursor
        edge = (before.items[-1].price, before.items[-1].id)
        assert cursor is not None
        cur = driver.cursor()
        sql_first = _select_sql(G, "deleted_at IS NULL")
        sql_after = _select_sql(G, "deleted_at IS NULL AND (price, id) > (%s, %s)")
        calls = [
            Call(lambda _: rows.find_many(order_by="price", limit=PAGE)),
            Call(lambda _: _driver_page(cur, sql_first, ())),
            Call(lambda _: rows.find_many(order_by="price", limit=PAGE, cursor=cursor)),
            Call(lambda _: _driver_page(cur, sql_after, edge)),
        ]
        # The kit and psycopg2 see the same rows at both depths.
        _same_driver_page(calls[0].fn(None), calls[1].fn(None))
        _same_driver_page(calls[2].fn(None), calls[3].fn(None))
        iterations = 40 if quick else 3000
        progress(f"first page and cursor @ {GROWTH_DEPTH:,}: {iterations:,} x 4 calls")
        samples = time_round_robin(calls, iterations=iterations, warmup=5 if quick else 200)
        first, first_raw, deep, deep_raw = (summarize(s) for s in samples)
        return [
            Comparison(f"growth: first page ({GROWTH_ROWS:,} rows)", first, first_raw, DRIVER_TARGET,
                       "order by (price, id), deleted_at IS NULL", baseline="psycopg2"),
            Comparison(f"growth: cursor @ {GROWTH_DEPTH:,}", deep, deep_raw, DRIVER_TARGET,
                       "(price, id) > (%s, %s)", baseline="psycopg2"),
        ]


def growth_derived(rows: Sequence[Comparison]) -> list[tuple[str, float, float, float | None]]:
    first, deep = rows
    return [(f"cursor @ {GROWTH_DEPTH:,} / first page ({GROWTH_ROWS:,} rows)",
             deep.kit.p50 / first.kit.p50, deep.base.p50 / first.base.p50, DEPTH_TARGET)]


def growth_report(rows: Sequence[Comparison], *, markdown: bool, elapsed: float) -> str:
    depth = growth_derived(rows)
    missed = [r.operation for r in rows if r.met is False]
    missed += [what for what, kit, _, target in depth if target is not None and kit > target]
    return "\n".join([
        format_table(rows, kit_label="kit", base_label="raw", markdown=markdown),
        "",
        format_derived(depth, markdown=markdown),
        "",
        f"Growth point: ratio = kit p50 / psycopg2 p50; depth ratios = cursor page p50 / first page "
        f"p50 on each side. Calls timed per side: {rows[0].kit.n:,}.",
        f"Targets missed: {', '.join(missed) if missed else 'none'}. Growth run took {elapsed:.0f} s "
        f"(filling {GROWTH_ROWS:,} rows included).",
    ])


def _json_rows(rows: Sequence[Comparison]) -> list[dict[str, Any]]:
    return [{**dataclasses.asdict(row), "ratio": row.ratio, "met": row.met} for row in rows]


def _json_derived(items: Sequence[tuple[str, float, float, float | None]]) -> list[dict[str, Any]]:
    return [{"what": what, "kit": kit, "raw": raw, "target": target} for what, kit, raw, target in items]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.repository", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run (40 calls per side), without the growth point")
    parser.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    parser.add_argument("--schema", default=DEFAULT_SCHEMA, help=f"scratch schema (default {DEFAULT_SCHEMA})")
    parser.add_argument("--only", action="append", default=[], metavar="PREFIX",
                        help="run only operations whose name starts with PREFIX (repeatable; "
                             "'growth' for the growth point)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    parser.add_argument("--growth", action="store_true",
                        help=f"only the growth point: a cursor page at depth {GROWTH_DEPTH:,} of "
                             f"{GROWTH_ROWS:,} rows against the first page (fills the table first)")
    args = parser.parse_args(argv)
    import psycopg2
    url = os.environ.get("CZO_BENCH_DATABASE_URL", DEFAULT_URL)
    env = environment(["peewee", "psycopg2-binary", "msgspec"])
    only_growth = args.growth or (bool(args.only) and all("growth: ".startswith(p) for p in args.only))
    with_growth = only_growth or (
        not args.quick and (not args.only or any("growth: ".startswith(p) for p in args.only))
    )
    progress: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    rows: list[Comparison] = []
    grown: list[Comparison] = []
    try:
        started = time.monotonic()
        if not only_growth:
            rows = run(url, schema=args.schema, quick=args.quick, only=args.only, progress=progress)
        elapsed = time.monotonic() - started
        if with_growth:
            started = time.monotonic()
            grown = run_growth(url, schema=args.schema, quick=args.quick, progress=progress)
            grown_elapsed = time.monotonic() - started
    except (peewee.OperationalError, psycopg2.OperationalError) as exc:
        print(f"PostgreSQL at {url} is not usable ({str(exc).strip()}); set CZO_BENCH_DATABASE_URL",
              file=sys.stderr)
        return 2
    if rows:
        print(report(rows, env, markdown=args.markdown, elapsed=elapsed))
    else:
        print(environment_line(env, markdown=args.markdown))
    if grown:
        print()
        print(growth_report(grown, markdown=args.markdown, elapsed=grown_elapsed))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "environment": env,
                    "quick": args.quick,
                    "results": _json_rows(rows) + _json_rows(grown),
                    "derived": _json_derived(derived(rows)) + _json_derived(growth_derived(grown) if grown else []),
                },
                f,
                indent=2,
            )
    # The figures are printed either way, but a run where the two sides did different work
    # is not a valid comparison.
    return 1 if any("mismatch" in row.extra for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
