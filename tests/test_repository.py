"""The repository contract on both built-in backends: SQLite (embedded) and PostgreSQL (real),
and hostile ids, versions and sort orders refused the same way on both."""

from __future__ import annotations

import decimal
from collections.abc import Callable, Iterator
from typing import Any

import peewee
import pytest

from cached_support import open_database
from czo_kit.cache import create_cache
from czo_kit.db import Model, Repository, create_repository
from czo_kit.default_plugins.postgres import create_postgresql_database
from czo_kit.default_plugins.sqlite import create_sqlite_database
from czo_kit.errors import InvalidDataError, InvalidFilterError, NotFoundError
from czo_kit.events import Event, EventEmitter, InvalidEventError
from czo_kit.hooks import HookRegistry
from czo_kit.settings import Settings
from czo_kit.testing import (
    CONTRACT_MODELS,
    ContractItem,
    ContractPlain,
    ContractSoft,
    DatabaseBackendContract,
)

SECRET = b"r" * 32


class TestSQLiteBackend(DatabaseBackendContract):
    @pytest.fixture
    def db(self, sqlite_url: str, settings_for: Callable[..., Settings]) -> Iterator[peewee.Database]:
        database = create_sqlite_database(sqlite_url, settings=settings_for(sqlite_url))
        yield database
        database.close()


@pytest.mark.postgres
class TestPostgreSQLBackend(DatabaseBackendContract):
    @pytest.fixture
    def db(self, pg_url: str, settings_for: Callable[..., Settings]) -> Iterator[peewee.Database]:
        database = create_postgresql_database(pg_url, settings=settings_for(pg_url))
        yield database
        database.close()
        database.close_all()  # type: ignore[attr-defined]


# -- hostile input, on both backends ----------------------------------------------------------


@pytest.fixture
def backend(database_url: str, settings_for: Callable[..., Settings]) -> Iterator[peewee.Database]:
    yield from open_database(database_url, settings_for, CONTRACT_MODELS)


@pytest.fixture(params=["plain", "cached"])
def any_repo(request: pytest.FixtureRequest, backend: peewee.Database) -> Iterator[Repository[ContractItem]]:
    """A repository without and with a cache: both check ids before the database sees them."""
    if request.param == "plain":
        yield create_repository(ContractItem, db=backend, secret_key=SECRET)
        return
    cache = create_cache("memory://", settings=Settings())
    try:
        yield create_repository(ContractItem, db=backend, cache=cache, secret_key=SECRET)
    finally:
        cache.close()


# Values that are not a BigAutoField id: each must be refused before any SQL is built.
HOSTILE_IDS: list[Any] = [
    "abc", "", "1.5", "1e3", "0x10", " ", "9" * 30,
    1.5, float("nan"), float("inf"), -float("inf"),
    True, False,
    2**63, -(2**63) - 1, 2**70, -(2**70),
    decimal.Decimal("1.5"), decimal.Decimal("NaN"),
    None, [1], (1,), {"id": 1}, b"1", object(), peewee.SQL("1"),
]

ID_CALLS: dict[str, Callable[[Any, Any], Any]] = {
    "find_by_id": lambda repo, id: repo.find_by_id(id),
    "get_by_id": lambda repo, id: repo.get_by_id(id),
    "find_by_ids": lambda repo, id: repo.find_by_ids([id]),
    "update": lambda repo, id: repo.update(id, {"price": 2}),
    "update with version": lambda repo, id: repo.update(id, {"price": 2}, expected_version=1),
    "delete": lambda repo, id: repo.delete(id),
    "restore": lambda repo, id: repo.restore(id),
    "hard_delete": lambda repo, id: repo.hard_delete(id),
}


@pytest.mark.parametrize("call", list(ID_CALLS.values()), ids=list(ID_CALLS))
def test_every_function_taking_an_id_refuses_a_hostile_one_like_find_by_id(
    any_repo: Repository[ContractItem], call: Callable[[Any, Any], Any]
) -> None:
    row = any_repo.create({"shop_id": 1, "name": "a", "slug": "a", "price": 1})
    any_repo.delete(any_repo.create({"shop_id": 1, "name": "b", "slug": "b", "price": 1}).id)
    for bad in HOSTILE_IDS:
        with pytest.raises(InvalidFilterError) as info:
            call(any_repo, bad)
        message = str(info.value)
        assert message.startswith("ContractItem id"), (bad, message)  # names the input...
        if isinstance(bad, (str, int, float)):
            assert repr(bad) in message, (bad, message)
        for sql in ("SELECT", "UPDATE", "WHERE", "LINE 1"):  # ...and never leaks SQL
            assert sql not in message, (bad, message)
    # Nothing was written, and the connection is still usable.
    assert any_repo.count(with_deleted=True) == 2
    same = any_repo.get_by_id(row.id)
    assert (same.price, same.version, same.deleted_at) == (1, 1, None)


