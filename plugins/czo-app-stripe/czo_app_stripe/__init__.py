"""A third-party payment app for c-zo that takes payments through Stripe, run as its own WSGI
service.

It serves its manifest, takes its token at ``/token`` when a shop installs it, verifies the
signature of every webhook, creates a PaymentIntent when an order is created (refunding it
when the order is cancelled), hears Stripe's own events at ``/stripe/webhooks``, and records
payments and refunds on the order through the c-zo API with its token. Its state lives in a
database of its own.
"""

from czo_app_stripe.app import StripeApp, create_app
from czo_app_stripe.localstripe import LocalStripe
from czo_app_stripe.payments import Payments
from czo_app_stripe.store import Store

__all__ = ["LocalStripe", "Payments", "Store", "StripeApp", "create_app"]
