"""Shared set-up of the Stripe app tests: c-zo's API, the app (in-process or as its own
process) and localstripe, all on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

from apps_support import OWNER, wait_for
from czo_app_stripe import LocalStripe, StripeApp, create_app
from czo_kit import Kit
from czo_kit.http import BackgroundServer, create_api

STRIPE_SECRET = "whsec_czo_test_stripe_endpoint_secret"


def intents_for(localstripe: LocalStripe, order_id: int, shop_id: int = 1) -> list[dict[str, Any]]:
    """Every PaymentIntent localstripe holds for the order (by the metadata the app sets)."""
    listed = json.loads(localstripe.get("/v1/payment_intents?limit=100").data)["data"]
    return [
        i for i in listed
        if i["metadata"].get("czo_order_id") == str(order_id) and i["metadata"].get("czo_shop_id") == str(shop_id)
    ]


def refunds_for(localstripe: LocalStripe, intent_id: str) -> list[dict[str, Any]]:
    return list(json.loads(localstripe.get(f"/v1/refunds?payment_intent={intent_id}").data)["data"])


def charges_for(localstripe: LocalStripe, intent_id: str) -> list[dict[str, Any]]:
    listed = json.loads(localstripe.get("/v1/charges?limit=100").data)["data"]
    return [c for c in listed if c.get("payment_intent") == intent_id]


def stripe_signed(payload: bytes, secret: str = STRIPE_SECRET, timestamp: int | None = None) -> dict[str, str]:
    """The ``Stripe-Signature`` header Stripe (and localstripe) put on an event."""
    ts = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{ts}.".encode() + payload, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={ts},v1={mac}", "Content-Type": "application/json"}


@dataclass
class GatedApi:
    """c-zo's API with a switch that answers 503 to payment and refund records: c-zo away
    while Stripe has already taken the money."""

    wsgi: Any
    closed: bool = False
    refused: list[str] = field(default_factory=list)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        if self.closed and environ["REQUEST_METHOD"] == "POST" and path.endswith(("/payments", "/refunds")):
            self.refused.append(path)
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"error": "unavailable"}']
        return self.wsgi(environ, start_response)


@dataclass
class Shop:
    kit: Kit
    api: BackgroundServer
    gate: GatedApi
    localstripe: LocalStripe
    app: BackgroundServer | None = None
    state: StripeApp | None = None

    def stop(self) -> None:
        if self.app is not None:
            self.app.stop()
        if self.state is not None:
            self.state.close()
        self.api.stop()


def start_shop(kit: Kit, localstripe: LocalStripe, tmp_path: Path, *, payment_method: str | None = None,
               in_process: bool = True) -> Shop:
    gate = GatedApi(create_api(kit))
    api = BackgroundServer(gate).start()
    shop = Shop(kit=kit, api=api, gate=gate, localstripe=localstripe)
    if in_process:
        wsgi, state = create_app(
            public_url="", czo_api_url=api.url, czo_public_key=kit.apps.public_key,
            database_url=f"sqlite:///{tmp_path / 'stripe-app.sqlite3'}",
            stripe_api_key=LocalStripe.api_key, stripe_api_base=localstripe.url,
            stripe_webhook_secret=STRIPE_SECRET, payment_method=payment_method,
        )
        shop.app = BackgroundServer(wsgi)
        state.public_url = shop.app.url
        shop.app.start()
        shop.state = state
        localstripe.add_webhook("czo", shop.app.url + "/stripe/webhooks", STRIPE_SECRET)
        kit.apps.install(shop_id=1, installer_id=OWNER, manifest=state.manifest())
    return shop


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AppProcess:
    """``czo-app-stripe`` run as its own process (so a test can kill -9 it)."""

    def __init__(self, shop: Shop, database_url: str, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log.open("ab")
        env = dict(
            os.environ, STRIPE_API_KEY=LocalStripe.api_key, STRIPE_API_BASE=shop.localstripe.url,
            STRIPE_WEBHOOK_SECRET=STRIPE_SECRET, CZO_APP_STRIPE_DATABASE_URL=database_url,
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from czo_app_stripe.app import main; main()", "--port", str(port),
             "--czo-api", shop.api.url, "--czo-public-key", shop.kit.apps.public_key, "--resume-interval", "0.5"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=0.5, read=2))

        def up() -> bool:
            try:
                return http.request("GET", self.url + "/").status == 200
            except urllib3.exceptions.HTTPError:
                assert self.process.poll() is None, log.read_text()
                return False

        wait_for(up, timeout=30, what="czo-app-stripe to listen")
        http.clear()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.log.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.log.close()
