"""``czo_kit.apps``: third-party apps installed per shop from a manifest, with permissions
checked at install, per-app tokens, and signed webhooks with retries and a dead-letter state."""

from __future__ import annotations

from czo_kit.apps._subscriptions import SubscriptionCache
from czo_kit.apps.handoff import HandoffSigner, HandoffVerifier, RepeatedHandoffError, verify_handoff
from czo_kit.apps.inprocess import AppHandler, InProcessApp, InProcessApps, InstalledApp
from czo_kit.apps.manifest import AppManifest, ExtensionSpec, PermissionSpec, WebhookSpec, parse_manifest
from czo_kit.apps.permissions import (
    APP_MANAGEMENT,
    AppPermissionChecker,
    DefaultPermissionService,
    PermissionRegistry,
    PermissionService,
)
from czo_kit.apps.registry import AppPrincipal, AppRegistry, InstallResult
from czo_kit.apps.signing import new_webhook_secret, sign, verify_signature
from czo_kit.apps.webhooks import WebhookDispatcher
from czo_kit.errors import ManifestError, PermissionDeniedError, WebhookSignatureError

__all__ = [
    "APP_MANAGEMENT",
    "AppHandler",
    "AppManifest",
    "AppPermissionChecker",
    "AppPrincipal",
    "AppRegistry",
    "DefaultPermissionService",
    "ExtensionSpec",
    "HandoffSigner",
    "HandoffVerifier",
    "InProcessApp",
    "InProcessApps",
    "InstalledApp",
    "RepeatedHandoffError",
    "InstallResult",
    "SubscriptionCache",
    "ManifestError",
    "PermissionDeniedError",
    "PermissionRegistry",
    "PermissionService",
    "PermissionSpec",
    "WebhookDispatcher",
    "WebhookSignatureError",
    "WebhookSpec",
    "new_webhook_secret",
    "parse_manifest",
    "sign",
    "verify_handoff",
    "verify_signature",
]
