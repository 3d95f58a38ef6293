"""``find_many`` and ``count`` compile a statement once per query shape and bind the values.

On SQLite and PostgreSQL: a shape reused with other values returns the rows of those values
(never the first call's), every part of a shape (``in`` lengths, NULL checks, operators,
cursor direction) gets its own statement, bad values are refused with the errors
``compile_where`` gives, hostile values are bound rather than spliced, and the shape cache
stays bounded whatever variety of filters arrives.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator
from typing import Any

import peewee
import pytest

from czo_kit.db import Model, create_repository
from czo_kit.db._sql import MAX_SHAPE_PARAMETERS, MAX_SHAPES, ShapeCache, model_info
from czo_kit.db.filters import compile_where
from czo_kit.default_plugins.postgres import create_postgresql_database
from czo_kit.default_plugins.sqlite import create_sqlite_database
from czo_kit.errors import InvalidCursorError, InvalidFilterError
from czo_kit.settings import Settings

SECRET = b"s" * 32


class ShapeItem(Model):
    shop_id = peewee.IntegerField()
    name = peewee.CharField(max_length=100)
    price = peewee.IntegerField()
    note = peewee.CharField(max_length=20, null=True)

    class Meta:
        table_name = "czo_test_shape_item"


ROWS = 60
NAMES = {7: "50% off_now", 8: "it's 'quoted'", 9: "Back\\slash"}


def _row(i: int) -> dict[str, Any]:
    return {
        "shop_id": i % 3 + 1,
        "name": NAMES.get(i, f"item {i:02d}"),
        "price": (i * 7) % 20,
        "note": None if i % 4 == 0 else f"n{i % 5}",
    }


@pytest.fixture
def db(database_url: str, settings_for: Callable[..., Settings]) -> Iterator[peewee.Database]:
    factory = create_sqlite_database if database_url.startswith("sqlite") else create_postgresql_database
    database: peewee.Database = factory(database_url, settings=settings_for(database_url))
    database.bind([ShapeItem])
    database.drop_tables([ShapeItem], safe=True)
    database.create_tables([ShapeItem])
    try:
        yield database
    finally:
        database.drop_tables([ShapeItem], safe=True)
        database.close()
        getattr(database, "close_all", lambda: None)()


@pytest.fixture
def repo(db: peewee.Database) -> Any:
    repository = create_repository(ShapeItem, db=db, secret_key=SECRET)
    created = repository.create_many([_row(i) for i in range(1, ROWS + 1)])
    for row in created:
        if row.id % 7 == 0:
            repository.delete(row.id)
    return repository


def _live(repo: Any) -> list[dict[str, Any]]:
    """Every live row as a dict, read without any filter (the expected answers)."""
    return [
        {"id": r[0], "shop_id": r[1], "name": r[2], "price": r[3], "note": r[4]}
        for r in repo.db.execute_sql(
            "SELECT id, shop_id, name, price, note FROM czo_test_shape_item WHERE deleted_at IS NULL"
        ).fetchall()
    ]


def _ids(page: Any) -> list[int]:
    return [row.id for row in page.items]


def _expected(repo: Any, keep: Callable[[dict[str, Any]], bool], *, key: str = "id") -> list[int]:
    rows = [r for r in _live(repo) if keep(r)]
    rows.sort(key=lambda r: (r[key], r["id"]))
    return [r["id"] for r in rows]


def _compilations(db: peewee.Database, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A list that grows by one each time Peewee compiles a statement on ``db``."""
    calls: list[int] = []
    original = db.get_sql_context

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(db, "get_sql_context", counting)
    return calls


# -- one statement per shape, the values of each call ------------------------------------------


