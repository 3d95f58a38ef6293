"""The repository contract: what every repository of a catalogue-shaped model must do.

``RepositoryContract`` takes the repository from a factory fixture, so that the same tests run
against the kit's builders on every database backend (``DatabaseBackendContract``), against a
module's own repository built with them, and against a repository written by hand.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, Protocol

import peewee
import pytest

from czo_kit.cache import create_cache
from czo_kit.db.mutations import MutationContext
from czo_kit.db.repository import create_repository
from czo_kit.errors import (
    ConflictError,
    InvalidCursorError,
    InvalidDataError,
    InvalidFilterError,
    NotFoundError,
    OptimisticLockError,
)
from czo_kit.hooks import HookRegistry
from czo_kit.settings import Settings
from czo_kit.testing._support import CONTRACT_MODELS, ContractItem, RecordingEvents, StatementCounter, item

__all__ = ["RepositoryContract", "RepositoryFactory", "walk_every_order"]


class RepositoryFactory(Protocol):
    """Builds the repository under test on the contract's database, with these collaborators.

    ``hooks`` has ``has(name)`` and ``run(name, ctx, operation)``; ``events`` has
    ``emit(name, payload)``; writes invalidate ``cache``'s ``row_tag`` / ``list_tag`` entries;
    cursors are signed with ``secret_key``.
    """

    def __call__(
        self,
        *,
        hooks: Any = None,
        events: Any = None,
        cache: Any = None,
        secret_key: bytes | None = None,
    ) -> Any: ...


def walk_every_order(repo: Any, sort_orders: list[list[str]], *, rows: int) -> None:
    """Page through all ``rows`` rows in each order, forward then back, 4 at a time."""
    for order in sort_orders:
        everything = repo.find_many(order_by=order, limit=100).items
        assert len(everything) == rows
        # NULL sorts as the greatest value: last going up, first going down.
        first_key = order[0].lstrip("-")
        values = [r.__data__[first_key] for r in everything]
        if order[0].startswith("-"):
            assert values[: values.count(None)] == [None] * values.count(None)
        else:
            assert values[len(values) - values.count(None):] == [None] * values.count(None)
        pages: list[list[int]] = []
        cursor: str | None = None
        while True:
            page = repo.find_many(order_by=order, limit=4, cursor=cursor)
            pages.append([r.id for r in page.items])
            if not page.has_next:
                break
            cursor = page.next_cursor
        assert [i for p in pages for i in p] == [r.id for r in everything], order
        back: list[list[int]] = [pages[-1]]
        cursor = page.prev_cursor
        while cursor is not None:
            page = repo.find_many(order_by=order, limit=4, cursor=cursor)
            back.append([r.id for r in page.items])
            cursor = page.prev_cursor if page.has_prev else None
        assert back[::-1] == pages, order


class RepositoryContract:
    """Repository behaviour on a catalogue-shaped model. Provide ``db``; override the rest.

    ``MODEL`` has the kit's ``Model`` columns (id, timestamps, version, deleted_at) and
    ``shop_id`` (integer), ``name`` (``CharField`` with a ``max_length``), ``slug`` (unique per
    shop among live rows) and ``price`` (integer); ``TABLES`` are created around each test.
    ``SPARSE`` is ``(field, value, others)``: a field given on one row of a ``create_many``,
    and what the rows that leave it out get. The ``make_repository`` fixture returns a
    ``RepositoryFactory``; by default the kit's ``create_repository(MODEL, ...)``.
    """

    MODEL: ClassVar[type[peewee.Model]] = ContractItem
    TABLES: ClassVar[tuple[type[peewee.Model], ...]] = CONTRACT_MODELS
    SPARSE: ClassVar[tuple[str, Any, Any]] = ("note", "only this one", None)

    @property
    def table(self) -> str:
        name: str = self.MODEL._meta.table_name
        return name

    def _name_length(self) -> int:
        length: int = getattr(self.MODEL, "name").max_length
        return length

    @pytest.fixture
    def db(self) -> Iterator[peewee.Database]:
        raise NotImplementedError("subclasses provide a db fixture")

    @pytest.fixture
    def tables(self, db: peewee.Database) -> Iterator[None]:
        db.bind(self.TABLES)
        db.drop_tables(self.TABLES, safe=True)
        db.create_tables(self.TABLES)
        yield
        db.drop_tables(self.TABLES, safe=True)

    @pytest.fixture
    def events(self) -> RecordingEvents:
        return RecordingEvents()

    @pytest.fixture
    def hooks(self) -> HookRegistry:
        return HookRegistry()

    @pytest.fixture
    def make_repository(self, db: peewee.Database, tables: None) -> RepositoryFactory:
        def make(**options: Any) -> Any:
            return create_repository(self.MODEL, db=db, **options)

        return make

    @pytest.fixture
    def repo(self, make_repository: RepositoryFactory, hooks: HookRegistry, events: RecordingEvents) -> Any:
        return make_repository(hooks=hooks, events=events, secret_key=b"k" * 32)

    # -- create -------------------------------------------------------------------------

    def test_create_returns_the_stored_row(self, repo: Any) -> None:
        before = dt.datetime.now(dt.timezone.utc)
        field, value, _ = self.SPARSE
        row = repo.create(item(1, **{field: value}))
        assert isinstance(row.id, int) and row.id > 0
        assert (row.name, row.slug, row.price, getattr(row, field)) == ("Item 1", "item-1", 10, value)
        assert row.version == 1 and row.deleted_at is None
        assert row.created_at.tzinfo is not None and row.created_at >= before - dt.timedelta(seconds=1)
        assert row.updated_at == row.created_at
        again = repo.get_by_id(row.id)
        assert again.__data__ == row.__data__

    def test_create_rejects_bad_data(self, repo: Any) -> None:
        bad: list[Any] = [
            {"shop_id": 1, "name": "x", "slug": "x", "price": 1, "colour": "red"},
            {"shop_id": 1, "name": "x", "slug": "x", "price": 1, "version": 5},
            {"shop_id": 1, "name": "x", "slug": "x", "price": 1, "deleted_at": None},
            {"shop_id": 1, "name": "x", "slug": "x", "price": "ten"},
            {"shop_id": 1, "name": "x" * (self._name_length() + 1), "slug": "x", "price": 1},
            {"shop_id": 1, "name": "x", "slug": "x"},
            {"shop_id": 1, "name": None, "slug": "x", "price": 1},
            {"shop_id": 1, "name": "x", "slug": "x", "price": True},
            {"shop_id": 1, "name": "x", "slug": "x", "price": 1.5},
            {"shop_id": 1, "name": "x", "slug": "x", "price": peewee.SQL("1")},
            {1: "x"},
            ["not", "a", "mapping"],
        ]
        for data in bad:
            with pytest.raises(InvalidDataError):
                repo.create(data)
        assert repo.count(with_deleted=True) == 0

    def test_create_conflict_is_a_conflict_error(self, repo: Any) -> None:
        repo.create(item(1))
        with pytest.raises(ConflictError):
            repo.create(item(2, slug="item-1"))
        assert repo.count() == 1

    def test_conflict_inside_a_transaction_leaves_it_usable(
        self, repo: Any
    ) -> None:
        repo.create(item(1))
        with repo.transaction():
            with pytest.raises(ConflictError):
                repo.create(item(2, slug="item-1"))
            repo.create(item(3))
        assert sorted(r.slug for r in repo.find_many(limit=10).items) == ["item-1", "item-3"]

    def test_create_many_is_one_insert_returning_rows_in_order(
        self, db: peewee.Database, repo: Any
    ) -> None:
        rows = [item(n) for n in range(100)]
        field, value, default = self.SPARSE
        rows[5][field] = value
        with StatementCounter(db) as counter:
            created = repo.create_many(rows)
        assert len(counter.matching("INSERT")) == 1
        assert len(counter.statements) == 1
        assert [r.slug for r in created] == [f"item-{n}" for n in range(100)]
        assert getattr(created[5], field) == value and getattr(created[6], field) == default
        assert len({r.id for r in created}) == 100
        assert repo.count() == 100
        assert repo.create_many([]) == []

    def test_create_many_is_all_or_nothing(self, repo: Any) -> None:
        with pytest.raises(ConflictError):
            repo.create_many([item(1), item(2), item(3, slug="item-1")])
        assert repo.count() == 0
        with pytest.raises(InvalidDataError):
            repo.create_many([item(1), {"shop_id": 1}])
        with pytest.raises(InvalidDataError):
            repo.create_many("not rows")

    # -- reads --------------------------------------------------------------------------

    def test_find_by_id_and_get_by_id(self, repo: Any) -> None:
        row = repo.create(item(1))
        found = repo.find_by_id(row.id)
        assert found is not None and found.slug == "item-1"
        assert repo.find_by_id(row.id + 1000) is None
        with pytest.raises(NotFoundError) as info:
            repo.get_by_id(row.id + 1000)
        assert str(row.id + 1000) in str(info.value)
        for bad in ("abc", None, [1], {"id": 1}, True, peewee.SQL("1")):
            with pytest.raises(InvalidFilterError):
                repo.find_by_id(bad)

    def test_find_by_ids_keeps_the_order_of_ids(self, repo: Any) -> None:
        ids = [repo.create(item(n)).id for n in range(5)]
        repo.delete(ids[2])
        wanted = [ids[4], ids[0], 99999, ids[2], ids[3], ids[0]]
        assert [r.id for r in repo.find_by_ids(wanted)] == [ids[4], ids[0], ids[3], ids[0]]
        assert [r.id for r in repo.find_by_ids(wanted, with_deleted=True)] == [
            ids[4], ids[0], ids[2], ids[3], ids[0]
        ]
        assert [r.id for r in repo.find_by_ids(wanted, only_deleted=True)] == [ids[2]]
        assert repo.find_by_ids([]) == []
        with pytest.raises(InvalidFilterError):
            repo.find_by_ids("123")
        with pytest.raises(InvalidFilterError):
            repo.find_by_ids([1, "x"])

    def test_find_one_count_exists(self, repo: Any) -> None:
        for n in range(6):
            repo.create(item(n, shop_id=1 + n % 2))
        assert repo.count() == 6
        assert repo.count({"shop_id": 2}) == 3
        assert repo.exists({"slug": "item-3"})
        assert not repo.exists({"slug": "nope"})
        first = repo.find_one({"shop_id": 2}, order_by="-price")
        assert first is not None and first.slug == "item-5"
        assert repo.find_one({"slug": "nope"}) is None

    # -- filters ------------------------------------------------------------------------

    def test_every_filter_operator(self, repo: Any) -> None:
        repo.create(item(1, name="Blue Mug"))
        repo.create(item(2, name="blue bowl"))
        repo.create(item(3, name="Red Mug"))

        def slugs(where: Any) -> list[str]:
            return sorted(r.slug for r in repo.find_many(where, limit=50).items)

        assert slugs({"price": 20}) == ["item-2"]
        assert slugs({"price__eq": 20}) == ["item-2"]
        assert slugs({"price__ne": 20}) == ["item-1", "item-3"]
        assert slugs({"price__lt": 20}) == ["item-1"]
        assert slugs({"price__lte": 20}) == ["item-1", "item-2"]
        assert slugs({"price__gt": 20}) == ["item-3"]
        assert slugs({"price__gte": 20}) == ["item-2", "item-3"]
        assert slugs({"price__in": [10, 30]}) == ["item-1", "item-3"]
        assert slugs({"price__in": []}) == []
        assert slugs({"price__not_in": [10]}) == ["item-2", "item-3"]
        assert slugs({"price__not_in": []}) == ["item-1", "item-2", "item-3"]
        assert slugs({"name__contains": "Mug"}) == ["item-1", "item-3"]
        assert slugs({"name__contains": "mug"}) == []
        assert slugs({"name__icontains": "BLUE"}) == ["item-1", "item-2"]
        assert slugs({"name__startswith": "Blue"}) == ["item-1"]
        assert slugs({"name__startswith": "blue"}) == ["item-2"]
        assert slugs({"shop_id": 1, "price__gte": 20, "name__icontains": "mug"}) == ["item-3"]
        assert slugs(getattr(self.MODEL, "price") > 15) == ["item-2", "item-3"]

    def test_like_wildcards_are_literal(self, repo: Any) -> None:
        repo.create(item(1, name="50% off"))
        repo.create(item(2, name="a_b"))
        repo.create(item(3, name="ab 50 off"))

        def slugs(where: Any) -> list[str]:
            return sorted(r.slug for r in repo.find_many(where, limit=50).items)

        # LIKE wildcards in values are literal characters, not patterns.
        assert slugs({"name__icontains": "%"}) == ["item-1"]
        assert slugs({"name__icontains": "_"}) == ["item-2"]
        assert slugs({"name__contains": "%"}) == ["item-1"]
        assert slugs({"name__contains": "_"}) == ["item-2"]
        assert slugs({"name__startswith": "a_"}) == ["item-2"]
        assert slugs({"name__startswith": "50%"}) == ["item-1"]
        assert slugs({"name__icontains": "\\"}) == []

    def test_bad_filters_name_what_is_allowed(self, repo: Any) -> None:
        repo.create(item(1))
        cases: list[tuple[Any, str]] = [
            ({"colour": "red"}, "allowed:"),
            ({"price__between": 1}, "allowed: eq"),
            ({"price__gt": "abc"}, "not a valid value"),
            ({"price__in": 5}, "list"),
            ({"price__in": [1, None]}, "None"),
            ({"price__in": list(range(10_001))}, "10000"),
            ({"price__is_null": "yes"}, "true or false"),
            ({"name__contains": 5}, "string"),
            ({"price__lt": None}, "is_null"),
            ({"price": {"$gt": 1}}, "single value"),
            ({"price": peewee.SQL("1 OR 1=1")}, "plain data"),
            ({1: 2}, "strings"),
            ({f"price; DROP TABLE {self.table}": 1}, "unknown field"),
            ({"": 1}, "unknown field"),
            ({"__": 1}, "unknown operator"),
            ("price > 1", "mapping"),
            ({f"price__gt{i}": 1 for i in range(65)}, "at most"),
        ]
        for where, fragment in cases:
            with pytest.raises(InvalidFilterError) as info:
                repo.find_many(where)
            assert fragment in str(info.value), (where, str(info.value))
        assert repo.count() == 1

    # -- soft delete, restore, locking --------------------------------------------------

    def test_soft_delete_is_scoped_in_every_query(self, repo: Any) -> None:
        keep = repo.create(item(1))
        gone = repo.create(item(2))
        deleted = repo.delete(gone.id)
        assert deleted.deleted_at is not None and deleted.version == 2
        assert repo.find_by_id(gone.id) is None
        assert repo.find_by_ids([gone.id]) == []
        assert repo.find_one({"slug": "item-2"}) is None
        assert [r.id for r in repo.find_many(limit=10).items] == [keep.id]
        assert repo.find_many(offset=0).total == 1
        assert repo.count() == 1 and not repo.exists({"slug": "item-2"})
        assert repo.count(with_deleted=True) == 2 and repo.count(only_deleted=True) == 1
        assert repo.exists({"slug": "item-2"}, only_deleted=True)
        found = repo.find_by_id(gone.id, with_deleted=True)
        assert found is not None and found.deleted_at is not None
        with pytest.raises(InvalidFilterError):
            repo.count(with_deleted=True, only_deleted=True)
        with pytest.raises(NotFoundError):
            repo.delete(gone.id)
        with pytest.raises(NotFoundError):
            repo.update(gone.id, {"price": 1})

    def test_restore_and_its_conflicts(self, repo: Any) -> None:
        row = repo.create(item(1))
        repo.delete(row.id)
        twin = repo.create(item(2, slug="item-1"))  # allowed: the slug is free among live rows
        with pytest.raises(ConflictError) as info:
            repo.restore(row.id)
        assert "slug" in str(info.value) and info.value.fields == ("shop_id", "slug")
        repo.delete(twin.id)
        restored = repo.restore(row.id)
        assert restored.deleted_at is None and restored.version == 3
        with pytest.raises(NotFoundError):
            repo.restore(row.id)  # not deleted any more
        with pytest.raises(NotFoundError):
            repo.restore(99999)

    def test_optimistic_locking(self, repo: Any) -> None:
        row = repo.create(item(1))
        updated = repo.update(row.id, {"price": 11}, expected_version=1)
        assert (updated.price, updated.version) == (11, 2)
        assert updated.updated_at >= row.updated_at
        with pytest.raises(OptimisticLockError) as info:
            repo.update(row.id, {"price": 12}, expected_version=1)
        assert (info.value.expected, info.value.actual) == (1, 2)
        assert repo.get_by_id(row.id).price == 11
        with pytest.raises(OptimisticLockError):
            repo.delete(row.id, expected_version=1)
        assert repo.delete(row.id, expected_version=2).version == 3
        with pytest.raises(OptimisticLockError):
            repo.restore(row.id, expected_version=2)
        assert repo.restore(row.id, expected_version=3).version == 4
        with pytest.raises(NotFoundError):
            repo.update(99999, {"price": 1}, expected_version=1)
        for bad in (0, -1, "1", True, 1.0):
            with pytest.raises(InvalidDataError):
                repo.update(row.id, {"price": 1}, expected_version=bad)
        with pytest.raises(InvalidDataError):
            repo.update(row.id, {"id": 5})
        with pytest.raises(InvalidDataError):
            repo.update(row.id, {"version": 9})

    def test_update_without_version_check_still_bumps(self, repo: Any) -> None:
        row = repo.create(item(1))
        assert repo.update(row.id, {"name": "Renamed"}).version == 2
        assert repo.update(row.id, {}).version == 3

    def test_hard_delete(self, repo: Any) -> None:
        row = repo.create(item(1))
        repo.delete(row.id)
        removed = repo.hard_delete(row.id)
        assert removed.id == row.id
        assert repo.count(with_deleted=True) == 0
        with pytest.raises(NotFoundError):
            repo.hard_delete(row.id)

    def test_offset_pagination(self, repo: Any) -> None:
        repo.create_many([item(n, price=100 - n) for n in range(25)])
        page = repo.find_many(order_by="price", limit=10, offset=0)
        assert [r.price for r in page.items] == list(range(76, 86))
        assert (page.total, page.has_next, page.has_prev, page.offset) == (25, True, False, 0)
        last = repo.find_many(order_by="price", limit=10, offset=20)
        assert [r.price for r in last.items] == list(range(96, 101))
        assert (last.has_next, last.has_prev) == (False, True)
        assert repo.find_many(order_by="price", limit=10, offset=10, with_total=False).total is None
        # An offset page also hands out a cursor to continue with.
        cont = repo.find_many(order_by="price", limit=10, cursor=page.next_cursor)
        assert [r.price for r in cont.items] == list(range(86, 96))
        for bad in (-1, "1", 1.5, True):
            with pytest.raises(InvalidFilterError):
                repo.find_many(offset=bad)
        for bad_limit in (0, -5, 10_000, "10", True):
            with pytest.raises(InvalidFilterError):
                repo.find_many(limit=bad_limit)
        with pytest.raises(InvalidFilterError):
            repo.find_many(offset=0, cursor=page.next_cursor)

    def test_cursor_pagination_forward_and_backward(self, repo: Any) -> None:
        # Duplicate prices make the primary-key tie-breaker matter.
        repo.create_many([item(n, price=(n % 7) * 5) for n in range(40)])
        expected = [r.id for r in sorted(repo.find_many(limit=100).items, key=lambda r: (-r.price, -r.id))]
        pages, cursor = [], None
        while True:
            page = repo.find_many(order_by="-price", limit=6, cursor=cursor)
            assert page.total is None and page.offset is None
            pages.append([r.id for r in page.items])
            if not page.has_next:
                assert page.next_cursor is None
                break
            cursor = page.next_cursor
        assert [i for p in pages for i in p] == expected
        assert all(len(p) == 6 for p in pages[:-1])
        # Walk back from the last page to the first.
        back, cursor = [pages[-1]], page.prev_cursor
        while cursor is not None:
            page = repo.find_many(order_by="-price", limit=6, cursor=cursor)
            back.append([r.id for r in page.items])
            cursor = page.prev_cursor if page.has_prev else None
        assert back[::-1] == pages
        first = repo.find_many(order_by="-price", limit=6)
        assert not first.has_prev and first.prev_cursor is None

    def test_cursor_with_mixed_directions(self, repo: Any) -> None:
        # Repeated shops, prices and names make every later key and the tie-breaker matter.
        repo.create_many(
            [item(n, shop_id=n % 3, price=(n % 4) * 10, name=f"Item {n % 5}") for n in range(30)]
        )
        sort_orders = [["shop_id", "-price"], ["-shop_id", "name"], ["-price", "name"], ["name", "-slug"]]
        walk_every_order(repo, sort_orders, rows=30)

    def test_bad_cursors_are_refused_with_a_reason(
        self, repo: Any, make_repository: RepositoryFactory
    ) -> None:
        repo.create_many([item(n) for n in range(10)])
        good = repo.find_many(order_by="price", limit=3).next_cursor
        assert good is not None
        flipped = good[:10] + ("A" if good[10] != "A" else "B") + good[11:]
        other_key = make_repository(secret_key=b"z" * 32)
        foreign = other_key.find_many(order_by="price", limit=3).next_cursor
        garbage = base64.urlsafe_b64encode(bytes(range(7, 67))).decode().rstrip("=")
        # A cursor's own header, then values nested deeper than a decoder recurses, unsigned.
        header = base64.urlsafe_b64decode(good + "=" * (-len(good) % 4))[:14]
        nested = base64.urlsafe_b64encode(header + b"\x91" * 1400 + b"\x01" + bytes(16)).decode().rstrip("=")
        cases: list[tuple[Any, str]] = [
            ("", "empty"),
            ("!!!not base64!!!", "base64"),
            ("ab!cd", "base64"),
            ("abcde", "base64"),  # a length no base64 text has
            ("abcd", "not a valid cursor"),  # decodes, but to bytes no cursor starts with
            ("Zm9vYmFy", "not a valid cursor"),
            (garbage, "not a valid cursor"),
            (good[:-5], "truncated"),
            (good[: len(good) // 2], "truncated"),
            (good[:6], "truncated"),
            (flipped, "signature"),
            (foreign, "signature"),
            ("A" * 5000, "characters long"),
            (12345, "string"),
            (good + "AAAA", "signature"),
            (nested, "signature"),
        ]
        for token, fragment in cases:
            with pytest.raises(InvalidCursorError) as info:
                repo.find_many(order_by="price", limit=3, cursor=token)
            message = str(info.value)
            assert fragment in message, (token, message)
            # "Truncated" is only ever said of a real cursor cut short.
            assert ("truncated" in message) == (fragment == "truncated"), (token, message)
        with pytest.raises(InvalidCursorError) as mismatch:
            repo.find_many(order_by="-price", limit=3, cursor=good)
        assert "another sort order" in str(mismatch.value)
        with pytest.raises(InvalidFilterError):
            repo.find_many(order_by="nope")
        with pytest.raises(InvalidFilterError):
            repo.find_many(order_by=["price", "price"])
        with pytest.raises(InvalidFilterError):
            repo.find_many(order_by=42)

    # -- transactions, hooks, events ----------------------------------------------------

    def test_transactions_nest_and_on_commit_respects_savepoints(
        self, db: peewee.Database, repo: Any
    ) -> None:
        ran: list[str] = []
        with repo.transaction():
            repo.on_commit(lambda: ran.append("outer"))
            repo.create(item(1))
            try:
                with repo.transaction():
                    repo.on_commit(lambda: ran.append("rolled-back savepoint"))
                    repo.create(item(2))
                    raise RuntimeError("undo the savepoint")
            except RuntimeError:
                pass
            with repo.transaction():
                repo.on_commit(lambda: ran.append("kept savepoint"))
                repo.create(item(3))
            assert ran == []  # nothing runs before the outermost commit
        assert ran == ["outer", "kept savepoint"]
        assert sorted(r.slug for r in repo.find_many(limit=10).items) == ["item-1", "item-3"]

        ran.clear()
        with pytest.raises(RuntimeError):
            with repo.transaction():
                repo.on_commit(lambda: ran.append("never"))
                repo.create(item(4))
                raise RuntimeError("roll back everything")
        assert ran == [] and repo.count() == 2
        repo.on_commit(lambda: ran.append("now"))
        assert ran == ["now"]

    def test_events_are_emitted_after_commit_only(
        self, repo: Any, events: RecordingEvents
    ) -> None:
        row = repo.create(item(1))
        assert events.names() == [f"{self.table}.created"]
        assert events.emitted[0][1]["id"] == row.id
        with repo.transaction():
            repo.update(row.id, {"price": 5})
            repo.delete(row.id)
            assert events.names() == [f"{self.table}.created"]
        assert events.names()[1:] == [f"{self.table}.updated", f"{self.table}.deleted"]
        with pytest.raises(RuntimeError):
            with repo.transaction():
                repo.restore(row.id)
                raise RuntimeError("rollback")
        assert len(events.emitted) == 3
        repo.restore(row.id)
        repo.hard_delete(row.id)
        repo.create_many([item(2), item(3)])
        assert events.names()[3:] == [
            f"{self.table}.restored",
            f"{self.table}.hard_deleted",
            f"{self.table}.created",
            f"{self.table}.created",
        ]

    def test_mutations_run_through_hooks(
        self, repo: Any, hooks: HookRegistry, events: RecordingEvents
    ) -> None:
        calls: list[str] = []

        def before(ctx: MutationContext) -> None:
            calls.append(f"before {ctx.operation}")
            ctx.data["name"] = ctx.data["name"].upper()

        def after(result: Any, ctx: MutationContext) -> Any:
            calls.append(f"after {ctx.operation} #{result.id}")
            return result

        hooks.before(f"{self.table}.create", before)
        hooks.after(f"{self.table}.create", after)
        row = repo.create(item(1, name="shout"))
        assert row.name == "SHOUT" and calls == ["before create", f"after create #{row.id}"]
        assert events.names() == [f"{self.table}.created"]  # a write through hooks is announced

        def recover(error: BaseException, ctx: MutationContext) -> Any:
            return repo.find_one({"slug": ctx.data["slug"]}) if isinstance(error, ConflictError) else None

        hooks.on_error(f"{self.table}.create", recover)
        emitted = len(events.emitted)
        same = repo.create(item(2, slug="item-1", name="dupe"))
        assert same.id == row.id and repo.count() == 1
        assert len(events.emitted) == emitted  # nothing was created, so nothing is announced

    # -- cache invalidation -------------------------------------------------------------

    def test_committed_writes_invalidate_cached_reads(
        self, make_repository: RepositoryFactory, hooks: HookRegistry
    ) -> None:
        cache = create_cache("memory://", settings=Settings())
        cached_when_emitted: list[bool] = []

        class Listener:
            def emit(self, name: str, payload: Mapping[str, Any]) -> None:
                cached_when_emitted.append(cache.has("first"))

        repo = make_repository(hooks=hooks, events=Listener(), cache=cache, secret_key=b"k" * 32)
        first, second = repo.create(item(1)), repo.create(item(2))

        def remember() -> None:
            # What an extra function caches: one row under its row tag, a list under the list tag.
            cache.set("first", 1, ttl=60, tags=[repo.row_tag(first.id)])
            cache.set("second", 2, ttl=60, tags=[repo.row_tag(second.id)])
            cache.set("list", 3, ttl=60, tags=[repo.list_tag])

        def kept() -> list[str]:
            return [key for key in ("first", "second", "list") if cache.has(key)]

        remember()
        cached_when_emitted.clear()
        with repo.transaction():
            repo.update(first.id, {"price": 5})
            assert kept() == ["first", "second", "list"]  # nothing is dropped before the commit
        assert kept() == ["second"]
        # Dropped before the event goes out: a listener that reads back sees the new row.
        assert cached_when_emitted == [False]
        remember()
        with pytest.raises(RuntimeError):
            with repo.transaction():
                repo.delete(first.id)
                raise RuntimeError("rollback")
        assert kept() == ["first", "second", "list"]  # a rolled-back write drops nothing
        repo.create(item(3))
        assert kept() == ["first", "second"]  # a new row changes lists, not other rows
        remember()
        repo.create_many([item(4), item(5)])
        assert kept() == ["first", "second"]
        for write in (repo.delete, repo.restore, repo.hard_delete):
            remember()
            write(first.id)
            assert kept() == ["second"], write
        # A write that finds the row changed drops its cached copy at once: if a lost
        # invalidation left it stale, every retry would read it again and fail again.
        remember()
        with pytest.raises(OptimisticLockError):
            repo.update(second.id, {"price": 1}, expected_version=9)
        assert kept() == ["first", "list"]
