"""The dashboard's HTML: one layout, the sign-in form, the shop list, module pages and the
extension frames on them. Every value a module, an app or a person supplied is escaped here.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FORM_CSP", "error_page", "frames_html", "layout", "page_csp", "shops_body", "sign_in_page"]

esc = html.escape

FORM_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
"""Pages without extensions (sign-in, the shop list, errors): no script at all."""


def page_csp(frame_origins: Sequence[str]) -> str:
    """Only the kit's own script; frames only from the installed apps' extension origins."""
    frames = " ".join(sorted(set(frame_origins))) or "'none'"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'; frame-src {frames}; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


def _json_for_html(value: Any) -> str:
    # Inside <script type="application/json">: "</" must not end the element early.
    return json.dumps(value, separators=(",", ":")).replace("</", "<\\/").replace("<!--", "<\\!--")


def _header(nav: Sequence[tuple[str, str]], user_id: str | None, logout_token: str | None, where: str) -> str:
    links = "".join(f'<a href="{esc(href)}">{esc(label)}</a>' for label, href in nav)
    account = ""
    if user_id is not None and logout_token is not None:
        # A form, not a link: signing out changes state, so it is a POST with a CSRF token.
        account = (
            f'<span class="czo-user">{esc(user_id)}</span>'
            '<form class="czo-logout" method="post" action="/dashboard/logout">'
            f'<input type="hidden" name="csrf" value="{esc(logout_token)}">'
            '<button type="submit">Sign out</button></form>'
        )
    return f"<header><strong>c-zo</strong> {esc(where)} <nav>{links}</nav>{account}</header>"


def layout(
    *,
    title: str,
    body: str,
    where: str = "",
    nav: Sequence[tuple[str, str]] = (),
    user_id: str | None = None,
    logout_token: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> str:
    """A whole page; ``body`` is HTML built by this module. ``config`` (the extension frames)
    adds the host script that talks to them."""
    script = ""
    if config is not None:
        script = (
            "<div id=\"czo-toasts\" aria-live=\"polite\"></div>"
            f"<script type=\"application/json\" id=\"czo-config\">{_json_for_html(config)}</script>"
            "<script src=\"/static/czo-host.js\"></script>"
        )
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)} - c-zo</title><link rel=\"icon\" href=\"data:,\">"
        "<link rel=\"stylesheet\" href=\"/static/dashboard.css\">"
        "</head><body>"
        f"{_header(nav, user_id, logout_token, where)}"
        f"<main><h1>{esc(title)}</h1>{body}</main>{script}</body></html>"
    )


def summary_html(summary: Mapping[str, str]) -> str:
    if not summary:
        return ""
    rows = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in summary.items())
    return f"<table class=\"czo-summary\">{rows}</table>"


def links_html(links: Sequence[tuple[str, str]]) -> str:
    if not links:
        return ""
    items = "".join(f'<li><a href="{esc(href)}">{esc(label)}</a></li>' for label, href in links)
    return f"<ul class=\"czo-links\">{items}</ul>"


def frames_html(frames: Sequence[Mapping[str, Any]]) -> str:
    blocks = []
    for frame in frames:
        label = esc(frame["label"])
        # No src yet: czo-host.js sets it once its message listener is in place, or a fast
        # frame's czo:ready could arrive before anyone listens and the frame never gets context.
        iframe = (
            f'<iframe id="{esc(frame["id"])}" class="czo-extension" title="{label}" data-src="{esc(frame["src"])}" '
            f'sandbox="{frame["sandbox"]}" referrerpolicy="no-referrer" allow="" loading="eager"></iframe>'
        )
        if frame["target"] == "popup":
            blocks.append(
                f'<section class="czo-popup" data-app="{esc(frame["appId"])}"><button type="button" '
                f'class="czo-open" data-frame="{esc(frame["id"])}">{label}</button>'
                f'<dialog id="{esc(frame["id"])}-dialog">{iframe}<button type="button" class="czo-close" '
                f'data-frame="{esc(frame["id"])}">Close</button></dialog></section>'
            )
        else:
            blocks.append(
                f'<section class="czo-widget" data-app="{esc(frame["appId"])}"><h2>{label}</h2>{iframe}</section>'
            )
    return f"<div class=\"czo-extensions\">{''.join(blocks)}</div>"


def sign_in_page(*, csrf: str, next_path: str, message: str = "") -> str:
    """The sign-in form: the user token goes in a POST body, never in an address."""
    notice = f'<p class="czo-notice" role="alert">{esc(message)}</p>' if message else ""
    body = (
        f"{notice}"
        '<form class="czo-sign-in" method="post" action="/dashboard/login">'
        f'<input type="hidden" name="csrf" value="{esc(csrf)}">'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<label for="czo-token">User token</label>'
        '<input id="czo-token" name="token" type="password" autocomplete="off" required maxlength="400" '
        'placeholder="czo_user_...">'
        '<button type="submit">Sign in</button></form>'
        "<p class=\"czo-hint\"><code>czo-kit users token USER</code> prints a token.</p>"
    )
    return layout(title="Sign in", body=body)


def shops_body(shops: Mapping[int, Sequence[str]] | None) -> str:
    """The list of the person's shops, or why there is none."""
    if shops is None:
        return (
            "<p>The permission service of this installation does not list shops. "
            "Open <code>/dashboard/shops/&lt;shop id&gt;</code> for a shop you belong to.</p>"
        )
    if not shops:
        return "<p>You belong to no shop yet. Ask a shop's owner to grant you a role.</p>"
    items = "".join(
        f'<li><a href="/dashboard/shops/{int(shop_id)}">Shop {int(shop_id)}</a> '
        f'<span class="czo-roles">{esc(", ".join(roles))}</span></li>'
        for shop_id, roles in shops.items()
    )
    return f"<ul class=\"czo-shops\">{items}</ul>"


def error_page(status: str, message: str) -> str:
    return (
        f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(status)} - c-zo</title>"
        f"<link rel=\"stylesheet\" href=\"/static/dashboard.css\"></head><body><main><h1>{esc(status)}</h1>"
        f"<p>{esc(message)}</p><p><a href=\"/dashboard/\">Your shops</a></p></main></body></html>"
    )
