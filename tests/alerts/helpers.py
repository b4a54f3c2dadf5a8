"""Writing the audit rows that raise alerts, the way the webhook handlers write them."""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import select

from billwatch.accounts.actor import SystemActor
from billwatch.alerts.models import Alert, AlertStatus
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.recorder import Resource, StripeRefs
from billwatch.config import Settings
from billwatch.db import Database
from tests.audit.helpers import luhn_valid
from tests.support import test_settings

STRIPE = SystemActor("stripe")
PAN = "4242 4242 4242 4242"
RECIPIENTS = ["billing-ops@example.test", "cfo@example.test"]


def alert_test_settings(database_url: str, smtp_port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "billing_alert_emails": ",".join(RECIPIENTS), "smtp_host": "127.0.0.1",
        "smtp_port": smtp_port, "smtp_from": "billwatch@example.test",
        "smtp_timeout_seconds": 5, "alert_retry_base_seconds": 0.2,
        "alert_retry_max_seconds": 1.0, "alert_poll_seconds": 0.2, "embedded_scheduler": False,
        "alert_group_wait_seconds": 0}
    values.update(overrides)
    return test_settings(database_url, "http://127.0.0.1:9", **values)


async def webhook_failures(db: Database, count: int, *, event_type: str = "invoice.paid",
                           per_transaction: int = 10) -> None:
    """``count`` failed webhook deliveries, as the webhook processor audits them."""
    written = 0
    while written < count:
        async with db.unit_of_work() as session:
            for _ in range(min(per_transaction, count - written)):
                event_id = f"evt_{uuid.uuid4().hex[:16]}"
                recorder.record(session, AuditEvent.WEBHOOK_FAILED, actor=STRIPE,
                                outcome=Outcome.FAILURE, stripe=StripeRefs(event_id=event_id),
                                reason=f"handler error for card {PAN}",
                                data={"event_type": event_type, "attempts": 1})
                written += 1


async def payment_failed(db: Database, *, invoice: str, attempt: int,
                         amount_cents: int = 3000) -> None:
    """A failed invoice payment attempt, as ``invoice.payment_failed`` handling audits it."""
    async with db.unit_of_work() as session:
        recorder.record(
            session, AuditEvent.PAYMENT_FAILED, actor=STRIPE,
            resource=Resource("invoice", invoice),
            stripe=StripeRefs(event_id=f"evt_{uuid.uuid4().hex[:16]}", invoice_id=invoice,
                              customer_id="cus_alerts", subscription_id="sub_alerts"),
            data={"attempt_count": attempt, "amount_cents": amount_cents, "currency": "usd",
                  "failure_code": "card_declined", "card_number": PAN.replace(" ", "")})


_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")


_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def assert_no_card(text: str) -> None:
    """No card number survives: no 13-19 digit run (spaces or dashes allowed) passes Luhn.

    UUIDs are taken out first: a random one holds a Luhn-valid dashed digit run now and then
    (``...-4045-8371-31973c...``), which is an id, not a card.
    """
    for match in _DIGIT_RUN.finditer(_UUID.sub("<uuid>", text)):
        digits = re.sub(r"[ -]", "", match.group(0))
        assert not luhn_valid(digits), f"card number in {text!r}"


async def alerts(db: Database, **filters: Any) -> list[Alert]:
    async with db.sessionmaker() as session:
        query = select(Alert).order_by(Alert.created_at)
        for name, value in filters.items():
            query = query.where(getattr(Alert, name) == value)
        return list((await session.scalars(query)).all())


async def statuses(db: Database, **filters: Any) -> dict[AlertStatus, int]:
    counts: dict[AlertStatus, int] = {}
    for alert in await alerts(db, **filters):
        counts[alert.status] = counts.get(alert.status, 0) + 1
    return counts
