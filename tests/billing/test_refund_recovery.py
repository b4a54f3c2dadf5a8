"""Refunds that cannot stay unknown: races, failed settlements, lost answers, crashes, hangs.

Each ends, after the client's retry or the sweeper, with exactly one refund at the Stripe peer,
one refund row, ``refunded_cents`` equal to both, and an audit trail naming the admin.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from billwatch.accounts.actor import Actor
from billwatch.accounts.models import Role
from billwatch.app import create_app
from billwatch.audit.events import Outcome
from billwatch.billing.models import Transaction, TransactionStatus
from billwatch.billing.refund_sweeper import sweep_pending_refunds
from billwatch.billing.refunds import RefundReason, refund_key, reserve_refund
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.payments.gateway import PaymentsGateway
from tests.billing.helpers import request_refund
from tests.billing.stripe_peers import AnswerDroppingProxy, SilentStripe
from tests.billing.test_refunds import refund_rows, stripe_refunds
from tests.support import Factory, People, audit_rows, keyed, paid_subscription, reload


async def serve(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("203.0.113.7", 5555)),
                             base_url="http://testserver")


async def sweep(db: Database, settings: Settings) -> None:
    """The sweeper as the scheduler runs it, once the grace period has passed."""
    await sweep_pending_refunds(db, settings, now=utcnow() + timedelta(minutes=5))


async def assert_settled_once(db: Database, settings: Settings, payment: Transaction,
                              admin_id: uuid.UUID, amount: int) -> None:
    [row] = await refund_rows(db)
    assert row.status is TransactionStatus.SUCCEEDED and row.amount_cents == amount
    at_stripe = await stripe_refunds(settings, payment.stripe_charge_id)
    assert [(r["id"], r["amount"]) for r in at_stripe] == [(row.stripe_refund_id, amount)]
    charge = await PaymentsGateway(settings).client.v1.charges.retrieve_async(
        payment.stripe_charge_id or "")
    assert (await reload(db, Transaction, payment.id)).refunded_cents == amount == charge.amount_refunded
    issued = [r for r in await audit_rows(db, event_type="billing.refund.issued")
              if r.outcome is Outcome.SUCCESS]
    assert [(r.actor_user_id, r.actor_name, r.data["amount_cents"]) for r in issued] == [
        (admin_id, None, amount)]
    requested = await audit_rows(db, event_type="billing.refund.requested")
    assert [r.actor_user_id for r in requested] == [admin_id]


class TestConcurrentRefunds:
    @pytest.mark.parametrize(("amount", "succeed"), [(None, 1), (400, 3)], ids=["full", "partial"])
    async def test_five_at_once_never_exceed_the_payment(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings, amount: int | None, succeed: int) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        body: dict[str, Any] = {"reason": "duplicate"}
        if amount is not None:
            body["amount_cents"] = amount
        headers = factory.headers(people.admin)
        responses = await asyncio.gather(*[
            client.post(f"/admin/transactions/{payment.id}/refund", headers=keyed(headers), json=body)
            for _ in range(5)])
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201] * succeed + [409] * (5 - succeed), [r.text for r in responses]
        assert all(r.json()["error"] == "refund_too_large" for r in responses if r.status_code == 409)
        rows = await refund_rows(db)
        assert all(r.status is TransactionStatus.SUCCEEDED for r in rows) and len(rows) == succeed
        charge = await PaymentsGateway(settings).client.v1.charges.retrieve_async(
            payment.stripe_charge_id or "")
        refunded = (await reload(db, Transaction, payment.id)).refunded_cents
        assert refunded == sum(r.amount_cents for r in rows) == charge.amount_refunded
        assert refunded <= payment.amount_cents
        assert len(await stripe_refunds(settings, payment.stripe_charge_id)) == succeed

    async def test_five_at_once_with_one_key_refund_once(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        headers = keyed(factory.headers(people.admin))
        responses = await asyncio.gather(*[
            client.post(f"/admin/transactions/{payment.id}/refund", headers=headers,
                        json={"amount_cents": 300, "reason": "duplicate"}) for _ in range(5)])
        statuses = [r.status_code for r in responses]
        assert 201 in statuses and set(statuses) <= {201, 409}, [r.text for r in responses]
        assert all(r.json()["error"] == "idempotency_key_in_use" for r in responses
                   if r.status_code == 409)
        assert len({r.json()["id"] for r in responses if r.status_code == 201}) == 1
        await assert_settled_once(db, settings, payment, people.admin.id, 300)


REFUSE = {
    "sqlite": ["CREATE TRIGGER refuse_settlement BEFORE UPDATE OF status ON transactions "
               "WHEN NEW.kind = 'refund' AND NEW.status = 'succeeded' "
               "BEGIN SELECT RAISE(ABORT, 'settlement refused by the test'); END"],
    "postgresql": ["CREATE FUNCTION refuse_settlement() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RAISE EXCEPTION 'settlement refused by the test'; END $$",
                   "CREATE TRIGGER refuse_settlement BEFORE UPDATE ON transactions FOR EACH ROW "
                   "WHEN (NEW.kind = 'refund' AND NEW.status = 'succeeded') "
                   "EXECUTE FUNCTION refuse_settlement()"],
}
ALLOW = {
    "sqlite": ["DROP TRIGGER IF EXISTS refuse_settlement"],
    "postgresql": ["DROP TRIGGER IF EXISTS refuse_settlement ON transactions",
                   "DROP FUNCTION IF EXISTS refuse_settlement()"],
}


@pytest.fixture
async def settlement_refused(db: Database, backend: str) -> AsyncIterator[Any]:
    """The database refuses to mark a refund succeeded until the test calls the returned undo."""

    async def run(statements: list[str]) -> None:
        async with db.engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))

    await run(ALLOW[backend])
    await run(REFUSE[backend])

    async def undo() -> None:
        await run(ALLOW[backend])

    yield undo
    await undo()


class TestSettlementCommitFails:
    async def test_the_intent_stays_pending_and_the_sweeper_settles_it(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings, settlement_refused: Any) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        response = await request_refund(client, factory, people.admin, payment.id,
                                        {"amount_cents": 700, "reason": "service_issue"})
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "refund_settlement_pending"
        [pending] = await refund_rows(db)
        assert pending.status is TransactionStatus.PENDING
        assert len(await stripe_refunds(settings, payment.stripe_charge_id)) == 1
        await sweep(db, settings)  # still refused: nothing changes, nothing is repeated
        assert (await reload(db, Transaction, pending.id)).status is TransactionStatus.PENDING
        await settlement_refused()
        await sweep(db, settings)
        await assert_settled_once(db, settings, payment, people.admin.id, 700)

    async def test_the_clients_retry_with_the_same_key_settles_it_once(
            self, client: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings, settlement_refused: Any) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        headers = keyed(factory.headers(people.admin))
        url = f"/admin/transactions/{payment.id}/refund"
        body = {"amount_cents": 700, "reason": "service_issue"}
        assert (await client.post(url, headers=headers, json=body)).status_code == 503
        await settlement_refused()
        retry = await client.post(url, headers=headers, json=body)
        assert retry.status_code == 201, retry.text
        assert retry.json()["status"] == "succeeded"
        await assert_settled_once(db, settings, payment, people.admin.id, 700)


class TestLostAnswer:
    async def test_stripe_refunded_but_the_answer_was_lost(
            self, db: Database, factory: Factory, people: People, settings: Settings,
            localstripe: Any) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        async with AnswerDroppingProxy(localstripe.url).running() as proxy:
            app = create_app(settings.model_copy(update={"stripe_api_base": proxy.url}), database=db)
            async with await serve(app) as client:
                response = await request_refund(client, factory, people.admin, payment.id,
                                                {"amount_cents": 900, "reason": "duplicate"})
            assert proxy.forwarded == 1
        assert response.status_code == 502 and response.json()["error"] == "stripe_unreachable"
        [pending] = await refund_rows(db)
        assert pending.status is TransactionStatus.PENDING and pending.stripe_refund_id is None
        assert len(await stripe_refunds(settings, payment.stripe_charge_id)) == 1
        await sweep(db, settings)
        await assert_settled_once(db, settings, payment, people.admin.id, 900)


class TestCrashBetweenPhases:
    async def test_an_intent_whose_process_died_is_refunded_by_the_sweeper(
            self, db: Database, people: People, settings: Settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        admin = Actor(people.admin.id, Role.ADMIN)
        async with db.unit_of_work() as session:  # phase 1 committed, then the process stops
            await reserve_refund(session, actor=admin, payment_id=payment.id, amount_cents=250,
                                 reason=RefundReason.OTHER, note=None,
                                 key=refund_key(admin, payment.id, "crash-1"))
        assert await stripe_refunds(settings, payment.stripe_charge_id) == []
        await sweep_pending_refunds(db, settings)  # within the grace period: left alone
        assert await stripe_refunds(settings, payment.stripe_charge_id) == []
        await sweep(db, settings)
        await sweep(db, settings)  # a second run finds nothing to do
        await assert_settled_once(db, settings, payment, people.admin.id, 250)


class TestHangingStripe:
    async def test_504_within_the_budget_holding_no_connection(
            self, db: Database, factory: Factory, people: People, settings: Settings) -> None:
        _, payment = await paid_subscription(db, settings, people.owner)
        budget = 1.5
        async with SilentStripe().running() as silent:
            app = create_app(settings.model_copy(update={
                "stripe_api_base": silent.url, "stripe_request_budget_seconds": budget}), database=db)
            async with await serve(app) as client:
                started = time.monotonic()
                request = asyncio.create_task(request_refund(client, factory, people.admin, payment.id,
                                                             {"amount_cents": 600, "reason": "duplicate"}))
                await asyncio.wait_for(silent.accepted.wait(), timeout=budget * 4)
                held_while_waiting = db.engine.pool.checkedout()  # type: ignore[attr-defined]
                response = await request
                elapsed = time.monotonic() - started
        assert held_while_waiting == 0
        assert response.status_code == 504 and response.json()["error"] == "stripe_timeout"
        assert elapsed < budget + 1.0, elapsed
        [pending] = await refund_rows(db)
        assert pending.status is TransactionStatus.PENDING
        await sweep(db, settings)
        await assert_settled_once(db, settings, payment, people.admin.id, 600)


class TestSchedulers:
    """The sweeper runs from both schedulers: the embedded runner's tick and the Celery task."""

    @staticmethod
    async def died_after_phase_one(db: Database, people: People, payment: Transaction) -> None:
        admin = Actor(people.admin.id, Role.ADMIN)
        async with db.unit_of_work() as session:
            await reserve_refund(session, actor=admin, payment_id=payment.id, amount_cents=350,
                                 reason=RefundReason.OTHER, note=None,
                                 key=refund_key(admin, payment.id, f"tick-{uuid.uuid4()}"))

    async def test_the_embedded_tick_settles_a_pending_intent(
            self, db: Database, people: People, settings: Settings) -> None:
        from billwatch.jobs.embedded import EmbeddedRunner
        _, payment = await paid_subscription(db, settings, people.owner)
        await self.died_after_phase_one(db, people, payment)
        await EmbeddedRunner(db, settings, schedule=False).tick(now=utcnow() + timedelta(minutes=5))
        await assert_settled_once(db, settings, payment, people.admin.id, 350)

    async def test_the_celery_task_settles_a_pending_intent(
            self, db: Database, people: People, settings: Settings, database_url: str,
            monkeypatch: pytest.MonkeyPatch) -> None:
        from billwatch.config import get_settings
        from billwatch.jobs import tasks
        from billwatch.jobs.tasks import sweep_refunds
        _, payment = await paid_subscription(db, settings, people.owner)
        await self.died_after_phase_one(db, people, payment)
        for name, value in {"DATABASE_URL": database_url,
                            "STRIPE_API_BASE": settings.stripe_api_base or "",
                            "STRIPE_API_KEY": settings.stripe_api_key.get_secret_value(),
                            "REFUND_SWEEP_GRACE_SECONDS": "0"}.items():
            monkeypatch.setenv(f"BILLWATCH_{name}", value)
        get_settings.cache_clear()
        monkeypatch.setattr(tasks.WORKER, "runtime", None)  # a worker starting with this env
        try:  # the task runs its own event loop, as in a worker process
            result = await asyncio.to_thread(lambda: sweep_refunds.apply().get(timeout=60))
        finally:
            get_settings.cache_clear()
        assert result == {"settled": 1, "still_pending": 0}
        await assert_settled_once(db, settings, payment, people.admin.id, 350)
