"""App manifests: parsing good and hostile ones (every error names its field), and fetching
them over real HTTP on loopback with the limits of ``OutboundHTTP`` (size, time, content type,
status, redirects, private addresses, DNS)."""

from __future__ import annotations

import copy
import importlib.metadata
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from apps_support import Receiver, Reply, Request, app_kit, app_settings, manifest
from czo_kit import Kit
from czo_kit.apps import AppManifest, parse_manifest
from czo_kit.apps.manifest import MAX_MANIFEST_BYTES
from czo_kit.apps.net import OutboundHTTP, is_public_address, parse_target
from czo_kit.errors import ManifestError, UnsafeURLError
from czo_kit.settings import Settings
from czo_kit.testing.cache import wait_until

SettingsFor = Callable[..., Settings]
BASE = "https://app.example.com"


def good() -> dict[str, Any]:
    data = manifest(BASE, token_target=True)
    data["extensions"] = [
        {
            "label": "Payments",
            "mount": "ORDER_DETAILS",
            "url": BASE + "/ext",
            "target": "popup",
            "permissions": [{"resource": "order", "actions": ["read"]}],
        }
    ]
    return data


def with_changes(**changes: Any) -> dict[str, Any]:
    data = good()
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return data


def webhook(**changes: Any) -> dict[str, Any]:
    hook = dict(good()["webhooks"][0])
    hook.update(changes)
    return hook


def error_of(data: Any) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    return info.value


# -- parsing ----------------------------------------------------------------------------------


def test_a_good_manifest_parses_from_json_bytes_text_and_a_mapping() -> None:
    data = good()
    for source in (json.dumps(data).encode(), json.dumps(data), data):
        parsed = parse_manifest(source)
        assert isinstance(parsed, AppManifest)
        assert parsed.id == "acme"
        assert parsed.token_target_url == BASE + "/token"
        assert parsed.permission_pairs() == frozenset({("order", "read"), ("order", "write")})
        assert parsed.webhooks[0].events == ["order.created"]
        assert parsed.webhooks[0].target_url == BASE + "/hook"
        assert parsed.extensions[0].target == "popup"
    minimal = {"id": "mini", "name": "Mini", "version": "0.1", "app_url": BASE}
    parsed = parse_manifest(minimal)
    assert (parsed.permissions, parsed.webhooks, parsed.extensions, parsed.about) == ([], [], [], "")
    assert parsed.token_target_url is None
    assert parse_manifest(parsed.to_json()) == parsed


@pytest.mark.parametrize(
    ("data", "path", "words"),
    [
        (with_changes(id=5), "$.id", "Expected `str`, got `int`"),
        (with_changes(name=["x"]), "$.name", "Expected `str`"),
        (with_changes(version=1.0), "$.version", "Expected `str`"),
        (with_changes(permissions={"order": "read"}), "$.permissions", "Expected `array`"),
        (with_changes(webhooks="order.created"), "$.webhooks", "Expected `array`"),
        (with_changes(permissions=[{"resource": "order", "actions": "read"}]), "$.permissions[0].actions", "array"),
        (with_changes(permissions=[{"resource": 1, "actions": ["read"]}]), "$.permissions[0].resource", "str"),
        (with_changes(webhooks=[webhook(is_active="yes")]), "$.webhooks[0].is_active", "Expected `bool`"),
        (with_changes(webhooks=[webhook(events="order.created")]), "$.webhooks[0].events", "Expected `array`"),
        (with_changes(token_target_url=7), "$.token_target_url", "Expected `str | null`"),
    ],
    ids=lambda value: value if isinstance(value, str) and value.startswith("$") else None,
)
def test_wrong_types_name_the_field(data: dict[str, Any], path: str, words: str) -> None:
    error = error_of(data)
    assert error.path == path
    assert words in str(error)


@pytest.mark.parametrize("missing", ["id", "name", "version", "app_url"])
def test_a_missing_required_field_is_named(missing: str) -> None:
    error = error_of(with_changes(**{missing: ...}))
    assert error.path == f"$.{missing}"
    assert f"missing required field `{missing}`" in str(error)


