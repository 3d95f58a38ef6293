"""Fetching an app's manifest: JSON only, at most 1 MiB, redirects on the same host, and one
deadline for the whole fetch, redirects included."""

from __future__ import annotations

import time
from urllib.parse import urljoin, urlsplit

from czo_kit.apps.manifest import MAX_MANIFEST_BYTES, AppManifest, parse_manifest
from czo_kit.apps.net import OutboundHTTP
from czo_kit.errors import ManifestError, UnsafeURLError

__all__ = ["MANIFEST_DEADLINE", "MAX_REDIRECTS", "fetch_manifest"]

MANIFEST_DEADLINE = 10.0
"""Seconds for the whole fetch, every redirect included."""
MAX_REDIRECTS = 3
_CONNECT_TIMEOUT = 2.0
_READ_TIMEOUT = 5.0
_REDIRECTS = (301, 302, 303, 307, 308)


def _too_slow(deadline: float) -> ManifestError:
    return ManifestError(
        f"fetching the manifest took longer than {deadline:g}s in all (redirects included)", path="manifestUrl"
    )


def fetch_manifest(http: OutboundHTTP, url: str, *, deadline: float = MANIFEST_DEADLINE) -> AppManifest:
    """GET and parse the manifest at ``url``; every failure is a ``ManifestError`` at
    ``manifestUrl`` (or at the field of a manifest that does not validate)."""
    # A deadline per request would let each redirect take the whole budget again: three slow
    # hops would take three times as long as documented.
    ends = time.monotonic() + deadline
    first = urlsplit(url)
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        remaining = ends - time.monotonic()
        if remaining <= 0:
            raise _too_slow(deadline)
        try:
            target = http.check(current, what="manifest URL")
            response = http.request(
                "GET", target, headers={"Accept": "application/json"}, max_bytes=MAX_MANIFEST_BYTES,
                deadline=remaining, connect_timeout=min(_CONNECT_TIMEOUT, remaining),
                read_timeout=min(_READ_TIMEOUT, remaining), what="manifest URL",
            )
        except UnsafeURLError as exc:
            raise ManifestError(str(exc), path="manifestUrl") from None
        except Exception as exc:  # urllib3's errors, OSError, TimeoutError: the fetch failed
            if time.monotonic() >= ends:
                raise _too_slow(deadline) from None
            raise ManifestError(
                f"could not fetch the manifest from {current[:100]!r}: {exc}", path="manifestUrl"
            ) from None
        if response.status in _REDIRECTS:
            following = urljoin(current, response.headers.get("location", ""))
            parts = urlsplit(following)
            if parts.hostname != first.hostname:
                raise ManifestError(
                    f"the manifest URL redirects to another host ({parts.hostname}); "
                    "only redirects on the same host are followed",
                    path="manifestUrl",
                )
            if first.scheme == "https" and parts.scheme != "https":
                raise ManifestError(
                    "the manifest URL redirects from https to http; that downgrade is refused", path="manifestUrl"
                )
            current = following
            continue
        if response.status != 200:
            raise ManifestError(f"fetching the manifest returned HTTP {response.status}", path="manifestUrl")
        if response.truncated:
            raise ManifestError(f"the manifest is larger than {MAX_MANIFEST_BYTES} bytes", path="manifestUrl")
        kind = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json" and not kind.endswith("+json"):
            raise ManifestError(
                f"the manifest must be served as application/json, not {kind or 'no content type'}",
                path="manifestUrl",
            )
        return parse_manifest(response.body)
    raise ManifestError(
        f"the manifest URL redirects too many times (at most {MAX_REDIRECTS} redirects are followed)",
        path="manifestUrl",
    )
