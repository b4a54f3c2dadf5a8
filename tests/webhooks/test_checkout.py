"""checkout.session.completed: our checkout closes, and a proxy's checkout stays on the subscription."""

from __future__ import annotations

import uuid

import httpx
import pytest
import stripe

from billwatch.accounts.models import Role
from billwatch.billing.models import CheckoutSession, CheckoutStatus
from billwatch.db import Database
from tests.support import Factory, audit_rows
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import Server, checkout_customer, subscribe, subscription_row
from tests.webhooks.test_idempotency import peer_events


class TestProxyCheckout:
    @pytest.mark.parametrize("checkout_first", [True, False], ids=["checkout-first", "subscription-first"])
    async def test_the_subscription_remembers_the_proxy_whatever_the_order(
            self, asgi: Server, client: httpx.AsyncClient, db: Database, factory: Factory,
            peer: stripe.StripeClient, localstripe_silent: None, checkout_first: bool) -> None:
        patient, proxy = await factory.user(Role.PATIENT), await factory.user(Role.PROXY)
        assigned = await client.post(f"/patients/{patient.id}/billing-managers",
                                     headers=factory.headers(patient), json={"proxy_id": str(proxy.id)})
        assert assigned.status_code == 201, assigned.text
        assignment_id = uuid.UUID(assigned.json()["id"])
        customer = await checkout_customer(client, db, factory, patient=patient, acting=proxy,
                                           plan_code="plus_monthly")
        assert customer.checkout.manager_assignment_id == assignment_id
        sub = await subscribe(peer, customer.stripe_id, "billwatch_plus_monthly", customer.metadata())
        events = await peer_events(peer, customer.stripe_id, sub["created"])
        created = events["customer.subscription.created"]
        completed = se.event("checkout.session.completed", se.checkout_session(
            session_id=customer.checkout.stripe_session_id, customer=customer.stripe_id,
            subscription_id=sub["id"], metadata=customer.metadata(), amount=3000))
        for event in ([completed, created] if checkout_first else [created, completed]):
            response = await asgi.deliver(event)
            assert response.outcome == "processed", response.text

        row = await subscription_row(db, sub["id"])
        assert row is not None and (row.owner_id, row.plan_code) == (patient.id, "plus_monthly")
        assert (row.managed_by_proxy_id, row.manager_assignment_id) == (proxy.id, assignment_id)
        assert row.current_period_end is not None and row.status.value == "active"
        async with db.sessionmaker() as session:
            checkout = await session.get(CheckoutSession, customer.checkout.id)
        assert checkout is not None and checkout.status is CheckoutStatus.COMPLETE
        made = await audit_rows(db, event_type="billing.subscription.created")
        assert len(made) == 1 and made[0].owner_id == patient.id
        done = await audit_rows(db, event_type="billing.checkout.completed")
        assert len(done) == 1 and done[0].resource_id == str(customer.checkout.id)
        assert done[0].data["managed_by_proxy_id"] == str(proxy.id)
        assert done[0].data["manager_assignment_id"] == str(assignment_id)

    async def test_metadata_naming_someone_who_is_not_a_proxy_is_not_trusted(
            self, asgi: Server, client: httpx.AsyncClient, db: Database, factory: Factory,
            peer: stripe.StripeClient, localstripe_silent: None) -> None:
        customer = await checkout_customer(client, db, factory)
        other_patient = await factory.user(Role.PATIENT)
        meta = {**customer.metadata(), "billwatch_proxy_id": str(other_patient.id),
                "billwatch_assignment_id": str(uuid.uuid4())}
        sub_id = se.new_id("sub")
        event = se.event("customer.subscription.created", se.subscription(
            sub_id=sub_id, customer=customer.stripe_id, price="billwatch_basic_monthly", metadata=meta))
        assert (await asgi.deliver(event)).outcome == "processed"
        row = await subscription_row(db, sub_id)
        assert row is not None and row.managed_by_proxy_id is None and row.manager_assignment_id is None
