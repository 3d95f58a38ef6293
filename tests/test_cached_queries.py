"""``create_cached_queries`` and ``create_repository(..., cache=)`` on SQLite and PostgreSQL,
each with the memory and the Redis cache: reads served from the cache (no SQL at all the
second time), exact row types, no pickles, soft-delete flags, invalidation after commit only,
no stale row left behind by a reader racing a writer, and bad filters that cache nothing."""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import peewee
import pytest

from cached_support import CACHES, DATABASES, database_url_of, open_cache, open_database
from czo_kit.cache import CacheManager
from czo_kit.cache.driver import HEADER_MAGIC, parse_tag_spec
from czo_kit.db import Model, UTCDateTimeField, create_mutations, create_queries, create_repository
from czo_kit.db.cached import create_cached_queries, list_tag, row_tag
from czo_kit.db.queries import Queries
from czo_kit.errors import InvalidCursorError, InvalidFilterError, NotFoundError, OptimisticLockError
from czo_kit.settings import Settings
from czo_kit.testing import StatementCounter

SECRET = b"s" * 32
TABLE = "czo_cached_gadget"
UTC = dt.timezone.utc


class Gadget(Model):
    shop_id = peewee.IntegerField(index=True)
    name = peewee.CharField(max_length=50)
    price = peewee.DecimalField(max_digits=10, decimal_places=2)
    ratio = peewee.FloatField(null=True)
    active = peewee.BooleanField(default=True)
    launched = peewee.DateField(null=True)
    token = peewee.UUIDField(null=True)
    published_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = TABLE


def gadget(n: int, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "shop_id": 1 + n % 2,
        "name": f"Item {n}",
        "price": decimal.Decimal(f"{n}.50"),
        "ratio": n / 4,
        "active": n % 3 != 0,
        "launched": dt.date(2026, 1, 1 + n),
        "token": uuid.UUID(int=n + 1),
        "published_at": dt.datetime(2026, 11, 27, 12, n, 30, 123456, tzinfo=UTC),
    }
    data.update(changes)
    return data


class Boom(Exception):
    pass


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(params=DATABASES)
def db(request: pytest.FixtureRequest, settings_for: Callable[..., Settings]) -> Iterator[peewee.Database]:
    yield from open_database(database_url_of(request), settings_for, [Gadget])


@pytest.fixture(params=CACHES)
def cache(request: pytest.FixtureRequest) -> Iterator[CacheManager]:
    yield from open_cache(request, "cq")


@pytest.fixture
def plain(db: peewee.Database) -> Any:
    """Uncached reads: what the cached ones must return."""
    return create_queries(Gadget, db=db, secret_key=SECRET)


@pytest.fixture
def repo(db: peewee.Database, cache: CacheManager) -> Any:
    return create_repository(Gadget, db=db, cache=cache, secret_key=SECRET)


@pytest.fixture(params=["create_repository", "composed"])
def writer(request: pytest.FixtureRequest, db: peewee.Database, cache: CacheManager) -> Any:
    """Both ways of getting cached reads with writes that invalidate them."""
    if request.param == "create_repository":
        return create_repository(Gadget, db=db, cache=cache, secret_key=SECRET)
    return create_cached_queries(Gadget, db=db, cache=cache, secret_key=SECRET) | create_mutations(
        Gadget, db=db, cache=cache
    )


