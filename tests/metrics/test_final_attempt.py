"""Which failed attempt is final is one setting: the audit row, the metric and the alert follow it."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import OwnerType, Role
from billwatch.app import create_app
from billwatch.audit.models import AuditLog
from billwatch.config import Settings
from billwatch.db import Database
from tests.alerts.helpers import alerts
from tests.support import Factory, audit_rows, paid_subscription
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import drain_inbox, eventually

FINAL = "billing_payment_final_failures_total"


def final_failures(app: FastAPI) -> float:
    """The app's own count (its runtime is built from the test's settings): it starts at 0."""
    return app.state.runtime.metrics.registry.get_sample_value(
        FINAL, {"owner_type": "patient"}) or 0.0


class TestFinalAttempt:
    async def test_the_setting_decides_which_attempt_is_final(
            self, settings: Settings, db: Database, factory: Factory) -> None:
        configured = settings.model_copy(update={"alert_payment_failure_attempts": 2})
        owner = OwnerRef(OwnerType.PATIENT, (await factory.user(Role.PATIENT)).id)
        subscription, _ = await paid_subscription(db, configured, owner)
        assert subscription.stripe_customer_id and subscription.stripe_subscription_id
        invoice_id = se.new_id("in")
        app = create_app(configured, database=db)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as client:
            for attempt in (1, 2, 3):
                declined = se.declined_payment_intent(
                    pi_id=se.new_id("pi"), customer=subscription.stripe_customer_id, amount=1500)
                failing = se.invoice(
                    invoice_id=invoice_id, customer=subscription.stripe_customer_id,
                    subscription_id=subscription.stripe_subscription_id,
                    price="billwatch_basic_monthly", amount=1500, paid=False,
                    attempt_count=attempt, payment_intent=declined)
                body = se.encode(se.event("invoice.payment_failed", failing,
                                          created=se.now() + attempt))
                response = await client.post("/webhooks/stripe", content=body, headers={
                    "Stripe-Signature": se.sign(body), "Content-Type": "application/json"})
                assert response.status_code == 200, response.text
                await drain_inbox(app)  # the stored event is applied as the app's runner would

            async def three_failures() -> list[AuditLog] | None:
                rows = await audit_rows(db, event_type="billing.payment.failed")
                return rows if len(rows) == 3 else None

            rows = await eventually(three_failures, what="three billing.payment.failed rows")
        by_attempt = sorted((r.data["attempt_count"], r.data["final_attempt"]) for r in rows)
        assert by_attempt == [(1, False), (2, True), (3, True)]
        assert final_failures(app) == 2
        raised = await alerts(db, kind="payment_final_failure")
        assert sorted(alert.payload["attempt_count"] for alert in raised) == [2, 3]