def test_a_hostile_id_message_says_what_is_allowed(any_repo: Repository[ContractItem]) -> None:
    cases: list[tuple[Any, str]] = [
        ("abc", "expected an integer"),
        (1.5, "expected an integer"),
        (True, "expected an integer, got a boolean"),
        (2**70, f"from {-(2**63)} to {2**63 - 1}"),
        (-(2**63) - 1, f"from {-(2**63)} to {2**63 - 1}"),
        (None, "None is not a valid id"),
    ]
    for bad, fragment in cases:
        for call in (ID_CALLS["find_by_id"], ID_CALLS["update"], ID_CALLS["hard_delete"]):
            with pytest.raises(InvalidFilterError) as info:
                call(any_repo, bad)
            assert fragment in str(info.value), (bad, str(info.value))


def test_the_largest_and_smallest_ids_are_looked_up_not_refused(any_repo: Repository[ContractItem]) -> None:
    for edge in (2**63 - 1, -(2**63)):
        assert any_repo.find_by_id(edge) is None
        assert any_repo.find_by_ids([edge]) == []
        for call in (ID_CALLS["update"], ID_CALLS["delete"], ID_CALLS["restore"], ID_CALLS["hard_delete"]):
            with pytest.raises(NotFoundError):
                call(any_repo, edge)


def test_an_id_in_text_is_accepted_by_writes_as_find_by_id_accepts_it(any_repo: Repository[ContractItem]) -> None:
    row = any_repo.create({"shop_id": 1, "name": "a", "slug": "a", "price": 1})
    found = any_repo.find_by_id(str(row.id))
    assert found is not None and found.id == row.id
    updated = any_repo.update(str(row.id), {"price": 2}, expected_version=1)
    assert (updated.id, updated.price, updated.version) == (row.id, 2, 2)
    assert any_repo.delete(str(row.id)).deleted_at is not None
    assert any_repo.restore(str(row.id)).deleted_at is None
    assert any_repo.hard_delete(str(row.id)).id == row.id


@pytest.mark.parametrize("version", [2**31, 2**63, 2**70, -(2**70), "abc", 1.5, True, 0, None])
def test_a_hostile_expected_version_is_refused_before_the_database(
    any_repo: Repository[ContractItem], version: Any
) -> None:
    row = any_repo.create({"shop_id": 1, "name": "a", "slug": "a", "price": 1})
    writes: list[Callable[[], Any]] = [
        lambda: any_repo.update(row.id, {"price": 2}, expected_version=version),
        lambda: any_repo.delete(row.id, expected_version=version),
    ]
    if version is None:  # not a hostile value: no version check at all
        assert [write().version for write in writes] == [2, 3]
        return
    for write in writes:
        with pytest.raises(InvalidDataError) as info:
            write()
        message = str(info.value)
        assert "expected_version" in message and repr(version) in message, message
    if isinstance(version, int) and not isinstance(version, bool) and version > 0:
        assert f"from 1 to {2**31 - 1}" in str(info.value)
    same = any_repo.get_by_id(row.id)
    assert (same.price, same.version, same.deleted_at) == (1, 1, None)


# -- a declared event that does not fit the row -------------------------------------------------


class Ticket(Model):
    title = peewee.CharField(max_length=50)
    seats = peewee.IntegerField()

    class Meta:
        table_name = "czo_test_ticket"


# Declared for this test's own table only: the event registry is process-wide.
class TicketCreated(Event, name="czo_test_ticket.created"):
    id: int
    title: str
    seats: str  # the row holds an integer: a module whose event drifted from its model


class TicketUpdated(Event, name="czo_test_ticket.updated"):
    id: int
    venue: str  # a field the row does not have


class TicketDeleted(Event, name="czo_test_ticket.deleted"):
    id: int
    title: str


@pytest.fixture
def tickets(backend: peewee.Database) -> Iterator[peewee.Database]:
    backend.bind([Ticket])
    backend.create_tables([Ticket])
    try:
        yield backend
    finally:
        backend.drop_tables([Ticket], safe=True)