def test_missing_nested_fields_are_named() -> None:
    hook = webhook()
    del hook["target_url"]
    assert error_of(with_changes(webhooks=[hook])).path == "$.webhooks[0].target_url"
    assert error_of(with_changes(permissions=[{"actions": ["read"]}])).path == "$.permissions[0].resource"


def test_unknown_fields_are_refused_and_named() -> None:
    error = error_of(with_changes(colour="red"))
    assert error.path == "$.colour"
    assert "unknown field `colour`" in str(error)
    assert error_of(with_changes(webhooks=[webhook(secret="s3cr3t")])).path == "$.webhooks[0].secret"
    permission = {"resource": "order", "actions": ["read"], "admin": True}
    assert error_of(with_changes(permissions=[permission])).path == "$.permissions[0].admin"


@pytest.mark.parametrize(
    "app_id", ["", "a", "Acme", "acme app", "-acme", "acme/../x", "a" * 65, "acmé", "acme\n", "ACME"]
)
def test_bad_app_ids_are_refused(app_id: str) -> None:
    error = error_of(with_changes(id=app_id))
    assert error.path == "$.id"
    assert "matching regex" in str(error)


def test_bad_webhook_names_versions_mounts_and_scopes() -> None:
    assert error_of(with_changes(webhooks=[webhook(name="Orders!")])).path == "$.webhooks[0].name"
    assert error_of(with_changes(version="1 0")).path == "$.version"
    assert error_of(with_changes(version="")).path == "$.version"
    ext = dict(good()["extensions"][0], mount="order details")
    assert error_of(with_changes(extensions=[ext])).path == "$.extensions[0].mount"
    ext = dict(good()["extensions"][0], target="new_window")
    assert error_of(with_changes(extensions=[ext])).path == "$.extensions[0].target"
    scoped = {"resource": "order", "actions": ["read"], "scope": "global"}
    error = error_of(with_changes(permissions=[scoped]))
    assert error.path == "$.permissions[0].scope"
    assert "'global'" in str(error)
    twice = {"resource": "order", "actions": ["read", "read"]}
    error = error_of(with_changes(permissions=[twice]))
    assert (error.path, "listed twice" in str(error)) == ("$.permissions[0].actions", True)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://app.example.com/hook", "http(s)"),
        ("http:///hook", "no host"),
        ("https://", "no host"),
        ("https://user:pass@app.example.com/hook", "credentials"),
        ("https://token@app.example.com/hook", "credentials"),
        ("javascript:alert(1)", "http(s)"),
        ("data:text/html,<script>1</script>", "http(s)"),
        ("file:///etc/passwd", "http(s)"),
        ("//app.example.com/hook", "http(s)"),
        ("/relative/hook", "http(s)"),
        ("https://app.example.com/a b", "whitespace"),
        ("https://app.example.com/\r\nX-Injected: 1", "whitespace"),
        ("https://app.example.com:99999/hook", "not a valid URL"),
        ("https://app.example.com:port/hook", "not a valid URL"),
    ],
)
def test_bad_urls_are_refused_wherever_they_appear(url: str, words: str) -> None:
    ext = dict(good()["extensions"][0], url=url)
    cases = {
        "$.app_url": with_changes(app_url=url),
        "$.token_target_url": with_changes(token_target_url=url),
        "$.webhooks[1].target_url": with_changes(webhooks=[webhook(), webhook(name="second", target_url=url)]),
        "$.extensions[0].url": with_changes(extensions=[ext]),
    }
    for path, data in cases.items():
        error = error_of(data)
        assert error.path == path
        assert words in str(error), str(error)


def test_overlong_urls_and_texts_are_refused() -> None:
    assert error_of(with_changes(app_url=BASE + "/" + "a" * 2000)).path == "$.app_url"
    assert error_of(with_changes(name="n" * 201)).path == "$.name"
    assert error_of(with_changes(about="a" * 4001)).path == "$.about"


