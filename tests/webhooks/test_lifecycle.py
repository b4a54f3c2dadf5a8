"""A subscription's whole life, told by Stripe: checkout, payments, renewal, dunning, refund, end.

localstripe delivers what it emits itself, signed, to billwatch served by uvicorn (subscription
created, invoice paid, subscription deleted); the rest arrives in Stripe's current shape, built
from Stripe's published fixtures and signed the same way.
"""

from __future__ import annotations

import httpx
import stripe
from sqlalchemy import select

from billwatch.audit.events import Outcome
from billwatch.billing.models import (
    CheckoutSession,
    CheckoutStatus,
    SubscriptionStatus,
    TransactionKind,
    TransactionStatus,
)
from billwatch.db import Database
from billwatch.webhooks.models import EventStatus, StripeEvent
from tests.support import Factory, audit_rows
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import (
    Server,
    checkout_customer,
    eventually,
    metric,
    subscribe,
    subscription_row,
    transactions_of,
)

PRICE = "billwatch_basic_monthly"
DAY = 86400


class TestWholeLife:
    async def test_created_paid_renewed_dunned_refunded_cancelled(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, peer: stripe.StripeClient,
            localstripe_delivers: Server) -> None:
        server = localstripe_delivers
        before = {name: metric(db, name, **labels) for name, labels in COUNTERS}
        customer = await checkout_customer(client, db, factory)

        # Checkout completes at Stripe: a real subscription at the peer, whose events it signs
        # and delivers to billwatch itself; the Checkout event comes in Stripe's current shape.
        stripe_sub = await subscribe(peer, customer.stripe_id, PRICE, customer.metadata())
        sub_id, first_invoice = stripe_sub["id"], stripe_sub["latest_invoice"]
        start = stripe_sub["created"]

        async def first_payment_booked() -> bool:
            txs = await transactions_of(db, customer.patient.id)
            return any(t.stripe_invoice_id == first_invoice for t in txs)

        await eventually(first_payment_booked, what="localstripe's invoice.payment_succeeded")
        created = await audit_rows(db, event_type="billing.subscription.created")
        await eventually(lambda: stored_event_of(db, "customer.subscription.created", sub_id),
                         what="localstripe's customer.subscription.created")
        completed = se.event("checkout.session.completed", se.checkout_session(
            session_id=customer.checkout.stripe_session_id, customer=customer.stripe_id,
            subscription_id=sub_id, metadata=customer.metadata(), amount=1500), created=start)
        assert (await server.deliver(completed)).status_code == 200
        assert len(created) == 1
        row = await subscription_row(db, sub_id)
        assert row is not None
        assert row.status is SubscriptionStatus.ACTIVE and row.plan_code == "basic_monthly"
        assert (row.owner_type.value, row.owner_id) == ("patient", customer.patient.id)

        # A month later: the renewal is paid (invoice.paid and invoice.payment_succeeded both
        # arrive for it) and the period moves on.
        renewal_at = start + 30 * DAY
        renewal = se.invoice(invoice_id=se.new_id("in"), customer=customer.stripe_id,
                             subscription_id=sub_id, price=PRICE, amount=1500, paid=True,
                             payment_intent="pi_renewal_" + sub_id[-8:])
        for kind in ("invoice.paid", "invoice.payment_succeeded"):
            response = await server.deliver(se.event(kind, renewal, created=renewal_at))
            assert response.outcome == "processed", response.text
        moved = se.subscription(sub_id=sub_id, customer=customer.stripe_id, price=PRICE,
                                period=(renewal_at, renewal_at + 30 * DAY))
        assert (await server.deliver(se.event("customer.subscription.updated", moved,
                                              created=renewal_at + 1))).status_code == 200

        # The next month's payment fails three times; Stripe then marks the subscription past due.
        dunning_at = renewal_at + 30 * DAY
        failing_id = se.new_id("in")
        for attempt in (1, 2, 3):
            declined = se.declined_payment_intent(pi_id="pi_failing", customer=customer.stripe_id,
                                                  amount=1500)
            failing = se.invoice(invoice_id=failing_id, customer=customer.stripe_id,
                                 subscription_id=sub_id, price=PRICE, amount=1500, paid=False,
                                 attempt_count=attempt, payment_intent=declined,
                                 next_payment_attempt=None if attempt == 3 else dunning_at + attempt * DAY)
            event = se.event("invoice.payment_failed", failing, created=dunning_at + attempt * DAY)
            assert (await server.deliver(event)).status_code == 200
        past_due = se.subscription(sub_id=sub_id, customer=customer.stripe_id, price=PRICE,
                                   status="past_due", period=(dunning_at, dunning_at + 30 * DAY))
        assert (await server.deliver(se.event("customer.subscription.updated", past_due,
                                              created=dunning_at + 4 * DAY))).status_code == 200

        # Support refunds part of the renewal from the Stripe dashboard (not through billwatch).
        refunded = se.charge(charge_id=se.new_id("ch"), customer=customer.stripe_id,
                             payment_intent="pi_renewal_" + sub_id[-8:], amount=1500,
                             amount_refunded=500)
        assert (await server.deliver(se.event("charge.refunded", refunded,
                                              created=dunning_at + 5 * DAY))).status_code == 200

        # Finally Stripe cancels it, and localstripe delivers the deletion itself.
        await peer.v1.subscriptions.cancel_async(sub_id)

        async def ended() -> bool:
            found = await subscription_row(db, sub_id)
            return found is not None and found.status is SubscriptionStatus.CANCELED

        await eventually(ended, what="localstripe's customer.subscription.deleted")

        await self.assert_state(db, customer.patient.id, sub_id, first_invoice, renewal["id"], failing_id)
        await self.assert_audit(db, customer.stripe_id, customer.patient.id, sub_id, failing_id)
        await self.assert_events(db, customer.stripe_id, sub_id)
        after = {name: metric(db, name, **labels) for name, labels in COUNTERS}
        assert {k: after[k] - before[k] for k in after} == EXPECTED_METRIC_DELTAS

    async def assert_state(self, db: Database, patient_id, sub_id: str, first_invoice: str,
                           renewal_invoice: str, failing_invoice: str) -> None:
        row = await subscription_row(db, sub_id)
        assert row is not None and row.status is SubscriptionStatus.CANCELED
        assert row.ended_at is not None and row.current_period_end is not None
        txs = await transactions_of(db, patient_id)
        payments = [t for t in txs if t.kind is TransactionKind.PAYMENT]
        paid = {t.stripe_invoice_id: t for t in payments if t.status is TransactionStatus.SUCCEEDED}
        assert set(paid) == {first_invoice, renewal_invoice}
        assert paid[first_invoice].stripe_charge_id and paid[first_invoice].amount_cents == 1500
        assert paid[renewal_invoice].refunded_cents == 500
        assert paid[renewal_invoice].stripe_payment_intent_id.startswith("pi_renewal_")
        failed = sorted((t for t in payments if t.status is TransactionStatus.FAILED),
                        key=lambda t: t.attempt_count or 0)
        assert [(t.stripe_invoice_id, t.attempt_count, t.failure_code, t.reason) for t in failed] == [
            (failing_invoice, n, "insufficient_funds", "insufficient_funds") for n in (1, 2, 3)]
        refunds = [t for t in txs if t.kind is TransactionKind.REFUND]
        assert [(r.amount_cents, r.refund_of_id, r.created_by_user_id) for r in refunds] == [
            (500, paid[renewal_invoice].id, None)]
        assert all(t.subscription_id == row.id for t in txs)
        async with db.sessionmaker() as session:
            checkout = (await session.scalars(select(CheckoutSession))).one()
        assert checkout.status is CheckoutStatus.COMPLETE

    async def assert_audit(self, db: Database, customer_id: str, patient_id, sub_id: str,
                           failing_invoice: str) -> None:
        rows = [r for r in await audit_rows(db, owner_id=patient_id)
                if r.event_type != "billing.webhook.received"]
        counted: dict[str, int] = {}
        for r in rows:
            counted[r.event_type] = counted.get(r.event_type, 0) + 1
        assert counted == {
            "billing.checkout.requested": 1, "billing.checkout.created": 1,
            "billing.checkout.completed": 1,
            "billing.subscription.created": 1, "billing.payment.succeeded": 2,
            "billing.subscription.updated": 2, "billing.payment.failed": 3,
            "billing.refund.recorded": 1, "billing.subscription.cancelled": 1}
        stripe_rows = [r for r in rows if r.event_type not in ("billing.checkout.created",
                                                               "billing.checkout.requested")]
        assert all(r.actor_name == "stripe" and r.actor_user_id is None for r in stripe_rows)
        assert all(r.stripe_event_id and r.stripe_customer_id == customer_id for r in stripe_rows)
        failures = [r for r in rows if r.event_type == "billing.payment.failed"]
        assert [r.data["attempt_count"] for r in failures] == [1, 2, 3]
        assert [r.data["final_attempt"] for r in failures] == [False, False, True]
        assert all(r.outcome is Outcome.FAILURE and r.stripe_invoice_id == failing_invoice
                   and r.data["amount_cents"] == 1500 and r.data["currency"] == "usd"
                   and r.data["decline_code"] == "insufficient_funds"
                   and r.data["failure_code"] == "card_declined" for r in failures)
        paid = [r for r in rows if r.event_type == "billing.payment.succeeded"]
        assert all(r.data["transaction_id"] and r.data["invoice_id"] == r.stripe_invoice_id
                   and r.data["amount_cents"] == 1500 for r in paid)
        cancelled = next(r for r in rows if r.event_type == "billing.subscription.cancelled")
        assert cancelled.stripe_subscription_id == sub_id
        assert cancelled.data["cancelled_by"] == "stripe" and cancelled.data["mode"] == "immediately"
        refund = next(r for r in rows if r.event_type == "billing.refund.recorded")
        assert refund.data["amount_cents"] == 500 and refund.data["refundable_remaining_cents"] == 1000
        assert not await audit_rows(db, event_type="billing.webhook.failed")

    async def assert_events(self, db: Database, customer_id: str, sub_id: str) -> None:
        async with db.sessionmaker() as session:
            events = (await session.scalars(select(StripeEvent))).all()
        ours = [e for e in events if e.payload["data"]["object"].get("customer") == customer_id
                or e.object_id == sub_id]
        by_type = {e.type for e in ours if e.status is EventStatus.PROCESSED}
        assert {"checkout.session.completed", "customer.subscription.created",
                "invoice.payment_succeeded", "invoice.paid", "customer.subscription.updated",
                "invoice.payment_failed", "charge.refunded",
                "customer.subscription.deleted"} <= by_type
        assert all(e.status in (EventStatus.PROCESSED, EventStatus.IGNORED) for e in ours)
        assert all(e.attempts == 1 and e.processed_at and e.processing_ms is not None for e in ours)
        received = await audit_rows(db, event_type="billing.webhook.received")
        assert len({r.stripe_event_id for r in received}) == len(received)  # once per event


