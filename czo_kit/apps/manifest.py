"""``AppManifest``: what a third-party app declares about itself, validated with msgspec.

A manifest is JSON. Every problem is a ``ManifestError`` whose ``path`` names the field
(``$.webhooks[0].target_url``) and whose message says what was expected.

Two kinds of app share the type. A remote app (served at its manifest URL) must give its
``app_url`` and each webhook's ``target_url``. An in-process app (a pip-installed plugin,
``czo_register_apps``) gives no URL at all: its webhooks are delivered to its handlers by
the worker. ``parse_manifest(..., in_process=True)`` checks the second kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from czo_kit.apps.net import parse_target
from czo_kit.errors import ManifestError, UnsafeURLError
from czo_kit.events.types import InvalidEventError, check_event_name

__all__ = [
    "AppManifest",
    "ExtensionSpec",
    "MAX_MANIFEST_BYTES",
    "PermissionSpec",
    "WebhookSpec",
    "check_manifest",
    "parse_manifest",
]

MAX_MANIFEST_BYTES = 1024 * 1024

# \Z, not $: with $ a trailing newline would match ("acme\n").
Identifier = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._-]{1,63}\Z")]
Word = Annotated[str, msgspec.Meta(pattern=r"^[a-z*][a-z0-9_*]{0,63}\Z")]
Text = Annotated[str, msgspec.Meta(max_length=200)]
LongText = Annotated[str, msgspec.Meta(max_length=4000)]
Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]
Version = Annotated[str, msgspec.Meta(pattern=r"^[0-9A-Za-z.+-]{1,40}\Z")]


class PermissionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``{"resource": "apps", "actions": ["read"], "scope": "shop"}``."""

    resource: Word
    actions: Annotated[list[Word], msgspec.Meta(min_length=1, max_length=20)]
    scope: Literal["shop"] = "shop"


class WebhookSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A subscription: ``events`` delivered as signed POSTs to ``target_url`` (a remote app),
    or to the app's handlers (an in-process app, which gives no ``target_url``)."""

    name: Identifier
    events: Annotated[list[Annotated[str, msgspec.Meta(max_length=200)]], msgspec.Meta(min_length=1, max_length=100)]
    target_url: Url | None = None
    is_active: bool = True


class ExtensionSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A piece of UI the app adds to the dashboard."""

    label: Text
    # Which mounts exist depends on the modules installed: the install checks the name
    # against them (``AppRegistry.install``); a manifest only has to name one well.
    mount: Annotated[str, msgspec.Meta(pattern=r"^[A-Z][A-Z0-9_]{1,63}\Z")]
    url: Url
    target: Literal["widget", "popup", "app_page"] = "widget"
    permissions: Annotated[list[PermissionSpec], msgspec.Meta(max_length=50)] = []


class AppManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The manifest of an app, as served at its manifest URL (a remote app), or as an
    in-process app registers it, without any URL."""

    id: Identifier
    name: Text
    version: Version
    # Required of a remote app (``parse_manifest`` says so, naming the field); an in-process
    # app has none.
    app_url: Url | None = None
    about: LongText = ""
    token_target_url: Url | None = None
    permissions: Annotated[list[PermissionSpec], msgspec.Meta(max_length=100)] = []
    webhooks: Annotated[list[WebhookSpec], msgspec.Meta(max_length=50)] = []
    extensions: Annotated[list[ExtensionSpec], msgspec.Meta(max_length=50)] = []

    def permission_pairs(self) -> frozenset[tuple[str, str]]:
        """Every ``(resource, action)`` the app asks for."""
        return frozenset((p.resource, a) for p in self.permissions for a in p.actions)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


def _check_url(value: str, path: str) -> None:
    # The same rules as outbound requests (http(s), a host, no credentials, no whitespace or
    # control characters, a valid port), so a manifest that parses is one we can call.
    try:
        parse_target(value, what="the URL")
    except UnsafeURLError as exc:
        raise ManifestError(f"expected an http(s) URL with a host: {exc}", path=path) from None


def _missing(field: str) -> ManifestError:
    return ManifestError(
        f"Object missing required field `{field.rsplit('.', 1)[-1]}`: a remote app's manifest gives it "
        "(an in-process app, registered through czo_register_apps, gives no URL)",
        path=field,
    )


