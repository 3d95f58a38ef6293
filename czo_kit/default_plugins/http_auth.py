"""The default user authenticator of the HTTP API: signed, expiring ``czo_user_`` tokens."""

from __future__ import annotations

from typing import Any

from czo_kit.hookspecs import hookimpl
from czo_kit.http.api import default_authenticator


@hookimpl
def czo_register_authenticators(register: Any) -> None:
    register(default_authenticator, priority=-100)