class Spy:
    """Records the calls of a method while still making them."""

    def __init__(self, target: Callable[..., Any]) -> None:
        self.target = target
        self.calls: list[list[Any]] = []

    def __call__(self, items: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(list(items))
        return self.target(items, *args, **kwargs)


@pytest.fixture
def invalidations(cache: CacheManager, monkeypatch: pytest.MonkeyPatch) -> Spy:
    spy = Spy(cache.invalidate_tags)
    monkeypatch.setattr(cache, "invalidate_tags", spy)
    return spy


def sql_of(db: peewee.Database, call: Callable[[], Any]) -> tuple[Any, list[str]]:
    with StatementCounter(db) as counter:
        result = call()
    return result, counter.statements


def in_thread(db: peewee.Database, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in another thread, hence on another database connection."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised in the calling thread
            out["error"] = exc
        finally:
            db.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if "error" in out:
        raise out["error"]
    return out["value"]


def view(result: Any) -> Any:
    """Everything a read returned, in comparable form (rows as their field values and types)."""
    if isinstance(result, Gadget):
        assert type(result) is Gadget
        return {name: (value, type(value)) for name, value in result.__data__.items()}
    if isinstance(result, list):
        return [view(item) for item in result]
    if hasattr(result, "items") and hasattr(result, "next_cursor"):
        return (
            view(result.items), result.limit, result.offset, result.total, result.has_next,
            result.has_prev, result.next_cursor, result.prev_cursor,
        )
    return result


# -- reads come from the cache --------------------------------------------------------------


def test_find_by_id_is_served_from_the_cache_with_exact_types(
    db: peewee.Database, repo: Any, plain: Any
) -> None:
    rows = repo.create_many([gadget(n) for n in range(3)])
    target = rows[1].id
    first, statements = sql_of(db, lambda: repo.find_by_id(target))
    assert len(statements) == 1
    second, statements = sql_of(db, lambda: repo.find_by_id(target))
    assert statements == []
    expected = plain.find_by_id(target)
    assert view(first) == view(second) == view(expected)
    row = second
    assert type(row.price) is decimal.Decimal and row.price == decimal.Decimal("1.50")
    assert type(row.launched) is dt.date and row.launched == dt.date(2026, 1, 2)
    assert type(row.token) is uuid.UUID and row.token == uuid.UUID(int=2)
    assert row.active is True and row.ratio == 0.25
    for moment in (row.published_at, row.created_at, row.updated_at):
        assert type(moment) is dt.datetime and moment.utcoffset() == dt.timedelta(0)
    assert row.published_at == dt.datetime(2026, 11, 27, 12, 1, 30, 123456, tzinfo=UTC)
    assert row.deleted_at is None and row.version == 1

    assert sql_of(db, lambda: repo.find_by_id(target + 1000))[0] is None
    assert sql_of(db, lambda: repo.find_by_id(target + 1000)) == (None, [])  # a miss is cached too


def test_cached_rows_are_msgpack_field_values_not_pickled_objects(
    repo: Any, cache: CacheManager
) -> None:
    row = repo.create(gadget(4))
    repo.find_by_id(row.id)
    key = cache.namespace("db").namespace(TABLE).key(f"r:{row.id}")
    raw = cache.driver.get_many([key])[0]
    assert raw is not None and raw.startswith(HEADER_MAGIC)
    assert {tag for tag, _ in parse_tag_spec(raw)} >= {row_tag(TABLE, row.id), f"ns:db:{TABLE}"}
    payload = raw.split(b"\n", 1)[1]
    assert not payload.startswith(b"\x80")  # the opcode every pickle starts with
    for word in (b"Gadget", b"peewee", b"czo_kit", b"__data__"):
        assert word not in payload  # a pickled model would name its class and module
    values = msgspec.msgpack.decode(payload)
    names = [f.name for f in Gadget._meta.sorted_fields]
    assert isinstance(values, list) and len(values) == len(names)
    decoded = dict(zip(names, values))
    assert decoded["id"] == row.id and decoded["name"] == "Item 4"
    assert decimal.Decimal(decoded["price"]) == decimal.Decimal("4.50")  # msgpack has no decimal: a string
    assert decoded["token"] == str(uuid.UUID(int=5))


def test_find_by_ids_keeps_order_and_fetches_all_misses_in_one_query(
    db: peewee.Database, repo: Any, plain: Any
) -> None:
    ids = [row.id for row in repo.create_many([gadget(n) for n in range(6)])]
    repo.find_by_id(ids[0])
    repo.find_by_id(ids[3])
    wanted = [ids[4], ids[0], ids[5] + 1000, ids[3], ids[1], ids[0]]
    found, statements = sql_of(db, lambda: repo.find_by_ids(wanted))
    assert len(statements) == 1  # ids[4], ids[1] and the missing one, together
    assert [row.id for row in found] == [ids[4], ids[0], ids[3], ids[1], ids[0]]
    again, statements = sql_of(db, lambda: repo.find_by_ids(wanted))
    assert statements == []
    assert view(again) == view(found) == view(plain.find_by_ids(wanted))
    assert sql_of(db, lambda: (repo.find_by_id(ids[4]), repo.find_by_id(ids[5] + 1000)))[1] == []
    assert sql_of(db, lambda: repo.find_by_ids([])) == ([], [])


def page_reads(repo: Any) -> list[tuple[str, Callable[[Any], Any]]]:
    return [
        ("find_one", lambda r: r.find_one({"shop_id": 2}, order_by="-price")),
        ("find_one none", lambda r: r.find_one({"name": "nobody"})),
        ("offset page", lambda r: r.find_many({"shop_id": 1}, order_by="name", limit=2, offset=1)),
        ("offset page, no total", lambda r: r.find_many(order_by="-price", limit=3, offset=0, with_total=False)),
        ("cursor page 1", lambda r: r.find_many(order_by="-price", limit=3)),
        ("count", lambda r: r.count({"active": True})),
        ("count all", lambda r: r.count()),
        ("exists", lambda r: r.exists({"name": "Item 3"})),
        ("exists not", lambda r: r.exists({"name": "nobody"})),
    ]


def test_lists_counts_and_exists_are_served_from_the_cache(
    db: peewee.Database, repo: Any, plain: Any
) -> None:
    repo.create_many([gadget(n) for n in range(8)])
    for name, read in page_reads(repo):
        first, statements = sql_of(db, lambda: read(repo))
        assert statements, name
        second, statements = sql_of(db, lambda: read(repo))
        assert statements == [], name
        assert view(first) == view(second) == view(read(plain)), name


def test_cursor_pages_are_cached_page_by_page(db: peewee.Database, repo: Any, plain: Any) -> None:
    repo.create_many([gadget(n) for n in range(8)])
    pages = [repo.find_many(order_by="-price", limit=3)]
    while pages[-1].next_cursor:
        pages.append(repo.find_many(order_by="-price", limit=3, cursor=pages[-1].next_cursor))
    back = repo.find_many(order_by="-price", limit=3, cursor=pages[-1].prev_cursor)
    assert [len(page.items) for page in pages] == [3, 3, 2]
    assert [row.name for page in pages for row in page.items] == [f"Item {n}" for n in range(7, -1, -1)]
    assert view(back) == view(plain.find_many(order_by="-price", limit=3, cursor=pages[-1].prev_cursor))

    def read_all() -> list[Any]:
        cursors = [None] + [page.next_cursor for page in pages[:-1]]
        result = [repo.find_many(order_by="-price", limit=3, cursor=c) for c in cursors]
        result.append(repo.find_many(order_by="-price", limit=3, cursor=pages[-1].prev_cursor))
        return result

    again, statements = sql_of(db, read_all)
    assert statements == []
    assert view(again) == view([*pages, back])


def test_soft_delete_flags_are_applied_to_the_cached_row(db: peewee.Database, repo: Any) -> None:
    live, gone = repo.create_many([gadget(1), gadget(2)])
    repo.delete(gone.id)
    repo.find_by_id(gone.id)
    repo.find_by_id(live.id)

    def reads() -> list[Any]:
        ids = lambda rows: [row.id for row in rows]  # noqa: E731
        return [
            repo.find_by_id(gone.id),
            repo.find_by_id(gone.id, with_deleted=True).id,
            repo.find_by_id(gone.id, only_deleted=True).deleted_at is not None,
            repo.find_by_id(live.id, only_deleted=True),
            repo.find_by_id(live.id, with_deleted=True).id,
            ids(repo.find_by_ids([gone.id, live.id])),
            ids(repo.find_by_ids([gone.id, live.id], with_deleted=True)),
            ids(repo.find_by_ids([gone.id, live.id], only_deleted=True)),
        ]

    answers, statements = sql_of(db, reads)
    assert statements == []  # every flag is answered from the one cached copy of each row
    assert answers == [
        None, gone.id, True, None, live.id, [live.id], [gone.id, live.id], [gone.id],
    ]
    assert (repo.count(), repo.count(with_deleted=True), repo.count(only_deleted=True)) == (1, 2, 1)
    assert sql_of(db, lambda: (repo.count(), repo.count(with_deleted=True), repo.count(only_deleted=True))) == (
        (1, 2, 1), []
    )
    with pytest.raises(InvalidFilterError):
        repo.find_by_id(live.id, with_deleted=True, only_deleted=True)


# -- writes invalidate, after commit ---------------------------------------------------------


def test_a_committed_write_is_seen_by_the_next_read(db: peewee.Database, writer: Any) -> None:
    row, other = writer.create_many([gadget(1), gadget(2)])

    def reads() -> Any:
        return (
            writer.find_by_id(row.id).name,
            [r.name for r in writer.find_by_ids([row.id, other.id])],
            writer.find_one({"name": "Item 1"}) is not None,
            [r.name for r in writer.find_many(order_by="id").items],
            writer.count({"shop_id": 2}),
            writer.exists({"name": "Renamed"}),
        )

    assert reads() == ("Item 1", ["Item 1", "Item 2"], True, ["Item 1", "Item 2"], 1, False)
    assert sql_of(db, reads)[1] == []  # all cached

    writer.update(row.id, {"name": "Renamed", "shop_id": 1})
    assert reads() == ("Renamed", ["Renamed", "Item 2"], False, ["Renamed", "Item 2"], 0, True)
    assert writer.find_by_id(row.id).version == 2
    assert sql_of(db, lambda: writer.find_by_id(other.id).name) == ("Item 2", [])  # untouched row stays cached

    writer.delete(row.id)
    assert writer.find_by_id(row.id) is None and writer.count() == 1
    writer.restore(row.id)
    assert writer.find_by_id(row.id).name == "Renamed" and writer.count() == 2
    writer.hard_delete(row.id)
    assert writer.find_by_id(row.id, with_deleted=True) is None and writer.count(with_deleted=True) == 1
    created = writer.create(gadget(3))
    assert writer.find_by_id(created.id).name == "Item 3"
    assert [r.name for r in writer.find_many(order_by="id").items] == ["Item 2", "Item 3"]


def test_nothing_is_invalidated_before_commit_nor_after_a_rollback(
    writer: Any, cache: CacheManager, invalidations: Spy
) -> None:
    row, other = writer.create_many([gadget(1), gadget(2)])
    invalidations.calls.clear()
    assert writer.find_by_id(row.id).name == "Item 1"

    with writer.transaction():
        writer.update(row.id, {"name": "Inside"})
        with pytest.raises(Boom):
            with writer.transaction():  # a savepoint that rolls back
                writer.update(other.id, {"name": "Never"})
                raise Boom
        assert invalidations.calls == []
    assert invalidations.calls == [[list_tag(TABLE), row_tag(TABLE, row.id)]]
    assert writer.find_by_id(row.id).name == "Inside"
    assert writer.find_by_id(other.id).name == "Item 2"

    invalidations.calls.clear()
    with pytest.raises(Boom):
        with writer.transaction():
            writer.update(row.id, {"name": "Rolled back"})
            writer.create(gadget(5))
            raise Boom
    assert invalidations.calls == []
    assert writer.find_by_id(row.id).name == "Inside"
    assert writer.count() == 2


def test_a_transaction_reads_its_own_writes_and_its_rollback_leaves_nothing_cached(
    db: peewee.Database, repo: Any
) -> None:
    warm, cold = repo.create_many([gadget(1), gadget(2)])
    assert repo.find_by_id(warm.id).name == "Item 1"
    assert repo.count({"name": "Draft"}) == 0
    with pytest.raises(Boom):
        with repo.transaction():
            repo.update(warm.id, {"name": "Draft"})
            repo.update(cold.id, {"name": "Draft"})
            assert repo.find_by_id(warm.id).name == "Draft"  # its own write, not the cached row
            assert [r.name for r in repo.find_by_ids([cold.id, warm.id])] == ["Draft", "Draft"]
            assert repo.count({"name": "Draft"}) == 2
            assert repo.exists({"name": "Draft"}) is True
            assert repo.find_one({"name": "Draft"}, order_by="id").id == warm.id
            assert [r.name for r in repo.find_many(order_by="id").items] == ["Draft", "Draft"]
            # Another connection sees only committed data, cached or not.
            assert in_thread(db, lambda: repo.find_by_id(cold.id).name) == "Item 2"
            raise Boom
    # Nothing read inside the rolled-back transaction was left in the cache.
    assert repo.find_by_id(warm.id).name == "Item 1"
    assert repo.find_by_id(cold.id).name == "Item 2"
    assert repo.count({"name": "Draft"}) == 0
    assert repo.exists({"name": "Draft"}) is False
    assert repo.find_one({"name": "Draft"}) is None
    assert [r.name for r in repo.find_many(order_by="id").items] == ["Item 1", "Item 2"]


RACED_READS: list[tuple[str, Callable[[Any, int], Any], Any, Any]] = [
    ("find_by_id", lambda r, id: r.find_by_id(id).name, "Old", "New"),
    ("find_by_ids", lambda r, id: [row.name for row in r.find_by_ids([id])], ["Old"], ["New"]),
    ("find_one", lambda r, id: r.find_one({"shop_id": 1}).name, "Old", "New"),
    ("find_many", lambda r, id: [row.name for row in r.find_many({"shop_id": 1})], ["Old"], ["New"]),
    ("count", lambda r, id: r.count({"name": "Old"}), 1, 0),
    ("exists", lambda r, id: r.exists({"name": "Old"}), True, False),
]


@pytest.mark.parametrize(("method", "read", "old", "new"), RACED_READS, ids=[r[0] for r in RACED_READS])
def test_a_reader_racing_a_writer_leaves_no_stale_entry(
    db: peewee.Database,
    writer: Any,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    read: Callable[[Any, int], Any],
    old: Any,
    new: Any,
) -> None:
    row = writer.create(gadget(1, name="Old", shop_id=1))
    original = getattr(Queries, method)
    raced = []

    def read_then_lose_the_race(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)  # the old row, read from the database...
        if not raced:
            raced.append(True)
            # ...and before it reaches the cache, another connection commits a change.
            in_thread(db, lambda: writer.update(row.id, {"name": "New"}))
        return result

    monkeypatch.setattr(Queries, method, read_then_lose_the_race)
    assert read(writer, row.id) == old  # what it read was true when it read it
    assert raced == [True]
    assert read(writer, row.id) == new  # but it was not kept as fresh


def test_a_read_modify_write_loop_converges_after_a_lost_invalidation(
    db: peewee.Database, writer: Any
) -> None:
    row = writer.create(gadget(1, name="Old"))
    assert writer.find_by_id(row.id).version == 1  # cached at version 1
    # A write the cache never hears of (raw Peewee, another program, a lost invalidation).
    create_mutations(Gadget, db=db).update(row.id, {"name": "Behind the cache"})

    attempts = 0
    while True:
        attempts += 1
        current = writer.find_by_id(row.id)
        try:
            writer.update(row.id, {"name": current.name + "!"}, expected_version=current.version)
            break
        except OptimisticLockError:
            # Without the fix, every turn reads the stale cached version 1 again until the TTL.
            assert attempts < 5, "the loop keeps reading the stale cached row"
    assert attempts == 2  # the conflict dropped the stale entry: the retry read the row afresh
    final = writer.find_by_id(row.id)
    assert (final.name, final.version) == ("Behind the cache!", 3)


def test_a_write_to_a_vanished_row_drops_its_cached_copy(db: peewee.Database, writer: Any) -> None:
    row = writer.create(gadget(1))
    assert writer.find_by_id(row.id) is not None
    Gadget.delete().where(Gadget.id == row.id).execute()  # gone behind the cache's back
    with pytest.raises(NotFoundError):
        writer.update(row.id, {"name": "x"})
    assert writer.find_by_id(row.id) is None


# -- filters --------------------------------------------------------------------------------


def test_peewee_expressions_are_cached_by_their_sql(db: peewee.Database, repo: Any, plain: Any) -> None:
    repo.create_many([gadget(n) for n in range(6)])
    reads: list[Callable[[Any], Any]] = [
        lambda r: [g.name for g in r.find_many(Gadget.price < decimal.Decimal("3"), order_by="id")],
        lambda r: [g.name for g in r.find_many(Gadget.price < decimal.Decimal("5"), order_by="id")],
        lambda r: r.count((Gadget.shop_id == 2) & (Gadget.active == True)),  # noqa: E712
        lambda r: r.find_one(Gadget.name.startswith("Item 4")).name,
        lambda r: r.exists(Gadget.ratio > 100),
    ]
    first, statements = sql_of(db, lambda: [read(repo) for read in reads])
    assert len(statements) >= len(reads)
    assert first == [
        ["Item 0", "Item 1", "Item 2"],
        ["Item 0", "Item 1", "Item 2", "Item 3", "Item 4"],  # same SQL, other value: other entry
        2,
        "Item 4",
        False,
    ]
    assert first == [read(plain) for read in reads]
    assert sql_of(db, lambda: [read(repo) for read in reads]) == (first, [])
    assert repo.count({"price__lt": decimal.Decimal("3")}) == repo.count(Gadget.price < decimal.Decimal("3")) == 3


def test_every_form_of_order_by_is_cached_and_answers_as_uncached(db: peewee.Database, repo: Any, plain: Any) -> None:
    repo.create_many([gadget(n) for n in range(6)])
    orders: list[Any] = [
        None, "price", "-price", Gadget.price, Gadget.price.desc(), Gadget.price.asc(),
        [Gadget.shop_id, "-price"], ("shop_id", Gadget.price.desc()), ["-shop_id", Gadget.price],
    ]
    names = lambda r, order: [g.name for g in r.find_many(order_by=order, limit=10).items]  # noqa: E731
    expected = [names(plain, order) for order in orders]
    assert [names(repo, order) for order in orders] == expected
    assert expected[1] != expected[2] and expected[6] != expected[8]  # they really differ
    assert sql_of(db, lambda: [names(repo, order) for order in orders]) == (expected, [])


def test_bad_filters_still_raise_and_cache_nothing(
    repo: Any, cache: CacheManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.create(gadget(1))
    stored = Spy(cache.driver.set_many)
    monkeypatch.setattr(cache.driver, "set_many", stored)
    bad: list[tuple[type[Exception], Callable[[], Any]]] = [
        (InvalidFilterError, lambda: repo.find_many({"colour": "red"})),
        (InvalidFilterError, lambda: repo.find_one({"price__gte": "cheap"})),
        (InvalidFilterError, lambda: repo.count({"name__like": "x"})),
        (InvalidFilterError, lambda: repo.exists({"shop_id__gt": None})),
        (InvalidFilterError, lambda: repo.exists({5: 1})),
        (InvalidFilterError, lambda: repo.find_many(limit=0)),
        (InvalidFilterError, lambda: repo.find_many(order_by="colour")),
        (InvalidFilterError, lambda: repo.find_many(Gadget.price > 1, offset=-1)),
        (InvalidFilterError, lambda: repo.find_by_id("abc")),
        (InvalidFilterError, lambda: repo.find_by_ids("123")),
        (InvalidFilterError, lambda: repo.find_by_ids([1, "x"])),
        (InvalidCursorError, lambda: repo.find_many(cursor="not-a-cursor")),
        (InvalidCursorError, lambda: repo.find_many(cursor=5)),
    ]
    for error, call in bad:
        for _ in range(2):  # the second time too: no error was cached as an answer
            with pytest.raises(error):
                call()
    assert stored.calls == []


def test_repositories_with_other_limits_or_keys_never_answer_from_each_others_pages(
    db: peewee.Database, cache: CacheManager
) -> None:
    """Two repositories of one table share the cache (same namespace): a page cached by one
    must not answer the other when their limits or cursor keys differ."""
    wide = create_repository(Gadget, db=db, cache=cache, secret_key=SECRET, default_limit=8, max_limit=50)
    narrow = create_repository(Gadget, db=db, cache=cache, secret_key=SECRET, default_limit=2, max_limit=5)
    other_key = create_repository(Gadget, db=db, cache=cache, secret_key=b"o" * 32)
    wide.create_many([gadget(n) for n in range(12)])
    assert len(wide.find_many(limit=10).items) == 10
    with pytest.raises(InvalidFilterError, match="limit"):
        narrow.find_many(limit=10)  # its max_limit holds, whatever another cached
    assert len(wide.find_many().items) == 8
    page = narrow.find_many()
    assert (len(page.items), page.limit) == (2, 2)
    assert len(narrow.find_many(offset=0, with_total=False).items) == 2
    wide.find_many(limit=3)
    mine = other_key.find_many(limit=3)
    assert mine.next_cursor is not None
    assert len(other_key.find_many(limit=3, cursor=mine.next_cursor).items) == 3


def test_expressions_whose_values_differ_only_in_type_are_cached_apart(
    db: peewee.Database, repo: Any, plain: Any
) -> None:
    """``1`` and ``"1"`` print alike but are other values to the database (SQLite never finds
    an integer equal to text): each expression answers as uncached, whichever ran first."""
    repo.create_many([gadget(n) for n in range(6)])
    shop = Gadget.shop_id + 0  # not a field: its values are bound as they are
    for values in ((1, "1"), ("1", 1), (True, "True"), (decimal.Decimal("2"), 2)):
        for value in values:
            where = shop == value
            try:
                want: Any = [g.id for g in plain.find_many(where, order_by="id").items]
            except peewee.DatabaseError:
                want = "error"
            try:
                answer: Any = [g.id for g in repo.find_many(where, order_by="id").items]
            except peewee.DatabaseError:
                answer = "error"
            assert answer == want, (values, value)
        repo.cache.clear()