@pytest.mark.parametrize("event", ["Order.Created", "order created", "order.*", "", "x" * 201, "order.created\n"])
def test_bad_event_names_are_refused(event: str) -> None:
    error = error_of(with_changes(webhooks=[webhook(events=["order.created", event])]))
    assert error.path in ("$.webhooks[0].events[1]", "$.webhooks[0].events")
    assert error.path == "$.webhooks[0].events[1]" or len(event) > 200


def test_empty_event_lists_and_action_lists_are_refused() -> None:
    assert error_of(with_changes(webhooks=[webhook(events=[])])).path == "$.webhooks[0].events"
    empty = {"resource": "order", "actions": []}
    assert error_of(with_changes(permissions=[empty])).path == "$.permissions[0].actions"


def test_duplicate_webhook_names_are_refused() -> None:
    hooks = [webhook(), webhook(name="other"), webhook()]
    error = error_of(with_changes(webhooks=hooks))
    assert error.path == "$.webhooks[2].name"
    assert "'orders' is used twice" in str(error)


@pytest.mark.parametrize(
    ("field", "value", "limit"),
    [
        ("permissions", [{"resource": "order", "actions": ["read"]}], 100),
        ("webhooks", None, 50),
        ("extensions", None, 50),
    ],
)
def test_huge_arrays_are_refused(field: str, value: Any, limit: int) -> None:
    if field == "webhooks":
        items = [webhook(name=f"hook-{i}") for i in range(limit + 1)]
    elif field == "extensions":
        items = [dict(good()["extensions"][0]) for _ in range(limit + 1)]
    else:
        items = value * (limit + 1)
    error = error_of(with_changes(**{field: items}))
    assert error.path == f"$.{field}"
    assert f"length <= {limit}" in str(error)
    events = ["order.created"] * 101
    assert error_of(with_changes(webhooks=[webhook(events=events)])).path == "$.webhooks[0].events"
    actions = [f"a{i}" for i in range(21)]
    assert error_of(with_changes(permissions=[{"resource": "order", "actions": actions}])).path == (
        "$.permissions[0].actions"
    )


@pytest.mark.parametrize("text", ["[]", "[1, 2]", '"manifest"', "42", "null", "true"])
def test_json_that_is_not_an_object_is_refused(text: str) -> None:
    error = error_of(text)
    assert error.path == "$"
    assert "Expected `object`" in str(error)


@pytest.mark.parametrize("raw", [b"", b"{", b'{"id": "acme",}', b"\xff\xfe\x00", b"{'id': 'acme'}", b"NaN"])
def test_invalid_json_is_refused(raw: bytes) -> None:
    error = error_of(raw)
    assert error.path == "$"
    assert "not valid JSON" in str(error)


def test_a_manifest_over_one_mebibyte_is_refused_before_parsing() -> None:
    padded = json.dumps(good()).encode()
    padded = padded[:-1] + b" " * (MAX_MANIFEST_BYTES - len(padded) + 1) + b"}"
    assert len(padded) == MAX_MANIFEST_BYTES + 1
    error = error_of(padded)
    assert error.path == "$"
    assert f"larger than {MAX_MANIFEST_BYTES} bytes" in str(error)
    exactly = padded[:-2] + b"}"
    assert parse_manifest(exactly).id == "acme"


def test_manifest_errors_are_for_people() -> None:
    error = error_of(with_changes(webhooks=[webhook(), webhook(name="w2", target_url="ftp://x/")]))
    assert str(error).startswith("$.webhooks[1].target_url: ")
    assert "'ftp://x/'" in str(error)


# -- is_public_address and parse_target -------------------------------------------------------


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2001:4860:4860::8888", "::ffff:8.8.8.8"]
)
def test_public_addresses(address: str) -> None:
    assert is_public_address(address)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.255.255.254", "10.0.0.1", "10.255.0.3", "172.16.0.1", "172.31.255.255",
        "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1", "255.255.255.255",
        "192.0.2.1", "198.18.0.1", "240.0.0.1", "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1",
        "fd00:ec2::254", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
        "64:ff9b::7f00:1", "2001:db8::1",
    ],
)
def test_private_loopback_link_local_and_reserved_addresses(address: str) -> None:
    assert not is_public_address(address)


