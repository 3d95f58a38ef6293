"""``czo-kit demo``: a guided run of the kit with the example modules, printed as a report.

A plugin of its own (entry point ``czo_demo``, shipped with the order module, which already
needs the product module): the kit itself names no module, so the demo adds its command
through ``czo_register_commands`` like any third party. It runs on a fresh SQLite file in a
temporary directory unless given a database URL, so it needs no server and leaves nothing
behind.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import click

from czo_kit import hookimpl
from czo_kit.errors import ConflictError, CzoError, OptimisticLockError

__all__ = ["czo_register_commands", "run_demo"]

Echo = Callable[[str], Any]


class _Report:
    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self.started = time.perf_counter()

    def section(self, title: str) -> None:
        self.echo("")
        self.echo(f"== {title}")

    def line(self, text: str) -> None:
        self.echo(f"   {text}")

    def ok(self, text: str) -> None:
        self.echo(f"   ok  {text}")


def _tail(cursor: str | None) -> str:
    # Cursors share a leading header (format, sort order); their ends tell them apart.
    return f"..{cursor[-12:]}" if cursor else "-"


@hookimpl
def czo_register_commands(cli: click.Group) -> None:
    @cli.command("demo")
    @click.option(
        "--database-url",
        default=None,
        help="Database to run the demo on (default: a fresh SQLite file in a temporary directory).",
    )
    def demo_command(database_url: str | None) -> None:
        """Walk through the kit with the example modules, on an embedded database, and report."""
        run_demo(database_url=database_url, echo=click.echo)


def run_demo(*, database_url: str | None = None, echo: Echo = print) -> None:
    """Run the demo; raises ``CzoError`` if the example plugins are not installed."""
    with tempfile.TemporaryDirectory(prefix="czo-demo-") as tmp:
        url = database_url or f"sqlite:///{os.path.join(tmp, 'czo-demo.sqlite3')}"
        queue = f"sqlite:///{os.path.join(tmp, 'czo-demo-queue.sqlite3')}"
        _run(url, queue, _Report(echo))


def _run(url: str, queue_url: str, report: _Report) -> None:
    from czo_kit.kit import Kit
    from czo_kit.plugins import describe_plugins
    from czo_kit.settings import Settings

    settings = Settings.from_env(
        database_url=url,
        queue_url=queue_url,
        cache_url="memory://",
        events_retry_base=0.5,
        apps_allow_private_urls=True,  # the demo's app runs on 127.0.0.1
        secret_key=os.environ.get("CZO_SECRET_KEY") or "demo-" + "x" * 40,
    )
    report.echo("czo-kit demo")
    with Kit(settings) as kit:
        report.section("Plugins")
        for info in describe_plugins(kit):
            what = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(info.registers.items()) if v)
            report.line(f"{info.name:<36} {what}")
        try:
            from czo_product import Product, ProductRepository
        except ImportError:
            raise CzoError(
                "the demo needs the example modules; install them with: "
                "pip install ./plugins/czo-product"
            ) from None
        if "czo_product" not in kit.models:
            raise CzoError(
                "the czo_product plugin is installed but not loaded "
                "(check CZO_PLUGINS and CZO_DISABLE_PLUGINS)"
            )

        report.section(f"Database ({url.split('://', 1)[0]})")
        for module, actions in kit.create_tables().items():
            report.ok(f"{module}: {'; '.join(actions) or 'up to date'}")

        products = kit.services.get_abstract(ProductRepository)
        report.line(f"repository from the service registry: {products!r}")
        shop = 1

        report.section("Create")
        first = products.create({"shop_id": shop, "name": "Espresso cup", "price": 900})
        report.ok(f"created #{first.id} {first.name!r}: slug {first.slug!r} set by a before-hook, version {first.version}")
        rows = products.create_many(
            [{"shop_id": shop, "name": f"Mug {n}", "price": 1000 + 150 * n} for n in range(1, 25)]
        )
        report.ok(f"create_many: {len(rows)} products in one INSERT ... RETURNING (ids {rows[0].id}-{rows[-1].id})")
        products.create({"shop_id": 2, "name": "Other shop's teapot", "price": 3000})
        report.ok(f"shop {shop} has {products.count({'shop_id': shop})} products; all shops {products.count()}")

        report.section("Offset pagination (page 2, 5 per page, cheapest first)")
        page = products.find_many({"shop_id": shop}, order_by="price", limit=5, offset=5)
        report.line(", ".join(f"{p.name} {p.price / 100:.2f}" for p in page.items))
        report.ok(f"total={page.total} has_prev={page.has_prev} has_next={page.has_next}")

        report.section("Cursor pagination (most expensive first, 7 per page)")
        cursor = None
        seen = 0
        number = 0
        while True:
            page = products.find_many(
                {"shop_id": shop, "price__gte": 1000}, order_by="-price", limit=7, cursor=cursor
            )
            number += 1
            seen += len(page.items)
            report.line(
                f"page {number}: {page.items[0].price / 100:.2f} .. {page.items[-1].price / 100:.2f} "
                f"({len(page.items)} rows) next_cursor={_tail(page.next_cursor)}"
            )
            if not page.has_next:
                break
            cursor = page.next_cursor
        back = products.find_many(
            {"shop_id": shop, "price__gte": 1000}, order_by="-price", limit=7, cursor=page.prev_cursor
        )
        report.ok(f"{seen} rows, each once; prev_cursor goes back to {back.items[0].price / 100:.2f} ..")
        try:
            products.find_many(order_by="name", cursor=cursor)
        except CzoError as exc:
            report.ok(f"a cursor reused with another order is refused: {exc}")

        report.section("Optimistic locking")
        current = products.get_by_id(first.id)
        updated = products.update(first.id, {"price": 950}, expected_version=current.version)
        report.ok(f"price 9.00 -> 9.50 with expected_version={current.version}: now version {updated.version}")
        try:
            products.update(first.id, {"price": 990}, expected_version=current.version)
        except OptimisticLockError as exc:
            report.ok(f"a stale writer is refused: {exc}")

        report.section("Soft delete and restore")
        deleted = products.delete(first.id)
        report.ok(f"deleted #{deleted.id}: find_by_id -> {products.find_by_id(first.id)}, "
                  f"with_deleted -> {products.find_by_id(first.id, with_deleted=True)!r}")
        report.ok(f"only_deleted count: {products.count(only_deleted=True)}")
        twin = products.create({"shop_id": shop, "name": "Espresso cup", "price": 1200})
        report.ok(f"slug {twin.slug!r} reused by a new product #{twin.id} while #{first.id} is deleted")
        try:
            products.restore(first.id)
        except ConflictError as exc:
            report.ok(f"restore refused: {exc}")
        products.hard_delete(twin.id)
        restored = products.restore(first.id)
        report.ok(f"after removing #{twin.id}, #{restored.id} is restored (version {restored.version})")

        report.section("Composition")
        found = products.find_by_slug(shop, "mug-3")
        report.ok(f"find_by_slug(1, 'mug-3') -> #{found.id if found else None}, an extra function composed with |")

        _events_part(kit, products, report)
        _apps_part(kit, products, report)

        elapsed = time.perf_counter() - report.started
        report.section(f"Done in {elapsed:.2f}s")


def _wait(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def _events_part(kit: Any, products: Any, report: _Report) -> None:
    """Hooks, sync events, and async events through the queue, with the order module."""
    if "czo_order" not in kit.models:
        report.section("Events (skipped: pip install ./plugins/czo-order to see modules talk)")
        return
    from czo_order import OrderService

    from czo_kit.events import EventContext

    report.section("Hooks")
    audit: list[str] = []
    off_before = kit.hooks.before("product.update", lambda ctx: audit.append(f"before update #{ctx.id} {ctx.data}"))
    off_after = kit.hooks.after(
        "product.update", lambda result, ctx: audit.append(f"after update -> version {result.version}")
    )
    mug = products.find_by_slug(1, "mug-2")
    products.update(mug.id, {"price": mug.price + 100}, expected_version=mug.version)
    off_before()
    off_after()
    for line in audit:
        report.ok(line)

    report.section("Events in-process (emit)")
    seen: list[EventContext] = []
    off = kit.events.on("inventory.low", lambda payload, ctx: seen.append(ctx))
    with kit.events.correlation("request-42"):
        ctx = kit.events.emit("inventory.low", {"sku": "MUG-2", "left": 3}, actor="user:7")
    off()
    report.ok(f"handler ran at once: event {ctx.event_id} (UUIDv7), actor {ctx.actor}, "
              f"correlation {ctx.correlation_id}")

    report.section("Events through the queue (emit_async, durable outbox, one consumer)")
    orders = kit.services.get(OrderService)
    espresso = products.find_by_slug(1, "espresso-cup")
    mug5 = products.find_by_slug(1, "mug-5")
    order = orders.place(shop_id=1, customer_email="ada@example.com", items=[(espresso, 2), (mug5, 1)])
    report.ok(f"order #{order.id}: 2 x {espresso.name}, 1 x {mug5.name}, total {order.total / 100:.2f}")

    attempts: list[int] = []

    def flaky_audit(event: Any, ctx: EventContext) -> None:
        if event.id != mug5.id:
            return  # earlier deletes of this demo are in the queue too
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("audit service briefly unavailable")

    off = kit.events.on("product.deleted", flaky_audit, id="demo.flaky_audit")
    try:
        with kit.db.atomic():
            products.delete(mug5.id)  # product.deleted goes to the outbox in this transaction
            queued = kit.outbox.stats()
        report.ok(f"deleted {mug5.name}: event written to the outbox with the delete; deliveries so far: {queued or 'none'}")
        with kit.consumer(workers=2, sweep_interval=1.0):
            delivered = _wait(
                lambda: not any(line.product_available for line in orders.lines_of(order.id) if line.product_id == mug5.id)
                and 2 in attempts
            )
        lines = orders.lines_of(order.id)
        for line in lines:
            state = "available" if line.product_available else "product deleted"
            report.ok(f"order line {line.product_name}: {state}")
        report.ok(f"order module reacted through its own plugin: {'yes' if delivered else 'NOT YET'}")
        report.ok(f"a failing subscriber was retried alone: attempts {attempts}; deliveries {kit.outbox.stats()}")
    finally:
        off()


def _apps_part(kit: Any, products: Any, report: _Report) -> None:
    """Install the payment app through the API, order, and watch Stripe (localstripe, on this
    machine) take the payment; then cancel an order and watch the refund come back."""
    try:
        from czo_app_stripe import LocalStripe, create_app
    except ImportError:
        report.section("Apps (skipped: pip install ./plugins/czo-app-stripe to see the payment app)")
        return
    if "czo_order" not in kit.models:
        return
    report.section("Apps: a payment app installed per shop, signed webhooks, app tokens, Stripe")
    try:
        stripe_server = LocalStripe().start()
    except (OSError, RuntimeError) as exc:
        report.line(f"could not start localstripe, the Stripe emulator the demo pays through: {exc}")
        return
    report.ok(f"localstripe (a Stripe emulator) listening at {stripe_server.url}: nothing leaves this machine")
    with tempfile.TemporaryDirectory(prefix="czo-demo-stripe-") as tmp:
        try:
            _pay_through_stripe(kit, products, report, stripe_server, f"sqlite:///{os.path.join(tmp, 'stripe-app.sqlite3')}")
        finally:
            stripe_server.stop()


def _pay_through_stripe(kit: Any, products: Any, report: _Report, stripe_server: Any, app_database: str) -> None:
    import json

    import urllib3
    from czo_app_stripe import LocalStripe, create_app

    from czo_kit.http import BackgroundServer, create_api, issue_user_token
    from czo_order import OrderService

    kit.permission_service.grant("admin", 1, "owner")
    api = BackgroundServer(create_api(kit)).start()
    webhook_secret = "whsec_czo_demo_" + os.urandom(8).hex()
    wsgi, stripe = create_app(
        public_url="", czo_api_url=api.url, database_url=app_database, stripe_api_key=LocalStripe.api_key,
        stripe_api_base=stripe_server.url, stripe_webhook_secret=webhook_secret,
    )
    app_server = BackgroundServer(wsgi)
    stripe.public_url = app_server.url
    app_server.start()
    stripe_server.add_webhook("czo-demo", app_server.url + "/stripe/webhooks", webhook_secret)
    http = urllib3.PoolManager()
    try:
        admin = issue_user_token(kit.secret_key, "admin")
        response = http.request(
            "POST", f"{api.url}/api/apps/install",
            body=json.dumps({"manifestUrl": f"{app_server.url}/manifest", "shopId": 1}).encode(),
            headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
        )
        report.ok(f"POST /api/apps/install as shop owner -> HTTP {response.status}: "
                  f"{json.loads(response.data)['app']['appId']} with {json.loads(response.data)['app']['permissions']}")
        installed = stripe.installations.get(1)
        report.ok(f"the app received its token at its token_target_url (…{installed.token[-4:] if installed else '?'}), "
                  "stored by c-zo only as a hash, by the app in its own database")
        nobody = issue_user_token(kit.secret_key, "mallory")
        denied = http.request("GET", f"{api.url}/api/apps?shopId=1", headers={"Authorization": f"Bearer {nobody}"})
        report.ok(f"a user without rights lists apps -> HTTP {denied.status}")
        other = http.request(
            "POST", f"{api.url}/api/shops/2/orders/1/payments", body=b'{"amount": 1, "reference": "x"}',
            headers={"Authorization": f"Bearer {installed.token if installed else ''}", "Content-Type": "application/json"},
        )
        report.ok(f"the app tries to pay an order of another shop -> HTTP {other.status}")

        orders = kit.services.get(OrderService)
        mug, cup = products.find_by_slug(1, "mug-7"), products.find_by_slug(1, "mug-8")
        with kit.consumer(workers=2, sweep_interval=1.0):
            order = orders.place(shop_id=1, customer_email="grace@example.com", items=[(mug, 3)])
            report.ok(f"order #{order.id} placed: {order.total / 100:.2f} EUR; order.created goes out as a webhook")
            paid = _wait(lambda: orders.orders.get_by_id(order.id).status == "paid", timeout=30)
            final = orders.orders.get_by_id(order.id)
            if not paid:
                report.line(f"payment not recorded yet ({stripe.errors})")
                return
            intent = json.loads(stripe_server.get(f"/v1/payment_intents/{final.payment_reference}").data)
            report.ok(f"the app verified the X-CZO-Signature and created PaymentIntent {intent['id']} at Stripe: "
                      f"{intent['amount']} {intent['currency']} (order {intent['metadata']['czo_order_id']}), "
                      f"status {intent['status']}")
            report.ok(f"it called back with its token: order #{final.id} is {final.status}, "
                      f"{final.paid_amount / 100:.2f} EUR paid through localstripe (reference {final.payment_reference})")
            heard = _wait(lambda: bool(stripe.store.processed("stripe")), timeout=15)
            report.ok(f"Stripe's own payment_intent.succeeded came to /stripe/webhooks, verified: "
                      f"{'yes' if heard else 'not yet'}")

            second = orders.place(shop_id=1, customer_email="alan@example.com", items=[(cup, 1)])
            _wait(lambda: orders.orders.get_by_id(second.id).status == "paid", timeout=30)
            orders.cancel(shop_id=1, order_id=second.id)
            refunded = _wait(lambda: orders.orders.get_by_id(second.id).status == "refunded", timeout=30)
            report.ok(f"order #{second.id} paid, then cancelled: order.cancelled -> the app refunded it at Stripe "
                      f"-> order #{second.id} is {orders.orders.get_by_id(second.id).status}, "
                      f"{orders.refunded(second.id) / 100:.2f} EUR back" if refunded else "refund not recorded yet")
        for delivery in kit.webhooks.deliveries(shop_id=1, limit=3):
            report.ok(f"webhook {delivery.message_id}: {delivery.state} after {delivery.attempts} attempt(s), HTTP {delivery.last_status}")
        report.ok(f"order #{final.id} is paid through localstripe")
    finally:
        http.clear()
        stripe.http.clear()
        stripe.store.close()
        app_server.stop()
        api.stop()