def _in_process_checks(manifest: AppManifest) -> None:
    """An in-process app's manifest names no URL: its webhooks reach its handlers in the
    worker, its token is returned by the install, and its pages come from its plugin."""
    why = "an in-process app (czo_register_apps) has no URLs: its webhooks are delivered to its handlers"
    if manifest.app_url is not None:
        raise ManifestError(f"{why}; remove app_url", path="$.app_url")
    if manifest.token_target_url is not None:
        raise ManifestError(f"{why}, and install returns its token; remove token_target_url", path="$.token_target_url")
    for i, webhook in enumerate(manifest.webhooks):
        if webhook.target_url is not None:
            raise ManifestError(f"{why}; remove target_url", path=f"$.webhooks[{i}].target_url")
    if manifest.extensions:
        raise ManifestError(
            "an in-process app adds dashboard pages through czo_register_dashboard, not URL extensions; "
            "remove extensions",
            path="$.extensions",
        )


def _semantic_checks(manifest: AppManifest, *, in_process: bool = False) -> None:
    if in_process:
        _in_process_checks(manifest)
    else:
        if manifest.app_url is None:
            raise _missing("$.app_url")
        _check_url(manifest.app_url, "$.app_url")
    if manifest.token_target_url is not None:
        _check_url(manifest.token_target_url, "$.token_target_url")
    for i, permission in enumerate(manifest.permissions):
        if len(set(permission.actions)) != len(permission.actions):
            raise ManifestError("actions are listed twice", path=f"$.permissions[{i}].actions")
    names: set[str] = set()
    for i, webhook in enumerate(manifest.webhooks):
        if webhook.name in names:
            raise ManifestError(f"webhook name {webhook.name!r} is used twice", path=f"$.webhooks[{i}].name")
        names.add(webhook.name)
        if not in_process:
            if webhook.target_url is None:
                raise _missing(f"$.webhooks[{i}].target_url")
            _check_url(webhook.target_url, f"$.webhooks[{i}].target_url")
        for j, event in enumerate(webhook.events):
            try:
                check_event_name(event)
            except InvalidEventError as exc:
                raise ManifestError(str(exc), path=f"$.webhooks[{i}].events[{j}]") from None
    for i, extension in enumerate(manifest.extensions):
        _check_url(extension.url, f"$.extensions[{i}].url")
        if extension.target == "app_page" and extension.mount != "NAVIGATION":
            raise ManifestError(
                "an app_page extension is reached from the navigation; use mount NAVIGATION",
                path=f"$.extensions[{i}].target",
            )


_FIELD_PROBLEM = re.compile(r"^Object (?:missing required|contains unknown) field `([^`]+)`$")


def validation_error_path(exc: msgspec.ValidationError) -> tuple[str, str]:
    """``(message, path)`` of a msgspec validation error; a missing or unknown field's path
    names that field (``$.webhooks[0].name``), not the object holding it."""
    text = str(exc)
    message, sep, path = text.rpartition(" - at `")
    if sep:
        path = path.rstrip("`")
    else:
        message, path = text, "$"
    match = _FIELD_PROBLEM.match(message)
    if match:
        path = f"{path}.{match.group(1)}"
    return message, path


def parse_manifest(data: bytes | str | Mapping[str, Any], *, in_process: bool = False) -> AppManifest:
    """A validated ``AppManifest`` from JSON text or an already decoded mapping: a remote
    app's (with its URLs), or with ``in_process=True`` an in-process app's (without any)."""
    try:
        if isinstance(data, Mapping):
            manifest = msgspec.convert(data, AppManifest)
        else:
            raw = data.encode() if isinstance(data, str) else data
            if len(raw) > MAX_MANIFEST_BYTES:
                raise ManifestError(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes", path="$")
            manifest = msgspec.json.decode(raw, type=AppManifest)
    except msgspec.ValidationError as exc:
        message, path = validation_error_path(exc)
        raise ManifestError(message, path=path) from None
    except msgspec.DecodeError as exc:
        raise ManifestError(f"not valid JSON: {exc}", path="$") from None
    _semantic_checks(manifest, in_process=in_process)
    return manifest


def check_manifest(manifest: AppManifest, *, in_process: bool = False) -> AppManifest:
    """Check an ``AppManifest`` built in code as ``parse_manifest`` checks JSON (a Struct
    built in Python skips msgspec's validation of its constraints, so it is re-decoded)."""
    return parse_manifest(manifest.to_json(), in_process=in_process)
