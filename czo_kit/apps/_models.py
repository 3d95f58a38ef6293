"""The app system's tables: installations and what hangs off them (tokens, webhook
subscriptions, secrets), installs in progress, and the saved answers of idempotent requests.
Every row of an installation goes with it (``ON DELETE CASCADE``)."""

from __future__ import annotations

import peewee

from czo_kit.db.model import BytesField, KitTable, UTCDateTimeField

__all__ = [
    "APP_MODELS",
    "AppInstallPending",
    "AppInstallation",
    "AppSecret",
    "AppSubscriptionsVersion",
    "AppToken",
    "AppWebhook",
    "IdempotencyKey",
]


class AppInstallation(KitTable):
    id = peewee.BigAutoField()
    shop_id = peewee.IntegerField(index=True)
    app_id = peewee.CharField(max_length=64)
    name = peewee.CharField(max_length=200)
    version = peewee.CharField(max_length=40)
    manifest = peewee.TextField()
    permissions = peewee.TextField()
    app_url = peewee.CharField(max_length=2000)
    installed_by = peewee.CharField(max_length=100)
    installed_at = UTCDateTimeField()

    class Meta:
        table_name = "czo_app_installation"
        indexes = ((("shop_id", "app_id"), True),)


class AppToken(KitTable):
    id = peewee.BigAutoField()
    installation = peewee.ForeignKeyField(AppInstallation, on_delete="CASCADE", backref="tokens")
    token_hash = peewee.CharField(max_length=64, unique=True)
    last4 = peewee.CharField(max_length=4)
    name = peewee.CharField(max_length=100)
    created_at = UTCDateTimeField()
    revoked_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "czo_app_token"


class AppWebhook(KitTable):
    id = peewee.BigAutoField()
    installation = peewee.ForeignKeyField(AppInstallation, on_delete="CASCADE", backref="webhooks")
    shop_id = peewee.IntegerField(index=True)
    name = peewee.CharField(max_length=64)
    events = peewee.TextField()
    target_url = peewee.CharField(max_length=2000)
    is_active = peewee.BooleanField(default=True)

    class Meta:
        table_name = "czo_app_webhook"


class AppSecret(KitTable):
    """Webhook signing secrets; the one without ``expires_at`` is current."""

    id = peewee.BigAutoField()
    installation = peewee.ForeignKeyField(AppInstallation, on_delete="CASCADE", backref="secrets")
    secret = peewee.CharField(max_length=100)
    created_at = UTCDateTimeField()
    expires_at = UTCDateTimeField(null=True)

    class Meta:
        table_name = "czo_app_secret"


class AppInstallPending(KitTable):
    """An install between its two short transactions: the installation row holds the shop's
    slot for the app, but the app has not taken its token yet. Until this row is gone the
    installation is invisible (``list``, ``get``) and has no token, secret or subscription;
    past ``expires_at`` the install is presumed dead and removed by the sweep."""

    installation = peewee.ForeignKeyField(AppInstallation, primary_key=True, on_delete="CASCADE")
    started_at = UTCDateTimeField()
    expires_at = UTCDateTimeField(index=True)

    class Meta:
        table_name = "czo_app_install_pending"


class IdempotencyKey(KitTable):
    """An ``Idempotency-Key`` an app sent with a POST: what the request was (its fingerprint)
    and, once it finished, the answer to replay. Scoped to the installation."""

    id = peewee.BigAutoField()
    installation = peewee.ForeignKeyField(AppInstallation, on_delete="CASCADE")
    key = peewee.CharField(max_length=255)
    fingerprint = peewee.CharField(max_length=64)
    state = peewee.CharField(max_length=16)  # running | done
    lease_until = UTCDateTimeField()
    status = peewee.IntegerField(null=True)
    content_type = peewee.CharField(max_length=200, null=True)
    body = BytesField(null=True)
    created_at = UTCDateTimeField()
    expires_at = UTCDateTimeField(index=True)

    class Meta:
        table_name = "czo_app_idempotency_key"
        indexes = ((("installation", "key"), True),)


class AppSubscriptionsVersion(KitTable):
    """One counter, bumped in the transaction of every change of webhook subscriptions: on
    SQLite, how a process tells those changes from the other writes to the file."""

    id = peewee.IntegerField(primary_key=True)
    version = peewee.BigIntegerField()

    class Meta:
        table_name = "czo_app_subscriptions_version"


APP_MODELS: tuple[type[peewee.Model], ...] = (
    AppInstallation, AppToken, AppWebhook, AppSecret, AppInstallPending, IdempotencyKey, AppSubscriptionsVersion,
)
