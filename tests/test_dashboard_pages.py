"""The dashboard's pages and mounts come from modules: ``register.mount`` and
``register.page`` in ``czo_register_dashboard``, used by the example modules and by a
third-party module found by its entry point only (``tests/plugins/czo-test-reviews``). The
first page lists the shops of the signed-in person; install refuses a mount nobody registered.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from apps_support import manifest
from czo_kit import Kit, hookimpl
from czo_kit.apps.extensions import DashboardRegistry, ExtensionContext, Page
from czo_kit.errors import ManifestError, PluginError
from czo_kit.http import create_api
from czo_kit.http.sessions import issue_session
from czo_kit.settings import Settings

SettingsFor = Callable[..., Settings]
ROOT = Path(__file__).resolve().parent.parent
MODULES = ("czo_product", "czo_order", "czo_test_reviews")


@pytest.fixture
def kit(sqlite_url: str, settings_for: SettingsFor) -> Iterator[Kit]:
    settings = settings_for(sqlite_url, queue_url="", plugins=MODULES, apps_allow_private_urls=True)
    with Kit(settings) as kit:
        kit.create_tables()
        kit.permission_service.grant("ann", 1, "owner")
        kit.permission_service.grant("ann", 2, "viewer")
        kit.permission_service.grant("mo", 1, "moderator")  # the reviews module's role
        yield kit


@pytest.fixture
def client(kit: Kit) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_api(kit))


def as_user(kit: Kit, user: str) -> dict[str, str]:
    return {"Cookie": f"czo_session={issue_session(kit.secret_key, user, lifetime=600)}"}


def nav_of(html: str) -> list[str]:
    nav = re.search(r"<nav>(.*?)</nav>", html)
    assert nav, html
    return re.findall(r">([^<]+)</a>", nav.group(1))


def review(kit: Kit, **fields: Any) -> Any:
    from czo_test_reviews import ReviewRepository

    data = {"shop_id": 1, "rating": 5, "body": "Lovely <b>teapot</b>", "author_email": "ada@example.com"}
    return kit.services.get_abstract(ReviewRepository).create({**data, **fields})


# -- the shops of the signed-in person ---------------------------------------------------------


def test_the_first_page_lists_the_shops_the_person_belongs_to(kit: Kit, client: falcon.testing.TestClient) -> None:
    page = client.simulate_get("/dashboard/", headers=as_user(kit, "ann"))
    assert page.status_code == 200, page.text
    shops = re.findall(r'<li><a href="(/dashboard/shops/\d+)">Shop \d+</a> <span class="czo-roles">([^<]*)</span>', page.text)
    assert shops == [("/dashboard/shops/1", "owner"), ("/dashboard/shops/2", "viewer")]
    nobody = client.simulate_get("/dashboard/", headers=as_user(kit, "newcomer"))
    assert nobody.status_code == 200 and "You belong to no shop yet" in nobody.text
    assert client.simulate_get("/dashboard").headers["location"] == "/dashboard/"
    assert client.simulate_get("/dashboard/").status_code == 401  # signed in first


def test_a_permission_service_that_cannot_list_shops_still_guards_pages(sqlite_url: str, settings_for: SettingsFor) -> None:
    class Fixed:
        def permissions(self, user_id: str, shop_id: int) -> frozenset[tuple[str, str]]:
            return frozenset({("*", "*")}) if (user_id, shop_id) == ("ann", 1) else frozenset()

    class Auth:
        @hookimpl
        def czo_register_permissions(self, register: Any) -> None:
            register.service(lambda kit: Fixed(), priority=10)

    with Kit(settings_for(sqlite_url, queue_url="", plugins=MODULES), plugins=[Auth()]) as kit:
        client = falcon.testing.TestClient(create_api(kit))
        page = client.simulate_get("/dashboard/", headers=as_user(kit, "ann"))
        assert page.status_code == 200 and "does not list shops" in page.text
        assert client.simulate_get("/dashboard/shops/1", headers=as_user(kit, "ann")).status_code == 200
        assert client.simulate_get("/dashboard/shops/2", headers=as_user(kit, "ann")).status_code == 403


# -- pages from modules, navigation by permission ----------------------------------------------


def test_each_shop_lists_the_pages_the_person_may_read(kit: Kit, client: falcon.testing.TestClient) -> None:
    owner = client.simulate_get("/dashboard/shops/1", headers=as_user(kit, "ann"))
    assert owner.status_code == 200
    assert nav_of(owner.text) == ["Shops", "Shop", "Orders", "Products", "Reviews"]
    assert '<a href="/dashboard/shops/1/reviews">Reviews</a>' in owner.text
    # The moderator holds review:read and nothing else: the other modules' pages are not offered
    # to them, and not served either.
    moderator = client.simulate_get("/dashboard/shops/1", headers=as_user(kit, "mo"))
    assert nav_of(moderator.text) == ["Shops", "Shop", "Reviews"]
    assert client.simulate_get("/dashboard/shops/1/reviews", headers=as_user(kit, "mo")).status_code == 200
    denied = client.simulate_get("/dashboard/shops/1/orders", headers=as_user(kit, "mo"))
    assert denied.status_code == 403 and "you need order:read" in denied.text
    assert client.simulate_get("/dashboard/shops/3", headers=as_user(kit, "ann")).status_code == 403


def test_a_third_party_page_renders_escaped(kit: Kit, client: falcon.testing.TestClient) -> None:
    row = review(kit)
    listing = client.simulate_get("/dashboard/shops/1/reviews", headers=as_user(kit, "ann"))
    assert listing.status_code == 200
    assert "<title>Reviews - c-zo</title>" in listing.text  # the registered title by default
    assert "5/5: Lovely &lt;b&gt;teapot&lt;/b&gt;" in listing.text and "<b>teapot" not in listing.text
    assert f'<a href="/dashboard/shops/1/reviews/{row.id}">Review #{row.id}</a>' in listing.text
    detail = client.simulate_get(f"/dashboard/shops/1/reviews/{row.id}", headers=as_user(kit, "ann"))
    assert detail.status_code == 200 and f"<title>Review #{row.id} - c-zo</title>" in detail.text
    assert client.simulate_get("/dashboard/shops/1/reviews/999", headers=as_user(kit, "ann")).status_code == 404
    assert client.simulate_get(f"/dashboard/shops/2/reviews/{row.id}", headers=as_user(kit, "ann")).status_code == 404


def test_the_reviews_module_is_found_by_its_entry_point_only(kit: Kit) -> None:
    (entry,) = [ep for ep in metadata.entry_points(group="czo_kit") if ep.name == "czo_test_reviews"]
    assert entry.dist is not None and entry.dist.name == "czo-test-reviews"
    assert kit.plugins.get_plugin("czo_test_reviews") is entry.load()
    assert "REVIEW_DETAILS" in kit.dashboard.mounts and "reviews" in kit.dashboard.pages


def test_the_example_modules_keep_their_mount_names(kit: Kit) -> None:
    assert kit.dashboard.mount_names() == (
        "NAVIGATION", "ORDER_DETAILS", "ORDER_LIST", "PRODUCT_DETAILS", "PRODUCT_LIST", "REVIEW_DETAILS",
    )
    assert {name: m.resource for name, m in kit.dashboard.mounts.items()} == {
        "ORDER_DETAILS": "order", "ORDER_LIST": "order", "PRODUCT_DETAILS": "product", "PRODUCT_LIST": "product",
        "REVIEW_DETAILS": "review",
    }
    assert sorted(kit.dashboard.pages) == ["orders", "products", "reviews"]


def test_the_dashboard_is_collected_once_per_kit(sqlite_url: str, settings_for: SettingsFor) -> None:
    calls: list[int] = []

    class Counting:
        @hookimpl
        def czo_register_dashboard(self, register: Any, kit: Kit) -> None:
            calls.append(1)

    with Kit(settings_for(sqlite_url, queue_url="", plugins=()), plugins=[Counting()]) as kit:
        create_api(kit)
        create_api(kit)
        kit.dashboard.mount_names()  # what an install asks
        assert kit.dashboard is kit.dashboard
        assert calls == [1]


# -- mounts at install --------------------------------------------------------------------------


def _extension(mount: str) -> dict[str, Any]:
    return {"label": "Reply", "mount": mount, "url": "https://app.example/ext",
            "permissions": [{"resource": "review", "actions": ["read"]}]}


def _reviews_manifest(*extensions: dict[str, Any]) -> dict[str, Any]:
    # The webhook goes to a local address (private URLs are allowed here); nothing is sent.
    return manifest("http://127.0.0.1:9", app_id="replies", events=["review.created"],
                    permissions=[{"resource": "review", "actions": ["read"]}], extensions=list(extensions))


def test_manifests_may_target_any_registered_mount(kit: Kit) -> None:
    result = kit.apps.install(shop_id=1, installer_id="ann", manifest=_reviews_manifest(_extension("REVIEW_DETAILS")))
    assert [e.mount for e in kit.apps.manifest_of(result.installation).extensions] == ["REVIEW_DETAILS"]


def test_an_unknown_mount_is_refused_at_install_listing_the_known_ones(kit: Kit) -> None:
    with pytest.raises(ManifestError) as info:
        kit.apps.install(
            shop_id=1, installer_id="ann", manifest=_reviews_manifest(_extension("REVIEW_DETAILS"), _extension("CHECKOUT_PAGE"))
        )
    assert info.value.path == "$.extensions[1].mount"
    assert str(info.value) == (
        "$.extensions[1].mount: unknown mount 'CHECKOUT_PAGE'; the mounts of this installation are: NAVIGATION, ORDER_DETAILS, "
        "ORDER_LIST, PRODUCT_DETAILS, PRODUCT_LIST, REVIEW_DETAILS"
    )
    assert kit.apps.list(1) == []


def test_without_the_module_its_mount_is_unknown(sqlite_url: str, settings_for: SettingsFor) -> None:
    with Kit(settings_for(sqlite_url, queue_url="", plugins=("czo_test_reviews",))) as kit:
        kit.permission_service.grant("ann", 1, "owner")
        with pytest.raises(ManifestError, match=r"'ORDER_DETAILS'; the mounts of this installation are: NAVIGATION, REVIEW_DETAILS$"):
            kit.apps.install(shop_id=1, installer_id="ann", manifest=_reviews_manifest(_extension("ORDER_DETAILS")))


def test_a_well_formed_mount_name_parses_whatever_is_installed() -> None:
    from czo_kit.apps.manifest import parse_manifest

    parsed = parse_manifest(_reviews_manifest(_extension("REVIEW_DETAILS_V2")))
    assert parsed.extensions[0].mount == "REVIEW_DETAILS_V2"
    with pytest.raises(ManifestError) as info:
        parse_manifest(_reviews_manifest(_extension("review details")))
    assert info.value.path == "$.extensions[0].mount"


# -- what a module may register ------------------------------------------------------------------


def _nothing(kit: Kit, shop_id: int, object_id: int | None) -> None:
    return None


@pytest.mark.parametrize(
    ("register", "message"),
    [
        (lambda r: r.mount("review details", resource="review", context=_nothing), "upper case letters"),
        (lambda r: r.mount("NAVIGATION", resource="shop", context=_nothing), "the kit's own"),
        (lambda r: (r.mount("TWICE", resource="a", context=_nothing), r.mount("TWICE", resource="a", context=_nothing)),
         "registered twice"),
        (lambda r: r.mount("X_DETAILS", resource="Bad Resource", context=_nothing), "not a resource name"),
        (lambda r: r.mount("X_DETAILS", resource="x", context="nope"), "must be a function"),
        (lambda r: r.page("Reviews!", title="R", resource="review", render=_nothing), "lower case letters"),
        (lambda r: r.page("apps", title="Apps", resource="apps", render=_nothing), "taken by the dashboard"),
        (lambda r: (r.page("x", title="X", resource="x", render=_nothing), r.page("x", title="X", resource="x", render=_nothing)),
         "registered twice"),
        (lambda r: r.page("x", title="", resource="x", render=_nothing), "title must be 1-60"),
        (lambda r: r.page("x", title="X", resource="x", render=None), "must be a function"),
    ],
)
def test_bad_registrations_are_plugin_errors_that_say_what_is_allowed(register: Callable[[Any], Any], message: str) -> None:
    with pytest.raises(PluginError, match=message):
        register(DashboardRegistry())


def test_the_old_register_context_says_how_to_move_on() -> None:
    with pytest.raises(PluginError, match=r"register.mount\(name, resource=..., context=fn\).*register.page\("):
        DashboardRegistry().context("ORDER_DETAILS", _nothing)


def test_module_code_importing_mount_keeps_working_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="Mount is deprecated"):
        from czo_kit.apps.extensions import Mount
    assert Mount.ORDER_DETAILS == "ORDER_DETAILS" and Mount.ORDER_DETAILS.value == "ORDER_DETAILS"
    assert Mount("REVIEW_DETAILS").name == "REVIEW_DETAILS"
    registry = DashboardRegistry()
    registry.mount(Mount.REVIEW_DETAILS, resource="review", context=_nothing)
    assert list(registry.mounts) == ["REVIEW_DETAILS"] and type(next(iter(registry.mounts))) is str
    with pytest.raises(AttributeError):
        Mount.lower_case  # noqa: B018
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from czo_kit.apps.extensions import ExtensionContext as still_quiet  # noqa: F401


def test_page_links_stay_in_the_dashboard() -> None:
    assert Page(links=[("Ok", "/dashboard/shops/1/reviews/2")]).links
    for href in ("javascript:alert(1)", "https://evil.example/", "//evil.example/x", "/dashboard/shops/1/../../api",
                 "/api/apps", "/dashboard/shops/1/x?y=<script>"):
        with pytest.raises(ValueError, match="links stay in the dashboard"):
            Page(links=[("Bad", href)])


def test_a_context_function_may_return_a_mapping(sqlite_url: str, settings_for: SettingsFor) -> None:
    from czo_kit.apps.extensions import MountSpec

    spec = MountSpec("THING", "thing", lambda kit, shop, obj: {"thing": {"id": obj}})
    context = spec.context_for(None, 1, 5)  # type: ignore[arg-type]
    assert isinstance(context, ExtensionContext) and context.data == {"thing": {"id": 5}}
    broken = MountSpec("THING", "thing", lambda kit, shop, obj: 42)
    with pytest.raises(PluginError, match="returned int"):
        broken.context_for(None, 1, 5)  # type: ignore[arg-type]


def test_a_page_showing_a_mount_nobody_registered_is_a_server_error(sqlite_url: str, settings_for: SettingsFor) -> None:
    class Stray:
        @hookimpl
        def czo_register_dashboard(self, register: Any, kit: Kit) -> None:
            register.page("stray", title="Stray", resource="apps", render=lambda kit, shop, obj: Page(mount="NOWHERE"))

    with Kit(settings_for(sqlite_url, queue_url="", plugins=()), plugins=[Stray()]) as kit:
        kit.permission_service.grant("ann", 1, "owner")
        client = falcon.testing.TestClient(create_api(kit))
        assert client.simulate_get("/dashboard/shops/1/stray", headers=as_user(kit, "ann")).status_code == 500


def test_an_extension_at_a_third_party_mount_gets_its_context(kit: Kit, client: falcon.testing.TestClient) -> None:
    row = review(kit)
    kit.apps.install(shop_id=1, installer_id="ann", manifest=_reviews_manifest(_extension("REVIEW_DETAILS")))
    page = client.simulate_get(f"/dashboard/shops/1/reviews/{row.id}", headers=as_user(kit, "ann"))
    config = json.loads(re.search(r'<script type="application/json" id="czo-config">(.*?)</script>', page.text).group(1))
    (frame,) = config["frames"]
    assert frame["appId"] == "replies" and frame["origin"] == "https://app.example"
    # The app holds review:read, not customer:read: the author's address is left out.
    assert frame["context"] == {
        "review": {"id": row.id, "rating": 5, "body": "Lovely <b>teapot</b>"},
        "shop": {"id": 1}, "mount": "REVIEW_DETAILS", "user": {"id": "ann"},
    }
    assert "frame-src https://app.example;" in page.headers["content-security-policy"]
    # The list page shows no mount: no frame there.
    listing = client.simulate_get("/dashboard/shops/1/reviews", headers=as_user(kit, "ann"))
    assert "<iframe" not in listing.text


# -- the core names no module --------------------------------------------------------------------


def test_the_dashboard_code_names_no_module() -> None:
    """Rule 13 of STYLE.md, for the dashboard: its code, its static files and the manifest
    rules say nothing of orders, products or any other module's domain."""
    files = [
        *sorted((ROOT / "czo_kit" / "http").glob("*dashboard*.py")),
        ROOT / "czo_kit" / "http" / "_signin.py",
        ROOT / "czo_kit" / "http" / "sessions.py",
        ROOT / "czo_kit" / "apps" / "extensions.py",
        ROOT / "czo_kit" / "apps" / "manifest.py",
        *sorted((ROOT / "czo_kit" / "static").iterdir()),
    ]
    named = {
        f"{path.relative_to(ROOT)}:{number}": line.strip()
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if re.search(r"(?<![a-z])(order|product|review|customer)(?![a-z])", line, re.IGNORECASE)
    }
    assert named == {}
