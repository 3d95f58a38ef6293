"""The steps of an install, none of which holds a transaction across the network.

1. ``reserve``: one short transaction writes the installation row and its pending mark; the
   unique index on (shop, app) makes a second install of the same app a conflict.
2. the hand-off to the app's ``token_target_url`` (``send_handoff``), outside any transaction.
3. ``complete``: one short transaction removes the pending mark and writes the token, secret
   and subscriptions. Or ``abandon``, which removes the installation.

A pending installation is invisible: ``list`` and ``get`` skip it, and it has no token to
authenticate with and no subscription to dispatch to. A process that dies between the steps
leaves a pending mark whose lease runs out; ``sweep_abandoned`` then removes it.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec
import peewee

from czo_kit.apps._models import AppInstallation, AppInstallPending, AppSecret, AppToken, AppWebhook
from czo_kit.apps.handoff import HandoffSigner
from czo_kit.apps.inprocess import in_process_target
from czo_kit.apps.manifest import AppManifest
from czo_kit.apps.net import OutboundHTTP
from czo_kit.db.model import utcnow
from czo_kit.errors import ConflictError

__all__ = [
    "HANDOFF_DEADLINE",
    "INSTALL_LEASE",
    "abandon",
    "complete",
    "new_message_id",
    "reserve",
    "send_handoff",
    "sweep_abandoned",
]

HANDOFF_DEADLINE = 30.0
"""Seconds for a whole hand-off, every attempt included."""
INSTALL_LEASE = 120.0
"""Seconds after which a pending install is presumed dead (longer than any hand-off)."""
_ATTEMPTS = 3
_ATTEMPT_DEADLINE = 12.0


def _conflict(db: peewee.Database, shop_id: int, app_id: str) -> ConflictError:
    pending = (
        AppInstallPending.select()
        .join(AppInstallation)
        .where((AppInstallation.shop_id == shop_id) & (AppInstallation.app_id == app_id))
        .exists(db)
    )
    if pending:
        return ConflictError(
            f"app {app_id!r} is being installed in shop {shop_id} right now; try again once that install ends",
            fields=("shop_id", "app_id"),
        )
    return ConflictError(
        f"app {app_id!r} is already installed in shop {shop_id}; uninstall it first", fields=("shop_id", "app_id")
    )


def reserve(
    db: peewee.Database,
    manifest: AppManifest,
    *,
    shop_id: int,
    permissions: list[str],
    installer: str,
    lease: float = INSTALL_LEASE,
) -> AppInstallation:
    """The installation row, pending, committed: the shop's slot for this app is taken."""
    now = utcnow()
    with db.atomic():
        sweep_abandoned(db, now)  # a dead install of this very app must not block a new one
        if (
            AppInstallation.select()
            .where((AppInstallation.shop_id == shop_id) & (AppInstallation.app_id == manifest.id))
            .exists(db)
        ):
            raise _conflict(db, shop_id, manifest.id)
        try:
            with db.atomic():  # two installs racing: the unique index makes the second a conflict
                installation_id = AppInstallation.insert(
                    shop_id=shop_id,
                    app_id=manifest.id,
                    name=manifest.name,
                    version=manifest.version,
                    manifest=manifest.to_json().decode(),
                    permissions=json.dumps(permissions),
                    app_url=manifest.app_url or "",  # none for an in-process app
                    installed_by=installer,
                    installed_at=now,
                ).execute(db)
        except peewee.IntegrityError:
            raise _conflict(db, shop_id, manifest.id) from None
        AppInstallPending.insert(
            installation=installation_id, started_at=now, expires_at=now + dt.timedelta(seconds=lease)
        ).execute(db)
        row: AppInstallation = AppInstallation.select().where(AppInstallation.id == installation_id).get(db)
    return row