def test_parse_target_pins_scheme_host_port_and_path() -> None:
    target = parse_target("https://App.Example.com:8443/hooks/x?a=1")
    assert (target.scheme, target.host, target.port, target.path) == ("https", "app.example.com", 8443, "/hooks/x?a=1")
    assert target.origin == "https://app.example.com:8443"
    assert parse_target("http://[::1]/").origin == "http://[::1]"
    assert parse_target("http://example.com").path == "/"
    for bad in (None, 5, "", "x" * 2001, "gopher://x/", "http://u@x/"):
        with pytest.raises(UnsafeURLError):
            parse_target(bad)


# -- fetching over HTTP -----------------------------------------------------------------------


@pytest.fixture
def kit(sqlite_url: str, settings_for: SettingsFor, tmp_path: Any) -> Iterator[Kit]:
    with app_kit(app_settings(settings_for, sqlite_url, str(tmp_path), queue_url="")) as kit:
        yield kit


@pytest.fixture
def strict_kit(sqlite_url: str, settings_for: SettingsFor, tmp_path: Any) -> Iterator[Kit]:
    """Private addresses refused, as in production."""
    settings = app_settings(settings_for, sqlite_url, str(tmp_path), queue_url="", apps_allow_private_urls=False)
    with app_kit(settings) as kit:
        yield kit


def manifest_server(routes: dict[str, Callable[[Request], Reply]]) -> Receiver:
    def script(request: Request) -> Reply:
        handler = routes.get(request.path.split("?", 1)[0])
        return handler(request) if handler else Reply(404, b'{"error": "not found"}')

    return Receiver(script)


def json_reply(data: Any, content_type: str = "application/json") -> Callable[[Request], Reply]:
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return lambda request: Reply(200, body, {"Content-Type": content_type})


def redirect(location: str, status: int = 302) -> Callable[[Request], Reply]:
    return lambda request: Reply(status, b"", {"Location": location})