async def stored_event_of(db: Database, event_type: str, object_id: str) -> bool:
    async with db.sessionmaker() as session:
        found = (await session.scalars(select(StripeEvent).where(
            StripeEvent.type == event_type, StripeEvent.object_id == object_id,
            StripeEvent.status == EventStatus.PROCESSED))).first()
    return found is not None


COUNTERS: list[tuple[str, dict[str, str]]] = [
    ("billing_payments_succeeded_total", {"owner_type": "patient", "plan": "basic_monthly"}),
    ("billing_payments_failed_total", {"owner_type": "patient", "reason": "insufficient_funds"}),
    ("billing_payment_final_failures_total", {"owner_type": "patient"}),
    ("billing_subscriptions_created_total", {"owner_type": "patient", "plan": "basic_monthly"}),
    ("billing_subscriptions_cancelled_total", {"owner_type": "patient", "cancelled_by": "stripe"}),
    ("billing_refunds_issued_total", {"reason_category": "other"}),
    ("billing_webhooks_failed_total", {"event_type": "invoice.payment_failed"}),
]
EXPECTED_METRIC_DELTAS = {
    "billing_payments_succeeded_total": 2.0, "billing_payments_failed_total": 3.0,
    "billing_payment_final_failures_total": 1.0, "billing_subscriptions_created_total": 1.0,
    "billing_subscriptions_cancelled_total": 1.0, "billing_refunds_issued_total": 1.0,
    "billing_webhooks_failed_total": 0.0,
}