WAYS_TO_WRITE = ["alone", "through hooks", "in the caller's transaction", "with async events"]


@pytest.mark.parametrize("way", WAYS_TO_WRITE)
def test_a_row_that_does_not_fit_its_declared_event_is_never_committed(
    tickets: peewee.Database, way: str
) -> None:
    events = EventEmitter(db=tickets)  # no queue: async events run in-process after commit
    heard: list[tuple[str, Any]] = []
    for name in ("created", "updated", "deleted"):
        events.on(f"czo_test_ticket.{name}", lambda payload, ctx: heard.append((ctx.name, payload)))
    hooks = HookRegistry()
    if way == "through hooks":
        for operation in ("create", "create_many", "update", "delete"):
            hooks.before(f"czo_test_ticket.{operation}", lambda ctx: None)
    repo = create_repository(
        Ticket, db=tickets, hooks=hooks, events=events, async_events=way == "with async events"
    )

    def write(call: Callable[[], Any]) -> Any:
        if way != "in the caller's transaction":
            return call()
        with tickets.atomic():
            return call()

    for attempt in range(2):  # a caller that retries gets the same answer, not a duplicate
        with pytest.raises(InvalidEventError) as info:
            write(lambda: repo.create({"title": "Opening night", "seats": 2}))
        message = str(info.value)
        assert "czo_test_ticket.created" in message and "TicketCreated" in message, message
        assert "seats" in message and "nothing was written" in message, message
    with pytest.raises(InvalidEventError):
        write(lambda: repo.create_many([{"title": "a", "seats": 1}, {"title": "b", "seats": 2}]))
    assert Ticket.select().count() == 0
    assert heard == []

    row = Ticket.create(title="Matinee", seats=4)  # written behind the repository's back
    with pytest.raises(InvalidEventError) as info:
        write(lambda: repo.update(row.id, {"seats": 5}))
    assert "venue" in str(info.value)
    assert (Ticket.get_by_id(row.id).seats, Ticket.get_by_id(row.id).version) == (4, 1)
    assert heard == []

    # An event that fits is emitted after commit as before.
    deleted = write(lambda: repo.delete(row.id))
    assert deleted.deleted_at is not None
    assert heard == [("czo_test_ticket.deleted", TicketDeleted(id=row.id, title="Matinee"))]


def test_a_bad_event_inside_a_transaction_leaves_the_transaction_usable(tickets: peewee.Database) -> None:
    repo = create_repository(Ticket, db=tickets, events=EventEmitter())
    row = Ticket.create(title="Matinee", seats=4)
    with tickets.atomic():
        with pytest.raises(InvalidEventError):
            repo.create({"title": "Opening night", "seats": 2})
        repo.delete(row.id)  # the same transaction goes on
    assert Ticket.select().count() == 1
    assert Ticket.get_by_id(row.id).deleted_at is not None


# -- order_by with another model's field --------------------------------------------------------


def test_order_by_a_field_of_another_model_is_refused_naming_its_model(
    any_repo: Repository[ContractItem],
) -> None:
    any_repo.create_many([{"shop_id": 1, "name": n, "slug": n, "price": 1} for n in "ba"])
    # Warm the cache (where there is one) with the same-named field of this model.
    assert [r.name for r in any_repo.find_many(order_by="name").items] == ["a", "b"]
    assert any_repo.find_one({"shop_id": 1}, order_by="name") is not None
    foreign: list[Any] = [
        ContractPlain.name, ContractPlain.name.desc(), ContractPlain.id,
        ["price", ContractPlain.name], (ContractItem.price, ContractSoft.name.asc()),
    ]
    for order_by in foreign:
        for read in (
            lambda: any_repo.find_many(order_by=order_by),
            lambda: any_repo.find_many(order_by=order_by, offset=0),
            lambda: any_repo.find_one({"shop_id": 1}, order_by=order_by),
        ):
            with pytest.raises(InvalidFilterError) as info:
                read()
            message = str(info.value)
            assert "belongs to Contract" in message and "not ContractItem" in message, message
            assert "order_by" in message and ("'name'" in message or "'id'" in message), message
    # This model's own fields, in every form, are still accepted.
    for order_by in (ContractItem.name, ContractItem.name.desc(), ["price", ContractItem.name]):
        assert len(any_repo.find_many(order_by=order_by).items) == 2