def fetch_error(kit: Kit, url: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        kit.apps.fetch_manifest(url)
    return info.value


def test_fetch_a_manifest(kit: Kit) -> None:
    with manifest_server({}) as server:
        data = manifest(server.url)
        server.script = lambda request: json_reply(data, "application/json; charset=utf-8")(request)
        parsed = kit.apps.fetch_manifest(server.url + "/manifest")
        assert parsed.webhooks[0].target_url == server.url + "/hook"
        request = server.requests[0]
        assert (request.method, request.path) == ("GET", "/manifest")
        assert request.headers["accept"] == "application/json"
        assert request.headers["user-agent"] == f"czo-kit/{importlib.metadata.version('czo-kit')} (+https://github.com/c-zo)"
        assert request.headers["host"] == f"127.0.0.1:{server.port}"


def test_a_json_suffix_content_type_is_accepted(kit: Kit) -> None:
    with manifest_server({}) as server:
        server.script = json_reply(manifest(server.url), "application/vnd.czo.manifest+json")
        assert kit.apps.fetch_manifest(server.url + "/m").id == "acme"


def test_an_oversize_manifest_is_refused(kit: Kit) -> None:
    body = json.dumps(manifest("http://127.0.0.1")).encode()
    body = body[:-1] + b" " * (MAX_MANIFEST_BYTES + 10) + b"}"
    with manifest_server({"/big": json_reply(body)}) as server:
        error = fetch_error(kit, server.url + "/big")
    assert error.path == "manifestUrl"
    assert f"larger than {MAX_MANIFEST_BYTES} bytes" in str(error)


class TrickleServer:
    """Answers with headers at once, then a body one byte every ``every`` seconds."""

    def __init__(self, *, every: float = 0.05, length: int = 10_000) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.every = every
        self.length = length
        self.stopped = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {self.length}\r\n\r\n{{".encode()
            )
            try:
                while not self.stopped.wait(self.every) and self.sent < self.length:
                    conn.sendall(b" ")
                    self.sent += 1
            except OSError:
                pass  # the client gave up: what we want

    def __enter__(self) -> TrickleServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.listener.close()
        self.thread.join(timeout=5)


def test_a_slow_trickle_is_cut_off_at_the_deadline(kit: Kit) -> None:
    """Every byte arrives well within the read timeout, yet the fetch stops at the deadline
    (10 s by default; 1.5 s keeps the test quick) while the server still has bytes to send."""
    kit.apps.manifest_deadline = 1.5
    with TrickleServer(every=0.05) as server:
        started = time.monotonic()
        error = fetch_error(kit, f"http://127.0.0.1:{server.port}/manifest")
        elapsed = time.monotonic() - started
        left = server.length - server.sent
    assert error.path == "manifestUrl"
    assert "took longer than 1.5s in all" in str(error)
    assert left > 0  # cut off, not finished
    assert elapsed >= 1.4  # and not before its time


def test_one_deadline_holds_for_the_whole_fetch_redirects_included(kit: Kit) -> None:
    """Each hop answers well within the per-request limits, but together they take longer than
    the fetch may: it ends with the deadline error before the last redirect is followed."""
    kit.apps.manifest_deadline = 1.0
    with manifest_server({}) as server:
        hops = {"/a": "/b", "/b": "/c", "/c": "/manifest"}
        served = manifest(server.url)

        def script(request: Request) -> Reply:
            if request.path in hops:
                return Reply(302, b"", {"Location": hops[request.path]}, delay=0.6)
            return json_reply(served)(request)

        server.script = script
        error = fetch_error(kit, server.url + "/a")
        asked = [r.path for r in server.requests]
    assert error.path == "manifestUrl"
    assert "took longer than 1s in all (redirects included)" in str(error)
    assert "/c" not in asked and "/manifest" not in asked, asked


def test_outbound_deadline_holds_against_a_trickle() -> None:
    http = OutboundHTTP(allow_private=True)
    try:
        # 30 s of trickle against a 0.5 s deadline: the request must end with the server
        # still sending (a broken deadline would read it all and return normally).
        with TrickleServer(every=0.02, length=1500) as server:
            with pytest.raises(TimeoutError, match="took longer than 0.5s"):
                http.request("GET", f"http://127.0.0.1:{server.port}/", deadline=0.5, read_timeout=5.0)
            assert server.sent < server.length
    finally:
        http.close()


class HeaderTrickleServer(TrickleServer):
    """Sends a status line, then one byte of a header every ``every`` seconds: each receive
    is well within any read timeout, and the headers never end."""

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                while not self.stopped.wait(self.every) and self.sent < self.length:
                    conn.sendall(b"z")
                    self.sent += 1
            except OSError:
                pass  # the client gave up: what we want


def test_the_deadline_holds_while_headers_trickle_in() -> None:
    # Before the watchdog, this took the server's whole 20 s: each byte reset the read timeout.
    http = OutboundHTTP(allow_private=True)
    try:
        with HeaderTrickleServer(every=0.05, length=400) as server:
            with pytest.raises(TimeoutError, match="took longer than 0.5s"):
                http.request("GET", f"http://127.0.0.1:{server.port}/", deadline=0.5, read_timeout=5.0)
            assert server.sent < server.length  # the headers never ended: cut off by the deadline
    finally:
        http.close()


def test_a_request_that_ends_in_time_leaves_its_connection_usable() -> None:
    # The deadline's watch is called off when the request ends: the kept-alive connection it
    # hands back to the pool is not cut later, when the deadline comes.
    from czo_kit.apps import net

    http = OutboundHTTP(allow_private=True)
    with manifest_server({"/m": json_reply({"ok": True})}) as server:
        try:
            first = http.request("GET", server.url + "/m", deadline=0.3)
            assert first.status == 200 and first.body == b'{"ok": true}'
            with net._watchdog._cond:
                pending = [entry for _, _, entry in net._watchdog._heap if entry[0] is not None]
            assert pending == []
            deadline_passed = time.monotonic() + 0.35
            assert wait_until(lambda: time.monotonic() > deadline_passed, timeout=5)
            again = http.request("GET", server.url + "/m", deadline=0.3)
            assert again.status == 200 and again.body == b'{"ok": true}'
            ports = {request.client_port for request in server.requests}
            assert len(server.requests) == 2 and len(ports) == 1  # one kept-alive connection served both
        finally:
            http.close()


@pytest.mark.parametrize("body", [b"{not json", b"", b"<html>hello</html>", b'{"id": "acme"'])
def test_bad_json_is_refused(kit: Kit, body: bytes) -> None:
    with manifest_server({"/m": json_reply(body)}) as server:
        error = fetch_error(kit, server.url + "/m")
    assert error.path == "$"
    assert "not valid JSON" in str(error)


def test_a_served_manifest_is_validated_like_any_other(kit: Kit) -> None:
    with manifest_server({}) as server:
        bad = manifest(server.url)
        bad["webhooks"][0]["target_url"] = "ftp://nope/"
        server.script = json_reply(bad)
        assert fetch_error(kit, server.url + "/m").path == "$.webhooks[0].target_url"


@pytest.mark.parametrize("content_type", ["text/html", "text/plain", "application/javascript", None])
def test_a_wrong_content_type_is_refused(kit: Kit, content_type: str | None) -> None:
    with manifest_server({}) as server:
        body = json.dumps(manifest(server.url)).encode()
        headers = {"Content-Type": content_type} if content_type else {}
        server.script = lambda request: Reply(200, body, headers)
        error = fetch_error(kit, server.url + "/m")
    assert error.path == "manifestUrl"
    assert "must be served as application/json" in str(error)
    assert (content_type or "no content type") in str(error)


@pytest.mark.parametrize("status", [201, 204, 400, 401, 403, 404, 500, 503])
def test_a_status_other_than_200_is_refused(kit: Kit, status: int) -> None:
    with manifest_server({}) as server:
        body = json.dumps(manifest(server.url)).encode() if status not in (204,) else b""
        server.script = lambda request: Reply(status, body)
        error = fetch_error(kit, server.url + "/m")
    assert error.path == "manifestUrl"
    assert f"HTTP {status}" in str(error)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_on_the_same_host_is_followed(kit: Kit, status: int) -> None:
    with manifest_server({}) as server:
        server.script = lambda request: {
            "/old": redirect("/older", status),
            "/older": redirect(f"{server.url}/manifest", status),
            "/manifest": json_reply(manifest(server.url)),
        }[request.path](request)
        assert kit.apps.fetch_manifest(server.url + "/old").id == "acme"
        assert [r.path for r in server.requests] == ["/old", "/older", "/manifest"]


def test_a_redirect_to_another_host_is_refused(kit: Kit) -> None:
    with manifest_server({}) as server, manifest_server({}) as other:
        other.script = json_reply(manifest(other.url))
        # Same address, another host name: the name is what counts.
        server.script = redirect(f"http://localhost:{server.port}/manifest")
        error = fetch_error(kit, server.url + "/m")
        assert error.path == "manifestUrl"
        assert "redirects to another host (localhost)" in str(error)
        server.script = redirect(f"{other.url.replace('127.0.0.1', 'localhost')}/manifest")
        assert "another host" in str(fetch_error(kit, server.url + "/m"))
        assert other.requests == []
        assert [r.path for r in server.requests] == ["/m", "/m"]


def test_endless_redirects_stop(kit: Kit) -> None:
    with manifest_server({}) as server:
        server.script = redirect("/again")
        error = fetch_error(kit, server.url + "/start")
    assert "redirects too many times" in str(error)
    assert len(server.requests) == 4


def test_a_redirect_to_a_non_http_scheme_is_refused(kit: Kit) -> None:
    with manifest_server({}) as server:
        server.script = redirect("file:///etc/passwd")
        error = fetch_error(kit, server.url + "/m")
    assert error.path == "manifestUrl"


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "[::1]", "2130706433", "0177.0.0.1", "127.1", "[::ffff:127.0.0.1]", "0.0.0.0"],
)
def test_loopback_manifest_urls_are_refused_unless_allowed(strict_kit: Kit, host: str) -> None:
    with manifest_server({}) as server:
        server.script = json_reply(manifest(server.url))
        error = fetch_error(strict_kit, f"http://{host}:{server.port}/manifest")
        assert server.requests == []  # refused before connecting
    assert error.path == "manifestUrl"
    assert "loopback, private or link-local" in str(error)
    assert "CZO_APPS_ALLOW_PRIVATE_URLS" in str(error)


