"""Counters and histograms move only once the transaction has committed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.exc import IntegrityError

from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.accounts.models import OwnerType, Role
from billwatch.app import create_app
from billwatch.billing import cancellations, checkout, subscriptions
from billwatch.billing.models import (
    CancelMode,
    CheckoutSession,
    CheckoutStatus,
    IntentStatus,
    SubscriptionCancellation,
    Transaction,
    TransactionKind,
    TransactionStatus,
)
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.payments.gateway import CheckoutSessionInfo, PaymentsGateway
from tests.metrics.helpers import PLATFORM_PREFIXES, Samples, registry_samples, scrape, without
from tests.support import Factory, People, free_port, keyed, paid_subscription, snapshot
from tests.support import test_settings as make_settings


def moved(before: Samples, after: Samples) -> dict[str, float]:
    """The samples that changed, as ``name{labels}: delta``."""
    changed = {}
    for key in before.keys() | after.keys():
        delta = after.get(key, 0.0) - before.get(key, 0.0)
        if delta:
            name, labels = key
            changed[f"{name}{dict(sorted(labels))}"] = delta
    return changed


def duplicate_of(created: CheckoutSession) -> CheckoutSession:
    """A row that breaks a unique key, so the commit itself fails."""
    return CheckoutSession(
        id=uuid.uuid4(), owner_type=created.owner_type, owner_id=created.owner_id,
        plan_code=created.plan_code, status=CheckoutStatus.OPEN,
        stripe_session_id=created.stripe_session_id, stripe_customer_id=created.stripe_customer_id,
        url=created.url, created_by_user_id=created.created_by_user_id,
        idempotency_key=f"dup:{uuid.uuid4()}")


class TestServiceTransactions:
    async def test_a_checkout_whose_commit_fails_counts_nothing(
            self, db: Database, settings: Settings, people: People) -> None:
        actor = Actor(people.patient.id, Role.PATIENT)
        async with db.unit_of_work() as session:  # phase 1, as create_checkout writes it
            intent = CheckoutSession(
                id=uuid.uuid4(), owner_type=people.owner.type, owner_id=people.owner.id,
                plan_code="basic_monthly", status=CheckoutStatus.PENDING,
                created_by_user_id=people.patient.id, idempotency_key=f"checkout:{uuid.uuid4()}")
            session.add(intent)
        info = CheckoutSessionInfo(f"cs_test_{uuid.uuid4().hex}", "http://127.0.0.1/pay",
                                   f"cus_{uuid.uuid4().hex[:12]}")
        before = registry_samples(db)
        with pytest.raises(IntegrityError):
            async with db.unit_of_work() as session:  # phase 3, whose commit fails
                created = await checkout.settle_open(session, settings, intent.id, info,
                                                     actor=actor, customer_created=False)
                session.add(duplicate_of(created))
        assert registry_samples(db) == before

        async with db.unit_of_work() as session:
            await checkout.settle_open(session, settings, intent.id, info, actor=actor,
                                       customer_created=False)
        committed = moved(before, registry_samples(db))
        committed.pop("billing_audit_writes_total{'outcome': 'success'}", None)  # its audit row
        assert committed == {
            "billing_checkouts_created_total{'owner_type': 'patient', 'plan': 'basic_monthly'}": 1}

    async def test_a_cancel_rolled_back_after_stripe_answered_counts_nothing(
            self, db: Database, settings: Settings, people: People) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        assert subscription.stripe_subscription_id is not None
        async with db.unit_of_work() as session:  # phase 1
            intent = SubscriptionCancellation(
                id=uuid.uuid4(), subscription_id=subscription.id, mode=CancelMode.PERIOD_END,
                status=IntentStatus.PENDING, idempotency_key=f"cancel:{uuid.uuid4()}",
                actor_user_id=people.admin.id, actor_role=Role.ADMIN)
            session.add(intent)
        await PaymentsGateway(settings).cancel_subscription(  # phase 2: Stripe answers
            subscription.stripe_subscription_id, at_period_end=True,
            idempotency_key=intent.idempotency_key)
        before = registry_samples(db)
        with pytest.raises(RuntimeError, match="later step"):
            async with db.unit_of_work() as session:  # phase 3, rolled back
                assert await cancellations.settle_succeeded(session, intent.id)
                raise RuntimeError("a later step of the same operation failed")
        assert registry_samples(db) == before


async def _failing_payment(db: Database, owner: OwnerRef) -> Transaction:
    """A payment whose charge the Stripe peer does not know, so refunding it fails there."""
    async with db.unit_of_work() as session:
        payment = Transaction(
            id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id,
            kind=TransactionKind.PAYMENT, status=TransactionStatus.SUCCEEDED, amount_cents=1500,
            currency="usd", plan_code="basic_monthly",
            stripe_charge_id=f"ch_missing{uuid.uuid4().hex[:16]}")
        session.add(payment)
    return payment


class TestFailedRequests:
    """Through HTTP: the failure is audited, but no billing metric and no gauge moves."""

    IGNORED = ("billing_http_", "billing_audit_writes_total", "billwatch_audit_unsealed_rows",
               *PLATFORM_PREFIXES)
    """Request metrics count every request by design; a failure audit row is a real commit (and
    waits for the sealer); CPU time and garbage collection change on their own."""

    @pytest.fixture
    def uncached_settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"metrics_cache_seconds": 0.0})

    @pytest.fixture
    async def uncached(self, uncached_settings: Settings,
                       db: Database) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(uncached_settings, database=db)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as client:
            yield client

    async def test_refund_and_cancel_failing_at_stripe(
            self, uncached: httpx.AsyncClient, db: Database, factory: Factory, people: People,
            settings: Settings) -> None:
        subscription, _ = await paid_subscription(db, settings, people.owner)
        async with db.unit_of_work() as session:
            row = await subscriptions.get_subscription(session, subscription.id)
            row.stripe_subscription_id = f"sub_missing{uuid.uuid4().hex[:12]}"
        payment = await _failing_payment(db, people.owner)
        admin = factory.headers(people.admin)
        rows_before = await snapshot(db)
        before = without(await scrape(uncached), *self.IGNORED)

        refund = await uncached.post(f"/admin/transactions/{payment.id}/refund", headers=keyed(admin),
                                     json={"reason": "duplicate"})
        cancel = await uncached.post(f"/billing/subscriptions/{subscription.id}/cancel",
                                     headers=admin, json={"at_period_end": False})
        assert (refund.status_code, cancel.status_code) == (502, 502), (refund.text, cancel.text)
        rows_after = await snapshot(db)
        # the refused cancel's and refund's intents stay on record, settled as failed
        failed_intents = rows_after.pop("subscription_cancellations")
        rows_before.pop("subscription_cancellations")
        assert len(failed_intents) == 1 and "FAILED" in failed_intents[0]
        added = sorted(set(rows_after["transactions"]) - set(rows_before["transactions"]))
        assert len(added) == 1 and "TransactionStatus.FAILED" in added[0], added
        assert {**rows_after, "transactions": rows_before["transactions"]} == rows_before
        assert without(await scrape(uncached), *self.IGNORED) == before

    async def test_checkout_failing_at_stripe(
            self, db: Database, factory: Factory, people: People, settings: Settings) -> None:
        unreachable = make_settings(settings.database_url, f"http://127.0.0.1:{free_port()}",
                                    metrics_cache_seconds=0.0)
        app = create_app(unreachable, database=db)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://testserver") as client:
            before = without(await scrape(client), *self.IGNORED)
            response = await client.post("/billing/checkout", headers=factory.headers(people.patient),
                                         json={**_owner_body(people.owner), "plan_code": "plus_monthly"})
            assert response.status_code == 502, response.text
            assert without(await scrape(client), *self.IGNORED) == before


def _owner_body(owner: OwnerRef) -> dict[str, str]:
    assert owner.type is OwnerType.PATIENT
    return {"owner_type": owner.type.value, "owner_id": str(owner.id)}
