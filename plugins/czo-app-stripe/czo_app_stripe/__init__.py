"""A third-party payment app for c-zo (a simulated Stripe), run as its own WSGI service.

It serves its manifest, takes its token at ``/token`` when a shop installs it, verifies the
signature of every webhook, and on ``order.created`` records a payment through the c-zo API
with its token.
"""

from czo_app_stripe.app import StripeApp, create_app

__all__ = ["StripeApp", "create_app"]
