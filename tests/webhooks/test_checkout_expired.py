"""checkout.session.expired: an abandoned checkout ends ``expired``, audited, and frees its owner.

localstripe has no Checkout (our stand-in makes the sessions) and so never sends this event; the
events here are built from Stripe's published shape and signed as Stripe signs them.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import stripe

from billwatch.audit.events import Outcome
from billwatch.billing.models import CheckoutSession, CheckoutStatus
from billwatch.db import Database, utcnow
from tests.support import Factory, audit_rows, reload
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import Server, checkout_customer, pending_checkout, stored_event


def expired_session(*, session_id: str, customer: str | None,
                    metadata: dict[str, str]) -> dict[str, Any]:
    """A subscription-mode session Stripe expired unpaid: no subscription, no payment."""
    cs = se.shape("checkout.session")
    cs.update(id=session_id, customer=customer, subscription=None, mode="subscription",
              status="expired", payment_status="unpaid", metadata=metadata, url=None,
              expires_at=se.now() - 1, payment_intent=None,
              client_reference_id=metadata.get("billwatch_checkout_id"))
    return cs


class TestAbandonedCheckout:
    async def test_expires_our_checkout_once_and_the_owner_may_check_out_again_at_once(
            self, asgi: Server, client: httpx.AsyncClient, db: Database, factory: Factory,
            localstripe_silent: None) -> None:
        customer = await checkout_customer(client, db, factory)
        checkout = customer.checkout
        assert checkout.expires_at is not None and checkout.expires_at > utcnow()
        event = se.event("checkout.session.expired", expired_session(
            session_id=checkout.stripe_session_id or "", customer=customer.stripe_id,
            metadata=customer.metadata()))

        response = await asgi.deliver(event)
        assert response.outcome == "processed", response.text
        assert (await reload(db, CheckoutSession, checkout.id)).status is CheckoutStatus.EXPIRED
        [expired] = await audit_rows(db, event_type="billing.checkout.expired")
        assert (expired.actor_name, expired.actor_user_id) == ("stripe", None)
        assert expired.outcome is Outcome.SUCCESS and expired.stripe_event_id == event["id"]
        assert (expired.owner_id, expired.resource_id) == (customer.patient.id, str(checkout.id))
        assert expired.data["stripe_session_id"] == checkout.stripe_session_id
        assert expired.data["from"] == "checkout.session.expired"

        again = await asgi.deliver(event)  # a redelivery changes nothing
        assert again.outcome == "duplicate", again.text
        assert len(await audit_rows(db, event_type="billing.checkout.expired")) == 1

        # our own expires_at is still ahead, yet a new checkout (another plan, even) opens now
        fresh = await client.post("/billing/checkout", headers=factory.headers(customer.patient),
                                  json={"owner_type": "patient", "owner_id": str(customer.patient.id),
                                        "plan_code": "plus_monthly"})
        assert fresh.status_code == 201, fresh.text
        assert fresh.json()["id"] != str(checkout.id) and fresh.json()["status"] == "open"

    async def test_a_checkout_already_expired_by_our_clock_is_left_as_it_is(
            self, asgi: Server, client: httpx.AsyncClient, db: Database, factory: Factory,
            localstripe_silent: None) -> None:
        customer = await checkout_customer(client, db, factory)
        async with db.unit_of_work() as session:  # our expiry passed before Stripe's event came
            row = await session.get(CheckoutSession, customer.checkout.id)
            assert row is not None
            row.expires_at = utcnow() - timedelta(seconds=1)
        second = await client.post("/billing/checkout", headers=factory.headers(customer.patient),
                                   json={"owner_type": "patient",
                                         "owner_id": str(customer.patient.id),
                                         "plan_code": "basic_monthly"})
        assert second.status_code == 201, second.text
        assert len(await audit_rows(db, event_type="billing.checkout.expired")) == 1

        event = se.event("checkout.session.expired", expired_session(
            session_id=customer.checkout.stripe_session_id or "", customer=customer.stripe_id,
            metadata=customer.metadata()))
        response = await asgi.deliver(event)
        assert response.outcome == "ignored", response.text
        assert len(await audit_rows(db, event_type="billing.checkout.expired")) == 1
        newer = await reload(db, CheckoutSession, uuid.UUID(second.json()["id"]))
        assert newer.status is CheckoutStatus.OPEN  # the owner's new checkout is untouched

    async def test_a_completed_checkout_is_not_expired(
            self, asgi: Server, client: httpx.AsyncClient, db: Database, factory: Factory,
            localstripe_silent: None) -> None:
        customer = await checkout_customer(client, db, factory)
        async with db.unit_of_work() as session:
            row = await session.get(CheckoutSession, customer.checkout.id)
            assert row is not None
            row.status = CheckoutStatus.COMPLETE
        event = se.event("checkout.session.expired", expired_session(
            session_id=customer.checkout.stripe_session_id or "", customer=customer.stripe_id,
            metadata=customer.metadata()))
        assert (await asgi.deliver(event)).outcome == "ignored"
        assert (await reload(db, CheckoutSession, customer.checkout.id)).status \
            is CheckoutStatus.COMPLETE
        assert await audit_rows(db, event_type="billing.checkout.expired") == []


class TestPendingIntent:
    async def test_an_intent_whose_settlement_was_lost_is_adopted_then_expired(
            self, asgi: Server, db: Database, factory: Factory, peer: stripe.StripeClient,
            localstripe_silent: None) -> None:
        pending = await pending_checkout(db, factory, peer)  # Stripe opened it, we never heard
        session_id = se.new_id("cs")
        event = se.event("checkout.session.expired", expired_session(
            session_id=session_id, customer=pending.stripe_id, metadata=pending.metadata()))
        assert (await asgi.deliver(event)).outcome == "processed"

        settled = await reload(db, CheckoutSession, pending.checkout.id)
        assert settled.status is CheckoutStatus.EXPIRED
        assert (settled.stripe_session_id, settled.stripe_customer_id) == (
            session_id, pending.stripe_id)
        [created] = await audit_rows(db, event_type="billing.checkout.created")
        assert created.actor_user_id == pending.patient.id
        assert created.data["adopted_from"] == "checkout.session.expired"
        [expired] = await audit_rows(db, event_type="billing.checkout.expired")
        assert expired.actor_name == "stripe" and expired.resource_id == str(pending.checkout.id)


class TestNotOurs:
    async def test_a_session_billwatch_did_not_open_is_ignored(
            self, asgi: Server, db: Database, localstripe_silent: None) -> None:
        event = se.event("checkout.session.expired", expired_session(
            session_id=se.new_id("cs"), customer=se.new_id("cus"), metadata={}))
        response = await asgi.deliver(event)
        assert response.outcome == "ignored", response.text
        stored = await stored_event(db, event["id"])
        assert stored is not None and stored.type == "checkout.session.expired"
        assert await audit_rows(db, event_type="billing.checkout.expired") == []
