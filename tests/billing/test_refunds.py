"""Refunds: admins give back all or part of a payment, never more than what is left."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from billwatch.audit.events import Outcome
from billwatch.billing.models import Transaction, TransactionKind, TransactionStatus
from billwatch.db import Database
from billwatch.payments.gateway import PaymentsGateway
from tests.billing.helpers import request_refund
from tests.support import Factory, People, audit_rows, keyed, paid_subscription, reload, snapshot


async def refund_rows(db: Database) -> list[Transaction]:
    async with db.sessionmaker() as session:
        return list((await session.scalars(select(Transaction).where(
            Transaction.kind == TransactionKind.REFUND).order_by(Transaction.created_at))).all())


async def stripe_refunds(settings: Any, charge_id: str | None) -> list[dict[str, Any]]:
    page = await PaymentsGateway(settings).client.v1.refunds.list_async(
        params={"charge": charge_id or "", "limit": 100})
    return [r.to_dict() for r in page.data]


class TestRefunds:
    async def test_partial_then_the_rest_then_nothing_left(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        url = f"/admin/transactions/{payment.id}/refund"
        headers = factory.headers(people.admin)
        first = await client.post(url, headers=keyed(headers), json={
            "amount_cents": 500, "reason": "service_issue", "note": "video visit dropped"})
        assert first.status_code == 201, first.text
        assert first.json()["kind"] == "refund" and first.json()["amount_cents"] == 500
        assert first.json()["status"] == "succeeded"
        assert (await reload(db, Transaction, payment.id)).refunded_cents == 500

        rest = await client.post(url, headers=keyed(headers), json={"reason": "requested_by_customer"})
        assert rest.status_code == 201 and rest.json()["amount_cents"] == 1000
        assert (await reload(db, Transaction, payment.id)).refunded_cents == 1500
        charge = await PaymentsGateway(settings).client.v1.charges.retrieve_async(
            payment.stripe_charge_id or "")
        assert charge.amount_refunded == 1500

        nothing = await client.post(url, headers=keyed(headers), json={"reason": "other"})
        assert nothing.status_code == 409 and nothing.json()["error"] == "refund_too_large"

        rows = await audit_rows(db, event_type="billing.refund.issued")
        assert [(r.outcome, r.data.get("amount_cents")) for r in rows] == [
            (Outcome.SUCCESS, 500), (Outcome.SUCCESS, 1000), (Outcome.FAILURE, None)]
        assert rows[0].data["refundable_remaining_cents"] == 1000
        assert rows[0].data["reason"] == "service_issue"
        assert rows[0].actor_user_id == people.admin.id
        stored = await reload(db, Transaction, first.json()["id"])
        assert rows[0].idempotency_key == stored.idempotency_key
        assert stored.idempotency_key and stored.idempotency_key.startswith("refund:")
        requested = await audit_rows(db, event_type="billing.refund.requested")
        assert [(r.actor_user_id, r.data["amount_cents"]) for r in requested] == [
            (people.admin.id, 500), (people.admin.id, 1000)]

    async def test_above_the_remainder_is_409_and_changes_nothing(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        before = await snapshot(db)
        response = await request_refund(client, factory, people.admin, payment.id,
                                        {"amount_cents": 1501, "reason": "duplicate"})
        assert response.status_code == 409
        assert "1500" in response.json()["detail"]
        assert await snapshot(db) == before

    async def test_a_refund_cannot_be_refunded(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        headers = factory.headers(people.admin)
        refund = await client.post(f"/admin/transactions/{payment.id}/refund", headers=keyed(headers),
                                   json={"amount_cents": 100, "reason": "other"})
        again = await client.post(f"/admin/transactions/{refund.json()['id']}/refund",
                                  headers=keyed(headers), json={"reason": "other"})
        assert again.status_code == 409 and again.json()["error"] == "not_refundable"

    async def test_unknown_transaction_is_404(self, client: httpx.AsyncClient, db: Database,
                                              factory: Factory, people: People) -> None:
        response = await request_refund(client, factory, people.admin, uuid.uuid4(), {"reason": "other"})
        assert response.status_code == 404
        [row] = await audit_rows(db)
        assert row.outcome is Outcome.FAILURE and row.resource_type == "transaction"

    @pytest.mark.parametrize("body", [{"reason": "because"}, {"amount_cents": -5, "reason": "other"},
                                      {"amount_cents": 0, "reason": "other"}, {}])
    async def test_bad_input_is_422(self, client: httpx.AsyncClient, db: Database, factory: Factory,
                                    people: People, settings, body: dict[str, object]) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        before = await snapshot(db)
        response = await request_refund(client, factory, people.admin, payment.id, body)
        assert response.status_code == 422
        assert await snapshot(db) == before

    async def test_stripe_refusing_fails_the_intent_and_releases_the_amount(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        async with db.unit_of_work() as session:
            stored = await session.get(Transaction, payment.id)
            assert stored is not None
            stored.stripe_charge_id = "ch_unknownatstripe"
            stored.stripe_payment_intent_id = None
        response = await request_refund(client, factory, people.admin, payment.id,
                                        {"reason": "requested_by_customer"})
        assert response.status_code == 502
        [refund] = await refund_rows(db)
        assert refund.status is TransactionStatus.FAILED and refund.stripe_refund_id is None
        assert (await reload(db, Transaction, payment.id)).refunded_cents == 0
        rows = [(r.event_type, r.outcome, r.actor_user_id) for r in await audit_rows(db)]
        assert rows == [("billing.refund.requested", Outcome.SUCCESS, people.admin.id),
                        ("billing.refund.failed", Outcome.FAILURE, people.admin.id),
                        ("billing.refund.issued", Outcome.FAILURE, people.admin.id)]


class TestIdempotencyKey:
    async def test_missing_key_is_400_with_a_reason_and_changes_nothing(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        before = await snapshot(db)
        response = await client.post(f"/admin/transactions/{payment.id}/refund",
                                     headers=factory.headers(people.admin), json={"reason": "other"})
        assert response.status_code == 400
        assert response.json()["error"] == "idempotency_key_required"
        assert "Idempotency-Key" in response.json()["detail"]
        assert await snapshot(db) == before
        [row] = await audit_rows(db)
        assert row.outcome is Outcome.FAILURE and "idempotency_key_required" in (row.reason or "")

    @pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9"])
    async def test_a_malformed_key_is_400(self, client: httpx.AsyncClient, db: Database,
                                          factory: Factory, people: People, settings,
                                          key: str) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        headers = {**factory.headers(people.admin), "Idempotency-Key": key}
        response = await client.post(f"/admin/transactions/{payment.id}/refund",
                                     headers={k: v.encode() for k, v in headers.items()},
                                     json={"reason": "other"})
        assert response.status_code == 400
        assert response.json()["error"] in ("idempotency_key_invalid", "idempotency_key_required")
        assert await refund_rows(db) == []

    async def test_a_retry_with_the_same_key_refunds_once_and_answers_the_same(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        headers = keyed(factory.headers(people.admin))
        url = f"/admin/transactions/{payment.id}/refund"
        body = {"amount_cents": 400, "reason": "duplicate"}
        first = await client.post(url, headers=headers, json=body)
        again = await client.post(url, headers=headers, json=dict(reversed(body.items())))
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()
        assert again.headers.get("idempotent-replayed") == "true"
        assert len(await refund_rows(db)) == 1
        assert [r["amount"] for r in await stripe_refunds(settings, payment.stripe_charge_id)] == [400]
        assert (await reload(db, Transaction, payment.id)).refunded_cents == 400
        assert len(await audit_rows(db, event_type="billing.refund.issued")) == 1

    async def test_the_same_key_with_another_body_is_422(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        headers = keyed(factory.headers(people.admin))
        url = f"/admin/transactions/{payment.id}/refund"
        assert (await client.post(url, headers=headers,
                                  json={"amount_cents": 400, "reason": "duplicate"})).status_code == 201
        other = await client.post(url, headers=headers, json={"amount_cents": 500, "reason": "duplicate"})
        assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
        assert len(await refund_rows(db)) == 1
        assert (await reload(db, Transaction, payment.id)).refunded_cents == 400

    async def test_keys_belong_to_their_admin(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings) -> None:
        from billwatch.accounts.models import Role
        _, payment = await paid_subscription(db, settings, people.owner)
        other_admin = await factory.user(Role.ADMIN)
        url = f"/admin/transactions/{payment.id}/refund"
        body = {"amount_cents": 100, "reason": "other"}
        one = await client.post(url, headers=keyed(factory.headers(people.admin), "k-1"), json=body)
        two = await client.post(url, headers=keyed(factory.headers(other_admin), "k-1"), json=body)
        assert one.status_code == two.status_code == 201 and one.json()["id"] != two.json()["id"]
        assert len(await stripe_refunds(settings, payment.stripe_charge_id)) == 2

    def test_the_openapi_document_lists_the_header(self, app: FastAPI) -> None:
        paths = app.openapi()["paths"]
        refund = [p for p in paths["/admin/transactions/{transaction_id}/refund"]["post"]["parameters"]
                  if p["name"] == "Idempotency-Key"]
        assert [(p["in"], p["required"]) for p in refund] == [("header", True)]
        grant = [p for p in paths["/admin/free-grants"]["post"].get("parameters", [])
                 if p["name"] == "Idempotency-Key"]
        assert [(p["in"], p["required"]) for p in grant] == [("header", False)]
        reads = paths["/billing/owners/{owner_type}/{owner_id}"]["get"].get("parameters", [])
        assert "Idempotency-Key" not in {p["name"] for p in reads}
