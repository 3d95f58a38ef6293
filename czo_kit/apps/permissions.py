"""Permissions: what users hold in a shop, what apps may ask for, what events require.

Statements are ``(resource, action)`` pairs; ``*`` matches any resource or action. Modules
declare their resources, roles, and events with the fields apps may see, at boot through
``czo_register_permissions``; the ``PermissionService`` that answers "what does this user
hold in this shop" is the built-in one (``shop_members`` table) unless an auth module
registers its own with a higher priority. ``PermissionRegistry.payload_for`` is the one
filter every payload goes through on its way to an app.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec
import peewee

from czo_kit.apps._fields import MAX_FIELD_DEPTH, FieldSpec, Node, compile_fields, needed_pairs, visible
from czo_kit.db._tables import ensure_tables
from czo_kit.db.model import KitTable, UTCDateTimeField, utcnow
from czo_kit.errors import ConfigurationError
from czo_kit.events.types import event_type
from czo_kit.plugins import Contributions

if TYPE_CHECKING:
    from czo_kit.kit import Kit

__all__ = [
    "APP_MANAGEMENT",
    "AppPermissionChecker",
    "DefaultPermissionService",
    "EventRule",
    "FieldSpec",
    "MAX_FIELD_DEPTH",
    "Pair",
    "PermissionRegistry",
    "PermissionService",
    "ShopMember",
    "ShopMemberships",
    "allows",
    "format_pairs",
]

log = logging.getLogger("czo_kit.apps")

Pair = tuple[str, str]
APP_MANAGEMENT: Pair = ("apps", "manage")
"""Installing and removing apps. No app can ever be granted it."""


def allows(held: Iterable[Pair], resource: str, action: str) -> bool:
    """Whether ``held`` grants ``action`` on ``resource`` (``*`` is a wildcard)."""
    pairs = held if isinstance(held, (set, frozenset)) else set(held)
    return (
        (resource, action) in pairs
        or ("*", action) in pairs
        or (resource, "*") in pairs
        or ("*", "*") in pairs
    )


def format_pairs(pairs: Iterable[Pair]) -> tuple[str, ...]:
    return tuple(sorted(f"{r}:{a}" for r, a in pairs))


@runtime_checkable
class PermissionService(Protocol):
    """What a user holds in a shop. An auth module provides its own."""

    def permissions(self, user_id: str, shop_id: int) -> frozenset[Pair]: ...


@runtime_checkable
class ShopMemberships(Protocol):
    """Which shops a user belongs to, with their roles there: what the dashboard's first page
    lists. Optional: a permission service without it still guards every page, and people
    then open ``/dashboard/shops/<id>`` themselves."""

    def memberships(self, user_id: str) -> Mapping[int, Sequence[str]]: ...


@dataclass(frozen=True)
class EventRule:
    """What an app must hold to receive an event, and the fields it may see in its payload.

    ``fields`` is the declaration (``None``: the event declares no fields, so apps receive
    only its ``id``); a field it does not name is never sent to any app.
    """

    resource: str
    action: str
    fields: Mapping[str, FieldSpec] | None = None
    nodes: Mapping[str, Node] | None = field(default=None, repr=False, compare=False)


@dataclass
class PermissionRegistry:
    """Collects resources, roles, event rules and the permission service at boot."""

    resources: dict[str, frozenset[str]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    roles: dict[str, frozenset[Pair]] = field(default_factory=dict)
    events: dict[str, EventRule] = field(default_factory=dict)
    _service: tuple[int, Callable[[Kit], PermissionService]] | None = None
    _contributions: Contributions = field(default_factory=Contributions, repr=False, compare=False)
    # (event, field) pairs already warned about: a field left out is reported once, not at
    # every event. "*" stands for the whole payload of an event that declares no fields.
    _warned: set[tuple[str, str]] = field(default_factory=set, repr=False)
    _warned_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def resource(self, name: str, actions: Iterable[str], *, description: str = "") -> None:
        """Declare a resource and its actions: ``register.resource("item", ["read", "write"])``."""
        wanted = frozenset(actions)
        if not name or not wanted:
            raise ConfigurationError(f"resource {name!r} needs a name and at least one action")
        self.resources[name] = self.resources.get(name, frozenset()) | wanted
        if description:
            self.descriptions[name] = description
        self._contributions.record(f"resource {name}")

    def role(self, name: str, grants: Mapping[str, Iterable[str]]) -> None:
        """Declare what a role holds: ``register.role("staff", {"item": ["read"]})``."""
        pairs = frozenset((resource, action) for resource, actions in grants.items() for action in actions)
        self.roles[name] = self.roles.get(name, frozenset()) | pairs
        self._contributions.record(f"role {name}")

    def event(
        self,
        name: str,
        *,
        resource: str,
        action: str = "read",
        fields: Mapping[str, FieldSpec] | None = None,
        sensitive: object = None,
    ) -> None:
        """Say what an app must hold to receive ``name`` (``resource:action``), and every
        payload field an app may see, each with what it needs::

            register.event("item.created", resource="item", fields={
                "id": None, "size": None,                    # any app that hears the event
                "maker_email": ("contact", "read"),          # only apps granted contact:read
                "parts": {"id": None, "cost": ("finance", "read")},  # a nested mapping, or a list of them
            })

        A payload field not declared here is sent to no app (and logged once). Without
        ``fields`` apps receive only the payload's ``id``. Events never declared need ``read``
        on their first name segment and also send only the ``id``.
        """
        if sensitive is not None:
            # The old opt-out form: it sent every field but the listed ones, so a field added
            # later leaked. Refused with the way forward rather than silently misread.
            raise ConfigurationError(
                f"register.event({name!r}, sensitive=...) is no longer supported: payloads now "
                "carry only declared fields; declare every field apps may see with fields={...}, "
                "the sensitive ones with their permission: fields={'id': None, ..., "
                + ", ".join(f"{key!r}: {pair!r}" for key, pair in _items(sensitive)) + "}"
            )
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"register.event: the event name must be a non-empty string, got {name!r}")
        for label, value in (("resource", resource), ("action", action)):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"register.event({name!r}): {label} must be a non-empty string, got {value!r}")
        if fields is None:
            self.events[name] = EventRule(resource, action)
        else:
            plain, nodes = compile_fields(name, fields)
            self.events[name] = EventRule(resource, action, plain, nodes)
        self._contributions.record(f"event {name}")

    def service(self, factory: Callable[[Kit], PermissionService], *, priority: int = 0) -> None:
        """Provide the ``PermissionService``; the highest ``priority`` wins (built-in: -100)."""
        if self._service is None or priority >= self._service[0]:
            self._service = (priority, factory)
        self._contributions.record("permission service")

    def contributions(self) -> dict[str, list[str]]:
        """Plugin name -> what it declared in ``czo_register_permissions``."""
        return self._contributions.contributions()

    def check(self) -> None:
        """Called once every module has registered: refuse event rules naming a resource or
        action nobody declared, and fields a typed event does not have; warn once about the
        fields of typed events that no app will see because nobody declared them."""
        declared = ", ".join(f"{r}:{'|'.join(sorted(a))}" for r, a in sorted(self.resources.items())) or "none"
        for name, rule in sorted(self.events.items()):
            if self.unknown([(rule.resource, rule.action)]):
                raise ConfigurationError(
                    f"register.event({name!r}, resource={rule.resource!r}, action={rule.action!r}): "
                    f"no module declares {rule.resource}:{rule.action}; declared: {declared}"
                )
            for path, pair in needed_pairs(rule.nodes or {}):
                if self.unknown([pair]):
                    raise ConfigurationError(
                        f"register.event({name!r}, fields=...): field {path!r} needs "
                        f"{pair[0]}:{pair[1]}, which no module declares; declared: {declared}"
                    )
            self._check_typed(name, rule)

    def _check_typed(self, name: str, rule: EventRule) -> None:
        kind = event_type(name)
        if rule.fields is None:
            self._warn(name, "*", f"event {name!r} declares no fields, so apps that hear it receive only "
                       f"its id; {_how(name, rule, 'name', what='each field apps may see')}")
            return
        if kind is None:
            return  # a mapping payload: its fields are checked as it is sent
        # The names its payload carries (renamed ones as written); no annotations evaluated.
        carried: list[str] = list(kind.__struct_encode_fields__)
        extra = sorted(set(rule.fields) - set(carried))
        if extra:
            raise ConfigurationError(
                f"register.event({name!r}, fields=...): {kind.__name__}, the event's type, has no "
                f"field {', '.join(map(repr, extra))}; its fields: {', '.join(carried)}"
            )
        for key in carried:
            if key not in rule.fields:
                self._warn(name, key, _undeclared(name, rule, key))

    # -- questions ----------------------------------------------------------------------

    def rule_for(self, event_name: str) -> EventRule:
        rule = self.events.get(event_name)
        if rule is not None:
            return rule
        return EventRule(event_name.split(".", 1)[0], "read")

    def payload_for(self, event: str, payload: Any, granted: Iterable[Pair]) -> dict[str, Any] | None:
        """What an app granted ``granted`` may see of ``payload``, an ``event`` payload (a
        mapping or an ``Event``), as plain JSON-ready values; ``None`` when the app may not
        receive the event at all. The one filter of payloads to apps: webhooks and in-process
        apps both go through it.

        Only declared fields are kept, each only if ``granted`` holds its permission (nested
        ones too); an event that declares no fields gives only its ``id``. Each field left
        out undeclared is logged once.
        """
        if not isinstance(event, str) or not event:
            raise TypeError(f"payload_for: event must be an event name, got {event!r}")
        held = _pairs(event, granted)
        rule = self.rule_for(event)
        if not allows(held, rule.resource, rule.action):
            return None
        if isinstance(payload, Mapping):
            data: Mapping[Any, Any] = payload
        elif isinstance(payload, msgspec.Struct):
            data = _builtins(event, payload)
        else:
            raise TypeError(
                f"payload_for({event!r}): the payload must be a mapping or an Event, got {type(payload).__name__}"
            )
        if rule.nodes is None:
            left_out = [str(key) for key in data if key != "id"]
            if left_out:
                self._warn(event, "*", f"event {event!r} declares no fields, so apps receive only its id "
                           f"(left out: {', '.join(sorted(left_out))}); "
                           f"{_how(event, rule, sorted(left_out)[0], what='each field apps may see')}")
            ident = data.get("id")
            kept = {"id": ident} if isinstance(ident, (int, str)) and not isinstance(ident, bool) else {}
            return kept

        def warn(name: str, path: str, why: str) -> None:
            if why == "undeclared":
                self._warn(name, path, _undeclared(name, rule, path))
            else:
                self._warn(name, path, f"event {name!r}: field {path!r} is declared as a mapping of "
                           f"fields but holds something else, {why}; no app receives it")

        filtered = visible(event, rule.nodes, data, lambda pair: allows(held, *pair), warn)
        return filtered if isinstance(payload, msgspec.Struct) else _builtins(event, filtered)

    def _warn(self, event: str, path: str, message: str) -> None:
        with self._warned_lock:
            if (event, path) in self._warned:
                return
            self._warned.add((event, path))
        log.warning("%s", message)

    def unknown(self, pairs: Iterable[Pair]) -> list[Pair]:
        """Pairs naming a resource or action nobody declared."""
        return [
            (r, a)
            for r, a in pairs
            if r != "*" and (r not in self.resources or (a != "*" and a not in self.resources[r]))
        ]

    def role_permissions(self, roles: Iterable[str]) -> frozenset[Pair]:
        held: set[Pair] = set()
        for role in roles:
            held |= self.roles.get(role, frozenset())
        return frozenset(held)

    def build_service(self, kit: Kit) -> PermissionService:
        if self._service is None:
            raise ConfigurationError("no permission service is registered (is the built-in plugin blocked?)")
        service = self._service[1](kit)
        if not isinstance(service, PermissionService):
            raise ConfigurationError(f"{service!r} does not implement PermissionService.permissions")
        return service


def _pairs(event: str, granted: object) -> frozenset[Pair]:
    """``granted`` as a set of pairs, or a ``TypeError`` naming what is not a pair."""
    if isinstance(granted, (str, bytes)) or not isinstance(granted, Iterable):
        raise TypeError(
            f"payload_for({event!r}): granted must be an iterable of (resource, action) pairs, "
            f"got {type(granted).__name__}"
        )
    if isinstance(granted, frozenset) and all(type(p) is tuple for p in granted):
        candidates: Iterable[Any] = granted
    else:
        candidates = list(granted)
    for pair in candidates:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            hint = ""
            if isinstance(pair, str):
                resource, _, action = pair.partition(":")
                hint = f" (write ({resource!r}, {action!r}), not {pair!r})"
            raise TypeError(
                f"payload_for({event!r}): granted holds {pair!r}, which is not a (resource, action) "
                f"pair of strings{hint}"
            )
    return candidates if isinstance(candidates, frozenset) else frozenset(candidates)


def _items(value: object) -> list[tuple[Any, Any]]:
    return list(value.items()) if isinstance(value, Mapping) else []


def _builtins(event: str, value: Any) -> Any:
    """``value`` as JSON-ready builtins, as an app's JSON decoder would give it back."""
    try:
        return msgspec.to_builtins(value)
    except (TypeError, ValueError, RecursionError, msgspec.MsgspecError) as exc:
        raise TypeError(
            f"payload_for({event!r}): the payload cannot be written as JSON ({exc}); payloads hold "
            "mappings, lists, strings, numbers, booleans, None, datetimes, Decimals, UUIDs and Structs"
        ) from None


