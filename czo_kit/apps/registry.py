"""``AppRegistry``: apps installed per shop, their tokens and their webhook secrets.

Installing checks the manifest against what the installer holds, reserves the shop's slot for
the app in one short transaction, hands the token to the app's ``token_target_url`` (signed,
outside any transaction), and then writes the token, secret and subscriptions in a second
short one (see ``_install``). Until then the installation is invisible, and a failure
anywhere removes it. Reinstalling an installed app is a ``ConflictError``; uninstall first.
Tokens are shown once and stored as a SHA-256 hash plus their last four characters.
"""

from __future__ import annotations

import builtins
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import peewee

from czo_kit.apps import _idempotency, _install
from czo_kit.apps._fetch import MANIFEST_DEADLINE, fetch_manifest
from czo_kit.apps._subscriptions import SubscriptionCache
from czo_kit.apps._models import (
    APP_MODELS,
    AppInstallation,
    AppInstallPending,
    AppSecret,
    AppToken,
    AppWebhook,
)
from czo_kit.apps.extensions import KIT_MOUNTS
from czo_kit.apps.handoff import HandoffSigner
from czo_kit.apps.inprocess import InProcessApps
from czo_kit.apps.manifest import AppManifest, parse_manifest
from czo_kit.apps.net import OutboundHTTP
from czo_kit.apps.permissions import (
    APP_MANAGEMENT,
    Pair,
    PermissionRegistry,
    PermissionService,
    allows,
    format_pairs,
)
from czo_kit.apps.signing import new_webhook_secret
from czo_kit.db._tables import ensure_tables
from czo_kit.db.model import utcnow
from czo_kit.errors import (
    AuthenticationError,
    InvalidDataError,
    ManifestError,
    NotFoundError,
    PermissionDeniedError,
    UnsafeURLError,
)

__all__ = [
    "APP_MODELS",
    "SHOP_ID_MAX",
    "AppInstallPending",
    "AppInstallation",
    "AppPrincipal",
    "AppRegistry",
    "AppSecret",
    "AppToken",
    "AppWebhook",
    "InstallResult",
    "TOKEN_PREFIX",
]

log = logging.getLogger("czo_kit.apps")

TOKEN_PREFIX = "czo_app_"
_TOKEN_BYTES = 32
SHOP_ID_MAX = 2**31 - 1
"""Shop ids are 32-bit integers in the kit's tables."""


@dataclass(frozen=True)
class AppPrincipal:
    """Who a request is when it carries an app token."""

    installation_id: int
    app_id: str
    shop_id: int
    permissions: frozenset[Pair]
    token_id: int

    def has(self, resource: str, action: str) -> bool:
        return allows(self.permissions, resource, action)


@dataclass(frozen=True)
class InstallResult:
    """What ``install`` returns. ``token`` is shown this once and never stored in clear."""

    installation: AppInstallation
    token: str
    webhook_secret: str

    @property
    def app_id(self) -> str:
        return str(self.installation.app_id)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


