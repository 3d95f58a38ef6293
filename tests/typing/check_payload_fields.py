"""Field declarations of event payloads: mypy catches a permission written as a string, a
pair of the wrong length, and a stray value; well-formed ones, nested included, pass."""

from __future__ import annotations

from czo_kit.apps.permissions import FieldSpec, PermissionRegistry

register = PermissionRegistry()

good: dict[str, FieldSpec] = {
    "id": None,
    "email": ("people", "read"),
    "parts": {"id": None, "cost": ("finance", "read")},
}
register.event("widget.made", resource="widget", fields=good)
register.event("widget.sold", resource="widget", fields={"id": None, "buyer": {"email": ("people", "read")}})

register.event("widget.lost", resource="widget", fields={"email": "people:read"})  # E: dict-item
register.event("widget.found", resource="widget", fields={"email": ("people",)})  # E: dict-item
register.event("widget.kept", resource="widget", fields={"email": True})  # E: dict-item
register.payload_for("widget.made", {"id": 1}, ["people:read"])  # E: list-item
