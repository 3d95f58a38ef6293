"""Permissions: what users hold in a shop, what apps may ask for, what events require.

Statements are ``(resource, action)`` pairs; ``*`` matches any resource or action. Modules
declare their resources, roles and event requirements at boot through
``czo_register_permissions``; the ``PermissionService`` that answers "what does this user
hold in this shop" is the built-in one (``shop_members`` table) unless an auth module
registers its own with a higher priority.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import peewee

from czo_kit.db._tables import ensure_tables
from czo_kit.db.model import KitTable, UTCDateTimeField, utcnow
from czo_kit.errors import ConfigurationError
from czo_kit.plugins import Contributions

if TYPE_CHECKING:
    from czo_kit.kit import Kit

__all__ = [
    "APP_MANAGEMENT",
    "AppPermissionChecker",
    "DefaultPermissionService",
    "Pair",
    "PermissionRegistry",
    "PermissionService",
    "ShopMember",
    "ShopMemberships",
    "allows",
    "format_pairs",
]

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
    """What an app must hold to receive an event, and which fields need more."""

    resource: str
    action: str
    sensitive: Mapping[str, Pair]


@dataclass
class PermissionRegistry:
    """Collects resources, roles, event rules and the permission service at boot."""

    resources: dict[str, frozenset[str]] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    roles: dict[str, frozenset[Pair]] = field(default_factory=dict)
    events: dict[str, EventRule] = field(default_factory=dict)
    _service: tuple[int, Callable[[Kit], PermissionService]] | None = None
    _contributions: Contributions = field(default_factory=Contributions, repr=False, compare=False)

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
        sensitive: Mapping[str, Pair] | None = None,
    ) -> None:
        """Say what an app must hold to receive ``name``, and which payload fields are left
        out unless it also holds their own permission: ``sensitive={"email": ("contact",
        "read")}``. Undeclared events require ``read`` on their first name segment."""
        self.events[name] = EventRule(resource, action, dict(sensitive or {}))
        self._contributions.record(f"event {name}")

    def service(self, factory: Callable[[Kit], PermissionService], *, priority: int = 0) -> None:
        """Provide the ``PermissionService``; the highest ``priority`` wins (built-in: -100)."""
        if self._service is None or priority >= self._service[0]:
            self._service = (priority, factory)
        self._contributions.record("permission service")

    def contributions(self) -> dict[str, list[str]]:
        """Plugin name -> what it declared in ``czo_register_permissions``."""
        return self._contributions.contributions()

    # -- questions ----------------------------------------------------------------------

    def rule_for(self, event_name: str) -> EventRule:
        rule = self.events.get(event_name)
        if rule is not None:
            return rule
        return EventRule(event_name.split(".", 1)[0], "read", {})

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
