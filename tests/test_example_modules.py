"""The example modules' own code, held to the kit's coverage floor: the product and order
pages and mounts of the dashboard, their repository extras, and ``czo-kit demo`` with the order
module (its events part: hooks, emit, the outbox and a consumer retrying a failing handler)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import falcon.testing
import pytest
from click.testing import CliRunner

from czo_kit import Kit
from czo_kit import plugins as plugins_module
from czo_kit.apps.extensions import ExtensionContext, Page
from czo_kit.cli import build_cli
from czo_kit.errors import InvalidDataError
from czo_kit.http import create_api
from czo_kit.http.sessions import issue_session
from czo_kit.plugins import create_plugin_manager
from czo_kit.settings import Settings
from czo_order import OrderService
from czo_order.dashboard import order_details, order_list, render_orders
from czo_product import ProductRepository
from czo_product.dashboard import product_details, product_list, render_products

SettingsFor = Callable[..., Settings]


@pytest.fixture
def kit(database_url: str, settings_for: SettingsFor) -> Iterator[Kit]:
    settings = settings_for(database_url, queue_url="", plugins=("czo_product", "czo_order"))
    with Kit(settings) as kit:
        kit.create_tables()
        # PostgreSQL tables live for the whole session: start from empty ones.
        for table in ("order_payment", "order_line", "order", "product"):
            kit.db.execute_sql(f'DELETE FROM "{table}"')
        yield kit


def test_the_products_page_and_mounts(kit: Kit) -> None:
    products = kit.services.get_abstract(ProductRepository)
    mug = products.create({"shop_id": 1, "name": "Mug", "price": 1250, "currency": "EUR"})
    products.create({"shop_id": 1, "name": "Bowl", "price": 800})
    theirs = products.create({"shop_id": 2, "name": "Teapot", "price": 3000})

    page = render_products(kit, 1, None)
    assert isinstance(page, Page) and page.mount == "PRODUCT_LIST"
    assert dict(page.summary) == {"Bowl": "8.00 EUR", "Mug": "12.50 EUR"}  # by name, one shop
    assert list(page.links)[1] == ("Mug", f"/dashboard/shops/1/products/{mug.id}")
    one = render_products(kit, 1, mug.id)
    assert one == Page(title="Mug", summary={"Slug": "mug", "Price": "12.50 EUR"}, mount="PRODUCT_DETAILS")
    assert render_products(kit, 1, theirs.id) is None  # another shop's product is not found here
    assert render_products(kit, 1, 99999) is None

    details = product_details(kit, 1, mug.id)
    assert isinstance(details, ExtensionContext)
    assert details.data == {"product": {"id": mug.id, "name": "Mug", "slug": "mug", "price": 1250, "currency": "EUR"}}
    assert product_details(kit, 1, None) is None and product_details(kit, 2, mug.id) is None
    listed = product_list(kit, 1, None)
    assert listed is not None and [p["name"] for p in listed.data["products"]] == ["Bowl", "Mug"]


def test_the_products_page_is_served_to_the_shop_owner(kit: Kit) -> None:
    products = kit.services.get_abstract(ProductRepository)
    mug = products.create({"shop_id": 1, "name": "Blue <Mug>", "price": 1250})
    kit.permission_service.grant("ann", 1, "owner")
    client = falcon.testing.TestClient(create_api(kit))
    cookie = {"Cookie": f"czo_session={issue_session(kit.secret_key, 'ann', lifetime=600)}"}
    listing = client.simulate_get("/dashboard/shops/1/products", headers=cookie)
    assert listing.status_code == 200 and "Blue &lt;Mug&gt;" in listing.text
    assert f"/dashboard/shops/1/products/{mug.id}" in listing.text
    one = client.simulate_get(f"/dashboard/shops/1/products/{mug.id}", headers=cookie)
    assert one.status_code == 200 and "blue-mug" in one.text
    assert client.simulate_get("/dashboard/shops/1/products/99999", headers=cookie).status_code == 404


def test_product_repository_extras(kit: Kit) -> None:
    products = kit.services.get_abstract(ProductRepository)
    for name, price in (("Dear", 900), ("Cheap", 100), ("Middle", 500)):
        products.create({"shop_id": 1, "name": name, "price": price})
    products.create({"shop_id": 2, "name": "Elsewhere", "price": 1})
    page = products.list_for_shop(1, limit=2)  # type: ignore[attr-defined]
    assert [p.name for p in page.items] == ["Cheap", "Middle"] and page.has_next
    rest = products.list_for_shop(1, limit=2, cursor=page.next_cursor)  # type: ignore[attr-defined]
    assert [p.name for p in rest.items] == ["Dear"]
    assert products.find_by_slug(1, "middle").price == 500  # type: ignore[attr-defined]
    assert products.find_by_slug(2, "middle") is None  # type: ignore[attr-defined]


def test_the_orders_page_and_mounts(kit: Kit) -> None:
    products = kit.services.get_abstract(ProductRepository)
    orders = kit.services.get(OrderService)
    mug = products.create({"shop_id": 1, "name": "Mug", "price": 1250})
    order = orders.place(shop_id=1, customer_email="ada@example.com", items=[(mug, 2)])
    with pytest.raises(InvalidDataError) as info:
        orders.place(shop_id=1, customer_email="ada@example.com", items=[])
    assert "at least one line" in str(info.value)

    listing = render_orders(kit, 1, None)
    assert listing is not None and dict(listing.summary) == {f"#{order.id}": "open, 25.00 EUR"}
    one = render_orders(kit, 1, order.id)
    assert one is not None and one.summary["Lines"] == "2 x Mug" and one.mount == "ORDER_DETAILS"
    assert render_orders(kit, 2, order.id) is None
    details = order_details(kit, 1, order.id)
    assert details is not None and details.data["order"]["lines"][0]["quantity"] == 2
    assert details.requires == {"order.customer_email": ("customer", "read")}
    assert order_details(kit, 1, None) is None and order_details(kit, 1, 99999) is None
    assert order_list(kit, 1, None) == ExtensionContext(data={"orders": [{"id": order.id, "status": "open", "total": 2500}]})
    # No open order in shop 2 holds the product: nothing to mark.
    assert orders.set_product_availability(2, mug.id, False) == 0


@pytest.fixture
def demo_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """The demo with the product and order modules, without the payment app installed."""
    for name in ("CZO_LOG_LEVEL", "CZO_DB_POOL_SIZE", "CZO_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CZO_PLUGINS", "czo_product,czo_order,czo_demo")
    monkeypatch.setenv("CZO_SECRET_KEY", "demo-secret-key-" + "d" * 32)
    # Without the app, the demo's apps part says how to install it and stops there.
    monkeypatch.setitem(sys.modules, "czo_app_stripe", None)
    monkeypatch.setattr(plugins_module, "pm", create_plugin_manager())
    monkeypatch.setattr(plugins_module, "_global_loaded", False)
    yield tmp_path


def test_the_demo_with_the_order_module(demo_env: Path) -> None:
    url = f"sqlite:///{demo_env / 'demo.sqlite3'}"
    result = CliRunner().invoke(build_cli(), ["demo", "--database-url", url], prog_name="czo-kit")
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"ok  before update #\d+ \{'price': \d+\}", out)
    assert re.search(r"ok  after update -> version \d+", out)
    assert "correlation request-42" in out
    assert re.search(r"ok  order #\d+: 2 x Espresso cup, 1 x Mug 5, total 36\.50", out)
    assert "order line Mug 5: product deleted" in out and "order line Espresso cup: available" in out
    assert "order module reacted through its own plugin: yes" in out
    assert "a failing subscriber was retried alone: attempts [1, 2]" in out
    assert "== Apps (skipped: pip install ./plugins/czo-app-stripe to see the payment app)" in out
