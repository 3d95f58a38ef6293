"""Paying orders through Stripe: one PaymentIntent per order, confirmed, recorded on the order
through the c-zo API once Stripe says it succeeded, and refunded when the order is cancelled.

Every step reads where it stands from Stripe and from the app's store, so it can run again:
after a retried webhook, a Stripe event, or a restart in the middle of a payment.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import stripe
import urllib3

from czo_app_stripe.store import CANCELED, FAILED, PAID, PENDING, REFUNDED, Payment, Store

__all__ = ["CzoApi", "CzoApiError", "OrderPayload", "PaymentConfigError", "PaymentError", "Payments", "parse_order", "stripe_client"]

log = logging.getLogger("czo_app_stripe")

_CURRENCY = re.compile(r"[A-Za-z]{3}\Z")
_MAX_AMOUNT = 99_999_999  # Stripe's own ceiling for an amount in minor units


class PaymentError(ValueError):
    """An order payload the app cannot pay: names the field, what was wrong and what is allowed."""


class PaymentConfigError(RuntimeError):
    """The app lacks a setting it needs to pay (``STRIPE_API_KEY``)."""


class CzoApiError(RuntimeError):
    """c-zo did not take what the app recorded; the payment stays pending and is retried."""


@dataclass(frozen=True)
class OrderPayload:
    order_id: int
    amount: int
    currency: str


def parse_order(data: Any) -> OrderPayload:
    """The order an ``order.created`` / ``order.cancelled`` payload names, checked."""
    if not isinstance(data, dict):
        raise PaymentError(f"data: expected the order as an object, got {type(data).__name__}")
    order_id = data.get("id")
    if not isinstance(order_id, int) or isinstance(order_id, bool) or order_id < 1:
        raise PaymentError(f"data.id: expected a positive integer order id, got {order_id!r}")
    amount = data.get("total")
    if not isinstance(amount, int) or isinstance(amount, bool) or not 1 <= amount <= _MAX_AMOUNT:
        raise PaymentError(
            f"data.total: expected an integer amount in the currency's minor unit, 1-{_MAX_AMOUNT}, got {amount!r}"
        )
    currency = data.get("currency", "EUR")
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise PaymentError(f"data.currency: expected a three-letter ISO currency code, got {currency!r}")
    return OrderPayload(order_id=order_id, amount=amount, currency=currency.upper())


def stripe_client(api_key: str, api_base: str | None = None) -> stripe.StripeClient:
    """A client for Stripe, or for a server speaking its API at ``api_base`` (localstripe)."""
    return stripe.StripeClient(
        api_key, base_addresses={"api": api_base} if api_base else None, max_network_retries=2
    )


@dataclass
class CzoApi:
    """The calls the app makes to c-zo, each with the installation's token."""

    base_url: str
    http: urllib3.PoolManager = field(
        default_factory=lambda: urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10))
    )

    def _post(self, path: str, token: str, body: dict[str, Any], key: str) -> dict[str, Any]:
        url = self.base_url.rstrip("/") + path
        try:
            response = self.http.request(
                "POST", url, body=json.dumps(body).encode(),
                # The kit's API honours the key: a retry of a call that went through answers
                # as it did; c-zo's reference check makes a second record a no-op anyway.
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Idempotency-Key": key},
                retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=(502, 503, 504), allowed_methods=None),
            )
        except urllib3.exceptions.HTTPError as exc:
            raise CzoApiError(f"POST {url}: {exc}") from None
        if response.status not in (200, 201):
            raise CzoApiError(f"POST {url}: HTTP {response.status} {response.data[:200]!r}")
        answer: dict[str, Any] = json.loads(response.data)
        return answer

    def record_payment(self, token: str, payment: Payment, reference: str) -> None:
        self._post(
            f"/api/shops/{payment.shop_id}/orders/{payment.order_id}/payments", token,
            {"amount": payment.amount, "currency": payment.currency, "reference": reference}, f"pay-{reference}",
        )

    def record_refund(self, token: str, payment: Payment, reference: str, amount: int) -> None:
        self._post(
            f"/api/shops/{payment.shop_id}/orders/{payment.order_id}/refunds", token,
            {"amount": amount, "currency": payment.currency, "reference": reference}, f"refund-{reference}",
        )

    def order(self, token: str, shop_id: int, order_id: int) -> dict[str, Any] | None:
        """The order as c-zo shows it to ``token``'s holder; None if it may not see it."""
        url = f"{self.base_url.rstrip('/')}/api/shops/{shop_id}/orders/{order_id}"
        try:
            response = self.http.request("GET", url, headers={"Authorization": f"Bearer {token}"}, retries=False)
        except urllib3.exceptions.HTTPError as exc:
            raise CzoApiError(f"GET {url}: {exc}") from None
        if response.status != 200:
            return None
        order: dict[str, Any] = json.loads(response.data)["order"]
        return order