class AppRegistry:
    """Install, list, authenticate and uninstall apps, shop by shop."""

    def __init__(
        self,
        db: peewee.Database,
        *,
        permissions: PermissionRegistry,
        permission_service: PermissionService | Callable[[], PermissionService],
        http: OutboundHTTP,
        signer: HandoffSigner | None = None,
        mounts: Callable[[], Collection[str]] | None = None,
        in_process: InProcessApps | None = None,
    ) -> None:
        self.db = db
        self.in_process = in_process if in_process is not None else InProcessApps(permissions)
        """The in-process apps plugins registered (``czo_register_apps``), installed by id."""
        # Asked at each install, not at construction: the mounts come from the modules'
        # dashboard registrations, which the kit collects on first use.
        self._mounts = mounts or (lambda: KIT_MOUNTS)
        self.permissions = permissions
        self._permission_service = permission_service
        self.http = http
        # Without a key from the settings, one for this process only (apps that pinned the
        # deployment's public key will refuse its hand-offs: the Kit always passes one).
        self.signer = signer if signer is not None else HandoffSigner(secrets.token_bytes(32))
        self.manifest_deadline = MANIFEST_DEADLINE
        self.handoff_deadline = _install.HANDOFF_DEADLINE
        self.install_lease = _install.INSTALL_LEASE
        self._ready = False
        self.subscription_cache = SubscriptionCache(db)
        """Each shop's active subscriptions, in memory, for emits (``_subscriptions``)."""

    def ensure_tables(self) -> None:
        if not self._ready:
            self._ready = ensure_tables(self.db, APP_MODELS)

    @property
    def public_key(self) -> str:
        """The public key (``whpk_...``) that verifies every hand-off this kit sends to apps."""
        return self.signer.public_key

    @property
    def permission_service(self) -> PermissionService:
        service = self._permission_service
        if isinstance(service, PermissionService):
            return service
        return service()

    # -- manifests ----------------------------------------------------------------------

    def fetch_manifest(self, url: str) -> AppManifest:
        """GET a manifest: JSON only, at most 1 MiB, redirects on the same host, and
        ``manifest_deadline`` seconds for the whole fetch, redirects included."""
        return fetch_manifest(self.http, url, deadline=self.manifest_deadline)

    # -- install ------------------------------------------------------------------------

    def _check_mounts(self, manifest: AppManifest) -> None:
        if not manifest.extensions:
            return
        known = tuple(self._mounts())
        for i, extension in enumerate(manifest.extensions):
            if extension.mount not in known:
                raise ManifestError(
                    f"unknown mount {extension.mount!r}; the mounts of this installation are: {', '.join(known)}",
                    path=f"$.extensions[{i}].mount",
                )

    def _check_grants(self, manifest: AppManifest, installer_id: str, shop_id: int) -> frozenset[Pair]:
        asked = manifest.permission_pairs()
        if any(allows({pair}, *APP_MANAGEMENT) for pair in asked):
            raise PermissionDeniedError(
                "an app can never be granted apps:manage (installing and removing apps)",
                missing=("apps:manage",),
            )
        unknown = self.permissions.unknown(asked)
        if unknown:
            raise ManifestError(
                f"unknown permissions {', '.join(format_pairs(unknown))}; declared: "
                + ", ".join(f"{r}:{'|'.join(sorted(a))}" for r, a in sorted(self.permissions.resources.items())),
                path="$.permissions",
            )
        held = self.permission_service.permissions(installer_id, shop_id)
        if not allows(held, *APP_MANAGEMENT):
            raise PermissionDeniedError(
                f"user {installer_id} cannot manage apps in shop {shop_id}", missing=("apps:manage",)
            )
        missing = [pair for pair in asked if not allows(held, *pair)]
        if missing:
            raise PermissionDeniedError(
                f"user {installer_id} does not hold every permission the app asks for; missing: "
                f"{', '.join(format_pairs(missing))}",
                missing=format_pairs(missing),
            )
        for i, webhook in enumerate(manifest.webhooks):
            for j, event in enumerate(webhook.events):
                rule = self.permissions.rule_for(event)
                if not allows(asked, rule.resource, rule.action):
                    # The manifest contradicts itself (no installer could fix it): a manifest
                    # error naming the event, not a permission the installer lacks.
                    raise ManifestError(
                        f"webhook {webhook.name!r} subscribes to {event!r}, which needs "
                        f"{rule.resource}:{rule.action}, but the app does not ask for it; add it "
                        "to $.permissions or drop the event",
                        path=f"$.webhooks[{i}].events[{j}]",
                    )
        for i, extension in enumerate(manifest.extensions):
            extra = {(p.resource, a) for p in extension.permissions for a in p.actions} - asked
            if extra:
                raise ManifestError(
                    f"the extension asks for {', '.join(format_pairs(extra))}, which the app itself does not",
                    path=f"$.extensions[{i}].permissions",
                )
        return asked

    def install(
        self,
        *,
        shop_id: int,
        installer_id: str | int,
        manifest_url: str | None = None,
        manifest: AppManifest | dict[str, Any] | None = None,
        app_id: str | None = None,
    ) -> InstallResult:
        """Install an app in a shop: a remote one from ``manifest_url`` (or its ``manifest``),
        or an in-process one by ``app_id``; ``PermissionDeniedError`` lists what the installer
        lacks."""
        if sum(given is not None for given in (manifest_url, manifest, app_id)) != 1:
            raise ManifestError(
                "give one of manifest_url, manifest (a remote app) or app_id (an in-process app)", path="manifestUrl"
            )
        if not isinstance(shop_id, int) or isinstance(shop_id, bool) or not 1 <= shop_id <= SHOP_ID_MAX:
            raise ManifestError(
                f"shop id must be a whole number from 1 to {SHOP_ID_MAX}, got {str(shop_id)[:24]!r}", path="shopId"
            )
        in_process = app_id is not None
        if app_id is not None:
            parsed = self._in_process_manifest(app_id)
        elif manifest is None:
            assert manifest_url is not None
            parsed = self.fetch_manifest(manifest_url)
        elif isinstance(manifest, AppManifest):
            parsed = manifest
        else:
            parsed = parse_manifest(manifest)
        if not in_process:
            self._check_remote(parsed)
        installer = str(installer_id)
        self._check_mounts(parsed)
        granted = self._check_grants(parsed, installer, shop_id)
        targets = [
            (f"$.webhooks[{i}].target_url", w.target_url) for i, w in enumerate(parsed.webhooks) if w.target_url
        ]
        if parsed.token_target_url:
            targets.append(("$.token_target_url", parsed.token_target_url))
        for path, target in targets:
            try:
                self.http.check(target, what="webhook or token URL")
            except UnsafeURLError as exc:
                raise ManifestError(str(exc), path=path) from None
        self.ensure_tables()
        installation = _install.reserve(
            self.db, parsed, shop_id=shop_id, permissions=sorted(f"{r}:{a}" for r, a in granted),
            installer=installer, lease=self.install_lease,
        )
        token = new_token()
        secret = new_webhook_secret()
        try:
            if parsed.token_target_url:
                failure = _install.send_handoff(
                    self.http, self.signer, parsed.token_target_url,
                    {
                        "kind": "install", "auth_token": token, "webhook_secret": secret,
                        "shop_id": shop_id, "app_id": parsed.id, "installation_id": int(installation.id),
                    },
                    message_id=_install.new_message_id("install", int(installation.id)),
                    deadline=self.handoff_deadline,
                )
                if failure is not None:
                    raise ManifestError(
                        f"the app did not accept its token at token_target_url ({failure}); nothing was installed",
                        path="$.token_target_url",
                    )
            _install.complete(
                self.db, installation, parsed, hash_token(token), token[-4:], secret,
                changed=self.subscription_cache.changed,
            )
        except BaseException:
            try:
                _install.abandon(self.db, int(installation.id))
            except Exception:  # the original error matters more; the sweep removes it later
                log.warning("could not remove the failed install of %s in shop %s", parsed.id, shop_id, exc_info=True)
            raise
        log.info("installed app %s (%s) in shop %s", parsed.id, parsed.version, shop_id)
        return InstallResult(installation=installation, token=token, webhook_secret=secret)

    def _in_process_manifest(self, app_id: Any) -> AppManifest:
        app = self.in_process.get(app_id) if isinstance(app_id, str) else None
        if app is None:
            raise ManifestError(
                f"no in-process app has the id {str(app_id)[:64]!r}; the in-process apps of this installation "
                f"are: {', '.join(self.in_process.ids()) or 'none'} (a remote app is installed from its manifest_url)",
                path="appId",
            )
        return app.manifest

    def _check_remote(self, manifest: AppManifest) -> None:
        """A remote manifest gives its URLs (one built in code skipped ``parse_manifest``), and
        does not take the id of an in-process app (whose deliveries would not be its own)."""
        if manifest.app_url is None:
            raise ManifestError("a remote app's manifest needs app_url (install an in-process app by app_id)", path="$.app_url")
        for i, webhook in enumerate(manifest.webhooks):
            if webhook.target_url is None:
                raise ManifestError("a remote app's webhook needs a target_url", path=f"$.webhooks[{i}].target_url")
        owner = self.in_process.get(manifest.id)
        if owner is not None:
            raise ManifestError(
                f"app id {manifest.id!r} belongs to the in-process app of plugin {owner.plugin or '?'}; install that "
                f"one with app_id={manifest.id!r}, or give the remote app another id",
                path="$.id",
            )

    def sweep(self) -> dict[str, int]:
        """Remove what dead processes left: installs past their lease, expired idempotency keys."""
        self.ensure_tables()
        return {
            "abandoned_installs": _install.sweep_abandoned(self.db),
            "expired_idempotency_keys": _idempotency.prune(self.db),
        }

    # -- reading ------------------------------------------------------------------------

    def get(self, shop_id: int, app_id: str) -> AppInstallation:
        self.ensure_tables()
        row: AppInstallation | None = AppInstallation.select().where(
            (AppInstallation.shop_id == shop_id) & (AppInstallation.app_id == app_id) & _installed()
        ).first(self.db)
        if row is None:
            raise NotFoundError("App", f"{app_id} in shop {shop_id}")
        return row

    def list(self, shop_id: int) -> builtins.list[AppInstallation]:
        """The apps installed in one shop, oldest first."""
        self.ensure_tables()
        return list(
            AppInstallation.select()
            .where((AppInstallation.shop_id == shop_id) & _installed())
            .order_by(AppInstallation.id)
            .execute(self.db)
        )

    def manifest_of(self, installation: AppInstallation) -> AppManifest:
        """The manifest an installation was made from (checked when it was installed)."""
        return msgspec.json.decode(str(installation.manifest), type=AppManifest)

    def uninstall(self, *, shop_id: int, app_id: str) -> None:
        """Remove the app, its tokens, secrets, subscriptions and pending webhooks, at once."""
        installation = self.get(shop_id, app_id)
        with self.db.atomic():
            AppInstallation.delete_rows().where(AppInstallation.id == installation.id).execute(self.db)
            self.subscription_cache.changed(shop_id)
        log.info("uninstalled app %s from shop %s", app_id, shop_id)

    # -- tokens -------------------------------------------------------------------------

    def create_token(self, *, shop_id: int, app_id: str, name: str = "token") -> tuple[int, str]:
        """A new token for an installed app: ``(token id, token)``; the token is shown once."""
        installation = self.get(shop_id, app_id)
        token = new_token()
        token_id = AppToken.insert(
            installation=installation.id, token_hash=hash_token(token), last4=token[-4:],
            name=name[:100], created_at=utcnow(),
        ).execute(self.db)
        return int(token_id), token

    def tokens(self, *, shop_id: int, app_id: str) -> builtins.list[AppToken]:
        installation = self.get(shop_id, app_id)
        return list(AppToken.select().where(AppToken.installation == installation.id).order_by(AppToken.id).execute(self.db))

    def revoke_token(self, *, shop_id: int, app_id: str, token_id: int) -> None:
        installation = self.get(shop_id, app_id)
        changed = AppToken.update(revoked_at=utcnow()).where(
            (AppToken.id == token_id) & (AppToken.installation == installation.id) & AppToken.revoked_at.is_null(True)
        ).execute(self.db)
        if not changed:
            raise NotFoundError("AppToken", token_id)

    def authenticate(self, token: Any) -> AppPrincipal:
        """The app behind ``token``; ``AuthenticationError`` for anything else. Never cached,
        so a revoked token or an uninstalled app is refused at once."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX) or not 40 <= len(token) <= 100:
            raise AuthenticationError("not an app token")
        self.ensure_tables()
        digest = hash_token(token)
        row = (
            AppToken.select(AppToken, AppInstallation)
            .join(AppInstallation)
            .where((AppToken.token_hash == digest) & AppToken.revoked_at.is_null(True))
            .first(self.db)
        )
        # The lookup is by hash; comparing the stored hash again costs nothing and keeps the
        # final decision constant-time whatever the database does.
        if row is None or not hmac.compare_digest(str(row.token_hash), digest):
            raise AuthenticationError("unknown or revoked app token")
        installation = row.installation
        pairs = frozenset(tuple(item.split(":", 1)) for item in json.loads(str(installation.permissions)))
        return AppPrincipal(
            installation_id=int(installation.id),
            app_id=str(installation.app_id),
            shop_id=int(installation.shop_id),
            permissions=pairs,
            token_id=int(row.id),
        )

    # -- webhook secrets ----------------------------------------------------------------

    def secrets_for(self, installation_id: int) -> builtins.list[str]:
        """Secrets to sign with: the current one first, then any still in their grace period."""
        now = utcnow()
        rows = list(
            AppSecret.select()
            .where(
                (AppSecret.installation == installation_id)
                & (AppSecret.expires_at.is_null(True) | (AppSecret.expires_at > now))
            )
            .order_by(AppSecret.expires_at.is_null(False), AppSecret.id.desc())
            .execute(self.db)
        )
        return [str(r.secret) for r in rows]

    def rotate_webhook_secret(self, *, shop_id: int, app_id: str, grace: float = 86400.0) -> str:
        """A new current secret; the old one keeps signing (as a second ``v1=``) for ``grace`` s."""
        installation = self.get(shop_id, app_id)
        now = utcnow()
        secret = new_webhook_secret()
        with self.db.atomic():
            AppSecret.update(expires_at=now + dt.timedelta(seconds=grace)).where(
                (AppSecret.installation == installation.id) & AppSecret.expires_at.is_null(True)
            ).execute(self.db)
            AppSecret.insert(installation=installation.id, secret=secret, created_at=now).execute(self.db)
            AppSecret.delete_rows().where(
                (AppSecret.installation == installation.id) & (AppSecret.expires_at <= now)
            ).execute(self.db)
            self.subscription_cache.changed(shop_id)
        target = self.manifest_of(installation).token_target_url
        if target:
            # Tell the app, signed like the install hand-off; until it has the new secret, the
            # old one still signs every webhook (for the grace period).
            failure = _install.send_handoff(
                self.http, self.signer, target,
                {
                    "kind": "webhook_secret", "webhook_secret": secret, "grace_seconds": grace,
                    "shop_id": int(installation.shop_id), "app_id": str(installation.app_id),
                    "installation_id": int(installation.id),
                },
                message_id=_install.new_message_id("secret", int(installation.id)),
                deadline=self.handoff_deadline,
            )
            if failure is not None:
                log.warning("app %s in shop %s did not take its new webhook secret: %s", app_id, shop_id, failure)
        return secret

    def set_webhook_active(self, *, shop_id: int, app_id: str, name: str, active: bool) -> None:
        """Turn one webhook of an installed app on or off; emits of every process see it from
        the commit on (an inactive webhook gets no delivery, and keeps its deliveries)."""
        if not isinstance(name, str) or not name:
            raise InvalidDataError(f"webhook name must be a non-empty string, got {str(name)[:64]!r}", field="name")
        if not isinstance(active, bool):
            raise InvalidDataError(f"active must be True or False, got {str(active)[:24]!r}", field="active")
        installation = self.get(shop_id, app_id)
        with self.db.atomic():
            changed = AppWebhook.update(is_active=active).where(
                (AppWebhook.installation == installation.id) & (AppWebhook.name == name)
            ).execute(self.db)
            if not changed:
                names = [
                    str(row[0])
                    for row in AppWebhook.select(AppWebhook.name).where(AppWebhook.installation == installation.id)
                    .order_by(AppWebhook.name).tuples().execute(self.db)
                ]
                raise NotFoundError("AppWebhook", f"{name[:64]} of {app_id} in shop {shop_id} (its webhooks: "
                                    f"{', '.join(names) or 'none'})")
            self.subscription_cache.changed(shop_id)
        log.info("turned webhook %s of app %s in shop %s %s", name, app_id, shop_id, "on" if active else "off")

    def subscriptions(self, shop_id: int) -> builtins.list[AppWebhook]:
        """Active webhook subscriptions of one shop (with their installation)."""
        self.ensure_tables()
        return list(
            AppWebhook.select(AppWebhook, AppInstallation)
            .join(AppInstallation)
            .where((AppWebhook.shop_id == shop_id) & (AppWebhook.is_active == True))  # noqa: E712
            .execute(self.db)
        )

    def granted(self, installation: AppInstallation) -> frozenset[Pair]:
        return frozenset(tuple(item.split(":", 1)) for item in json.loads(str(installation.permissions)))


def _installed() -> peewee.Expression:
    """Installations whose install has finished (not pending)."""
    return AppInstallation.id.not_in(AppInstallPending.select(AppInstallPending.installation))


def events_of(webhook: AppWebhook) -> Iterable[str]:
    events: list[str] = json.loads(str(webhook.events))
    return events
