"""The app registry on SQLite and PostgreSQL: install / uninstall / list / get, permissions
checked at install, atomic installs, shop isolation, app tokens and webhook secrets (with a
real consumer and a real receiver on loopback where webhooks are involved)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import standardwebhooks

from apps_support import (
    OWNER,
    Receiver,
    Reply,
    Request,
    app_settings,
    manifest,
    raw_rows,
    reset_app_tables,
    wait_for,
)
from czo_kit import Kit, hookimpl
from czo_kit.apps import AppPermissionChecker, InstallResult, verify_handoff, verify_signature
from czo_kit.apps.permissions import PermissionRegistry
from czo_kit.apps.registry import TOKEN_PREFIX
from czo_kit.errors import (
    AuthenticationError,
    ConflictError,
    ManifestError,
    NotFoundError,
    PermissionDeniedError,
    WebhookSignatureError,
)
from czo_kit.http import require_app
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]
APP_ROW_TABLES = ("czo_app_installation", "czo_app_token", "czo_app_webhook", "czo_app_secret")


class ExtraRoles:
    """Roles the tests need besides owner and viewer."""

    @hookimpl
    def czo_register_permissions(self, register: PermissionRegistry) -> None:
        register.role("app_admin", {"apps": ["manage", "read"], "order": ["read"]})
        register.role("order_clerk", {"order": ["read", "write"], "customer": ["read"]})


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def settings(db_url: str, settings_for: SettingsFor, tmp_path: Any) -> Settings:
    return app_settings(settings_for, db_url, str(tmp_path))


@pytest.fixture
def kit(settings: Settings) -> Iterator[Kit]:
    reset_app_tables(settings.database_url)
    with Kit(settings, plugins=[ExtraRoles()]) as kit:
        kit.create_tables()
        kit.webhooks.ensure_tables()
        kit.permission_service.grant(OWNER, 1, "owner")
        kit.permission_service.grant(OWNER, 2, "owner")
        yield kit


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def install(kit: Kit, base: str, *, shop_id: int = 1, user: str = OWNER, **options: Any) -> InstallResult:
    return kit.apps.install(shop_id=shop_id, installer_id=user, manifest=manifest(base, **options))


def counts(kit: Kit) -> dict[str, int]:
    return {table: len(raw_rows(kit, table)) for table in APP_ROW_TABLES}


NOTHING = dict.fromkeys(APP_ROW_TABLES, 0)


# -- install, list, get, uninstall ------------------------------------------------------------


def test_install_list_get_uninstall(kit: Kit, receiver: Receiver) -> None:
    result = install(kit, receiver.url)
    assert result.app_id == "acme"
    row = result.installation
    assert (row.shop_id, row.app_id, row.name, row.version, row.installed_by) == (1, "acme", "Acme app", "1.0.0", OWNER)
    assert json.loads(row.permissions) == ["order:read", "order:write"]
    assert [a.app_id for a in kit.apps.list(1)] == ["acme"]
    assert kit.apps.get(1, "acme").id == row.id
    assert kit.apps.manifest_of(kit.apps.get(1, "acme")).webhooks[0].target_url == receiver.url + "/hook"
    second = kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url, app_id="beta"))
    assert [a.app_id for a in kit.apps.list(1)] == ["acme", "beta"]  # oldest first
    assert counts(kit) == {
        "czo_app_installation": 2, "czo_app_token": 2, "czo_app_webhook": 2, "czo_app_secret": 2,
    }

    kit.apps.uninstall(shop_id=1, app_id="acme")
    assert [a.app_id for a in kit.apps.list(1)] == ["beta"]
    with pytest.raises(NotFoundError):
        kit.apps.get(1, "acme")
    with pytest.raises(NotFoundError):
        kit.apps.uninstall(shop_id=1, app_id="acme")
    # Its tokens, secrets and subscriptions went with it.
    assert counts(kit) == dict.fromkeys(APP_ROW_TABLES, 1)
    assert kit.apps.authenticate(second.token).app_id == "beta"


def test_reinstalling_is_a_conflict_and_leaves_the_first_install_alone(kit: Kit, receiver: Receiver) -> None:
    first = install(kit, receiver.url)
    with pytest.raises(ConflictError) as info:
        install(kit, receiver.url)
    assert "already installed in shop 1; uninstall it first" in str(info.value)
    assert counts(kit) == dict.fromkeys(APP_ROW_TABLES, 1)
    assert kit.apps.authenticate(first.token).installation_id == first.installation.id
    kit.apps.uninstall(shop_id=1, app_id="acme")
    again = install(kit, receiver.url)
    assert again.token != first.token
    with pytest.raises(AuthenticationError):
        kit.apps.authenticate(first.token)


def test_install_needs_exactly_one_manifest_source_and_a_valid_shop(kit: Kit, receiver: Receiver) -> None:
    with pytest.raises(ManifestError):
        kit.apps.install(shop_id=1, installer_id=OWNER)
    with pytest.raises(ManifestError):
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(receiver.url), manifest_url="http://x/")
    for shop in (0, -1, True, "1", 1.0, 2**31, 2**70):
        with pytest.raises(ManifestError) as info:
            kit.apps.install(shop_id=shop, installer_id=OWNER, manifest=manifest(receiver.url))  # type: ignore[arg-type]
        assert info.value.path == "shopId"
    assert counts(kit) == NOTHING


# -- permissions ------------------------------------------------------------------------------


def test_an_installer_missing_a_permission_is_refused_with_the_list(kit: Kit, receiver: Receiver) -> None:
    kit.permission_service.grant("ann", 1, "app_admin")  # apps:manage and order:read only
    perms = [
        {"resource": "order", "actions": ["read", "write"]},
        {"resource": "customer", "actions": ["read"]},
    ]
    with pytest.raises(PermissionDeniedError) as info:
        install(kit, receiver.url, user="ann", permissions=perms)
    assert info.value.missing == ("customer:read", "order:write")
    assert "customer:read, order:write" in str(info.value)
    assert counts(kit) == NOTHING
    # What ann holds is enough for an app asking no more.
    install(kit, receiver.url, user="ann", permissions=[{"resource": "order", "actions": ["read"]}])
    assert [a.installed_by for a in kit.apps.list(1)] == ["ann"]


def test_no_app_can_get_apps_manage(kit: Kit, receiver: Receiver) -> None:
    for asked in (
        [{"resource": "apps", "actions": ["manage"]}],
        [{"resource": "apps", "actions": ["*"]}],
        [{"resource": "*", "actions": ["*"]}],
        [{"resource": "*", "actions": ["manage"]}],
        [{"resource": "order", "actions": ["read"]}, {"resource": "apps", "actions": ["read", "manage"]}],
    ):
        with pytest.raises(PermissionDeniedError) as info:
            install(kit, receiver.url, permissions=asked)  # the owner holds *:*
        assert info.value.missing == ("apps:manage",)
        assert "never" in str(info.value)
    assert counts(kit) == NOTHING


def test_unknown_resources_and_actions_are_refused(kit: Kit, receiver: Receiver) -> None:
    for asked, named in (
        ([{"resource": "wallet", "actions": ["read"]}], "wallet:read"),
        ([{"resource": "order", "actions": ["delete"]}], "order:delete"),
    ):
        with pytest.raises(ManifestError) as info:
            install(kit, receiver.url, permissions=asked)
        assert info.value.path == "$.permissions"
        assert f"unknown permissions {named}" in str(info.value)
        assert "order:read|write" in str(info.value)  # what is declared
    assert counts(kit) == NOTHING


def test_an_installer_without_apps_manage_is_refused(kit: Kit, receiver: Receiver) -> None:
    kit.permission_service.grant("clerk", 1, "order_clerk")  # holds all the app asks, not apps:manage
    kit.permission_service.grant("viewer", 1, "viewer")
    for user in ("clerk", "viewer", "stranger"):
        with pytest.raises(PermissionDeniedError) as info:
            install(kit, receiver.url, user=user)
        assert info.value.missing == ("apps:manage",)
    # Owner of shop 1 is nobody in shop 3.
    with pytest.raises(PermissionDeniedError):
        install(kit, receiver.url, shop_id=3)
    assert counts(kit) == NOTHING


def test_webhook_events_must_be_covered_by_the_apps_permissions(kit: Kit, receiver: Receiver) -> None:
    # The manifest contradicts itself, whoever installs it: a manifest error naming the event.
    with pytest.raises(ManifestError) as info:
        install(kit, receiver.url, permissions=[{"resource": "customer", "actions": ["read"]}])
    assert info.value.path == "$.webhooks[0].events[0]"
    assert "'order.created', which needs order:read" in str(info.value)
    # An undeclared event needs read on its first name segment.
    with pytest.raises(ManifestError) as info:
        install(kit, receiver.url, events=["order.created", "product.created"])
    assert info.value.path == "$.webhooks[0].events[1]"
    assert "needs product:read" in str(info.value)
    assert counts(kit) == NOTHING
    install(kit, receiver.url, permissions=[{"resource": "order", "actions": ["read"]}])


def test_extension_permissions_beyond_the_apps_are_refused(kit: Kit, receiver: Receiver) -> None:
    extension = {
        "label": "Customer card",
        "mount": "ORDER_DETAILS",
        "url": receiver.url + "/ext",
        "permissions": [{"resource": "customer", "actions": ["read"]}],
    }
    with pytest.raises(ManifestError) as info:
        install(kit, receiver.url, extensions=[extension])
    assert info.value.path == "$.extensions[0].permissions"
    assert "customer:read" in str(info.value)
    assert counts(kit) == NOTHING


def test_app_permission_checker(kit: Kit, receiver: Receiver) -> None:
    result = install(kit, receiver.url, permissions=[{"resource": "order", "actions": ["read"]}])
    principal = kit.apps.authenticate(result.token)
    checker = AppPermissionChecker()
    assert checker.has(principal, "order", "read")
    assert checker.has(principal, "order", "read", shop_id=1)
    assert not checker.has(principal, "order", "read", shop_id=2)
    assert not checker.has(principal, "order", "write", shop_id=1)
    assert not checker.has(principal, "apps", "manage", shop_id=1)
    assert principal.permissions == frozenset({("order", "read")})


# -- atomic install and the token target ------------------------------------------------------


def test_a_failing_token_target_installs_nothing(kit: Kit) -> None:
    with Receiver(lambda request: Reply(503, b"down")) as app:
        with pytest.raises(ManifestError) as info:
            install(kit, app.url, token_target=True)
        posts = app.posts("/token")
    assert info.value.path == "$.token_target_url"
    assert "HTTP 503" in str(info.value) and "nothing was installed" in str(info.value)
    assert counts(kit) == NOTHING
    assert kit.apps.list(1) == []
    # Retried, each time with the same Idempotency-Key and the same token.
    assert len(posts) == 3
    assert len({p.headers["idempotency-key"] for p in posts}) == 1
    assert len({p.json()["auth_token"] for p in posts}) == 1
    with pytest.raises(AuthenticationError):  # the token the app saw is worth nothing
        kit.apps.authenticate(posts[0].json()["auth_token"])


def test_a_refused_token_is_not_retried(kit: Kit) -> None:
    with Receiver(lambda request: Reply(400, b"no")) as app:
        with pytest.raises(ManifestError):
            install(kit, app.url, token_target=True)
        assert len(app.posts("/token")) == 1
    assert counts(kit) == NOTHING


def test_an_unreachable_token_target_installs_nothing(kit: Kit) -> None:
    receiver = Receiver().start()
    base = receiver.url
    receiver.stop()  # the port is closed now
    with pytest.raises(ManifestError) as info:
        install(kit, base, token_target=True)
    assert info.value.path == "$.token_target_url"
    assert counts(kit) == NOTHING


def test_the_token_target_gets_the_token_and_retries_carry_the_same_key(kit: Kit) -> None:
    answers = iter([Reply(502), Reply(200)])
    with Receiver(lambda request: next(answers)) as app:
        result = install(kit, app.url, token_target=True)
        posts = app.posts("/token")
    assert len(posts) == 2
    first, second = posts
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.headers["idempotency-key"].startswith(f"install-{result.installation.id}-")
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == first.headers["idempotency-key"]
    assert first.body == second.body
    for post in posts:  # each attempt signed by the kit, verifiable with its public key
        assert verify_handoff(post.body, post.headers, kit.apps.public_key)
    payload = first.json()
    assert payload == {
        "kind": "install",
        "target_url": app.url + "/token",
        "auth_token": result.token,
        "webhook_secret": result.webhook_secret,
        "shop_id": 1,
        "app_id": "acme",
        "installation_id": result.installation.id,
    }
    assert first.headers["content-type"] == "application/json"
    assert kit.apps.authenticate(payload["auth_token"]).app_id == "acme"


def test_each_install_has_its_own_idempotency_key(kit: Kit) -> None:
    with Receiver() as app:
        install(kit, app.url, token_target=True)
        kit.apps.uninstall(shop_id=1, app_id="acme")
        install(kit, app.url, token_target=True)  # SQLite may hand out the same row id again
        install(kit, app.url, shop_id=2, token_target=True)
        keys = [p.headers["idempotency-key"] for p in app.posts("/token")]
    assert len(keys) == 3 and len(set(keys)) == 3


# -- no transaction across the network -------------------------------------------------------


def _write_from_another_connection(kit: Kit) -> None:
    """A write by another connection, as another process would make it, during an install.

    SQLite: taking the write lock at all (BEGIN IMMEDIATE) fails while any transaction holds it.
    PostgreSQL: SHARE locks on the app tables conflict with every open transaction that wrote
    to them, and inserting the shop's slot for the same app waits for an uncommitted insert of
    it (lock_timeout turns that wait into an error) but fails at once on a committed one.
    """
    url = kit.settings.database_url
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=2.0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")  # "database is locked" while the install held it
            conn.execute(
                "INSERT INTO shop_members (user_id, shop_id, role, created_at) VALUES ('probe', 9, 'viewer', '2026-01-01')"
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        return
    import psycopg2
    import psycopg2.errors

    from czo_kit.default_plugins.postgres import parse_postgresql_url

    dbname, params = parse_postgresql_url(url)
    conn = psycopg2.connect(dbname=dbname, **params)
    try:
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = '3s'")
            cur.execute(
                "LOCK TABLE czo_app_installation, czo_app_token, czo_app_secret, czo_app_webhook IN SHARE MODE NOWAIT"
            )
            conn.rollback()
            cur.execute("SET lock_timeout = '3s'")
            cur.execute("INSERT INTO shop_members (user_id, shop_id, role, created_at) VALUES ('probe', 9, 'viewer', now())")
            conn.commit()
            with pytest.raises(psycopg2.errors.UniqueViolation):  # not LockNotAvailable: nothing to wait for
                cur.execute(
                    "INSERT INTO czo_app_installation (shop_id, app_id, name, version, manifest, permissions, "
                    "app_url, installed_by, installed_at) VALUES (1, 'acme', 'x', '1', '{}', '[]', 'http://x/', 'p', now())"
                )
            conn.rollback()
    finally:
        conn.close()


def test_a_hanging_token_target_holds_no_lock_and_the_failed_install_leaves_no_trace(kit: Kit) -> None:
    release = threading.Event()

    def script(request: Request) -> Reply:
        if request.path == "/token":
            release.wait(timeout=120)  # hangs until the test has looked (a guard, not a pace)
            return Reply(504, b"gave up")
        return Reply()

    failures: list[BaseException] = []

    def installing() -> None:
        try:
            install(kit, app.url, token_target=True)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            failures.append(exc)

    with Receiver(script) as app:
        thread = threading.Thread(target=installing)
        thread.start()
        try:
            wait_for(lambda: len(app.posts("/token")) == 1, what="the token hand-off to start")
            handed = app.posts("/token")[0].json()
            # Half-done: invisible to listing, lookups, tokens and webhook dispatch.
            assert kit.apps.list(1) == []
            with pytest.raises(NotFoundError):
                kit.apps.get(1, "acme")
            with pytest.raises(AuthenticationError):
                kit.apps.authenticate(handed["auth_token"])
            assert kit.apps.subscriptions(1) == []
            assert kit.webhooks.on_event(SimpleNamespace(name="order.created"), {"shop_id": 1, "id": 5}) is None  # type: ignore[arg-type]
            # Another connection writes meanwhile, and a second install is refused at once.
            _write_from_another_connection(kit)
            with pytest.raises(ConflictError, match="being installed"):
                install(kit, app.url)
        finally:
            release.set()
            thread.join(timeout=120)
    assert len(failures) == 1 and isinstance(failures[0], ManifestError), failures
    assert "HTTP 504" in str(failures[0])
    assert counts(kit) == NOTHING
    assert raw_rows(kit, "czo_app_install_pending") == []
    assert install(kit, app.url).app_id == "acme"  # nothing left behind blocks a new install


CRASHING_INSTALL = """
import sys
from czo_kit import Kit
from czo_kit.settings import Settings