def test_a_shape_is_compiled_once_then_only_bound(repo: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = _compilations(repo.db, monkeypatch)
    repo.find_many({"shop_id": 1, "price__gte": 3}, order_by="price", limit=5)
    repo.count({"shop_id": 1, "price__gte": 3})
    first = len(compiled)
    for shop in (2, 3, 1):
        for low in (0, 5, 9):
            repo.find_many({"shop_id": shop, "price__gte": low}, order_by="price", limit=5 + low)
            repo.count({"shop_id": shop, "price__gte": low})
    assert len(compiled) == first


def test_the_same_shape_with_other_values_returns_the_rows_of_those_values(repo: Any) -> None:
    for shop in (1, 2, 3, 2, 1):
        for low, high in ((0, 5), (5, 10), (10, 20), (3, 4)):
            where = {"shop_id": shop, "price__gte": low, "price__lt": high}
            want = _expected(repo, lambda r: r["shop_id"] == shop and low <= r["price"] < high, key="price")
            page = repo.find_many(where, order_by="price", limit=100)
            assert _ids(page) == want, (shop, low, high)
            assert repo.count(where) == len(want)


@pytest.mark.parametrize(
    "op, compare",
    [("ne", operator.ne), ("lt", operator.lt), ("lte", operator.le), ("gt", operator.gt), ("gte", operator.ge)],
)
def test_each_comparison_operator_binds_each_calls_value(repo: Any, op: str, compare: Any) -> None:
    for value in (0, 7, 19, 7):
        want = _expected(repo, lambda r: compare(r["price"], value))
        assert _ids(repo.find_many({f"price__{op}": value}, limit=100)) == want
        assert repo.count({f"price__{op}": value}) == len(want)


def test_in_lists_of_every_length_return_their_own_rows(repo: Any) -> None:
    for size in (0, 1, 2, 3, 4, 5, 8, 9, 17, 64, 65, 200, 3, 1):
        prices = list(range(size))
        want = _expected(repo, lambda r: r["price"] in prices)
        assert _ids(repo.find_many({"price__in": prices}, limit=100)) == want, size
        assert repo.count({"price__in": prices}) == len(want)
        unwanted = _expected(repo, lambda r: r["price"] not in prices)
        assert _ids(repo.find_many({"price__not_in": tuple(prices)}, limit=100)) == unwanted, size
    # The same length, other values: not the rows of the list that compiled the shape.
    for prices in ([1, 2, 3], [4, 5, 6], [19, 18, 0]):
        want = _expected(repo, lambda r: r["price"] in prices)
        assert _ids(repo.find_many({"price__in": prices}, limit=100)) == want


def test_null_checks_and_values_of_one_field_are_different_shapes(repo: Any) -> None:
    cases: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
        ({"note": None}, lambda r: r["note"] is None),
        ({"note": "n1"}, lambda r: r["note"] == "n1"),
        ({"note__ne": None}, lambda r: r["note"] is not None),
        ({"note__ne": "n2"}, lambda r: r["note"] is not None and r["note"] != "n2"),
        ({"note__is_null": True}, lambda r: r["note"] is None),
        ({"note__is_null": False}, lambda r: r["note"] is not None),
        ({"note": "n3"}, lambda r: r["note"] == "n3"),
        ({"note": None}, lambda r: r["note"] is None),
    ]
    for where, keep in cases:
        want = _expected(repo, keep)
        assert _ids(repo.find_many(where, limit=100)) == want, where
        assert repo.count(where) == len(want), where


def test_text_operators_bind_each_calls_text(repo: Any) -> None:
    cases: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
        ({"name__contains": "item 1"}, lambda r: "item 1" in r["name"]),
        ({"name__contains": "% off_"}, lambda r: "% off_" in r["name"]),
        ({"name__icontains": "ITEM 2"}, lambda r: "item 2" in r["name"].lower()),
        ({"name__icontains": "_now"}, lambda r: "_now" in r["name"].lower()),
        ({"name__startswith": "item 3"}, lambda r: r["name"].startswith("item 3")),
        ({"name__startswith": "50%"}, lambda r: r["name"].startswith("50%")),
        ({"name__startswith": "Back\\"}, lambda r: r["name"].startswith("Back\\")),
        ({"name__startswith": "back"}, lambda r: r["name"].startswith("back")),
    ]
    for where, keep in cases:
        want = _expected(repo, keep)
        assert _ids(repo.find_many(where, limit=100)) == want, where


