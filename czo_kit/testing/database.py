"""The database backend contract: repository behaviour every backend must show."""

from __future__ import annotations

import base64
import datetime as dt
import threading
from collections.abc import Iterator, Mapping
from typing import Any, Protocol, cast

import peewee
import pytest

from czo_kit.db.model import Model, SoftDeleteModel, TimestampedModel, UTCDateTimeField, VersionedModel
from czo_kit.db.mutations import MutationContext
from czo_kit.db.repository import Repository, create_repository
from czo_kit.errors import (
    ConflictError,
    InvalidCursorError,
    InvalidDataError,
    InvalidFilterError,
    NotFoundError,
    OptimisticLockError,
)
from czo_kit.hooks import HookRegistry

__all__ = [
    "CONTRACT_MODELS",
    "ContractItem",
    "ContractPlain",
    "ContractSoft",
    "ContractVersioned",
    "DatabaseBackendContract",
    "RecordingEvents",
    "StatementCounter",
]


class ContractItem(Model):
    shop_id = peewee.IntegerField(index=True)
    name = peewee.CharField(max_length=50)
    slug = peewee.CharField(max_length=50)
    price = peewee.IntegerField()
    note = peewee.CharField(max_length=50, null=True)
    published_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "czo_contract_item"


ContractItem.add_index(
    ContractItem.shop_id, ContractItem.slug, unique=True, where=ContractItem.deleted_at.is_null(True)
)


class ContractPlain(TimestampedModel):
    name = peewee.CharField(max_length=50)

    class Meta:
        table_name = "czo_contract_plain"


class ContractVersioned(VersionedModel):
    name = peewee.CharField(max_length=50)

    class Meta:
        table_name = "czo_contract_versioned"


class ContractSoft(SoftDeleteModel):
    name = peewee.CharField(max_length=50)

    class Meta:
        table_name = "czo_contract_soft"


CONTRACT_MODELS: tuple[type[peewee.Model], ...] = (ContractItem, ContractPlain, ContractVersioned, ContractSoft)


class RecordingEvents:
    """An ``EventSink`` that remembers what was emitted, for assertions."""

    def __init__(self) -> None:
        self.emitted: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def emit(self, name: str, payload: Mapping[str, Any]) -> None:
        with self._lock:
            self.emitted.append((name, dict(payload)))

    def names(self) -> list[str]:
        return [name for name, _ in self.emitted]