class FakeDNS:
    """``socket.getaddrinfo`` answering chosen addresses for chosen names (others: real)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []
        self.real = socket.getaddrinfo
        monkeypatch.setattr(socket, "getaddrinfo", self)

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        self.asked.append(str(host))
        if host in self.answers:
            result = []
            for address in self.answers[host]:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
                result.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
            return result
        return self.real(host, port, *args, **kwargs)


@pytest.mark.parametrize(
    "addresses",
    [["10.1.2.3"], ["169.254.169.254"], ["192.168.0.10"], ["fd12::1"], ["93.184.216.34", "10.0.0.7"]],
)
def test_a_host_name_resolving_to_a_private_address_is_refused(
    strict_kit: Kit, monkeypatch: pytest.MonkeyPatch, addresses: list[str]
) -> None:
    dns = FakeDNS(monkeypatch, {"apps.internal.example": addresses})
    error = fetch_error(strict_kit, "https://apps.internal.example/manifest")
    assert dns.asked == ["apps.internal.example"]
    assert error.path == "manifestUrl"
    assert "loopback, private or link-local" in str(error)
    assert addresses[-1] in str(error)


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/m", "http://[fe80::1]/m"])
def test_literal_private_addresses_are_refused(strict_kit: Kit, url: str) -> None:
    assert "loopback, private or link-local" in str(fetch_error(strict_kit, url))


def test_the_request_goes_to_the_checked_address_with_the_right_host_header(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The address checked is the address connected to (no second DNS lookup to rebind)."""
    with manifest_server({}) as server:
        server.script = json_reply(manifest(server.url))
        dns = FakeDNS(monkeypatch, {"app.example.test": ["127.0.0.1"]})
        assert kit.apps.fetch_manifest(f"http://app.example.test:{server.port}/manifest").id == "acme"
        # The name is resolved once; the connection is made to the checked address itself.
        assert [name for name in dns.asked if not name[0].isdigit()] == ["app.example.test"]
        assert server.requests[0].headers["host"] == f"app.example.test:{server.port}"


