"""Sensitive data by permission, not by memory: an event's payload reaches an app with only
the fields its module declared, each only if the app holds the permission it needs; a field
nobody declared reaches no app and is logged once. ``PermissionRegistry.payload_for`` is the
one filter; the webhooks of the example modules and of the outside reviews module go
through it end to end."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from apps_support import OWNER, Receiver, app_kit, app_settings, manifest, wait_for
from czo_kit import Kit, hookimpl
from czo_kit.apps.permissions import MAX_FIELD_DEPTH, PermissionRegistry
from czo_kit.errors import ConfigurationError
from czo_kit.events import Event
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]

ORDER_READ = ("order", "read")
CUSTOMER_READ = ("customer", "read")
FINANCE_READ = ("finance", "read")

SHIPMENT_FIELDS: dict[str, Any] = {
    "id": None,
    "shop_id": None,
    "total": ("order", "read"),                      # the event's own permission: same as None
    "email": CUSTOMER_READ,
    "address": {"city": None, "street": CUSTOMER_READ},
    "lines": {"sku": None, "cost": FINANCE_READ},
}
SECRETS = ("grace@example.com", "1 Secret Lane", "cost-4242", "undeclared-zz", "mismatch-yy")


def registry() -> PermissionRegistry:
    reg = PermissionRegistry()
    reg.resource("order", ["read", "write"])
    reg.resource("customer", ["read"])
    reg.resource("finance", ["read"])
    reg.event("order.shipped", resource="order", fields=SHIPMENT_FIELDS)
    reg.check()
    return reg


def shipment() -> dict[str, Any]:
    return {
        "id": 9,
        "shop_id": 1,
        "total": 1999,
        "email": "grace@example.com",
        "address": {"city": "Lyon", "street": "1 Secret Lane", "notes": "undeclared-zz"},
        "lines": [{"sku": "A", "cost": "cost-4242"}, None, {"sku": "B", "cost": "cost-4242", "x": "undeclared-zz"}],
        "internal_notes": "undeclared-zz",
    }


def leaked(data: Any) -> list[str]:
    text = json.dumps(data)
    return [secret for secret in SECRETS if secret in text]


# -- fewer permissions, fewer fields ------------------------------------------------------


def test_an_app_granted_fewer_permissions_gets_fewer_fields() -> None:
    reg = registry()
    event_only = reg.payload_for("order.shipped", shipment(), {ORDER_READ})
    assert event_only == {
        "id": 9, "shop_id": 1, "total": 1999, "address": {"city": "Lyon"}, "lines": [{"sku": "A"}, None, {"sku": "B"}],
    }
    assert leaked(event_only) == []
    with_customer = reg.payload_for("order.shipped", shipment(), [ORDER_READ, CUSTOMER_READ])
    assert with_customer == {
        **event_only, "email": "grace@example.com", "address": {"city": "Lyon", "street": "1 Secret Lane"},
    }
    with_finance = reg.payload_for("order.shipped", shipment(), frozenset({ORDER_READ, FINANCE_READ}))
    assert with_finance is not None and with_finance["lines"] == [{"sku": "A", "cost": "cost-4242"}, None,
                                                                  {"sku": "B", "cost": "cost-4242"}]
    assert "email" not in with_finance and "street" not in with_finance["address"]
    everything = reg.payload_for("order.shipped", shipment(), {("*", "*")})
    assert everything is not None and leaked(everything) == ["grace@example.com", "1 Secret Lane", "cost-4242"]
    # Each grant sees a superset of a narrower one's fields, never a field it was not granted.
    assert set(event_only) < set(with_customer or {}) <= set(everything)


def test_an_app_without_the_events_own_permission_receives_nothing() -> None:
    reg = registry()
    assert reg.payload_for("order.shipped", shipment(), {CUSTOMER_READ, FINANCE_READ}) is None
    assert reg.payload_for("order.shipped", shipment(), set()) is None
    assert reg.payload_for("order.shipped", shipment(), {("order", "write")}) is None


def test_a_field_is_never_seen_without_its_permission_however_the_payload_is_shaped() -> None:
    reg = registry()
    hostile = {
        "id": 9,
        # Declared as mappings, sent as something else: what they hold was never declared.
        "address": "1 Secret Lane mismatch-yy",
        "lines": [{"sku": "A", "cost": "cost-4242"}, "mismatch-yy"],
        # Not declared, whatever it looks like.
        "Email": "grace@example.com",
        "email ": "grace@example.com",
        1: "undeclared-zz",
        "nested": {"email": "grace@example.com"},
    }
    for granted in ({ORDER_READ}, {ORDER_READ, FINANCE_READ}):
        seen = reg.payload_for("order.shipped", hostile, granted)
        assert seen == {"id": 9}
        assert leaked(seen) == []
    # Only the permission named for the field opens it: others, even several, do not.
    seen = reg.payload_for("order.shipped", shipment(), {ORDER_READ, ("customer", "write"), ("finances", "read")})
    assert seen is not None and leaked(seen) == []


class Address(msgspec.Struct):
    city: str
    street: str


class Shipped(Event, name="test.payload.shipped"):
    id: int
    shop_id: int
    email: str
    address: Address
    sent_at: dt.datetime


def test_a_typed_payload_is_filtered_like_a_mapping_and_comes_out_as_json_values() -> None:
    reg = PermissionRegistry()
    reg.resource("test", ["read"])
    reg.resource("customer", ["read"])
    reg.event("test.payload.shipped", resource="test", fields={
        "id": None, "shop_id": None, "sent_at": None, "email": CUSTOMER_READ,
        "address": {"city": None, "street": CUSTOMER_READ},
    })
    reg.check()
    sent = dt.datetime(2026, 12, 6, 8, 30, tzinfo=dt.timezone.utc)
    event = Shipped(id=1, shop_id=2, email="grace@example.com", address=Address("Lyon", "1 Secret Lane"), sent_at=sent)
    expected = {"id": 1, "shop_id": 2, "sent_at": "2026-12-06T08:30:00Z", "address": {"city": "Lyon"}}
    assert reg.payload_for("test.payload.shipped", event, {("test", "read")}) == expected
    # The same values a remote app's JSON decoder gives, from a mapping payload too.
    as_dict = {"id": 1, "shop_id": 2, "sent_at": sent, "email": "grace@example.com",
               "address": {"city": "Lyon", "street": "1 Secret Lane"}}
    assert reg.payload_for("test.payload.shipped", as_dict, {("test", "read")}) == expected
    # A Struct inside a mapping payload is filtered as the mapping it is written as.
    mixed = {**as_dict, "address": Address("Lyon", "1 Secret Lane")}
    assert reg.payload_for("test.payload.shipped", mixed, {("test", "read")}) == expected
    listed = {"id": 1, "address": [Address("Lyon", "1 Secret Lane"), None]}
    assert reg.payload_for("test.payload.shipped", listed, {("test", "read")}) == {"id": 1, "address": [
        {"city": "Lyon"}, None]}


# -- undeclared fields: dropped, logged once ------------------------------------------------


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "czo_kit.apps" and r.levelno == logging.WARNING]


def test_undeclared_fields_are_dropped_and_logged_once_per_event_and_field(caplog: pytest.LogCaptureFixture) -> None:
    reg = registry()
    with caplog.at_level(logging.WARNING, logger="czo_kit.apps"):
        for granted in ({ORDER_READ}, {("*", "*")}, {ORDER_READ}):
            seen = reg.payload_for("order.shipped", shipment(), granted)
            assert seen is not None and "undeclared-zz" not in json.dumps(seen)
        reg.payload_for("order.shipped", {"id": 1, "address": 7}, {ORDER_READ})
        reg.payload_for("order.shipped", {"id": 1, "address": 8}, {ORDER_READ})
    messages = warnings_of(caplog)
    assert len(messages) == 4, messages
    by_field = {m.split("field ", 1)[1].split(" ", 1)[0]: m for m in messages}
    assert set(by_field) == {"'internal_notes'", "'address.notes'", "'lines.x'", "'address'"}
    notes = by_field["'internal_notes'"]
    assert notes.startswith("event 'order.shipped': field 'internal_notes' is in its payload but not declared, so no app")
    assert "register.event('order.shipped', resource='order', fields={..., 'internal_notes': None})" in notes
    assert "fields={..., 'address': {..., 'notes': None}}" in by_field["'address.notes'"]
    assert "holds something else, not a mapping (int)" in by_field["'address'"]
    # Another registry (another kit) reports for itself.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="czo_kit.apps"):
        registry().payload_for("order.shipped", {"id": 1, "internal_notes": "x"}, {ORDER_READ})
    assert len(warnings_of(caplog)) == 1


def test_an_event_that_declares_no_fields_sends_only_its_id(caplog: pytest.LogCaptureFixture) -> None:
    reg = PermissionRegistry()
    reg.resource("parcel", ["read"])
    reg.event("parcel.sent", resource="parcel")  # a rule for who hears it, no fields
    with caplog.at_level(logging.WARNING, logger="czo_kit.apps"):
        reg.check()
        startup = warnings_of(caplog)
        caplog.clear()
        payload = {"id": "p-1", "shop_id": 1, "address": "1 Secret Lane"}
        assert reg.payload_for("parcel.sent", payload, {("parcel", "read")}) == {"id": "p-1"}
        assert reg.payload_for("parcel.sent", payload, {("*", "*")}) == {"id": "p-1"}
        assert reg.payload_for("parcel.sent", {"ref": 3}, {("parcel", "read")}) == {}
        # Never declared at all: needs read on its first segment, and also sends only the id.
        assert reg.payload_for("crate.sent", {"id": 5, "weight": 3}, {("crate", "read")}) == {"id": 5}
        assert reg.payload_for("crate.sent", {"id": True, "x": 1}, {("crate", "read")}) == {}
        assert reg.payload_for("crate.sent", {"id": 5}, {("parcel", "read")}) is None
        assert reg.payload_for("crate.sent", {"id": 6, "weight": 3}, {("crate", "read")}) == {"id": 6}
    assert startup == [
        "event 'parcel.sent' declares no fields, so apps that hear it receive only its id; declare each field "
        "apps may see in czo_register_permissions: register.event('parcel.sent', resource='parcel', "
        "fields={..., 'name': None}) "
        "sends it to every app that hears the event; a (resource, action) pair instead of None sends it only "
        "to apps granted that permission"
    ]
    [crate] = warnings_of(caplog)  # parcel.sent was reported at startup; crate.sent once
    assert crate.startswith("event 'crate.sent' declares no fields, so apps receive only its id (left out: weight); ")
    assert "register.event('crate.sent', resource='crate', fields={..., 'weight': None})" in crate


# -- declarations: malformed ones refused, naming the event and the field --------------------


def _looping() -> dict[str, Any]:
    inner: dict[str, Any] = {"id": None}
    inner["again"] = inner
    return {"nested": inner}


def _nested(levels: int) -> dict[str, Any]:
    """A declaration of ``levels`` mappings, one inside the other."""
    spec: dict[str, Any] = {"leaf": None}
    for _ in range(levels - 1):
        spec = {"down": spec}
    return spec


def _too_deep() -> dict[str, Any]:
    return _nested(MAX_FIELD_DEPTH + 1)


def test_a_declaration_as_deep_as_allowed_is_accepted_and_filters_at_that_depth() -> None:
    reg = PermissionRegistry()
    reg.event("order.shipped", resource="order", fields=_nested(MAX_FIELD_DEPTH))
    deep: dict[str, Any] = {"leaf": 1, "secret": 2}
    for _ in range(MAX_FIELD_DEPTH - 1):
        deep = {"down": deep}
    seen = reg.payload_for("order.shipped", deep, {ORDER_READ})
    for _ in range(MAX_FIELD_DEPTH - 1):
        assert seen is not None
        seen = seen["down"]
    assert seen == {"leaf": 1}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("id", "fields must be a mapping of field name to None (any app that hears the event sees it), a "
               "(resource, action) pair of strings (only apps granted it see it), or a mapping declaring the "
               "fields nested inside; got str"),
        ([("id", None)], "fields must be a mapping of field name to None"),
        ({"email": "customer:read"}, "field 'email' is declared as 'customer:read' (write ('customer', 'read')); "
                                     "a field is declared with None"),
        ({"email": ("customer",)}, "field 'email' is declared as ('customer',); a field is declared with None"),
        ({"email": ("customer", "read", "x")}, "field 'email' is declared as ('customer', 'read', 'x')"),
        ({"email": ("customer", "")}, "field 'email' is declared as ('customer', '')"),
        ({"email": True}, "field 'email' is declared as True"),
        ({"a": {"b": 3}}, "field 'a.b' is declared as 3"),
        ({"": None}, "field names are non-empty strings; got ''"),
        ({"a": {7: None}}, "field names are non-empty strings; got 7 inside 'a'"),
        ({"address": {}}, "field 'address' declares an empty mapping, which would send it empty"),
        (_looping(), "the declaration of 'nested.again' is nested more than 32 levels deep, or contains itself"),
        (_too_deep(), f"is nested more than {MAX_FIELD_DEPTH} levels deep"),
    ],
)
def test_a_malformed_declaration_is_refused_naming_the_event_and_field(fields: Any, message: str) -> None:
    reg = PermissionRegistry()
    with pytest.raises(ConfigurationError) as info:
        reg.event("order.shipped", resource="order", fields=fields)
    assert str(info.value).startswith("register.event('order.shipped', fields=...): ")
    assert message in str(info.value)
    assert "order.shipped" not in reg.events


def test_pairs_may_be_lists_and_are_kept_as_tuples() -> None:
    reg = PermissionRegistry()
    reg.event("order.shipped", resource="order", fields={"id": None, "email": ["customer", "read"],
                                                         "address": {"city": None}})
    assert reg.rule_for("order.shipped").fields == {"id": None, "email": ("customer", "read"),
                                                    "address": {"city": None}}


def test_the_old_sensitive_form_is_refused_with_the_way_forward() -> None:
    with pytest.raises(ConfigurationError) as info:
        PermissionRegistry().event("order.created", resource="order", sensitive={"email": CUSTOMER_READ})
    assert str(info.value).startswith("register.event('order.created', sensitive=...) is no longer supported: ")
    assert str(info.value).endswith("fields={'id': None, ..., 'email': ('customer', 'read')}")


@pytest.mark.parametrize(
    ("name", "resource", "action", "message"),
    [
        (None, "order", "read", "the event name must be a non-empty string, got None"),
        ("order.shipped", "", "read", "register.event('order.shipped'): resource must be a non-empty string, got ''"),
        ("order.shipped", "order", 3, "register.event('order.shipped'): action must be a non-empty string, got 3"),
    ],
)
def test_a_malformed_rule_is_refused(name: Any, resource: Any, action: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PermissionRegistry().event(name, resource=resource, action=action, fields={"id": None})


class Declares:
    """A plugin declaring one event rule, given as keyword arguments."""

    def __init__(self, **rule: Any) -> None:
        self.rule = rule

    @hookimpl
    def czo_register_permissions(self, register: PermissionRegistry) -> None:
        register.resource("parcel", ["read", "write"])
        register.event(**self.rule)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"fields": {"id": None, "cost": ("finance", "read")}},
         "register.event('parcel.sent', fields=...): field 'cost' needs finance:read, which no module declares; "
         "declared: "),
        ({"fields": {"id": None, "to": {"email": ("parcel", "audit")}}},
         "register.event('parcel.sent', fields=...): field 'to.email' needs parcel:audit, which no module declares"),
        ({"resource": "crate", "fields": {"id": None}},
         "register.event('parcel.sent', resource='crate', action='read'): no module declares crate:read; declared: "),
        ({"action": "delete", "fields": {"id": None}},
         "register.event('parcel.sent', resource='parcel', action='delete'): no module declares parcel:delete"),
    ],
)
def test_an_unknown_resource_or_action_stops_the_kit_at_startup(
    sqlite_url: str, settings_for: SettingsFor, rule: dict[str, Any], message: str
) -> None:
    rule = {"name": "parcel.sent", "resource": "parcel", **rule}
    with pytest.raises(ConfigurationError) as info:
        Kit(settings_for(sqlite_url, queue_url=""), plugins=[Declares(**rule)])
    assert str(info.value).startswith(message)
    assert "parcel:read|write" in str(info.value)  # what is declared, to pick from


class Packed(Event, name="test.payload.packed"):
    id: int
    shop_id: int
    weight: int
    picker_email: str


def test_a_typed_events_undeclared_fields_are_reported_at_startup_once(
    sqlite_url: str, settings_for: SettingsFor, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = Declares(name="test.payload.packed", resource="parcel", fields={"id": None, "shop_id": None})
    with caplog.at_level(logging.WARNING, logger="czo_kit.apps"):
        with Kit(settings_for(sqlite_url, queue_url=""), plugins=[plugin]) as kit:
            startup = [m for m in warnings_of(caplog) if "test.payload.packed" in m]
            caplog.clear()
            packed = Packed(id=1, shop_id=1, weight=3, picker_email="grace@example.com")
            assert kit.permissions.payload_for("test.payload.packed", packed, {("parcel", "read")}) == {
                "id": 1, "shop_id": 1}
            assert warnings_of(caplog) == []  # already said at startup
    assert [m.split(" is in", 1)[0] for m in startup] == [
        "event 'test.payload.packed': field 'weight'", "event 'test.payload.packed': field 'picker_email'"]


def test_a_declared_field_a_typed_event_does_not_have_is_refused(sqlite_url: str, settings_for: SettingsFor) -> None:
    plugin = Declares(name="test.payload.packed", resource="parcel",
                      fields={"id": None, "shop_id": None, "weight": None, "picker_mail": None})
    with pytest.raises(ConfigurationError) as info:
        Kit(settings_for(sqlite_url, queue_url=""), plugins=[plugin])
    assert str(info.value) == (
        "register.event('test.payload.packed', fields=...): Packed, the event's type, has no field 'picker_mail'; "
        "its fields: id, shop_id, weight, picker_email"
    )


# -- the one filter, called with hostile arguments ----------------------------------------


@pytest.mark.parametrize(
    ("event", "payload", "granted", "message"),
    [
        ("order.shipped", {"id": 1}, "order:read",
         "payload_for('order.shipped'): granted must be an iterable of (resource, action) pairs, got str"),
        ("order.shipped", {"id": 1}, {"order:read"},
         "payload_for('order.shipped'): granted holds 'order:read', which is not a (resource, action) pair of "
         "strings (write ('order', 'read'), not 'order:read')"),
        ("order.shipped", {"id": 1}, [("order", "read", "x")], "granted holds ('order', 'read', 'x'), which is not"),
        ("order.shipped", {"id": 1}, 7, "granted must be an iterable of (resource, action) pairs, got int"),
        ("order.shipped", [("id", 1)], {ORDER_READ},
         "payload_for('order.shipped'): the payload must be a mapping or an Event, got list"),
        (None, {"id": 1}, {ORDER_READ}, "payload_for: event must be an event name, got None"),
        ("order.shipped", {"id": 1, "total": object()}, {ORDER_READ},
         "payload_for('order.shipped'): the payload cannot be written as JSON"),
    ],
)
def test_payload_for_refuses_hostile_arguments(event: Any, payload: Any, granted: Any, message: str) -> None:
    with pytest.raises(TypeError) as info:
        registry().payload_for(event, payload, granted)
    assert message in str(info.value)
    assert str(info.value).startswith("payload_for")


def test_an_undeclared_unencodable_value_is_simply_not_sent() -> None:
    # What is left out is never encoded: it cannot make the delivery fail.
    assert registry().payload_for("order.shipped", {"id": 1, "junk": object()}, {ORDER_READ}) == {"id": 1}


# -- end to end: the example modules and the outside reviews module ------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture(params=["queue", "no-queue"])
def kit(request: pytest.FixtureRequest, db_url: str, settings_for: SettingsFor, tmp_path: Path) -> Iterator[Kit]:
    changes = {"queue_url": ""} if request.param == "no-queue" else {}
    with app_kit(app_settings(settings_for, db_url, str(tmp_path), **changes)) as kit:
        yield kit


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def delivered(kit: Kit, count: int) -> Callable[[], bool]:
    return lambda: kit.webhooks.stats(delivered=True) == {"delivered": count}


def consume(kit: Kit) -> Any:
    if kit.queue is None:
        assert kit.deliverer is not None
        kit.deliverer.start()
        return _Nothing()
    return kit.consumer(workers=2, sweep_interval=0.5)


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_review_webhooks_show_the_authors_email_only_to_apps_granted_customer_read(
    kit: Kit, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    from czo_test_reviews.plugin import REVIEW_EVENT_FIELDS, post_review  # the outside module, by its entry point

    assert "czo_test_reviews" in dict(kit.plugins.list_name_plugin())
    # The registry records who declared the event (what `czo-kit plugins` lists).
    assert "event review.created" in kit.permissions.contributions()["czo_test_reviews"]
    reading = [{"resource": "review", "actions": ["read"]}]
    kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(
        receiver.url + "/plain", app_id="plain", events=["review.created"], permissions=reading))
    kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(
        receiver.url + "/crm", app_id="crm", events=["review.created"],
        permissions=[*reading, {"resource": "customer", "actions": ["read"]}]))
    with caplog.at_level(logging.WARNING, logger="czo_kit.apps"), consume(kit):
        review = post_review(kit, shop_id=1, rating=5, body="Lovely mugs", author_email="grace@example.com")
        wait_for(delivered(kit, 2), what="both review deliveries")
    [plain] = receiver.posts("/plain/hook")
    [crm] = receiver.posts("/crm/hook")
    data = plain.json()["data"]
    assert {k: data[k] for k in ("id", "shop_id", "rating", "body")} == {
        "id": review.id, "shop_id": 1, "rating": 5, "body": "Lovely mugs"}
    assert set(data) == set(REVIEW_EVENT_FIELDS) - {"author_email"}
    assert b"grace@example.com" not in plain.body
    assert crm.json()["data"] == {**plain.json()["data"], "author_email": "grace@example.com"}
    assert warnings_of(caplog) == []  # the module declared every field of its event


def test_order_webhooks_carry_the_declared_columns_and_pay_the_stripe_way(
    kit: Kit, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    from czo_order.models import Order
    from czo_order.plugin import ORDER_FIELDS
    from czo_order.repository import OrderService

    # Every column of the order's row is declared: a new one must be declared to be sent.
    assert set(ORDER_FIELDS) == set(Order._meta.fields)
    kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url, app_id="payments"))
    with caplog.at_level(logging.WARNING, logger="czo_kit.apps"), consume(kit):
        mug = SimpleNamespace(id=7, name="Mug", price=1200)
        order = kit.services.get(OrderService).place(shop_id=1, customer_email="ada@example.com", items=[(mug, 2)])
        wait_for(delivered(kit, 1), what="the order delivery")
    [post] = receiver.posts("/hook")
    data = post.json()["data"]
    # What the payment app reads (id, total), and no customer data without customer:read.
    assert (data["id"], data["total"], data["shop_id"]) == (order.id, 2400, 1)
    assert set(data) == set(ORDER_FIELDS) - {"customer_email"}
    assert b"ada@example.com" not in post.body
    assert warnings_of(caplog) == []


def test_the_installed_modules_declare_every_field_they_send(
    sqlite_url: str, settings_for: SettingsFor, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="czo_kit.apps"):
        with Kit(settings_for(sqlite_url, queue_url="")) as kit:
            declared = set(kit.permissions.events)
    assert {"order.created", "order.updated", "product.created", "product.deleted", "review.created"} <= declared
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_real_worker_delivers_the_filtered_review_webhooks(
    backend: str, request: pytest.FixtureRequest, settings_for: SettingsFor, tmp_path: Path, receiver: Receiver
) -> None:
    """The outside module's event, emitted here, POSTed by a `czo-kit worker` process (which
    loads every installed plugin, so it checks their declarations at its own startup)."""
    import uuid

    from czo_test_reviews.plugin import post_review
    from test_worker import Proc, child_env, czo_kit_command

    if backend == "sqlite":
        database, queue = f"sqlite:///{tmp_path / 'data.sqlite3'}", f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    else:
        database, queue = str(request.getfixturevalue("pg_url")), str(request.getfixturevalue("redis_url"))
    name = f"czo_fields_{uuid.uuid4().hex[:10]}"
    settings = app_settings(settings_for, database, str(tmp_path), queue_url=queue, queue_name=name)
    env = child_env(
        CZO_DATABASE_URL=database, CZO_QUEUE_URL=queue, CZO_QUEUE_NAME=name, CZO_SECRET_KEY=str(settings.secret_key),
        CZO_APPS_ALLOW_PRIVATE_URLS="true", CZO_EVENTS_SWEEP_INTERVAL="1",
    )
    worker: Proc | None = None
    try:
        with app_kit(settings) as kit:
            reading = [{"resource": "review", "actions": ["read"]}]
            kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(
                receiver.url + "/plain", app_id="plain", events=["review.created"], permissions=reading))
            kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(
                receiver.url + "/crm", app_id="crm", events=["review.created"],
                permissions=[*reading, {"resource": "customer", "actions": ["read"]}]))
            review = post_review(kit, shop_id=1, rating=4, body="Quick delivery", author_email="ada@example.com")
            kit.webhooks.flush()  # handed to the queue now: the worker is another process
            worker = Proc([*czo_kit_command(), "worker", "-w", "1"], env=env, cwd=tmp_path, label="worker")
            wait_for(lambda: len(receiver.posts()) >= 2 or not worker.alive(), timeout=60, what="two POSTs")
            assert worker.alive(), worker.tail()
    finally:
        if worker is not None:
            worker.kill()
        if backend != "sqlite":
            import redis

            client = redis.Redis.from_url(queue)
            keys = list(client.scan_iter(match=f"huey.*{name}*"))
            if keys:
                client.delete(*keys)
            client.close()
    [plain] = receiver.posts("/plain/hook")
    [crm] = receiver.posts("/crm/hook")
    data = plain.json()["data"]
    assert {k: data[k] for k in ("id", "shop_id", "rating", "body")} == {
        "id": review.id, "shop_id": 1, "rating": 4, "body": "Quick delivery"}
    assert "author_email" not in data
    assert b"ada@example.com" not in plain.body
    assert crm.json()["data"]["author_email"] == "ada@example.com"
