"""What operators do with webhook deliveries: list them and their attempts, count them by
state, send them again. A part of ``WebhookDispatcher`` kept in a module of its own."""

from __future__ import annotations

from collections.abc import Sequence

import peewee

from czo_kit.apps._webhook_models import WebhookAttempt, WebhookDelivery, WebhookSettings
from czo_kit.db.model import utcnow
from czo_kit.db.transactions import on_commit
from czo_kit.errors import NotFoundError

__all__ = ["WebhookOperations"]


class WebhookOperations:
    """Operator-facing methods of ``WebhookDispatcher`` (which provides what is declared here)."""

    db: peewee.Database
    settings: WebhookSettings

    def ensure_tables(self, *, required: bool = True) -> bool:
        raise NotImplementedError

    def _enqueue_all(self, ids: Sequence[int]) -> None:
        raise NotImplementedError

    def deliveries(self, *, state: str | None = None, shop_id: int | None = None, limit: int = 50) -> list[WebhookDelivery]:
        self.ensure_tables()
        query = WebhookDelivery.select().order_by(WebhookDelivery.id.desc()).limit(limit)
        if state is not None:
            query = query.where(WebhookDelivery.state == state)
        if shop_id is not None:
            query = query.where(WebhookDelivery.shop_id == shop_id)
        return list(query.execute(self.db))

    def delivery(self, delivery_id: int) -> WebhookDelivery:
        """One delivery; ``NotFoundError`` when there is none with that id (or it was pruned)."""
        self.ensure_tables()
        row: WebhookDelivery | None = WebhookDelivery.select().where(WebhookDelivery.id == delivery_id).first(self.db)
        if row is None:
            raise NotFoundError("WebhookDelivery", delivery_id)
        return row

    def attempts(self, delivery_id: int) -> list[WebhookAttempt]:
        self.ensure_tables()
        return list(
            WebhookAttempt.select().where(WebhookAttempt.delivery == delivery_id).order_by(WebhookAttempt.id).execute(self.db)
        )

    def redeliver(self, delivery_id: int | None = None, *, all_dead: bool = False) -> list[int]:
        """Queue a delivery again (any state but running), or every dead one, with fresh attempts."""
        self.ensure_tables()
        now = utcnow()
        if all_dead:
            ids = [r[0] for r in WebhookDelivery.select(WebhookDelivery.id).where(WebhookDelivery.state == "dead").tuples().execute(self.db)]
        else:
            row = WebhookDelivery.select().where(WebhookDelivery.id == delivery_id).first(self.db)
            if row is None:
                raise NotFoundError("WebhookDelivery", delivery_id)
            ids = [int(row.id)]
        if ids:
            WebhookDelivery.update(
                state="queued", attempts=0, next_attempt_at=None, lease_until=None, updated_at=now
            ).where(WebhookDelivery.id.in_(ids) & (WebhookDelivery.state != "running")).execute(self.db)
            on_commit(self.db, lambda: self._enqueue_all(ids))
        return ids

    def stats(self) -> dict[str, int]:
        self.ensure_tables()
        rows = (
            WebhookDelivery.select(WebhookDelivery.state, peewee.fn.COUNT(WebhookDelivery.id))
            .group_by(WebhookDelivery.state).tuples().execute(self.db)
        )
        return {state: count for state, count in rows}