def _plain(obj: Any) -> dict[str, Any]:
    # stripe-python's objects are not dicts (no .get): work on their data.
    data: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return data


def _charge_of(intent: Any) -> Any:
    # Stripe answers the latest charge's id; localstripe expands it to the object.
    charge = intent.get("latest_charge")
    return charge.get("id") if isinstance(charge, dict) else charge


class Payments:
    """The payment of each order, driven to where Stripe says it is."""

    def __init__(
        self,
        store: Store,
        czo: CzoApi,
        client: Callable[[], stripe.StripeClient],
        *,
        payment_method: str = "pm_card_visa",
        create_params: dict[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.create_params: Any = create_params or {}
        self.czo = czo
        self._client = client
        self.payment_method = payment_method
        self.errors: list[str] = []
        self._locks: dict[tuple[int, int], threading.Lock] = {}
        self._locks_guard = threading.Lock()

    @property
    def client(self) -> stripe.StripeClient:
        return self._client()

    def _lock(self, shop_id: int, order_id: int) -> threading.Lock:
        # One worker per order at a time: the webhook thread, a Stripe event and the resume
        # loop may all reach the same order.
        with self._locks_guard:
            return self._locks.setdefault((shop_id, order_id), threading.Lock())

    # -- what c-zo tells -------------------------------------------------------------------

    def order_created(self, shop_id: int, order: OrderPayload) -> None:
        self.store.open_payment(
            shop_id=shop_id, order_id=order.order_id, amount=order.amount, currency=order.currency,
            # Derived from the order alone: the same order, whatever the delivery, is one
            # PaymentIntent at Stripe (Stripe keeps a key's answer for 24 hours).
            idempotency_key=f"czo-{shop_id}-{order.order_id}",
        )
        self.advance(shop_id, order.order_id)

    def order_cancelled(self, shop_id: int, order_id: int) -> None:
        if self.store.payment(shop_id, order_id) is None:
            return  # never charged by this app: nothing to give back
        self.store.update_payment(shop_id, order_id, cancel_requested=True)
        self.advance(shop_id, order_id)

    def stripe_event(self, event: Any) -> None:
        """A Stripe event (already verified): the order it concerns is brought up to date."""
        event = _plain(event)
        obj = event["data"]["object"]
        intent_id = obj.get("id") if event["type"].startswith("payment_intent.") else obj.get("payment_intent")
        payment = self.store.payment_by_intent(intent_id) if isinstance(intent_id, str) else None
        if payment is None:
            log.info("Stripe event %s (%s) names no payment of this app", event["id"], event["type"])
            return
        if event["type"] == "charge.refunded":
            # A refund made anywhere (the app's own, or one from Stripe's dashboard).
            installation = self.store.installation(payment.shop_id)
            with self._lock(payment.shop_id, payment.order_id):
                if installation is not None:
                    self.sync_refunds(installation.token, payment, payment.intent_id or "")
            return
        self.advance(payment.shop_id, payment.order_id)

    def resume(self) -> int:
        """Carry on every payment left half-way (by a restart, or c-zo being away)."""
        unfinished = self.store.unfinished()
        for payment in unfinished:
            self.advance(payment.shop_id, payment.order_id)
        return len(unfinished)

    # -- the steps -------------------------------------------------------------------------

    def advance(self, shop_id: int, order_id: int) -> None:
        """Take the order's payment as far as it goes now; failures are kept for the next try."""
        with self._lock(shop_id, order_id):
            payment = self.store.payment(shop_id, order_id)
            if payment is None or not payment.unfinished and payment.state != FAILED:
                return
            try:
                self._advance(payment)
            except (stripe.StripeError, CzoApiError, PaymentConfigError) as exc:
                message = f"order {order_id} of shop {shop_id}: {exc}"
                log.warning("payment not finished, will resume: %s", message)
                self.errors.append(message)

    def _advance(self, payment: Payment) -> None:
        installation = self.store.installation(payment.shop_id)
        if installation is None:
            raise CzoApiError(f"no installation for shop {payment.shop_id}")
        intent = self._intent(payment)
        payment = self.store.payment(payment.shop_id, payment.order_id) or payment
        if intent["status"] == "requires_confirmation" and not payment.cancel_requested:
            try:
                intent = _plain(self.client.v1.payment_intents.confirm(
                    intent["id"], options={"idempotency_key": payment.idempotency_key + "-confirm"}
                ))
            except stripe.CardError:
                # Declined: the reason is on the intent (last_payment_error), read below.
                intent = _plain(self.client.v1.payment_intents.retrieve(intent["id"]))
        status = intent["status"]
        if status == "succeeded" and payment.state in (PENDING, FAILED):
            self.czo.record_payment(installation.token, payment, reference=intent["id"])
            self.store.update_payment(payment.shop_id, payment.order_id, state=PAID, failure=None)
            payment = self.store.payment(payment.shop_id, payment.order_id) or payment
        elif status == "requires_payment_method":
            error = intent.get("last_payment_error") or {}
            self.store.update_payment(
                payment.shop_id, payment.order_id, state=FAILED, failure=error.get("message") or "payment failed"
            )
        if payment.cancel_requested:
            self._give_back(installation.token, payment, intent)

    def _intent(self, payment: Payment) -> dict[str, Any]:
        if payment.intent_id is not None:
            return _plain(self.client.v1.payment_intents.retrieve(payment.intent_id))
        params: Any = {  # stripe's TypedDict cannot see through ** of create_params
            "amount": payment.amount,
            "currency": payment.currency.lower(),
            "payment_method": self.payment_method,
            "metadata": {"czo_shop_id": str(payment.shop_id), "czo_order_id": str(payment.order_id)},
            **self.create_params,
        }
        intent = _plain(self.client.v1.payment_intents.create(
            params=params,
            # A crash after Stripe created it and before the id below is stored: the retry
            # sends the same key and Stripe answers the same intent. Against a server that
            # ignores keys, the orphan is never confirmed, so nothing is charged twice.
            options={"idempotency_key": payment.idempotency_key},
        ))
        self.store.update_payment(payment.shop_id, payment.order_id, intent_id=intent["id"])
        return intent

    def _give_back(self, token: str, payment: Payment, intent: Any) -> None:
        status = intent["status"]
        if status == "succeeded":
            refunds = self.refunds(intent["id"])
            if sum(r["amount"] for r in refunds if r["status"] == "succeeded") < payment.amount:
                self.client.v1.refunds.create(
                    params={"payment_intent": intent["id"]},
                    options={"idempotency_key": payment.idempotency_key + "-refund"},
                )
            self.sync_refunds(token, payment, intent["id"])
        elif status in ("requires_payment_method", "requires_confirmation", "requires_action", "requires_capture"):
            self.client.v1.payment_intents.cancel(intent["id"])
            self.store.update_payment(payment.shop_id, payment.order_id, state=CANCELED)
        elif status == "canceled":
            self.store.update_payment(payment.shop_id, payment.order_id, state=CANCELED)

    def refunds(self, intent_id: str) -> list[Any]:
        return [_plain(r) for r in self.client.v1.refunds.list(params={"payment_intent": intent_id}).data]

    def sync_refunds(self, token: str, payment: Payment, intent_id: str) -> None:
        """Record on the order every refund Stripe made of the intent (each once)."""
        refunded = 0
        for refund in self.refunds(intent_id):
            if refund["status"] == "succeeded":
                self.czo.record_refund(token, payment, reference=refund["id"], amount=int(refund["amount"]))
                refunded += int(refund["amount"])
        if refunded >= payment.amount:
            self.store.update_payment(payment.shop_id, payment.order_id, state=REFUNDED)

    # -- what the dashboard widget shows ---------------------------------------------------

    def status(self, shop_id: int, order_id: int) -> dict[str, Any]:
        """The payment as Stripe has it now (not as the app last noted it)."""
        payment = self.store.payment(shop_id, order_id)
        if payment is None or payment.intent_id is None:
            return {"intent": None, "status": "no payment yet"}
        intent = _plain(self.client.v1.payment_intents.retrieve(payment.intent_id))
        error = intent.get("last_payment_error") or {}
        refunded = sum(int(r["amount"]) for r in self.refunds(intent["id"]) if r["status"] == "succeeded") \
            if intent["status"] == "succeeded" else 0
        return {
            "intent": intent["id"],
            "status": intent["status"],
            "amount": intent["amount"],
            "currency": str(intent["currency"]).upper(),
            "charge": _charge_of(intent),
            "failure": error.get("message"),
            "refunded": refunded,
        }