sys.path.insert(0, sys.argv[3])
from apps_support import OWNER, manifest

kit = Kit(Settings(database_url=sys.argv[1], secret_key="k" * 40, apps_allow_private_urls=True, queue_url=""))
kit.apps.install_lease = 1.0
kit.apps.install(shop_id=1, installer_id=OWNER, manifest=manifest(sys.argv[2], token_target=True))
"""


def test_an_install_whose_process_dies_mid_hand_off_leaves_nothing_usable_and_is_cleaned_up(
    kit: Kit, tmp_path: Any
) -> None:
    import os
    import signal
    import subprocess
    import sys

    script = tmp_path / "crashing_install.py"
    script.write_text(CRASHING_INSTALL)
    held = threading.Event()
    with Receiver(lambda request: (held.wait(timeout=120), Reply())[1]) as app:
        child = subprocess.Popen(
            [sys.executable, str(script), kit.settings.database_url, app.url, os.path.dirname(__file__)],
            env={k: v for k, v in os.environ.items() if not k.startswith("CZO_")},
        )
        try:
            wait_for(lambda: len(app.posts("/token")) == 1, timeout=60, what="the child's hand-off")
            handed = app.posts("/token")[0].json()
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        finally:
            held.set()
            if child.poll() is None:
                child.kill()
                child.wait(timeout=30)
    # Nothing usable: no listing, no token, no webhook; the shop's slot is held until the lease ends.
    assert kit.apps.list(1) == []
    with pytest.raises(AuthenticationError):
        kit.apps.authenticate(handed["auth_token"])
    assert counts(kit)["czo_app_token"] == counts(kit)["czo_app_secret"] == counts(kit)["czo_app_webhook"] == 0
    # The worker's sweep removes it once its lease (1 s here) has run out.
    removed: list[int] = []
    wait_for(lambda: removed.append(kit.webhooks.sweep()["abandoned_installs"]) or sum(removed) == 1,
             what="the sweep to remove the dead install")
    assert counts(kit) == NOTHING and raw_rows(kit, "czo_app_install_pending") == []
    with Receiver() as app:
        assert install(kit, app.url, token_target=True).app_id == "acme"


# -- shops are isolated -----------------------------------------------------------------------


def test_an_app_in_shop_a_sees_nothing_of_shop_b(kit: Kit, receiver: Receiver) -> None:
    result = install(kit, receiver.url, shop_id=1)
    principal = kit.apps.authenticate(result.token)
    assert principal.shop_id == 1
    assert kit.apps.list(2) == []
    with pytest.raises(NotFoundError):
        kit.apps.get(2, "acme")
    with pytest.raises(NotFoundError):
        kit.apps.create_token(shop_id=2, app_id="acme")
    with pytest.raises(NotFoundError):
        kit.apps.revoke_token(shop_id=2, app_id="acme", token_id=principal.token_id)
    with pytest.raises(NotFoundError):
        kit.apps.uninstall(shop_id=2, app_id="acme")

    request = SimpleNamespace(context=SimpleNamespace(app=principal, user=None))
    assert require_app(request, "order", "write", shop_id=1) == principal  # type: ignore[arg-type]
    with pytest.raises(PermissionDeniedError) as info:
        require_app(request, "order", "read", shop_id=2)  # type: ignore[arg-type]
    assert "not installed in shop 2" in str(info.value)
    with pytest.raises(PermissionDeniedError) as info:
        require_app(request, "customer", "read", shop_id=1)  # type: ignore[arg-type]
    assert info.value.missing == ("customer:read",)

    with kit.consumer(workers=2, sweep_interval=0.5):
        kit.events.emit_async("order.created", {"shop_id": 2, "id": 20, "total": 5})
        kit.events.emit_async("order.created", {"shop_id": 1, "id": 10, "total": 5})
        kit.events.emit_async("order.created", {"id": 30, "total": 5})  # no shop: no app hears it
        wait_for(lambda: len(receiver.posts("/hook")) >= 1, what="shop 1's webhook")
        wait_for(lambda: kit.webhooks.stats(delivered=True) == {"delivered": 1}, what="the delivery to settle")
    posts = receiver.posts("/hook")
    assert [p.json()["data"]["id"] for p in posts] == [10]
    assert posts[0].headers["x-czo-shop-id"] == "1"
    assert kit.webhooks.deliveries(shop_id=2) == []


def test_the_same_app_in_two_shops_is_two_separate_installations(kit: Kit, receiver: Receiver) -> None:
    one = install(kit, receiver.url, shop_id=1)
    two = install(kit, receiver.url, shop_id=2)
    assert one.token != two.token and one.webhook_secret != two.webhook_secret
    assert kit.apps.authenticate(two.token).shop_id == 2
    with kit.consumer(workers=2, sweep_interval=0.5):
        kit.events.emit_async("order.created", {"shop_id": 2, "id": 21, "total": 5})
        wait_for(lambda: kit.webhooks.stats(delivered=True) == {"delivered": 1}, what="shop 2's webhook")
    [post] = receiver.posts("/hook")
    assert post.headers["x-czo-shop-id"] == "2"
    assert verify_signature(post.body, post.headers["x-czo-signature"], two.webhook_secret)
    with pytest.raises(WebhookSignatureError):
        verify_signature(post.body, post.headers["x-czo-signature"], one.webhook_secret)
    kit.apps.uninstall(shop_id=1, app_id="acme")
    assert kit.apps.authenticate(two.token).shop_id == 2


# -- tokens -----------------------------------------------------------------------------------


def test_tokens_are_random_prefixed_and_stored_only_hashed(kit: Kit, receiver: Receiver) -> None:
    result = install(kit, receiver.url)
    token = result.token
    assert token.startswith(TOKEN_PREFIX) and TOKEN_PREFIX == "czo_app_"
    secret_part = token[len(TOKEN_PREFIX):]
    assert len(base64.urlsafe_b64decode(secret_part + "=" * (-len(secret_part) % 4))) >= 32
    [row] = raw_rows(kit, "czo_app_token")
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert row["last4"] == token[-4:]
    assert row["revoked_at"] is None
    for table in APP_ROW_TABLES:
        dumped = repr(raw_rows(kit, table))
        assert secret_part not in dumped and secret_part[:12] not in dumped
    others = {kit.apps.create_token(shop_id=1, app_id="acme")[1] for _ in range(20)}
    assert len(others | {token}) == 21


def test_several_tokens_and_revocation_at_once(kit: Kit, receiver: Receiver) -> None:
    first = install(kit, receiver.url)
    second_id, second = kit.apps.create_token(shop_id=1, app_id="acme", name="ci")
    third_id, third = kit.apps.create_token(shop_id=1, app_id="acme", name="backup")
    principals = [kit.apps.authenticate(t) for t in (first.token, second, third)]
    assert {p.installation_id for p in principals} == {first.installation.id}
    assert [p.token_id for p in principals][1:] == [second_id, third_id]
    assert [t.name for t in kit.apps.tokens(shop_id=1, app_id="acme")] == ["default", "ci", "backup"]

    kit.apps.revoke_token(shop_id=1, app_id="acme", token_id=second_id)
    with pytest.raises(AuthenticationError):
        kit.apps.authenticate(second)  # at once: nothing is cached
    assert kit.apps.authenticate(first.token).token_id == principals[0].token_id
    assert kit.apps.authenticate(third).token_id == third_id
    with pytest.raises(NotFoundError):
        kit.apps.revoke_token(shop_id=1, app_id="acme", token_id=second_id)  # already revoked
    revoked = [row for row in raw_rows(kit, "czo_app_token") if row["id"] == second_id]
    assert revoked[0]["revoked_at"] is not None

    other = install(kit, receiver.url, app_id="other")
    other_token_id = kit.apps.authenticate(other.token).token_id
    with pytest.raises(NotFoundError):  # a token of another app
        kit.apps.revoke_token(shop_id=1, app_id="acme", token_id=other_token_id)
    assert kit.apps.authenticate(other.token).app_id == "other"

    kit.apps.uninstall(shop_id=1, app_id="acme")
    for token in (first.token, third):
        with pytest.raises(AuthenticationError):
            kit.apps.authenticate(token)


def test_a_token_is_shown_once(kit: Kit, receiver: Receiver) -> None:
    result = install(kit, receiver.url)
    [row] = kit.apps.tokens(shop_id=1, app_id="acme")
    assert not any(result.token in str(value) for value in row.__data__.values())
    assert row.last4 == result.token[-4:]


HOSTILE_TOKENS: list[Any] = [
    "",
    None,
    12345,
    b"czo_app_" + b"a" * 43,
    "czo_app_",
    "czo_app_short",
    "czo_user_" + "a" * 43,
    "czo_App_" + "a" * 43,
    "Bearer czo_app_" + "a" * 43,
    "x" * 10240,
    "czo_app_" + "a" * 10240,
    "czo_app_ünïcødé-tökén-" + "é" * 30,
    "czo_app_' OR '1'='1' --" + "a" * 30,
    "czo_app_%' OR token_hash LIKE '%" + "a" * 20,
    "czo_app_\x00" + "a" * 42,
    "czo_app_" + "🙂" * 40,
]


def test_hostile_tokens_are_refused(kit: Kit, receiver: Receiver) -> None:
    install(kit, receiver.url)
    for token in HOSTILE_TOKENS:
        with pytest.raises(AuthenticationError):
            kit.apps.authenticate(token)


def test_near_misses_of_a_real_token_are_refused(kit: Kit, receiver: Receiver) -> None:
    token = install(kit, receiver.url).token
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    for variant in (flipped, token + " ", " " + token, token + "\n", token.upper(), token[:-1], token + "a"):
        with pytest.raises(AuthenticationError):
            kit.apps.authenticate(variant)
    assert kit.apps.authenticate(token).app_id == "acme"


# -- webhook secrets --------------------------------------------------------------------------


def test_each_installation_gets_its_own_whsec_secret(kit: Kit, receiver: Receiver) -> None:
    one = install(kit, receiver.url)
    two = install(kit, receiver.url, shop_id=2)
    for result in (one, two):
        assert result.webhook_secret.startswith("whsec_")
        assert len(base64.b64decode(result.webhook_secret[len("whsec_"):], validate=True)) == 32
        assert kit.apps.secrets_for(int(result.installation.id)) == [result.webhook_secret]
    assert one.webhook_secret != two.webhook_secret


def _signatures(request: Request) -> list[str]:
    return [part for part in request.headers["x-czo-signature"].split(",") if part.startswith("v1=")]


def test_rotation_signs_with_both_secrets_during_the_grace_period(kit: Kit, receiver: Receiver) -> None:
    result = install(kit, receiver.url)
    old = result.webhook_secret
    installation_id = int(result.installation.id)
    with kit.consumer(workers=2, sweep_interval=0.5):
        new = kit.apps.rotate_webhook_secret(shop_id=1, app_id="acme", grace=60)
        assert new != old and new.startswith("whsec_")
        assert kit.apps.secrets_for(installation_id) == [new, old]  # the current one first
        kit.events.emit_async("order.created", {"shop_id": 1, "id": 1, "total": 5})
        wait_for(lambda: len(receiver.posts("/hook")) == 1, what="the webhook during the grace period")
        during = receiver.posts("/hook")[0]
        assert len(_signatures(during)) == 2
        for secret in (new, old):
            assert verify_signature(during.body, during.headers["x-czo-signature"], secret)
            standardwebhooks.Webhook(secret).verify(during.body, during.headers)
        assert len(during.headers["webhook-signature"].split(" ")) == 2

        assert len(during.headers["webhook-signature"].split(" ")) == 2
    stripe_check(during, new)
    stripe_check(during, old)


def stripe_check(request: Request, secret: str) -> None:
    import stripe

    assert stripe.WebhookSignature.verify_header(
        request.body.decode(), request.headers["x-czo-signature"], secret, tolerance=300
    )


def test_after_the_grace_period_only_the_new_secret_signs(kit: Kit, receiver: Receiver) -> None:
    result = install(kit, receiver.url)
    old = result.webhook_secret
    installation_id = int(result.installation.id)
    new = kit.apps.rotate_webhook_secret(shop_id=1, app_id="acme", grace=0.5)
    assert kit.apps.secrets_for(installation_id) == [new, old]
    wait_for(lambda: kit.apps.secrets_for(installation_id) == [new], timeout=5, what="the grace period to end")
    with kit.consumer(workers=2, sweep_interval=0.5):
        kit.events.emit_async("order.created", {"shop_id": 1, "id": 1, "total": 5})
        wait_for(lambda: len(receiver.posts("/hook")) == 1, what="the webhook")
    post = receiver.posts("/hook")[0]
    assert len(_signatures(post)) == 1
    assert verify_signature(post.body, post.headers["x-czo-signature"], new)
    standardwebhooks.Webhook(new).verify(post.body, post.headers)
    with pytest.raises(WebhookSignatureError):
        verify_signature(post.body, post.headers["x-czo-signature"], old)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(old).verify(post.body, post.headers)
    # Rotating again drops secrets whose grace is over.
    kit.apps.rotate_webhook_secret(shop_id=1, app_id="acme", grace=30)
    assert old not in [row["secret"] for row in raw_rows(kit, "czo_app_secret")]


def test_rotating_the_secret_of_an_unknown_app(kit: Kit) -> None:
    with pytest.raises(NotFoundError):
        kit.apps.rotate_webhook_secret(shop_id=1, app_id="ghost")