def test_conditions_combine_with_and_and_expressions_keep_or(repo: Any) -> None:
    where = {"shop_id": 2, "price__gt": 4, "note__is_null": False, "name__startswith": "item"}
    for shop, low in ((2, 4), (3, 10), (1, 0)):
        where = {"shop_id": shop, "price__gt": low, "note__is_null": False, "name__startswith": "item"}
        want = _expected(
            repo,
            lambda r: r["shop_id"] == shop and r["price"] > low and r["note"] is not None
            and r["name"].startswith("item"),
        )
        assert _ids(repo.find_many(where, limit=100)) == want
    # A Peewee expression (code, not input) may nest OR inside AND; it is compiled per call.
    for low, note in ((15, "n1"), (3, "n4")):
        expression = (ShapeItem.price > low) | ((ShapeItem.note == note) & (ShapeItem.shop_id != 1))
        want = _expected(repo, lambda r: r["price"] > low or (r["note"] == note and r["shop_id"] != 1))
        assert _ids(repo.find_many(expression, limit=100)) == want
        assert repo.count(expression) == len(want)


def _nested(low: int, high: int, note: str, shops: list[int]) -> tuple[Any, Callable[[dict[str, Any]], bool]]:
    I = ShapeItem
    expression = ((I.price >= low) & (I.price < high)) | (
        (I.note == note) & (I.shop_id.in_(shops) | I.note.is_null())
    )

    def keep(r: dict[str, Any]) -> bool:
        return (low <= r["price"] < high) or (r["note"] == note and (r["shop_id"] in shops or r["note"] is None))

    return expression, keep


