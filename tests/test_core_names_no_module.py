"""The core names no module: nothing under ``czo_kit/`` (code, docstrings, comments, messages,
static files) names a domain of the example modules or apps. Modules reach every surface
through hooks, so the kit never needs to; its examples use neutral names (``item``,
``widget``, ``ITEM_DETAILS``).

The scan looks for domain words as nouns and identifiers, not for the English word "order",
which the kit uses for sort and call order ("in order", "order_by", "ordering").
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "czo_kit"

# (pattern, what it catches). Kept narrow enough that generic English stays allowed.
FORBIDDEN: tuple[tuple[str, str], ...] = (
    (r"(?i)product(?!ion|iv)", "product, products, Product..., PRODUCT_..., czo_product"),
    (r"(?i)czo[_-]order", "the order module"),
    (r"[\"'`]order\.[a-z_]|\border\.(created|updated|deleted|create|update|delete)\b", "an order event or hook name"),
    (r"(?i)\border_(?!by\b)\w", "order_id, ORDER_DETAILS"),
    (r"\bOrder[A-Z]\w*", "OrderService, OrderLine"),
    (r"[\"']orders?[\"']", 'a resource or namespace named "order"'),
    (r"(?i)\borders\b(?!\s+by\b)", "orders as a noun ('orders by' is the verb)"),
    (r"(?i)\border (module|lines?|service|total)\b", "the order module's things"),
    (r"(?i)\breviews\b|\bReview[A-Z]|review_|\breview\.[a-z]|[\"']reviews?[\"']", "the reviews module"),
    (r"(?i)\bcustomers?\b|customer_", "customer"),
    (r"(?i)\bcarts?\b|cart_|_carts?\b", "cart"),
    (r"(?i)stripe", "the payment app"),
    (r"(?i)\bpayments?\b|payment_", "payment"),
    (r"(?i)loyalty", "the loyalty app"),
    (r"(?i)\b(inventory|sku|invoices?|shipping)\b", "another shop domain"),
)

_PATTERNS = [(re.compile(pattern), what) for pattern, what in FORBIDDEN]


def findings(text: str) -> list[str]:
    """``line: matched text (what it is)`` for every domain word in ``text``."""
    found: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        for pattern, what in _PATTERNS:
            for match in pattern.finditer(line):
                found.append(f"{number}: {match.group(0)!r} ({what})")
    return found


def core_files() -> list[Path]:
    files = [*CORE.rglob("*.py"), *(path for path in (CORE / "static").rglob("*") if path.is_file())]
    return sorted(path for path in files if "__pycache__" not in path.parts)


@pytest.mark.parametrize(
    "text",
    [
        'class ProductCreated(Event, name="product.created")',
        "register.mount('ORDER_DETAILS', resource='order')",
        "api.add_route('/api/shops/{shop_id:shop}/orders/{order_id:id}/payments', r)",
        "services.get(OrderService)",
        "import czo_order",
        'register.role("staff", {"order": ["read"]})',
        "register(ReviewSettings, prefix='CZO_REVIEW_')",
        "a reviews module",
        '"customer_email": ("customer", "read")',
        "the way Stripe honours it",
        "prune_carts every five minutes",
        "a module's orders of a shop",
        "hooks.after('order.create', fn) and on order.created",
    ],
)
def test_the_scan_catches_domain_names(text: str) -> None:
    assert findings(text), text


@pytest.mark.parametrize(
    "text",
    [
        "runs every file in order",
        "find_many(order_by='-price')",
        "the cursor was made for another sort order; this query orders by name",
        "ordering and reversed_order and self._orders and OrderedDict",
        "wrote the migration; review it, then run czo-kit db migrate (scripts for review)",
        "memory for development, Redis in production",
        "the order of ids",
        "item.created and ITEM_DETAILS",
        "keys = order.keys; order.append(step); order.fingerprint",
        "run makemigrations from a source checkout of the module",
    ],
)
def test_the_scan_leaves_generic_words_alone(text: str) -> None:
    assert findings(text) == []


def test_the_core_names_no_module() -> None:
    files = core_files()
    assert any(path.suffix == ".js" for path in files)  # static files are scanned too
    problems = [
        f"{path.relative_to(ROOT)}:{finding}"
        for path in files
        for finding in findings(path.read_text(encoding="utf-8"))
    ]
    assert problems == [], "the core names a module; use neutral names (item, widget):\n" + "\n".join(problems)
