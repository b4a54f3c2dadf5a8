"""Refunds: admins give back all or part of a payment, never more than what is left."""

from __future__ import annotations

import uuid

import httpx
import pytest

from billwatch.audit.events import Outcome
from billwatch.billing.models import Transaction, TransactionKind
from billwatch.db import Database
from billwatch.payments.gateway import PaymentsGateway
from tests.support import Factory, People, audit_rows, paid_subscription, reload, snapshot


class TestRefunds:
    async def test_partial_then_the_rest_then_nothing_left(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        url = f"/admin/transactions/{payment.id}/refund"
        headers = factory.headers(people.admin)
        first = await client.post(url, headers=headers, json={
            "amount_cents": 500, "reason": "service_issue", "note": "video visit dropped"})
        assert first.status_code == 201, first.text
        assert first.json()["kind"] == "refund" and first.json()["amount_cents"] == 500
        assert (await reload(db, Transaction, payment.id)).refunded_cents == 500

        rest = await client.post(url, headers=headers, json={"reason": "requested_by_customer"})
        assert rest.status_code == 201 and rest.json()["amount_cents"] == 1000
        assert (await reload(db, Transaction, payment.id)).refunded_cents == 1500
        charge = await PaymentsGateway(settings).client.v1.charges.retrieve_async(
            payment.stripe_charge_id or "")
        assert charge.amount_refunded == 1500

        nothing = await client.post(url, headers=headers, json={"reason": "other"})
        assert nothing.status_code == 409 and nothing.json()["error"] == "refund_too_large"

        rows = await audit_rows(db, event_type="billing.refund.issued")
        assert [(r.outcome, r.data.get("amount_cents")) for r in rows] == [
            (Outcome.SUCCESS, 500), (Outcome.SUCCESS, 1000), (Outcome.FAILURE, None)]
        assert rows[0].data["refundable_remaining_cents"] == 1000
        assert rows[0].data["reason"] == "service_issue"
        assert rows[0].idempotency_key == f"refund:{first.json()['id']}"

    async def test_above_the_remainder_is_409_and_changes_nothing(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        before = await snapshot(db)
        response = await client.post(f"/admin/transactions/{payment.id}/refund",
                                     headers=factory.headers(people.admin),
                                     json={"amount_cents": 1501, "reason": "duplicate"})
        assert response.status_code == 409
        assert "1500" in response.json()["detail"]
        assert await snapshot(db) == before

    async def test_a_refund_cannot_be_refunded(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        headers = factory.headers(people.admin)
        refund = await client.post(f"/admin/transactions/{payment.id}/refund", headers=headers,
                                   json={"amount_cents": 100, "reason": "other"})
        again = await client.post(f"/admin/transactions/{refund.json()['id']}/refund",
                                  headers=headers, json={"reason": "other"})
        assert again.status_code == 409 and again.json()["error"] == "not_refundable"

    async def test_unknown_transaction_is_404(self, client: httpx.AsyncClient, db: Database,
                                              factory: Factory, people: People) -> None:
        response = await client.post(f"/admin/transactions/{uuid.uuid4()}/refund",
                                     headers=factory.headers(people.admin),
                                     json={"reason": "other"})
        assert response.status_code == 404
        [row] = await audit_rows(db)
        assert row.outcome is Outcome.FAILURE and row.resource_type == "transaction"

    @pytest.mark.parametrize("body", [{"reason": "because"}, {"amount_cents": -5, "reason": "other"},
                                      {"amount_cents": 0, "reason": "other"}, {}])
    async def test_bad_input_is_422(self, client: httpx.AsyncClient, db: Database, factory: Factory,
                                    people: People, settings, body: dict[str, object]) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        before = await snapshot(db)
        response = await client.post(f"/admin/transactions/{payment.id}/refund",
                                     headers=factory.headers(people.admin), json=body)
        assert response.status_code == 422
        assert await snapshot(db) == before

    async def test_stripe_refusing_moves_no_money_and_writes_no_refund(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        async with db.unit_of_work() as session:
            stored = await session.get(Transaction, payment.id)
            assert stored is not None
            stored.stripe_charge_id = "ch_unknownatstripe"
            stored.stripe_payment_intent_id = None
        before = await snapshot(db)
        response = await client.post(f"/admin/transactions/{payment.id}/refund",
                                     headers=factory.headers(people.admin),
                                     json={"reason": "requested_by_customer"})
        assert response.status_code == 502
        assert await snapshot(db) == before
        async with db.sessionmaker() as session:
            from sqlalchemy import select
            refunds = (await session.scalars(select(Transaction).where(
                Transaction.kind == TransactionKind.REFUND))).all()
        assert refunds == []
        [row] = await audit_rows(db)
        assert row.event_type == "billing.refund.issued" and row.outcome is Outcome.FAILURE