def _how(event: str, rule: EventRule, path: str, *, what: str = "it") -> str:
    """How to declare the field at dotted ``path`` of ``event``, as code to copy."""
    spec = "None"
    for key in reversed(path.split(".")):
        spec = f"{{..., {key!r}: {spec}}}"
    return (
        f"declare {what} in czo_register_permissions: register.event({event!r}, resource={rule.resource!r}, "
        f"fields={spec}) sends it to every app that hears the event; a (resource, action) pair "
        "instead of None sends it only to apps granted that permission"
    )


def _undeclared(event: str, rule: EventRule, path: str) -> str:
    return f"event {event!r}: field {path!r} is in its payload but not declared, so no app receives it; {_how(event, rule, path)}"


class ShopMember(KitTable):
    """A user's role in a shop (the built-in permission service's table)."""

    user_id = peewee.CharField(max_length=100)
    shop_id = peewee.IntegerField()
    role = peewee.CharField(max_length=64)
    created_at = UTCDateTimeField(default=utcnow)

    class Meta:
        table_name = "shop_members"
        indexes = ((("user_id", "shop_id", "role"), True),)


class DefaultPermissionService:
    """Roles of users per shop in ``shop_members``; what a role holds comes from the registry."""

    def __init__(self, db: peewee.Database, registry: PermissionRegistry) -> None:
        self.db = db
        self.registry = registry
        self._ready = False

    def _ensure(self) -> None:
        if not self._ready:
            self._ready = ensure_tables(self.db, [ShopMember])

    def roles(self, user_id: str, shop_id: int) -> list[str]:
        self._ensure()
        query = ShopMember.select(ShopMember.role).where(
            (ShopMember.user_id == str(user_id)) & (ShopMember.shop_id == shop_id)
        )
        return [row[0] for row in query.tuples().execute(self.db)]

    def permissions(self, user_id: str, shop_id: int) -> frozenset[Pair]:
        return self.registry.role_permissions(self.roles(user_id, shop_id))

    def memberships(self, user_id: str) -> dict[int, list[str]]:
        """Shop id -> the user's roles there, by shop id."""
        self._ensure()
        query = (
            ShopMember.select(ShopMember.shop_id, ShopMember.role)
            .where(ShopMember.user_id == str(user_id))
            .order_by(ShopMember.shop_id, ShopMember.role)
        )
        shops: dict[int, list[str]] = {}
        for shop_id, role in query.tuples().execute(self.db):
            shops.setdefault(int(shop_id), []).append(str(role))
        return shops

    def grant(self, user_id: str, shop_id: int, role: str) -> None:
        """Give ``user_id`` the role ``role`` in ``shop_id`` (idempotent)."""
        if role not in self.registry.roles:
            raise ConfigurationError(f"unknown role {role!r}; declared roles: {', '.join(sorted(self.registry.roles))}")
        self._ensure()
        ShopMember.insert(user_id=str(user_id), shop_id=shop_id, role=role, created_at=utcnow()).on_conflict_ignore().execute(self.db)

    def revoke(self, user_id: str, shop_id: int, role: str) -> None:
        self._ensure()
        ShopMember.delete_rows().where(
            (ShopMember.user_id == str(user_id)) & (ShopMember.shop_id == shop_id) & (ShopMember.role == role)
        ).execute(self.db)


class AppPermissionChecker:
    """Does an app principal hold ``action`` on ``resource`` in its shop."""

    def has(self, principal: Any, resource: str, action: str, *, shop_id: int | None = None) -> bool:
        if shop_id is not None and shop_id != principal.shop_id:
            return False  # an app acts in the shop it is installed in, nowhere else
        held: frozenset[Pair] = principal.permissions
        return allows(held, resource, action)
