"""A plugin for the in-process app tests: the app ``probe``, which hears ``order.created``
with ``order:read`` only (so the customer's email is filtered out of what it gets).

Its handler writes a ``probe_row`` (rolled back with a failed attempt), records its call in
``CALLS`` (for consumers on threads of the test process), fails the first ``BEHAVIOUR["fail"]``
attempts, and, in a worker process started with ``PROBE_BLOCK_MARKER``, blocks on its first
call after creating that file, so that a test can kill the worker mid-delivery.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import falcon
import peewee

from czo_kit import hookimpl
from czo_kit.apps import AppManifest, InstalledApp, PermissionSpec, WebhookSpec
from czo_kit.db.model import TimestampedModel
from czo_kit.events import EventContext

MANIFEST = AppManifest(
    id="probe",
    name="Probe",
    version="1.0.0",
    permissions=[PermissionSpec(resource="order", actions=["read"])],
    webhooks=[WebhookSpec(name="orders", events=["order.created"])],
)

CALLS: list[tuple[dict[str, Any], EventContext, InstalledApp]] = []
BEHAVIOUR: dict[str, int] = {"fail": 0}
PAUSE: dict[str, threading.Event] = {}
"""With ``entered`` and ``resume`` set by a test: the handler, once it has written its row,
sets ``entered`` and waits for ``resume``."""
_lock = threading.Lock()


class ProbeFailure(RuntimeError):
    pass


class ProbeRow(TimestampedModel):
    shop_id = peewee.IntegerField()
    message_id = peewee.CharField(max_length=48)
    attempt = peewee.IntegerField()
    pid = peewee.IntegerField()

    class Meta:
        table_name = "probe_row"


def on_order(payload: Mapping[str, Any], ctx: EventContext, app: InstalledApp) -> None:
    ProbeRow.insert(shop_id=app.shop_id, message_id=app.message_id, attempt=app.attempt, pid=os.getpid()).execute()
    with _lock:
        CALLS.append((dict(payload), ctx, app))
    if "entered" in PAUSE:
        PAUSE["entered"].set()
        PAUSE["resume"].wait(30)
    marker = os.environ.get("PROBE_BLOCK_MARKER")
    if marker and not os.path.exists(marker):
        with open(marker, "w") as handle:
            handle.write(str(os.getpid()))
        time.sleep(600)  # killed long before
    if app.attempt <= BEHAVIOUR["fail"]:
        raise ProbeFailure(f"the probe fails attempt {app.attempt} on purpose")


class WhoAmI:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        principal = req.context.app
        resp.media = {"appId": principal.app_id, "shopId": principal.shop_id}


@hookimpl
def czo_register_models(register: Any) -> None:
    register(ProbeRow)


@hookimpl
def czo_register_apps(register: Any) -> None:
    register(MANIFEST, handlers={"order.created": on_order}, routes={"/whoami": WhoAmI()})
