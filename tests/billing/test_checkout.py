"""Checkout: a Stripe customer on first need, a session, one audit row; failures change nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
from sqlalchemy import select

from billwatch.accounts.models import Role
from billwatch.audit.events import Outcome
from billwatch.billing.models import CheckoutSession, CheckoutStatus, StripeCustomer
from billwatch.db import Database, utcnow
from billwatch.payments.gateway import PaymentsGateway
from tests.support import Factory, People, audit_rows, paid_subscription, snapshot


async def expire_now(db: Database, checkout_id: str) -> None:
    """Move a checkout's Stripe expiry into the past, as time passing would."""
    async with db.unit_of_work() as session:
        checkout = await session.get(CheckoutSession, uuid.UUID(checkout_id))
        assert checkout is not None
        checkout.expires_at = utcnow() - timedelta(seconds=1)


class TestCheckoutSucceeds:
    async def test_patient_checkout_creates_customer_session_and_one_audit_row(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        response = await client.post("/billing/checkout", headers=factory.headers(people.patient),
                                     json={**people.owner_body, "plan_code": "plus_yearly"})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["stripe_session_id"].startswith("cs_test_")
        assert body["url"].endswith(body["stripe_session_id"])

        async with db.sessionmaker() as session:
            checkout = await session.get(CheckoutSession, uuid.UUID(body["id"]))
            customer = (await session.scalars(select(StripeCustomer))).one()
        assert checkout is not None and checkout.idempotency_key == f"checkout:{checkout.id}"
        assert customer.owner_id == people.patient.id
        assert customer.idempotency_key == f"customer:patient:{people.patient.id}"
        stripe_customer = await PaymentsGateway(settings).client.v1.customers.retrieve_async(
            customer.stripe_customer_id)
        assert stripe_customer.metadata["billwatch_owner_id"] == str(people.patient.id)

        rows = await audit_rows(db)
        assert [(r.event_type, r.outcome) for r in rows] == [
            ("billing.checkout.requested", Outcome.SUCCESS),
            ("billing.checkout.created", Outcome.SUCCESS)]
        assert rows[0].idempotency_key == checkout.idempotency_key
        assert rows[0].actor_user_id == people.patient.id
        row = rows[1]
        assert row.actor_user_id == people.patient.id and row.actor_role is Role.PATIENT
        assert row.owner_id == people.patient.id and row.resource_id == str(checkout.id)
        assert row.stripe_customer_id == customer.stripe_customer_id
        assert row.idempotency_key == checkout.idempotency_key
        assert row.data["plan"] == "plus_yearly" and row.data["amount_cents"] == 30000
        assert row.data["customer_created"] is True

    async def test_a_checkout_after_an_expired_one_reuses_the_customer(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People) -> None:
        ids = []
        for _ in range(2):
            response = await client.post("/billing/checkout", headers=factory.headers(people.patient),
                                         json={**people.owner_body, "plan_code": "basic_monthly"})
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
            await expire_now(db, ids[-1])
        assert ids[0] != ids[1]
        async with db.sessionmaker() as session:
            assert len((await session.scalars(select(StripeCustomer))).all()) == 1
            first = await session.get(CheckoutSession, uuid.UUID(ids[0]))
            assert first is not None and first.status is CheckoutStatus.EXPIRED
        flags = [r.data["customer_created"]
                 for r in await audit_rows(db, event_type="billing.checkout.created")]
        assert flags == [True, False]
        assert len(await audit_rows(db, event_type="billing.checkout.expired")) == 1

    async def test_organization_billing_admin_may_check_out_a_plain_member_may_not(
            self, client: httpx.AsyncClient, factory: Factory) -> None:
        billing_admin = await factory.user(Role.PATIENT)
        member = await factory.user(Role.PATIENT)
        clinic = await factory.organization(billing_admins=[billing_admin], members=[member])
        body = {"owner_type": "organization", "owner_id": str(clinic.id), "plan_code": "clinic_monthly"}
        denied = await client.post("/billing/checkout", headers=factory.headers(member), json=body)
        assert denied.status_code == 403
        allowed = await client.post("/billing/checkout", headers=factory.headers(billing_admin),
                                    json=body)
        assert allowed.status_code == 201, allowed.text
        read = await client.get(f"/billing/owners/organization/{clinic.id}",
                                headers=factory.headers(member))
        assert read.status_code == 200


class TestCheckoutRefused:
    async def _refused(self, client: httpx.AsyncClient, db: Database, headers: dict[str, str],
                       body: dict[str, object], status: int, error: str) -> None:
        before = await snapshot(db)
        response = await client.post("/billing/checkout", headers=headers, json=body)
        assert response.status_code == status, response.text
        assert response.json()["error"] == error
        assert await snapshot(db) == before
        rows = await audit_rows(db, event_type="billing.checkout.created")
        assert len(rows) == 1 and rows[0].outcome is Outcome.FAILURE
        assert rows[0].reason is not None and rows[0].reason.startswith(error)

    async def test_unknown_plan_is_404(self, client: httpx.AsyncClient, db: Database,
                                       factory: Factory, people: People) -> None:
        await self._refused(client, db, factory.headers(people.patient),
                            {**people.owner_body, "plan_code": "platinum"}, 404, "plan_not_found")

    async def test_unknown_owner_is_404(self, client: httpx.AsyncClient, db: Database,
                                        factory: Factory, people: People) -> None:
        body = {"owner_type": "organization", "owner_id": "00000000-0000-4000-8000-000000000000",
                "plan_code": "basic_monthly"}
        await self._refused(client, db, factory.headers(people.admin), body, 404, "owner_not_found")

    async def test_malformed_body_is_422_with_the_fields(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People) -> None:
        body = {"owner_type": "dog", "owner_id": "not-a-uuid", "plan_code": "basic_monthly",
                "card_number": "4242 4242 4242 4242"}
        await self._refused(client, db, factory.headers(people.patient), body, 422,
                            "validation_error")
        row = (await audit_rows(db))[0]
        assert "owner_type" in (row.reason or "") and "4242 4242" not in (row.reason or "")

    async def test_a_live_subscription_is_409(self, client: httpx.AsyncClient, db: Database,
                                              factory: Factory, people: People, settings) -> None:
        await paid_subscription(db, settings, people.owner)
        await self._refused(client, db, factory.headers(people.patient),
                            {**people.owner_body, "plan_code": "basic_monthly"}, 409,
                            "subscription_exists")

    async def test_stripe_refusing_the_session_fails_the_intent(
            self, db: Database, factory: Factory, people: People, settings) -> None:
        """The customer is created at Stripe and kept; the session is refused: the intent fails."""
        from billwatch.app import create_app

        strict = settings.model_copy(update={"stripe_local_standins": False})
        app = create_app(strict, database=db)
        before = await snapshot(db)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as http:
            response = await http.post("/billing/checkout", headers=factory.headers(people.patient),
                                       json={**people.owner_body, "plan_code": "basic_monthly"})
        assert response.status_code == 502, response.text
        assert response.json()["error"].startswith("stripe_")
        after = await snapshot(db)
        assert after["subscriptions"] == before["subscriptions"]
        async with db.sessionmaker() as session:
            [checkout] = (await session.scalars(select(CheckoutSession))).all()
            [customer] = (await session.scalars(select(StripeCustomer))).all()
        assert checkout.status is CheckoutStatus.FAILED and checkout.stripe_session_id is None
        assert checkout.error and "checkout session creation failed" in checkout.error
        assert customer.owner_id == people.patient.id
        rows = await audit_rows(db)
        assert [(r.event_type, r.outcome) for r in rows] == [
            ("billing.checkout.requested", Outcome.SUCCESS),
            ("billing.checkout.created", Outcome.FAILURE)]
        assert "checkout session creation failed" in (rows[1].reason or "")
        assert rows[1].actor_user_id == people.patient.id
        assert rows[1].resource_id == str(checkout.id)
