"""Ids that enter through the HTTP API: shop ids, row ids and app ids, checked before they
reach a query, so a malformed or out-of-range value is a 400 naming where it came from.

Path parameters use the router converters ``{shop_id:shop}`` and ``{item_id:id}``; bodies use
the ``ShopId`` and ``RowId`` types with ``read_json``; query parameters use ``parse_id``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import falcon
import msgspec

from czo_kit.apps.registry import SHOP_ID_MAX

__all__ = [
    "APP_ID",
    "AppId",
    "IdConverter",
    "InvalidId",
    "ROW_ID_MAX",
    "RowId",
    "SHOP_ID_MAX",
    "ShopConverter",
    "ShopId",
    "invalid_param",
    "parse_app_id",
    "parse_id",
]

ROW_ID_MAX = 2**63 - 1
"""The largest row id (``BIGINT``)."""

APP_ID = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")
"""An app id, as the manifest's ``id`` allows it."""

ShopId = Annotated[int, msgspec.Meta(ge=1, le=SHOP_ID_MAX)]
RowId = Annotated[int, msgspec.Meta(ge=1, le=ROW_ID_MAX)]
AppId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9._-]{1,63}\Z")]


def invalid_param(message: str, field: str) -> falcon.HTTPError:
    return falcon.HTTPBadRequest(title="Invalid request", description=message, code=field)


def _check(raw: str, maximum: int) -> int | str:
    """The id, or why it is not one."""
    # isascii: str.isdigit() also accepts other scripts' digits ("١", "²"), which int() reads.
    if not raw or not (raw.isascii() and raw.isdigit()):
        return "not a whole number"
    if len(raw) > len(str(maximum)) or not 1 <= int(raw) <= maximum:
        return "out of range"
    return int(raw)


def parse_id(raw: str | None, *, field: str, maximum: int = ROW_ID_MAX) -> int:
    """``raw`` as an id from 1 to ``maximum``; a 400 naming ``field`` otherwise."""
    if raw is None:
        raise invalid_param(f"{field} is required", field)
    value = _check(raw, maximum)
    if isinstance(value, str):
        raise invalid_param(f"{field} must be a whole number from 1 to {maximum}, got {raw[:24]!r} ({value})", field)
    return value


def parse_app_id(raw: str, *, field: str = "appId") -> str:
    if not APP_ID.fullmatch(raw):
        raise invalid_param(
            f"{field} must be 2 to 64 characters of a-z 0-9 . _ -, starting with a letter or digit, "
            f"got {raw[:24]!r}",
            field,
        )
    return raw


class InvalidId:
    """What an id converter yields for a bad segment: the route still matches, and the API's
    middleware answers 400 naming the parameter (a converter that refused would make a 404)."""

    def __init__(self, raw: str, maximum: int) -> None:
        self.raw = raw
        self.maximum = maximum

    def error(self, field: str) -> falcon.HTTPError:
        try:
            parse_id(self.raw, field=field, maximum=self.maximum)
        except falcon.HTTPError as exc:
            return exc
        raise AssertionError("an InvalidId holds a valid id")  # pragma: no cover


class IdConverter(falcon.routing.BaseConverter):
    """``{item_id:id}``: a row id from 1 to 2**63 - 1."""

    maximum = ROW_ID_MAX

    def convert(self, value: str) -> Any:
        checked = _check(value, self.maximum)
        return InvalidId(value, self.maximum) if isinstance(checked, str) else checked


class ShopConverter(IdConverter):
    """``{shop_id:shop}``: a shop id from 1 to 2**31 - 1 (shops are 32-bit integers)."""

    maximum = SHOP_ID_MAX
