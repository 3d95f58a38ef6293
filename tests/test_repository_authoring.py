"""What a module author gets from a repository: ``repo.cache`` and its tags for extra
functions, event names of their own (``event_prefix=``), a typed input for ``create`` and
``update`` (``input_type=``), and a kit that refuses to start when a declared event no longer
carries every column of its model."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypedDict

import msgspec
import peewee
import pytest
import svcs

from apps_support import reset_app_tables, reset_event_tables
from czo_kit import Kit, hookimpl
from czo_kit.cache import create_cache
from czo_kit.db import Model, create_mutations, create_queries, create_repository
from czo_kit.errors import ConfigurationError, InvalidDataError, InvalidFilterError
from czo_kit.events import Event, EventEmitter
from czo_kit.events.types import InvalidEventError
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]


class Gadget(Model):
    shop_id = peewee.IntegerField()
    name = peewee.CharField(max_length=50)
    price = peewee.IntegerField(default=0)

    class Meta:
        table_name = "czo_test_gadget"


def cheapest(repo: Any, shop_id: int) -> int | None:
    """An extra function caching a query of its own, as a module author writes one."""

    def load() -> int | None:
        repo.loads += 1  # counts the database reads: a cache hit does not get here
        row = repo.find_one({"shop_id": shop_id}, order_by="price")
        return None if row is None else int(row.price)

    found: int | None = repo.cache.get_or_set(f"gadget:cheapest:{shop_id}", load, tags=[repo.list_tag])
    return found


def name_of(repo: Any, id: int) -> str:
    """An extra cached per row: only a write of that row invalidates it."""

    def load() -> str:
        repo.loads += 1
        return str(repo.get_by_id(id).name)

    found: str = repo.cache.get_or_set(f"gadget:name:{id}", load, tags=[repo.row_tag(id)])
    return found


class GadgetModule:
    """A module whose service factory builds its repository on ``kit.db``, cache not passed."""

    @hookimpl
    def czo_register_models(self, register: Any) -> None:
        register(Gadget)

    @hookimpl
    def czo_register_services(self, registry: Any) -> None:
        def factory(container: svcs.Container) -> Any:
            kit = container.get(Kit)
            repo = create_queries(Gadget, db=kit.db) | create_mutations(Gadget, db=kit.db) | {
                "cheapest": cheapest, "name_of": name_of,
            }
            repo.loads = 0
            return repo

        registry.register_factory(Gadget, factory)


@pytest.fixture(params=[("sqlite", "memory"), ("postgresql", "redis")], ids=["sqlite-memory", "postgresql-redis"])
def gadget_kit(request: pytest.FixtureRequest, settings_for: SettingsFor) -> Iterator[Kit]:
    database, cache = request.param
    url = str(request.getfixturevalue("sqlite_url" if database == "sqlite" else "pg_url"))
    cache_url = "memory://" if cache == "memory" else str(request.getfixturevalue("redis_url"))
    settings = settings_for(url, queue_url="", plugins=(), cache_url=cache_url,
                            cache_prefix=f"t{uuid.uuid4().hex[:12]}:")
    with Kit(settings, plugins=[GadgetModule()]) as kit:
        kit.db.drop_tables([Gadget], safe=True)
        kit.db.create_tables([Gadget])
        try:
            yield kit
        finally:
            kit.db.drop_tables([Gadget], safe=True)


# -- repo.cache and its tags ---------------------------------------------------------------------


def test_an_extra_caches_with_the_kits_cache_and_the_repositorys_writes_invalidate_it(gadget_kit: Kit) -> None:
    repo = gadget_kit.services.get(Gadget)
    assert repo.cache is gadget_kit.cache  # no repo.cache = kit.cache needed
    mug = repo.create({"shop_id": 1, "name": "Mug", "price": 900})
    assert repo.cheapest(1) == 900 and repo.loads == 1
    assert repo.cheapest(1) == 900 and repo.loads == 1  # served from the cache
    # Behind the repository's back: the cached answer stays until a write through it.
    Gadget.insert(shop_id=1, name="Cup", price=500).execute(gadget_kit.db)
    assert repo.cheapest(1) == 900 and repo.loads == 1
    repo.update(mug.id, {"price": 800})
    assert repo.cheapest(1) == 500 and repo.loads == 2
    with gadget_kit.db.atomic():
        repo.create({"shop_id": 1, "name": "Saucer", "price": 100})
        assert repo.cheapest(1) == 500  # not committed yet: nothing invalidated
    assert repo.cheapest(1) == 100 and repo.loads == 3
    with pytest.raises(RuntimeError), gadget_kit.db.atomic():
        repo.create({"shop_id": 1, "name": "Spoon", "price": 1})
        raise RuntimeError("rolled back")
    assert repo.cheapest(1) == 100 and repo.loads == 3  # a rollback invalidates nothing


def test_a_row_tag_is_invalidated_by_a_write_of_that_row_only(gadget_kit: Kit) -> None:
    repo = gadget_kit.services.get(Gadget)
    mug = repo.create({"shop_id": 1, "name": "Mug"})
    cup = repo.create({"shop_id": 1, "name": "Cup"})
    assert (repo.name_of(mug.id), repo.name_of(cup.id), repo.loads) == ("Mug", "Cup", 2)
    repo.update(cup.id, {"name": "Big cup"})
    assert (repo.name_of(mug.id), repo.name_of(cup.id), repo.loads) == ("Mug", "Big cup", 3)
    repo.delete(mug.id)
    assert repo.name_of(cup.id) == "Big cup" and repo.loads == 3
    assert repo.row_tag(mug.id) == repo.row_tag(str(mug.id))  # the id as the key holds it


def test_an_explicit_cache_is_the_repositorys_cache_and_its_writes_invalidate(tmp_path: Any) -> None:
    db = peewee.SqliteDatabase(str(tmp_path / "plain.sqlite3"))
    db.bind([Gadget])
    db.create_tables([Gadget])
    cache = create_cache("memory://", settings=Settings())
    repo = create_queries(Gadget, db=db) | create_mutations(Gadget, db=db, cache=cache) | {"cheapest": cheapest}
    repo.loads = 0
    assert repo.cache is cache
    repo.create({"shop_id": 1, "name": "Mug", "price": 3})
    assert (repo.cheapest(1), repo.cheapest(1), repo.loads) == (3, 3, 1)
    repo.create({"shop_id": 1, "name": "Cup", "price": 2})
    assert (repo.cheapest(1), repo.loads) == (2, 2)


def test_a_repository_without_a_cache_says_how_to_get_one(tmp_path: Any) -> None:
    db = peewee.SqliteDatabase(str(tmp_path / "plain.sqlite3"))
    repo = create_repository(Gadget, db=db)
    with pytest.raises(ConfigurationError) as info:
        repo.cache
    assert not isinstance(info.value, AttributeError)
    message = str(info.value)
    assert "Gadget" in message and "has no cache" in message and "cache=kit.cache" in message, message
    # The tags need no cache: they are just names.
    assert repo.list_tag == create_repository(Gadget, db=db).list_tag
    with pytest.raises(InvalidFilterError) as bad:
        repo.row_tag("not an id")
    assert "'not an id'" in str(bad.value)


def test_an_extra_cannot_take_the_name_of_the_cache_or_the_tags(tmp_path: Any) -> None:
    repo = create_repository(Gadget, db=peewee.SqliteDatabase(":memory:"))
    for name in ("cache", "list_tag"):
        with pytest.raises(ValueError) as info:
            repo | {name: cheapest}
        assert repr(name) in str(info.value) and "taken" in str(info.value)


# -- event names of the repository's own ----------------------------------------------------------


def _listen(events: EventEmitter, names: list[str]) -> list[str]:
    heard: list[str] = []
    for name in names:
        events.on(name, lambda payload, ctx: heard.append(ctx.name))
    return heard


VERBS = ["created", "updated", "deleted", "restored", "hard_deleted"]


def test_event_names_follow_the_repositorys_prefix(tmp_path: Any) -> None:
    db = peewee.SqliteDatabase(str(tmp_path / "events.sqlite3"))
    db.bind([Gadget])
    db.create_tables([Gadget])
    events = EventEmitter()
    heard = _listen(events, [f"{p}.{v}" for p in ("catalog.item", "czo_test_gadget") for v in VERBS])
    composed = create_queries(Gadget, db=db) | create_mutations(
        Gadget, db=db, events=events, event_prefix="catalog.item"
    )
    for repo in (create_repository(Gadget, db=db, events=events, event_prefix="catalog.item"), composed):
        heard.clear()
        row = repo.create({"shop_id": 1, "name": "Mug"})
        repo.update(row.id, {"price": 2})
        repo.delete(row.id)
        repo.restore(row.id)
        repo.hard_delete(row.id)
        assert heard == [f"catalog.item.{verb}" for verb in VERBS]
    heard.clear()
    create_repository(Gadget, db=db, events=events).create({"shop_id": 1, "name": "Cup"})
    assert heard == ["czo_test_gadget.created"]  # the default is unchanged


@pytest.mark.parametrize("prefix", ["Catalog", "", ".item", "item.", "a b", "x" * 190, 7, b"item"])
def test_an_invalid_event_prefix_is_refused(prefix: Any) -> None:
    db = peewee.SqliteDatabase(":memory:")
    for build in (create_mutations, create_repository):
        with pytest.raises(InvalidEventError) as info:
            build(Gadget, db=db, event_prefix=prefix)
        message = str(info.value)
        assert f"event_prefix {prefix!r}" in message, message
        assert "lowercase" in message or "not starting or ending with '.'" in message, message


# -- typed input ---------------------------------------------------------------------------------


class GadgetInput(msgspec.Struct, kw_only=True):
    shop_id: int | msgspec.UnsetType = msgspec.UNSET
    name: str | msgspec.UnsetType = msgspec.UNSET
    price: int | msgspec.UnsetType = msgspec.UNSET


class GadgetDict(TypedDict, total=False):
    shop_id: int
    name: str


@pytest.fixture
def gadgets(tmp_path: Any) -> peewee.Database:
    db = peewee.SqliteDatabase(str(tmp_path / "typed.sqlite3"))
    db.bind([Gadget])
    db.create_tables([Gadget])
    return db


def test_a_struct_input_is_written_as_its_fields_values(gadgets: peewee.Database) -> None:
    repo = create_repository(Gadget, db=gadgets, input_type=GadgetInput)
    assert repo.input_type is GadgetInput
    mug = repo.create(GadgetInput(shop_id=1, name="Mug", price=900))
    assert (mug.shop_id, mug.name, mug.price) == (1, "Mug", 900)
    changed = repo.update(mug.id, GadgetInput(price=800))  # UNSET fields are left as they are
    assert (changed.name, changed.price, changed.version) == ("Mug", 800, 2)
    rows = repo.create_many([GadgetInput(shop_id=2, name="a"), GadgetInput(shop_id=2, name="b")])
    assert [(r.name, r.price) for r in rows] == [("a", 0), ("b", 0)]
    assert repo.create({"shop_id": 3, "name": "a dict still works"}).shop_id == 3


def test_a_struct_input_goes_through_the_same_checks(gadgets: peewee.Database) -> None:
    repo = create_repository(Gadget, db=gadgets, input_type=GadgetInput)

    class Misspelt(msgspec.Struct):
        shop_id: int
        nmae: str

    with pytest.raises(InvalidDataError) as info:
        repo.create(Misspelt(shop_id=1, nmae="Mug"))
    assert "unknown field 'nmae'" in str(info.value) and "allowed: " in str(info.value)
    with pytest.raises(InvalidDataError) as info:
        repo.create(GadgetInput(shop_id=1, name="Mug", price="cheap"))  # type: ignore[arg-type]
    assert "Gadget.price" in str(info.value) and "integer" in str(info.value)
    with pytest.raises(InvalidDataError) as info:
        repo.create(GadgetInput(shop_id=1))
    assert "required field 'name'" in str(info.value)
    with pytest.raises(InvalidDataError) as info:
        repo.create(["shop_id", 1])  # type: ignore[arg-type]
    assert "a mapping of field to value or a msgspec Struct, got list" in str(info.value)
    assert Gadget.select().count() == 0


def test_a_typeddict_input_is_a_plain_mapping_at_run_time(gadgets: peewee.Database) -> None:
    repo = create_queries(Gadget, db=gadgets) | create_mutations(Gadget, db=gadgets, input_type=GadgetDict)
    assert repo.input_type is GadgetDict
    row = repo.create(GadgetDict(shop_id=1, name="Mug"))
    assert repo.update(row.id, {"name": "Cup"}).name == "Cup"


def test_an_input_type_the_model_cannot_take_is_refused_when_built(gadgets: peewee.Database) -> None:
    class Drifted(msgspec.Struct):
        name: str
        colour: str

    class Managed(TypedDict):
        version: int

    for input_type, field in ((Drifted, "colour"), (Managed, "version")):
        with pytest.raises(InvalidDataError) as info:
            create_mutations(Gadget, db=gadgets, input_type=input_type)
        message = str(info.value)
        assert f"input_type {input_type.__name__}" in message and field in message, message
        assert "allowed: id, created_at, shop_id, name, price" in message, message

    for wrong in (dict, int, "GadgetInput", GadgetInput(name="x"), msgspec.Struct):
        with pytest.raises(TypeError) as type_info:
            create_repository(Gadget, db=gadgets, input_type=wrong)
        assert "input_type must be a msgspec Struct class or a TypedDict class" in str(type_info.value)


# -- declared events must carry every column of their model --------------------------------------


class Gizmo(Model):
    label = peewee.CharField(max_length=50)

    class Meta:
        table_name = "czo_test_gizmo"


class GizmoSaved(Event, name="test_gizmo.saved", model=Gizmo):
    id: int
    label: str
    version: int
    created_at: Any
    updated_at: Any
    deleted_at: Any = None


class Widgetish(Model):
    size = peewee.IntegerField()

    class Meta:
        table_name = "czo_test_widgetish"


class WidgetishCreated(Event, name="czo_test_widgetish.created"):  # tied by its name only
    id: int
    size: int
    colour: str = ""


class Notes(Model):
    body = peewee.TextField()
    secret = peewee.TextField()

    class Meta:
        table_name = "czo_test_notes"


class NoteWritten(Event, name="test_notes.written", model=Notes,
                  omit=("created_at", "updated_at", "version", "deleted_at", "secret")):
    id: int
    body: str


def _module(*models: type[peewee.Model]) -> object:
    class Module:
        @hookimpl
        def czo_register_models(self, register: Any) -> None:
            register(*models)

    return Module()


def test_a_column_added_later_stops_the_kit_naming_the_event_and_the_column(
    sqlite_url: str, settings_for: SettingsFor
) -> None:
    settings = settings_for(sqlite_url, queue_url="", plugins=())
    with Kit(settings, plugins=[_module(Gizmo)]):
        pass  # the event carries every column: the kit starts
    Gizmo._meta.add_field("colour", peewee.CharField(null=True))
    try:
        with pytest.raises(InvalidEventError) as info:
            Kit(settings, plugins=[_module(Gizmo)])
    finally:
        Gizmo._meta.remove_field("colour")
    message = str(info.value)
    assert "'test_gizmo.saved'" in message and "GizmoSaved" in message and "Gizmo" in message, message
    assert "missing colour" in message and "omit=" in message, message


def test_an_event_tied_by_its_name_is_checked_for_extra_and_missing_fields(
    sqlite_url: str, settings_for: SettingsFor
) -> None:
    settings = settings_for(sqlite_url, queue_url="", plugins=())
    with pytest.raises(InvalidEventError) as info:
        Kit(settings, plugins=[_module(Widgetish)])
    message = str(info.value)
    assert "'czo_test_widgetish.created'" in message, message
    assert "missing created_at, updated_at, version, deleted_at" in message, message
    assert "extra colour" in message, message


def test_only_the_kits_own_models_are_checked_and_omit_leaves_columns_out(
    sqlite_url: str, settings_for: SettingsFor
) -> None:
    # Widgetish's event does not match, but this kit has no Widgetish: not its business.
    with Kit(settings_for(sqlite_url, queue_url="", plugins=()), plugins=[_module(Notes)]) as kit:
        assert Notes in kit.all_models() and Widgetish not in kit.all_models()
    from czo_kit.db._event_fields import model_events

    assert model_events([Notes, Gizmo]) == [(GizmoSaved, Gizmo), (NoteWritten, Notes)]


def test_omit_must_name_columns_and_model_must_be_a_class(sqlite_url: str, settings_for: SettingsFor) -> None:
    class Typo(Event, name="test_notes.typo", model=Notes,
               omit=("created_at", "updated_at", "version", "deleted_at", "secret", "scret")):
        id: int
        body: str

    try:
        with pytest.raises(InvalidEventError) as info:
            Kit(settings_for(sqlite_url, queue_url="", plugins=()), plugins=[_module(Notes)])
        assert "omit= names scret, which are not columns" in str(info.value)
    finally:
        from czo_kit.events import types

        types._registry.pop("test_notes.typo")
    with pytest.raises(InvalidEventError) as bad:
        class NoModel(Event, model="Notes"):  # type: ignore[arg-type]
            id: int
    assert "model= must be a model class" in str(bad.value)
    with pytest.raises(InvalidEventError) as bad:
        class BadOmit(Event, omit="secret"):
            id: int
    assert "omit= must be a list of field names" in str(bad.value)


# -- the same, in a module found by its entry point only (tests/plugins/czo-test-reviews) ---------


@pytest.fixture(params=[("sqlite", "memory"), ("postgresql", "redis")], ids=["sqlite-memory", "postgresql-redis"])
def reviews_settings(request: pytest.FixtureRequest, settings_for: SettingsFor) -> Settings:
    database, cache = request.param
    url = str(request.getfixturevalue("sqlite_url" if database == "sqlite" else "pg_url"))
    cache_url = "memory://" if cache == "memory" else str(request.getfixturevalue("redis_url"))
    return settings_for(url, queue_url="", plugins=("czo_test_reviews",), cache_url=cache_url,
                        cache_prefix=f"t{uuid.uuid4().hex[:12]}:")


@pytest.fixture
def reviews_kit(reviews_settings: Settings) -> Iterator[Kit]:
    from czo_test_reviews import Review

    # One PostgreSQL schema serves the whole session: events and webhook deliveries other
    # tests left behind would be run by this kit's in-process deliverer (it has no queue),
    # with this test's handlers. Start without them.
    reset_app_tables(reviews_settings.database_url)
    reset_event_tables(reviews_settings.database_url)
    with Kit(reviews_settings) as kit:
        kit.create_tables()
        try:
            yield kit
        finally:
            kit.db.drop_tables([Review], safe=True)


def test_the_reviews_module_writes_its_typed_input_and_names_its_events(reviews_kit: Kit) -> None:
    from czo_test_reviews import ReviewInput, ReviewPosted, ReviewRepository

    posted: list[Any] = []
    reviews_kit.events.on(ReviewPosted, lambda event, ctx: posted.append(event))
    heard = _listen(reviews_kit.events, [f"{p}.{v}" for p in ("review", "czo_test_reviews_review") for v in VERBS])
    repo = reviews_kit.services.get_abstract(ReviewRepository)
    assert repo.input_type is ReviewInput
    row = repo.create(ReviewInput(shop_id=1, rating=5, body="Lovely", author_email="ada@example.com"))
    assert (row.rating, row.author_email) == (5, "ada@example.com")
    (event,) = posted
    assert isinstance(event, ReviewPosted) and (event.id, event.rating, event.body) == (row.id, 5, "Lovely")
    # The event carries the address; the module's payload fields keep it from apps without
    # customer:read (tests/test_payload_fields.py).
    assert event.author_email == "ada@example.com"
    changed = repo.update(row.id, ReviewInput(rating=4), expected_version=row.version)
    assert (changed.rating, changed.body, changed.version) == (4, "Lovely", 2)
    repo.delete(row.id)
    assert heard == ["review.created", "review.updated", "review.deleted"]
    with pytest.raises(InvalidDataError) as info:
        repo.create(ReviewInput(shop_id=1, rating=5, body="No author"))
    assert "required field 'author_email'" in str(info.value)


def test_the_reviews_rating_summary_is_cached_until_a_review_is_written(reviews_kit: Kit) -> None:
    from czo_test_reviews import RatingSummary, Review, ReviewInput, ReviewRepository

    repo = reviews_kit.services.get_abstract(ReviewRepository)
    assert repo.cache is reviews_kit.cache
    assert repo.rating_summary(1) == RatingSummary(0, None)
    first = repo.create(ReviewInput(shop_id=1, rating=5, body="a", author_email="a@example.com"))
    repo.create(ReviewInput(shop_id=1, rating=4, body="b", author_email="b@example.com"))
    assert repo.rating_summary(1) == RatingSummary(2, 4.5)
    # Written behind the repository's back: the cached summary stands...
    Review.insert(shop_id=1, rating=1, body="c", author_email="c@example.com").execute(reviews_kit.db)
    assert repo.rating_summary(1) == RatingSummary(2, 4.5)
    with reviews_kit.db.atomic():
        assert repo.rating_summary(1) == RatingSummary(3, 3.33)  # in a transaction: the database
    # ...until a write through the repository invalidates the table's tag.
    repo.delete(first.id)
    assert repo.rating_summary(1) == RatingSummary(2, 2.5)
    assert repo.rating_summary(2) == RatingSummary(0, None)


def test_a_column_added_to_reviews_but_not_to_its_event_stops_the_kit(reviews_settings: Settings) -> None:
    from czo_test_reviews import Review

    Review._meta.add_field("title", peewee.CharField(null=True))
    try:
        with pytest.raises(InvalidEventError) as info:
            Kit(reviews_settings)
    finally:
        Review._meta.remove_field("title")
    message = str(info.value)
    assert "'review.created'" in message and "ReviewPosted" in message and "missing title" in message, message
    assert "author_email" not in message  # the event carries it: only the new column is named
    with Kit(reviews_settings):
        pass  # and the module as it ships starts