def test_an_expression_with_and_or_nesting_is_compiled_once_per_shape(
    repo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled = _compilations(repo.db, monkeypatch)
    expression, _ = _nested(1, 5, "n1", [1, 2])
    repo.find_many(expression, order_by="-price", limit=100)
    repo.count(expression)
    first = len(compiled)
    for low, high, note, shops in ((0, 3, "n2", [3, 1]), (10, 19, "n4", [2, 3]), (5, 6, "n0", [1, 3])):
        expression, keep = _nested(low, high, note, shops)
        want = _expected(repo, keep)
        assert sorted(_ids(repo.find_many(expression, order_by="-price", limit=100))) == want
        assert repo.count(expression) == len(want)
    assert len(compiled) == first


def test_expressions_of_each_nesting_and_in_length_return_their_own_rows(repo: Any) -> None:
    I = ShapeItem
    for shops in ([], [1], [1, 2], [3, 2, 1], [2]):
        for low in (3, 12):
            expressions: list[tuple[Any, Callable[[dict[str, Any]], bool]]] = [
                (I.shop_id.in_(shops) & (I.price > low),
                 lambda r: r["shop_id"] in shops and r["price"] > low),
                (I.shop_id.in_(shops) | (I.price > low),
                 lambda r: r["shop_id"] in shops or r["price"] > low),
                (I.shop_id.not_in(shops) & ((I.price <= low) | I.note.is_null(False)),
                 lambda r: r["shop_id"] not in shops and (r["price"] <= low or r["note"] is not None)),
                ((I.price == low) | (I.note != "n1"),
                 lambda r: r["price"] == low or (r["note"] is not None and r["note"] != "n1")),
            ]
            for expression, keep in expressions:
                want = _expected(repo, keep)
                assert _ids(repo.find_many(expression, limit=100)) == want, (shops, low)
                assert repo.count(expression) == len(want)


def test_expressions_beyond_plain_comparisons_are_compiled_by_peewee_each_time(repo: Any) -> None:
    I = ShapeItem
    info = model_info(ShapeItem, repo.db)
    before = len(info.shapes)
    for name in ("ITEM 01", "item 02"):
        want = _expected(repo, lambda r: r["name"] == name.lower())
        assert _ids(repo.find_many(peewee.fn.LOWER(I.name) == name.lower(), limit=100)) == want
        assert _ids(repo.find_many((I.price > 3) & (peewee.fn.LOWER(I.name) == name.lower()), limit=100)) == [
            id for id in want if next(r for r in _live(repo) if r["id"] == id)["price"] > 3
        ]
    assert len(info.shapes) == before


@pytest.mark.parametrize("order_by", ["price", "-price", "note", "-note", ["shop_id", "-price"]])
def test_cursor_pages_both_ways_for_each_filter_value(repo: Any, order_by: Any) -> None:
    keys = [order_by] if isinstance(order_by, str) else order_by

    def sort_key(r: dict[str, Any]) -> tuple[Any, ...]:
        parts: list[Any] = []
        for spec in keys:
            name = spec.lstrip("-")
            value = r[name]
            # NULL sorts as the greatest value.
            rank = (1, 0) if value is None else (0, value)
            parts.append(rank)
        return tuple(parts)

    for shop in (1, 2, 3):
        rows = [r for r in _live(repo) if r["shop_id"] == shop]
        descending = [spec.startswith("-") for spec in keys]
        # Sort one key at a time from the last (stable sort), the id tie-breaker first.
        rows.sort(key=lambda r: r["id"], reverse=descending[-1])
        for i in reversed(range(len(keys))):
            rows.sort(key=lambda r, i=i: sort_key(r)[i], reverse=descending[i])
        want = [r["id"] for r in rows]
        forward: list[int] = []
        pages = []
        page = repo.find_many({"shop_id": shop}, order_by=order_by, limit=3)
        while True:
            pages.append(page)
            forward.extend(_ids(page))
            if page.next_cursor is None:
                break
            page = repo.find_many({"shop_id": shop}, order_by=order_by, limit=3, cursor=page.next_cursor)
        assert forward == want, (shop, order_by)
        backward = _ids(page)
        while page.prev_cursor is not None:
            page = repo.find_many({"shop_id": shop}, order_by=order_by, limit=3, cursor=page.prev_cursor)
            backward = _ids(page) + backward
        assert backward == want, (shop, order_by)


def test_offset_pages_bind_offset_limit_and_total(repo: Any) -> None:
    for shop in (1, 3):
        want = _expected(repo, lambda r: r["shop_id"] == shop, key="price")
        for offset, limit in ((0, 4), (4, 4), (3, 7), (100, 2)):
            page = repo.find_many({"shop_id": shop}, order_by="price", limit=limit, offset=offset)
            assert _ids(page) == want[offset:offset + limit]
            assert page.total == len(want)


def test_soft_delete_scopes_are_separate_shapes(repo: Any) -> None:
    every = [r[0] for r in repo.db.execute_sql("SELECT id FROM czo_test_shape_item ORDER BY id").fetchall()]
    deleted = [id for id in every if id % 7 == 0]
    assert _ids(repo.find_many({"price__gte": 0}, limit=100, with_deleted=True)) == every
    assert _ids(repo.find_many({"price__gte": 0}, limit=100, only_deleted=True)) == deleted
    assert _ids(repo.find_many({"price__gte": 0}, limit=100)) == [id for id in every if id % 7]
    assert repo.count({"price__gte": 0}, only_deleted=True) == len(deleted)


# -- bad and hostile input -------------------------------------------------------------------


def _filter_error(where: Any) -> str:
    with pytest.raises(InvalidFilterError) as caught:
        compile_where(ShapeItem, where)
    return str(caught.value)


@pytest.mark.parametrize(
    "good, bad",
    [
        ({"price": 1}, {"price": "ten"}),
        ({"price": 1}, {"price": 2**70}),
        ({"price": 1}, {"price": {"$gt": 1}}),
        ({"price": 1}, {"price": peewee.SQL("1")}),
        ({"price__in": [1, 2]}, {"price__in": [1, None]}),
        ({"price__in": [1, 2]}, {"price__in": [1, "x"]}),
        ({"name__contains": "a"}, {"name__contains": 5}),
        ({"name__startswith": "a"}, {"name__startswith": b"a"}),
        ({"name__icontains": "a"}, {"name__icontains": 1.5}),
        # True == 1 and False == 0 in Python: a boolean's shape must not be a list length's.
        ({"price__in": [1]}, {"price__in": True}),
        ({"price__in": []}, {"price__in": False}),
        ({"price__not_in": []}, {"price__not_in": False}),
        ({"note__is_null": True}, {"note__is_null": ["n1"]}),
        ({"note__is_null": False}, {"note__is_null": []}),
    ],
)
def test_a_bad_value_in_a_known_shape_gives_the_same_error(repo: Any, good: Any, bad: Any) -> None:
    repo.find_many(good)
    repo.count(good)
    message = _filter_error(bad)
    with pytest.raises(InvalidFilterError) as caught:
        repo.find_many(bad)
    assert str(caught.value) == message
    with pytest.raises(InvalidFilterError) as caught:
        repo.count(bad)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "where",
    [
        {"nope": 1},
        {"price__near": 1},
        {"price__lt": None},
        {"price__in": 3},
        {"note__is_null": "yes"},
        {1: 2},
        {"price__in": list(range(10_001))},
    ],
)
def test_a_bad_shape_gives_the_same_error_every_time(repo: Any, where: Any) -> None:
    message = _filter_error(where)
    for _ in range(2):
        with pytest.raises(InvalidFilterError) as caught:
            repo.find_many(where)
        assert str(caught.value) == message
        with pytest.raises(InvalidFilterError) as caught:
            repo.count(where)
        assert str(caught.value) == message


