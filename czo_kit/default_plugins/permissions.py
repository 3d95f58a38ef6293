"""The built-in permission service (roles per user and shop in ``shop_members``) and the
kit's own resources and roles."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from czo_kit.apps.permissions import DefaultPermissionService, PermissionRegistry, ShopMember
from czo_kit.hookspecs import hookimpl

if TYPE_CHECKING:
    from czo_kit.kit import Kit


@hookimpl
def czo_register_models(register: Any) -> None:
    register(ShopMember)


@hookimpl
def czo_register_permissions(register: PermissionRegistry) -> None:
    register.resource("apps", ["read", "manage"], description="installed apps of a shop")
    register.role("owner", {"*": ["*"]})
    register.role("viewer", {"*": ["read"]})

    def build(kit: Kit) -> DefaultPermissionService:
        return DefaultPermissionService(kit.db, kit.permissions)

    register.service(build, priority=-100)