class StatementCounter:
    """Counts the SQL statements a database runs, through Peewee's query hooks."""

    def __init__(self, db: peewee.Database) -> None:
        self.db = db
        self.statements: list[str] = []

    def __enter__(self) -> StatementCounter:
        self.db.query_hooks.append(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.db.query_hooks.remove(self._hook)

    def _hook(self, event: Any) -> None:
        self.statements.append(event.sql)

    def matching(self, prefix: str) -> list[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith(prefix)]


def _item(n: int, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"shop_id": 1, "name": f"Item {n}", "slug": f"item-{n}", "price": n * 10}
    data.update(overrides)
    return data


class _BySlug(Protocol):
    def by_slug(self, slug: str) -> ContractItem | None: ...


class DatabaseBackendContract:
    """Repository behaviour every database backend must show. Provide a ``db`` fixture."""

    @pytest.fixture
    def db(self) -> Iterator[peewee.Database]:
        raise NotImplementedError("subclasses provide a db fixture")

    @pytest.fixture
    def tables(self, db: peewee.Database) -> Iterator[None]:
        db.bind(CONTRACT_MODELS)
        db.drop_tables(CONTRACT_MODELS, safe=True)
        db.create_tables(CONTRACT_MODELS)
        yield
        db.drop_tables(CONTRACT_MODELS, safe=True)

    @pytest.fixture
    def events(self) -> RecordingEvents:
        return RecordingEvents()

    @pytest.fixture
    def hooks(self) -> HookRegistry:
        return HookRegistry()

    @pytest.fixture
    def repo(
        self, db: peewee.Database, tables: None, hooks: HookRegistry, events: RecordingEvents
    ) -> Repository[ContractItem]:
        return create_repository(ContractItem, db=db, hooks=hooks, events=events, secret_key=b"k" * 32)

    # -- create -------------------------------------------------------------------------

    def test_create_returns_the_stored_row(self, repo: Repository[ContractItem]) -> None:
        before = dt.datetime.now(dt.timezone.utc)
        row = repo.create(_item(1, note="hello"))
        assert isinstance(row.id, int) and row.id > 0
        assert (row.name, row.slug, row.price, row.note) == ("Item 1", "item-1", 10, "hello")
        assert row.version == 1 and row.deleted_at is None
        assert row.created_at.tzinfo is not None and row.created_at >= before - dt.timedelta(seconds=1)
        assert row.updated_at == row.created_at
        again = repo.get_by_id(row.id)
        assert again.__data__ == row.__data__

    def test_create_rejects_bad_data(self, repo: Repository[ContractItem]) -> None:
        bad: list[Any] = [
            {"shop_id": 1, "name": "x", "slug": "x", "price": 1, "colour": "red"},
            {"shop_id": 1, "name": "x", "slug": "x", "price": 1, "version": 5},
            {"shop_id": 1, "name": "x", "slug": "x", "price": 1, "deleted_at": None},
            {"shop_id": 1, "name": "x", "slug": "x", "price": "ten"},
            {"shop_id": 1, "name": "x" * 51, "slug": "x", "price": 1},
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

    def test_create_conflict_is_a_conflict_error(self, repo: Repository[ContractItem]) -> None:
        repo.create(_item(1))
        with pytest.raises(ConflictError):
            repo.create(_item(2, slug="item-1"))
        assert repo.count() == 1

    def test_conflict_inside_a_transaction_leaves_it_usable(
        self, repo: Repository[ContractItem]
    ) -> None:
        repo.create(_item(1))
        with repo.transaction():
            with pytest.raises(ConflictError):
                repo.create(_item(2, slug="item-1"))
            repo.create(_item(3))
        assert sorted(r.slug for r in repo.find_many(limit=10).items) == ["item-1", "item-3"]

    def test_create_many_is_one_insert_returning_rows_in_order(
        self, db: peewee.Database, repo: Repository[ContractItem]
    ) -> None:
        rows = [_item(n) for n in range(100)]
        rows[5]["note"] = "only this one"
        with StatementCounter(db) as counter:
            created = repo.create_many(rows)
        assert len(counter.matching("INSERT")) == 1
        assert len(counter.statements) == 1
        assert [r.slug for r in created] == [f"item-{n}" for n in range(100)]
        assert created[5].note == "only this one" and created[6].note is None
        assert len({r.id for r in created}) == 100
        assert repo.count() == 100
        assert repo.create_many([]) == []

    def test_create_many_is_all_or_nothing(self, repo: Repository[ContractItem]) -> None:
        with pytest.raises(ConflictError):
            repo.create_many([_item(1), _item(2), _item(3, slug="item-1")])
        assert repo.count() == 0
        with pytest.raises(InvalidDataError):
            repo.create_many([_item(1), {"shop_id": 1}])
        with pytest.raises(InvalidDataError):
            repo.create_many("not rows")  # type: ignore[arg-type]

    # -- reads --------------------------------------------------------------------------

    def test_find_by_id_and_get_by_id(self, repo: Repository[ContractItem]) -> None:
        row = repo.create(_item(1))
        found = repo.find_by_id(row.id)
        assert found is not None and found.slug == "item-1"
        assert repo.find_by_id(row.id + 1000) is None
        with pytest.raises(NotFoundError) as info:
            repo.get_by_id(row.id + 1000)
        assert str(row.id + 1000) in str(info.value)
        for bad in ("abc", None, [1], {"id": 1}, True, peewee.SQL("1")):
            with pytest.raises(InvalidFilterError):
                repo.find_by_id(bad)

    def test_find_by_ids_keeps_the_order_of_ids(self, repo: Repository[ContractItem]) -> None:
        ids = [repo.create(_item(n)).id for n in range(5)]
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

    def test_find_one_count_exists(self, repo: Repository[ContractItem]) -> None:
        for n in range(6):
            repo.create(_item(n, shop_id=1 + n % 2))
        assert repo.count() == 6
        assert repo.count({"shop_id": 2}) == 3
        assert repo.exists({"slug": "item-3"})
        assert not repo.exists({"slug": "nope"})
        first = repo.find_one({"shop_id": 2}, order_by="-price")
        assert first is not None and first.slug == "item-5"
        assert repo.find_one({"slug": "nope"}) is None

    # -- filters ------------------------------------------------------------------------

    def test_every_filter_operator(self, repo: Repository[ContractItem]) -> None:
        repo.create(_item(1, name="Blue Mug", note="50% off"))
        repo.create(_item(2, name="blue bowl", note="a_b"))
        repo.create(_item(3, name="Red Mug", note=None))

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
        assert slugs({"note__is_null": True}) == ["item-3"]
        assert slugs({"note__is_null": False}) == ["item-1", "item-2"]
        assert slugs({"note": None}) == ["item-3"]
        assert slugs({"note__ne": None}) == ["item-1", "item-2"]
        # LIKE wildcards in values are literal characters, not patterns.
        assert slugs({"note__icontains": "%"}) == ["item-1"]
        assert slugs({"note__icontains": "_"}) == ["item-2"]
        assert slugs({"note__contains": "%"}) == ["item-1"]
        assert slugs({"shop_id": 1, "price__gte": 20, "name__icontains": "mug"}) == ["item-3"]
        assert slugs(ContractItem.price > 15) == ["item-2", "item-3"]

    def test_bad_filters_name_what_is_allowed(self, repo: Repository[ContractItem]) -> None:
        repo.create(_item(1))
        cases: list[tuple[Any, str]] = [
            ({"colour": "red"}, "allowed:"),
            ({"price__between": 1}, "allowed: eq"),
            ({"price__gt": "abc"}, "not a valid value"),
            ({"price__in": 5}, "list"),
            ({"price__in": [1, None]}, "None"),
            ({"price__in": list(range(10_001))}, "10000"),
            ({"note__is_null": "yes"}, "true or false"),
            ({"name__contains": 5}, "string"),
            ({"price__lt": None}, "is_null"),
            ({"price": {"$gt": 1}}, "single value"),
            ({"price": peewee.SQL("1 OR 1=1")}, "plain data"),
            ({1: 2}, "strings"),
            ({"price; DROP TABLE czo_contract_item": 1}, "unknown field"),
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

    def test_soft_delete_is_scoped_in_every_query(self, repo: Repository[ContractItem]) -> None:
        keep = repo.create(_item(1))
        gone = repo.create(_item(2))
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

    def test_restore_and_its_conflicts(self, repo: Repository[ContractItem]) -> None:
        row = repo.create(_item(1))
        repo.delete(row.id)
        twin = repo.create(_item(2, slug="item-1"))  # allowed: the slug is free among live rows
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

    def test_optimistic_locking(self, repo: Repository[ContractItem]) -> None:
        row = repo.create(_item(1))
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
                repo.update(row.id, {"price": 1}, expected_version=bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidDataError):
            repo.update(row.id, {"id": 5})
        with pytest.raises(InvalidDataError):
            repo.update(row.id, {"version": 9})

    def test_update_without_version_check_still_bumps(self, repo: Repository[ContractItem]) -> None:
        row = repo.create(_item(1))
        assert repo.update(row.id, {"name": "Renamed"}).version == 2
        assert repo.update(row.id, {}).version == 3

    def test_hard_delete(self, repo: Repository[ContractItem]) -> None:
        row = repo.create(_item(1))
        repo.delete(row.id)
        removed = repo.hard_delete(row.id)
        assert removed.id == row.id
        assert repo.count(with_deleted=True) == 0
        with pytest.raises(NotFoundError):
            repo.hard_delete(row.id)

    def test_models_that_opt_out(self, db: peewee.Database, tables: None) -> None:
        plain = create_repository(ContractPlain, db=db)
        row = plain.create({"name": "a"})
        assert "version" not in row.__data__ and "deleted_at" not in row.__data__
        assert plain.update(row.id, {"name": "b"}).name == "b"
        with pytest.raises(InvalidDataError):
            plain.update(row.id, {"name": "c"}, expected_version=1)
        with pytest.raises(InvalidFilterError):
            plain.count(only_deleted=True)
        with pytest.raises(InvalidDataError):
            plain.restore(row.id)
        assert plain.delete(row.id).id == row.id  # no soft delete: the row is gone
        assert plain.count(with_deleted=True) == 0

        versioned = create_repository(ContractVersioned, db=db)
        v = versioned.create({"name": "a"})
        assert versioned.update(v.id, {"name": "b"}, expected_version=1).version == 2
        versioned.delete(v.id, expected_version=2)
        assert versioned.count(with_deleted=True) == 0

        soft = create_repository(ContractSoft, db=db)
        s = soft.create({"name": "a"})
        soft.delete(s.id)
        assert soft.count() == 0 and soft.count(with_deleted=True) == 1
        assert soft.restore(s.id).deleted_at is None

    # -- pagination ---------------------------------------------------------------------

    def test_offset_pagination(self, repo: Repository[ContractItem]) -> None:
        repo.create_many([_item(n, price=100 - n) for n in range(25)])
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
                repo.find_many(offset=bad)  # type: ignore[arg-type]
        for bad_limit in (0, -5, 10_000, "10", True):
            with pytest.raises(InvalidFilterError):
                repo.find_many(limit=bad_limit)  # type: ignore[arg-type]
        with pytest.raises(InvalidFilterError):
            repo.find_many(offset=0, cursor=page.next_cursor)

    def test_cursor_pagination_forward_and_backward(self, repo: Repository[ContractItem]) -> None:
        # Duplicate prices make the primary-key tie-breaker matter.
        repo.create_many([_item(n, price=(n % 7) * 5) for n in range(40)])
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

    def test_cursor_with_mixed_directions_nulls_and_datetimes(
        self, repo: Repository[ContractItem]
    ) -> None:
        base = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        repo.create_many(
            [
                _item(
                    n,
                    shop_id=n % 3,
                    published_at=None if n % 4 == 0 else base + dt.timedelta(minutes=n % 5),
                    note=None if n % 3 == 0 else f"note {n % 2}",
                )
                for n in range(30)
            ]
        )
        sort_orders: list[list[str]] = [
            ["shop_id", "-price"], ["-shop_id", "name"], ["published_at"], ["-published_at", "slug"],
            ["note", "-published_at"], ["-note", "published_at"], ["-note"],
        ]
        for order in sort_orders:
            everything = repo.find_many(order_by=order, limit=100).items
            assert len(everything) == 30
            # NULL sorts as the greatest value: last going up, first going down.
            first_key = order[0].lstrip("-")
            values = [r.__data__[first_key] for r in everything]
            if order[0].startswith("-"):
                assert values[: values.count(None)] == [None] * values.count(None)
            else:
                assert values[len(values) - values.count(None):] == [None] * values.count(None)
            everything = repo.find_many(order_by=order, limit=100).items
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

    def test_bad_cursors_are_refused_with_a_reason(self, repo: Repository[ContractItem]) -> None:
        repo.create_many([_item(n) for n in range(10)])
        good = repo.find_many(order_by="price", limit=3).next_cursor
        assert good is not None
        flipped = good[:10] + ("A" if good[10] != "A" else "B") + good[11:]
        other_key = create_repository(ContractItem, db=repo.db, secret_key=b"z" * 32)
        foreign = other_key.find_many(order_by="price", limit=3).next_cursor
        garbage = base64.urlsafe_b64encode(bytes(range(7, 67))).decode().rstrip("=")
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
        self, db: peewee.Database, repo: Repository[ContractItem]
    ) -> None:
        ran: list[str] = []
        with repo.transaction():
            repo.on_commit(lambda: ran.append("outer"))
            repo.create(_item(1))
            try:
                with repo.transaction():
                    repo.on_commit(lambda: ran.append("rolled-back savepoint"))
                    repo.create(_item(2))
                    raise RuntimeError("undo the savepoint")
            except RuntimeError:
                pass
            with repo.transaction():
                repo.on_commit(lambda: ran.append("kept savepoint"))
                repo.create(_item(3))
            assert ran == []  # nothing runs before the outermost commit
        assert ran == ["outer", "kept savepoint"]
        assert sorted(r.slug for r in repo.find_many(limit=10).items) == ["item-1", "item-3"]

        ran.clear()
        with pytest.raises(RuntimeError):
            with repo.transaction():
                repo.on_commit(lambda: ran.append("never"))
                repo.create(_item(4))
                raise RuntimeError("roll back everything")
        assert ran == [] and repo.count() == 2
        repo.on_commit(lambda: ran.append("now"))
        assert ran == ["now"]

    def test_events_are_emitted_after_commit_only(
        self, repo: Repository[ContractItem], events: RecordingEvents
    ) -> None:
        row = repo.create(_item(1))
        assert events.names() == ["czo_contract_item.created"]
        assert events.emitted[0][1]["id"] == row.id
        with repo.transaction():
            repo.update(row.id, {"price": 5})
            repo.delete(row.id)
            assert events.names() == ["czo_contract_item.created"]
        assert events.names()[1:] == ["czo_contract_item.updated", "czo_contract_item.deleted"]
        with pytest.raises(RuntimeError):
            with repo.transaction():
                repo.restore(row.id)
                raise RuntimeError("rollback")
        assert len(events.emitted) == 3
        repo.restore(row.id)
        repo.hard_delete(row.id)
        repo.create_many([_item(2), _item(3)])
        assert events.names()[3:] == [
            "czo_contract_item.restored",
            "czo_contract_item.hard_deleted",
            "czo_contract_item.created",
            "czo_contract_item.created",
        ]

    def test_mutations_run_through_hooks(
        self, repo: Repository[ContractItem], hooks: HookRegistry, events: RecordingEvents
    ) -> None:
        calls: list[str] = []

        def before(ctx: MutationContext) -> None:
            calls.append(f"before {ctx.operation}")
            ctx.data["name"] = ctx.data["name"].upper()

        def after(result: ContractItem, ctx: MutationContext) -> ContractItem:
            calls.append(f"after {ctx.operation} #{result.id}")
            return result

        hooks.before("czo_contract_item.create", before)
        hooks.after("czo_contract_item.create", after)
        row = repo.create(_item(1, name="shout"))
        assert row.name == "SHOUT" and calls == ["before create", f"after create #{row.id}"]

        def recover(error: BaseException, ctx: MutationContext) -> Any:
            return repo.find_one({"slug": ctx.data["slug"]}) if isinstance(error, ConflictError) else None

        hooks.on_error("czo_contract_item.create", recover)
        emitted = len(events.emitted)
        same = repo.create(_item(2, slug="item-1", name="dupe"))
        assert same.id == row.id and repo.count() == 1
        assert len(events.emitted) == emitted  # nothing was created, so nothing is announced

    def test_composition_with_extra_functions(self, db: peewee.Database, tables: None) -> None:
        from czo_kit.db.mutations import create_mutations
        from czo_kit.db.queries import create_queries

        def by_slug(repo: Any, slug: str) -> ContractItem | None:
            found: ContractItem | None = repo.find_one({"slug": slug})
            return found

        composed = create_queries(ContractItem, db=db) | create_mutations(ContractItem, db=db) | {
            "by_slug": by_slug
        }
        assert isinstance(composed, Repository)
        composed.create(_item(1))
        # Typed code reaches extras through a Protocol that declares them.
        assert cast(_BySlug, composed).by_slug("item-1") is not None
        reversed_order = {"by_slug": by_slug} | create_queries(ContractItem, db=db)
        assert cast(_BySlug, reversed_order).by_slug("item-1") is not None
        assert "by_slug" in composed.functions() and "create" in composed.functions()
        with pytest.raises(AttributeError) as info:
            getattr(composed, "no_such_function")
        assert "available:" in str(info.value)
        with pytest.raises(TypeError):
            create_queries(ContractItem, db=db) | create_queries(ContractPlain, db=db)
        with pytest.raises(ValueError):
            create_queries(ContractItem, db=db) | {"_private": by_slug}