def test_a_bad_filter_is_reported_before_a_bad_cursor(repo: Any) -> None:
    repo.find_many({"price": 1})
    with pytest.raises(InvalidFilterError):
        repo.find_many({"price": "ten"}, cursor="garbage!")
    with pytest.raises(InvalidFilterError):
        repo.find_many({"nope": 1}, cursor="garbage!")
    with pytest.raises(InvalidCursorError):
        repo.find_many({"price": 1}, cursor="garbage!")


HOSTILE_TEXT = [
    "x' OR '1'='1",
    "'; DROP TABLE czo_test_shape_item; --",
    "%",
    "_",
    "\\",
    "$1",
    "%s",
    "?",
    ":name",
]


def test_hostile_text_is_bound_not_spliced(repo: Any) -> None:
    info = model_info(ShapeItem, repo.db)
    matches: dict[str, Callable[[str, str], bool]] = {
        "": lambda name, text: name == text,
        "__ne": lambda name, text: name != text,
        "__contains": lambda name, text: text in name,
        "__icontains": lambda name, text: text.lower() in name.lower(),
        "__startswith": lambda name, text: name.startswith(text),
        "__in": lambda name, text: name == text,
    }
    for text in HOSTILE_TEXT:
        for op, match in matches.items():
            value: Any = [text, text] if op == "__in" else text
            want = _expected(repo, lambda r: match(r["name"], text))
            assert _ids(repo.find_many({"name" + op: value}, limit=100)) == want, (op, text)
            assert repo.count({"name" + op: value}) == len(want)
    assert repo.count() == len(_live(repo))  # the table is still there, every row in it
    statements = [entry[0].sql for entry in info.shapes._entries.values()]
    assert statements
    assert not any(text in sql for sql in statements for text in HOSTILE_TEXT if len(text) > 2)


def test_a_huge_integer_is_refused_in_a_known_shape_and_a_new_one(repo: Any) -> None:
    for where in ({"price__gt": 2**63}, {"price__in": [2**70]}):
        with pytest.raises(InvalidFilterError, match="price"):
            repo.find_many(where)
    repo.find_many({"price__gt": 1})
    with pytest.raises(InvalidFilterError, match="price"):
        repo.find_many({"price__gt": -(2**80)})


# -- the cache stays bounded -----------------------------------------------------------------


def test_the_shape_cache_is_bounded_by_default(repo: Any) -> None:
    info = model_info(ShapeItem, repo.db)
    assert info.shapes.size == MAX_SHAPES


def test_many_distinct_shapes_evict_the_oldest_and_still_answer(repo: Any) -> None:
    info = model_info(ShapeItem, repo.db)
    info.shapes = ShapeCache(16)
    names = ["shop_id", "price", "note", "name"]
    ops = ["", "__ne", "__gt", "__lt", "__gte", "__lte"]
    wheres: list[dict[str, Any]] = []
    for a in names:
        for op in ops:
            for b in ("price__lte", "shop_id__gte"):
                value: Any = "n1" if a in ("note", "name") else 2
                wheres.append({a + op: value, b: 15})
    assert len(wheres) > 40
    for where in wheres + wheres[:5]:
        repo.find_many(where, limit=100)
        repo.count(where)
        assert len(info.shapes) <= 16
    # An evicted shape is compiled again and still returns its own rows.
    first = wheres[0]
    want = _expected(repo, lambda r: r["shop_id"] == 2 and r["price"] <= 15)
    assert first == {"shop_id": 2, "price__lte": 15}
    assert _ids(repo.find_many(first, limit=100)) == want


