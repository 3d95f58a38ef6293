"""In-process apps: a handler that does not take ``(payload, ctx, app)`` is a mypy error."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from czo_kit.apps import AppManifest, InProcessApps, InstalledApp, PermissionRegistry, WebhookSpec
from czo_kit.events import EventContext

manifest = AppManifest(id="notes", name="Notes", version="1", webhooks=[WebhookSpec(name="notes", events=["note.created"])])
register = InProcessApps(PermissionRegistry())


def good(payload: Mapping[str, Any], ctx: EventContext, app: InstalledApp) -> None:
    app.has("note", "read")


def two_arguments(payload: Mapping[str, Any], ctx: EventContext) -> None:
    return None


def wrong_app(payload: Mapping[str, Any], ctx: EventContext, app: int) -> None:
    return None


register(manifest, handlers={"note.created": good})
register(manifest, handlers={"note.created": two_arguments})  # E: dict-item
register(manifest, handlers={"note.created": wrong_app})  # E: dict-item
register(manifest, handlers={"note.created": good}, routes=["/notes"])  # E: arg-type