def complete(
    db: peewee.Database,
    installation: AppInstallation,
    manifest: AppManifest,
    token_hash: str,
    last4: str,
    secret: str,
    *,
    changed: Callable[[int], None] | None = None,
) -> None:
    """Make a pending installation real, in one transaction; ``ConflictError`` if it was
    abandoned meanwhile (its lease ran out, and the sweep removed it). ``changed(shop_id)``
    is called inside it, once the subscriptions are written."""
    now = utcnow()
    with db.atomic():
        # Deleting the mark is the claim: the sweep deletes marks first too, so exactly one
        # of the two gets each pending installation.
        claimed = AppInstallPending.delete_rows().where(AppInstallPending.installation == installation.id).execute(db)
        if not claimed:
            raise ConflictError(
                f"the install of {installation.app_id!r} in shop {installation.shop_id} was abandoned before it "
                f"finished (it took longer than its lease); nothing was installed: install it again",
                fields=("shop_id", "app_id"),
            )
        AppToken.insert(
            installation=installation.id, token_hash=token_hash, last4=last4, name="default", created_at=now
        ).execute(db)
        AppSecret.insert(installation=installation.id, secret=secret, created_at=now).execute(db)
        for webhook in manifest.webhooks:
            # An in-process app's subscription targets its handlers (a scheme no remote
            # manifest can give); its deliveries are claimed and recorded like any other.
            target = webhook.target_url or in_process_target(manifest.id, webhook.name)
            AppWebhook.insert(
                installation=installation.id, shop_id=installation.shop_id, name=webhook.name,
                events=json.dumps(webhook.events), target_url=target, is_active=webhook.is_active,
            ).execute(db)
        if changed is not None:
            changed(int(installation.shop_id))


def _remove_pending(db: peewee.Database, where: Any) -> int:
    ids = [
        row[0]
        for row in AppInstallPending.delete_rows().where(where).returning(AppInstallPending.installation).tuples().execute(db)
    ]
    if ids:
        AppInstallation.delete_rows().where(AppInstallation.id.in_(ids)).execute(db)
    return len(ids)


def abandon(db: peewee.Database, installation_id: int) -> bool:
    """Remove an install that failed, if it is still pending (never a completed one)."""
    with db.atomic():
        return _remove_pending(db, AppInstallPending.installation == installation_id) > 0


def sweep_abandoned(db: peewee.Database, now: dt.datetime | None = None) -> int:
    """Remove the installs whose process died mid-way (their lease ran out)."""
    with db.atomic():
        return _remove_pending(db, AppInstallPending.expires_at < (now or utcnow()))


def send_handoff(
    http: OutboundHTTP,
    signer: HandoffSigner,
    url: str,
    payload: dict[str, Any],
    *,
    message_id: str,
    deadline: float = HANDOFF_DEADLINE,
) -> str | None:
    """POST a signed hand-off, up to three times within ``deadline``; ``None`` once the app
    answers 2xx, else what went wrong last (for the caller's error)."""
    body = msgspec.json.encode({**payload, "target_url": url})
    ends = time.monotonic() + deadline
    last_error = "no attempt made"
    for attempt in range(_ATTEMPTS):
        remaining = ends - time.monotonic()
        if remaining <= 0:
            return f"{last_error}; gave up after {deadline:g}s"
        # Signed afresh for each attempt (its own timestamp), with the same id: the app
        # accepts an id once, and a retry only follows an attempt it did not accept.
        headers = signer.sign(body, message_id=message_id)
        headers.update({"Content-Type": "application/json", "Idempotency-Key": message_id})
        try:
            # At most _ATTEMPT_DEADLINE each, so that one attempt that hangs leaves time to retry.
            response = http.request(
                "POST", url, body=body, headers=headers, max_bytes=1024,
                deadline=min(remaining, _ATTEMPT_DEADLINE), what="token URL",
            )
        except Exception as exc:  # network errors, refused URLs, the deadline: all retried
            last_error = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= response.status < 300:
                return None
            last_error = f"HTTP {response.status}"
            if response.status < 500 and response.status not in (408, 429):
                return last_error
        if attempt < _ATTEMPTS - 1:
            time.sleep(min(0.2 * (attempt + 1), max(0.0, ends - time.monotonic())))
    return last_error


def new_message_id(kind: str, installation_id: int) -> str:
    """Unique per hand-off, even when row ids come round again (SQLite, after an uninstall)."""
    return f"{kind}-{installation_id}-{secrets.token_hex(16)}"