def test_large_shapes_are_kept_within_a_parameter_budget(repo: Any) -> None:
    """A client can send shapes of thousands of parameters (many long ``in`` lists): the cache
    bounds their total, not only their number, so memory stays flat."""
    info = model_info(ShapeItem, repo.db)
    assert info.shapes.budget == MAX_SHAPE_PARAMETERS
    info.shapes = ShapeCache(MAX_SHAPES, 1200)
    keys = [f + op for f in ("id", "shop_id", "price", "version") for op in ("__in", "__not_in")]
    orders = [keys[i:] + keys[:i] for i in range(len(keys))]
    orders += [list(reversed(keys)) for keys in orders]
    for i, order in enumerate(orders):
        # 8 lists of up to 64 slots: over 400 parameters a shape, so two fit in the budget.
        where: dict[str, Any] = {key: list(range(i, i + 40)) for key in order}
        for key in order[:3]:
            where[key] = [v for v in where[key] if v % 3]
        assert repo.count(where) == len(repo.find_many(where, limit=100).items)
        assert len(info.shapes) <= 2
        assert sum(len(entry[0].plan) for entry in info.shapes._entries.values()) <= 1200
        assert info.shapes.weight <= 1200
    # A small shape still gets in, and answers its own rows.
    assert repo.count({"price": 3}) == len(_expected(repo, lambda r: r["price"] == 3))
    assert ("count", False, False, (("price", "v"),)) in info.shapes._entries


class LongTextItem(Model):
    title = peewee.CharField(max_length=600)
    subtitle = peewee.CharField(max_length=600, null=True)
    body = peewee.TextField(null=True)

    class Meta:
        table_name = "czo_test_long_text_item"


@pytest.mark.parametrize(
    "order_by", [["title", "subtitle"], ["-subtitle", "title"], "body", ["-body", "-title"]]
)
def test_cursors_of_long_sort_values_are_accepted_back(db: peewee.Database, order_by: Any) -> None:
    """A cursor carries the edge row's sort values: ordering on long text makes it long, and
    the kit must take back every cursor it hands out."""
    db.bind([LongTextItem])
    db.drop_tables([LongTextItem], safe=True)
    db.create_tables([LongTextItem])
    try:
        repo = create_repository(LongTextItem, db=db, secret_key=SECRET)
        # Full-length values of 3- and 4-byte characters; some equal, some NULL.
        rows = [
            {
                "title": ("字" if i % 2 else "😀") * 599 + str(i % 4),
                "subtitle": None if i % 5 == 0 else "語" * 598 + f"{i % 3:02d}",
                "body": None if i % 6 == 0 else "é" * 1500 + str(i % 3),
            }
            for i in range(14)
        ]
        repo.create_many(rows)
        want = [r.id for r in repo.find_many(order_by=order_by, offset=0, limit=100).items]
        assert len(want) == 14
        seen: list[int] = []
        page = repo.find_many(order_by=order_by, limit=3)
        longest = 0
        while True:
            seen += _ids(page)
            if page.next_cursor is None:
                break
            longest = max(longest, len(page.next_cursor))
            page = repo.find_many(order_by=order_by, limit=3, cursor=page.next_cursor)
        assert seen == want
        assert longest > 2048
        back = _ids(page)
        while page.prev_cursor is not None:
            page = repo.find_many(order_by=order_by, limit=3, cursor=page.prev_cursor)
            back = _ids(page) + back
        assert back == want
        # Oversized junk is still refused before anything is decoded.
        with pytest.raises(InvalidCursorError, match="characters long"):
            repo.find_many(order_by="title", limit=3, cursor="A" * 20_000)
        with pytest.raises(InvalidCursorError, match="characters long"):
            repo.find_many(order_by="body", limit=3, cursor="A" * 100_000)
    finally:
        db.drop_tables([LongTextItem], safe=True)
