"""charge.refunded records refunds made outside billwatch, and never counts ours twice."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import stripe

from billwatch.accounts.actor import Actor
from billwatch.accounts.models import Role, User
from billwatch.audit.events import Outcome
from billwatch.billing.models import Transaction, TransactionKind, TransactionStatus
from billwatch.billing.refunds import RefundReason, refund_key, reserve_refund
from billwatch.db import Database
from billwatch.webhooks.models import EventStatus
from tests.support import Factory, audit_rows, keyed
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import (
    Server,
    linked_customer,
    metric,
    stored_event,
    subscribe,
    transactions_of,
)
from tests.webhooks.test_idempotency import peer_events


async def booked_payment(asgi: Server, db: Database, factory: Factory,
                         peer: stripe.StripeClient) -> tuple[User, str, Transaction]:
    """A real paid subscription at the peer whose invoice event billwatch has processed."""
    patient, customer_id = await linked_customer(db, factory, peer)
    sub = await subscribe(peer, customer_id, "billwatch_plus_monthly")
    paid = (await peer_events(peer, customer_id, sub["created"]))["invoice.payment_succeeded"]
    assert (await asgi.deliver(paid)).outcome == "processed"
    payment = next(t for t in await transactions_of(db, patient.id) if t.kind is TransactionKind.PAYMENT)
    assert payment.stripe_charge_id and payment.amount_cents == 3000
    return patient, customer_id, payment


async def refunds_of(db: Database, patient_id: uuid.UUID) -> list[Transaction]:
    return [t for t in await transactions_of(db, patient_id) if t.kind is TransactionKind.REFUND]


async def charge_event(peer: stripe.StripeClient, charge_id: str) -> dict[str, Any]:
    """charge.refunded carrying the charge as the peer holds it now (older shape: refunds listed)."""
    charge = (await peer.v1.charges.retrieve_async(charge_id)).to_dict()
    return se.event("charge.refunded", charge)


class TestOurRefunds:
    async def test_a_refund_issued_through_billwatch_is_not_recorded_again(
            self, asgi: Server, client: httpx.AsyncClient, db: Database, factory: Factory,
            peer: stripe.StripeClient, localstripe_silent: None) -> None:
        patient, customer_id, payment = await booked_payment(asgi, db, factory, peer)
        admin = await factory.user(Role.ADMIN)
        response = await client.post(f"/admin/transactions/{payment.id}/refund",
                                     headers=keyed(factory.headers(admin)),
                                     json={"amount_cents": 1000, "reason": "service_issue"})
        assert response.status_code == 201, response.text
        listed = await charge_event(peer, payment.stripe_charge_id or "")
        assert listed["data"]["object"]["refunds"]["data"][0]["metadata"]["billwatch_refund_id"]
        current = se.event("charge.refunded", se.charge(
            charge_id=payment.stripe_charge_id or "", customer=customer_id,
            payment_intent=payment.stripe_payment_intent_id, amount=3000, amount_refunded=1000))
        for event in (listed, current):
            result = await asgi.deliver(event)
            assert result.outcome == "processed", result.text
        assert [r.amount_cents for r in await refunds_of(db, patient.id)] == [1000]
        assert not await audit_rows(db, event_type="billing.refund.recorded")
        notes = {r.data["note"] for r in await audit_rows(db, event_type="billing.webhook.received")
                 if r.data["type"] == "charge.refunded"}
        assert notes == {"every refund of this charge is already recorded"}

    async def test_metadata_naming_no_intent_of_ours_is_recorded_not_failed(
            self, asgi: Server, db: Database, factory: Factory, peer: stripe.StripeClient,
            localstripe_silent: None) -> None:
        patient, customer_id, payment = await booked_payment(asgi, db, factory, peer)
        foreign = se.refund(refund_id=se.new_id("re"), charge_id=payment.stripe_charge_id or "",
                            amount=500, metadata={"billwatch_refund_id": str(uuid.uuid4())})
        event = se.event("charge.refunded", se.charge(
            charge_id=payment.stripe_charge_id or "", customer=customer_id, payment_intent=None,
            amount=3000, amount_refunded=500, refunds=[foreign]))
        response = await asgi.deliver(event)
        assert response.outcome == "processed", response.text
        stored = await stored_event(db, event["id"])
        assert stored is not None and stored.status is EventStatus.PROCESSED
        assert [(r.amount_cents, r.stripe_refund_id) for r in await refunds_of(db, patient.id)] == [
            (500, foreign["id"])]


async def intent_then_stripe(db: Database, factory: Factory, peer: stripe.StripeClient,
                             payment: Transaction, amount: int) -> tuple[User, Transaction, str]:
    """Phase 1 committed and Stripe refunded, then the process died before settling."""
    admin = await factory.user(Role.ADMIN)
    actor = Actor(admin.id, Role.ADMIN)
    async with db.unit_of_work() as session:
        intent, _ = await reserve_refund(session, actor=actor, payment_id=payment.id,
                                         amount_cents=amount, reason=RefundReason.SERVICE_ISSUE,
                                         note=None, key=refund_key(actor, payment.id, "died"))
    made = await peer.v1.refunds.create_async(params={
        "charge": payment.stripe_charge_id or "", "amount": amount,
        "metadata": {"billwatch_refund_id": str(intent.id)}})
    return admin, intent, str(made.id)


class TestAdoption:
    async def test_charge_refunded_adopts_a_pending_intent_in_the_admins_name(
            self, asgi: Server, db: Database, factory: Factory, peer: stripe.StripeClient,
            localstripe_silent: None) -> None:
        patient, _, payment = await booked_payment(asgi, db, factory, peer)
        admin, intent, stripe_id = await intent_then_stripe(db, factory, peer, payment, 1200)
        for _ in range(2):  # a repeated delivery changes nothing more
            event = await charge_event(peer, payment.stripe_charge_id or "")
            assert (await asgi.deliver(event)).outcome == "processed"
        [refund] = await refunds_of(db, patient.id)
        assert (refund.id, refund.status, refund.stripe_refund_id) == (
            intent.id, TransactionStatus.SUCCEEDED, stripe_id)
        issued = await audit_rows(db, event_type="billing.refund.issued")
        assert [(r.actor_user_id, r.actor_name, r.data["amount_cents"]) for r in issued] == [
            (admin.id, None, 1200)]
        assert issued[0].stripe_event_id is not None
        assert not await audit_rows(db, event_type="billing.refund.recorded")
        paid = next(t for t in await transactions_of(db, patient.id) if t.id == payment.id)
        assert paid.refunded_cents == 1200

    async def test_refund_updated_adopts_it_and_a_failure_releases_the_amount(
            self, asgi: Server, db: Database, factory: Factory, peer: stripe.StripeClient,
            localstripe_silent: None) -> None:
        patient, _, payment = await booked_payment(asgi, db, factory, peer)
        admin, intent, stripe_id = await intent_then_stripe(db, factory, peer, payment, 800)
        failed = se.refund(refund_id=stripe_id, charge_id=payment.stripe_charge_id or "",
                           amount=800, metadata={"billwatch_refund_id": str(intent.id)})
        failed["status"] = "failed"
        result = await asgi.deliver(se.event("refund.updated", failed))
        assert result.outcome == "processed", result.text
        [refund] = await refunds_of(db, patient.id)
        assert refund.status is TransactionStatus.FAILED
        paid = next(t for t in await transactions_of(db, patient.id) if t.id == payment.id)
        assert paid.refunded_cents == 0
        [row] = await audit_rows(db, event_type="billing.refund.failed")
        assert row.actor_user_id == admin.id and row.outcome is Outcome.FAILURE

    async def test_a_refund_event_naming_nothing_of_ours_is_ignored(
            self, asgi: Server, db: Database) -> None:
        event = se.event("refund.created", se.refund(refund_id=se.new_id("re"),
                                                     charge_id=se.new_id("ch"), amount=100))
        assert (await asgi.deliver(event)).outcome == "ignored"


class TestRefundsMadeElsewhere:
    async def test_dashboard_refund_is_recorded_once(
            self, asgi: Server, db: Database, factory: Factory, peer: stripe.StripeClient,
            localstripe_silent: None) -> None:
        patient, customer_id, payment = await booked_payment(asgi, db, factory, peer)
        counted = metric(db, "billing_refunds_issued_total", reason_category="requested_by_customer")
        external = se.refund(refund_id=se.new_id("re"), charge_id=payment.stripe_charge_id or "",
                             amount=1200, reason="requested_by_customer")

        def refunded() -> dict[str, Any]:
            return se.event("charge.refunded", se.charge(
                charge_id=payment.stripe_charge_id or "", customer=customer_id, payment_intent=None,
                amount=3000, amount_refunded=1200, refunds=[external]))

        for _ in range(2):  # Stripe sends a second charge.refunded (new id) for the same state
            assert (await asgi.deliver(refunded())).outcome == "processed"
        refunds = await refunds_of(db, patient.id)
        assert [(r.amount_cents, r.stripe_refund_id, r.reason, r.refund_of_id) for r in refunds] == [
            (1200, external["id"], "requested_by_customer", payment.id)]
        recorded = await audit_rows(db, event_type="billing.refund.recorded")
        assert len(recorded) == 1 and recorded[0].actor_name == "stripe"
        assert recorded[0].data["amount_cents"] == 1200 and recorded[0].owner_id == patient.id
        assert recorded[0].data["refundable_remaining_cents"] == 1800
        assert metric(db, "billing_refunds_issued_total",
                      reason_category="requested_by_customer") == counted + 1
        paid = next(t for t in await transactions_of(db, patient.id) if t.id == payment.id)
        assert paid.refunded_cents == 1200

    async def test_a_charge_that_is_not_ours_is_ignored(self, asgi: Server, db: Database) -> None:
        event = se.event("charge.refunded", se.charge(
            charge_id=se.new_id("ch"), customer=se.new_id("cus"), payment_intent=None, amount=100,
            amount_refunded=100))
        response = await asgi.deliver(event)
        assert response.outcome == "ignored"
        stored = await stored_event(db, event["id"])
        assert stored is not None and "not a billwatch payment" in (stored.last_error or "")