def test_dns_failure(kit: Kit) -> None:
    error = fetch_error(kit, "http://no-such-host.invalid/manifest")
    assert error.path == "manifestUrl"
    assert "does not resolve" in str(error)


def test_a_closed_port(kit: Kit) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    error = fetch_error(kit, f"http://127.0.0.1:{port}/manifest")
    assert error.path == "manifestUrl"
    assert "could not fetch the manifest" in str(error)


def test_install_refuses_private_webhook_and_token_targets(strict_kit: Kit) -> None:
    data = manifest("https://8.8.8.8", token_target=True)
    data["webhooks"][0]["target_url"] = "http://127.0.0.1:9/hook"
    with pytest.raises(ManifestError) as info:
        strict_kit.apps.install(shop_id=1, installer_id="owner-1", manifest=data)
    assert info.value.path == "$.webhooks[0].target_url"
    data = copy.deepcopy(manifest("https://8.8.8.8", token_target=True))
    data["token_target_url"] = "http://10.0.0.1/token"
    with pytest.raises(ManifestError) as info:
        strict_kit.apps.install(shop_id=1, installer_id="owner-1", manifest=data)
    assert info.value.path == "$.token_target_url"
    assert strict_kit.apps.list(1) == []


def test_install_by_manifest_url(kit: Kit) -> None:
    with manifest_server({}) as server:
        server.script = json_reply(manifest(server.url))
        result = kit.apps.install(shop_id=1, installer_id="owner-1", manifest_url=server.url + "/manifest")
        assert result.app_id == "acme"
        server.script = lambda request: Reply(500)
        with pytest.raises(ManifestError) as info:
            kit.apps.install(shop_id=2, installer_id="owner-1", manifest_url=server.url + "/manifest")
        assert info.value.path == "manifestUrl"
    assert [a.app_id for a in kit.apps.list(2)] == []
