"""Gauges from SQL aggregates: right after a restart, cached between scrapes, never summed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import date
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import OwnerType, Role
from billwatch.app import create_app
from billwatch.billing.models import SubscriptionSource, SubscriptionStatus
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.demo import summary
from billwatch.jobs.models import DailyBillingMetrics
from tests.metrics.helpers import Samples, Sub, add_subscriptions, parse, scrape, value
from tests.support import Factory

S = SubscriptionStatus


def patient() -> OwnerRef:
    return OwnerRef(OwnerType.PATIENT, uuid.uuid4())


def clinic() -> OwnerRef:
    return OwnerRef(OwnerType.ORGANIZATION, uuid.uuid4())


async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def fresh(settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose gauges are re-queried on every scrape."""
    app = create_app(settings.model_copy(update={"metrics_cache_seconds": 0.0}), database=db)
    async for client in client_for(app):
        yield client


@pytest.fixture
def statements(db: Database) -> Iterator[list[str]]:
    """Every SQL statement the engine runs while the test does."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    yield seen
    event.remove(db.engine.sync_engine, "before_cursor_execute", record)


async def a_month_of_customers(db: Database, factory: Factory) -> None:
    """Hand-computed: MRR patient 5500 (1500 + 30000/12 + 1500), clinic 11400 (9900 + 1500)."""
    proxy = await factory.user(Role.PROXY)
    a, b, free, gone, stuck, managed, trial, legacy = (patient() for _ in range(8))
    org = clinic()
    await add_subscriptions(db, [
        Sub(a, "basic_monthly"),
        Sub(b, "plus_yearly", S.PAST_DUE),
        Sub(free, "plus_monthly", source=SubscriptionSource.FREE_GRANT),
        Sub(gone, "basic_monthly", S.CANCELED),
        Sub(stuck, "basic_monthly", S.INCOMPLETE),
        Sub(managed, "basic_monthly", proxy_id=proxy.id),
        Sub(trial, "plus_monthly", S.TRIALING, proxy_id=proxy.id),
        Sub(legacy, "legacy_gold"),
        Sub(org, "clinic_monthly"),
        Sub(org, "basic_monthly", duplicate=True),
        Sub(org, "plus_monthly", S.TRIALING, duplicate=True),
    ])


def gauges(samples: Samples) -> dict[str, float]:
    return {
        "mrr_patient": value(samples, "billing_mrr_cents", owner_type="patient"),
        "mrr_org": value(samples, "billing_mrr_cents", owner_type="organization"),
        "paying_patient": value(samples, "billing_paying_customers", owner_type="patient"),
        "paying_org": value(samples, "billing_paying_customers", owner_type="organization"),
        "arpu": value(samples, "billing_arpu_cents"),
        "proxy_managed": value(samples, "billing_proxy_managed_subscriptions"),
    }


class TestFigures:
    async def test_hand_computed_month(self, fresh: httpx.AsyncClient, db: Database,
                                       factory: Factory) -> None:
        await a_month_of_customers(db, factory)
        samples = await scrape(fresh)
        assert gauges(samples) == {"mrr_patient": 5500, "mrr_org": 11400, "paying_patient": 3,
                                   "paying_org": 1, "arpu": 4225, "proxy_managed": 2}
        active = {dict(lbls)["owner_type"] + "/" + dict(lbls)["plan"]: v
                  for (name, lbls), v in samples.items()
                  if name == "billing_active_subscriptions" and v}
        assert active == {"patient/basic_monthly": 2, "patient/plus_yearly": 1,
                          "patient/plus_monthly": 2, "patient/other": 1,
                          "organization/clinic_monthly": 1, "organization/basic_monthly": 1,
                          "organization/plus_monthly": 1}

    async def test_the_demo_summary_counts_as_the_gauges_do(
            self, fresh: httpx.AsyncClient, db: Database, factory: Factory,
            settings: Settings) -> None:
        """One MRR and one "active" set: the summary's fallback reads what /metrics shows."""
        await a_month_of_customers(db, factory)
        samples = await scrape(fresh)
        active = sum(v for (name, _), v in samples.items() if name == "billing_active_subscriptions")
        figures = await summary.database_figures(db, settings)
        assert figures["MRR"] == "169.00 USD"  # 5500 + 11400, the hand-computed month
        assert figures["active subscriptions"] == str(int(active)) == "9"

    async def test_an_empty_database_reads_zero_not_nothing(self, fresh: httpx.AsyncClient) -> None:
        samples = await scrape(fresh)
        assert gauges(samples) == dict.fromkeys(gauges(samples), 0.0)
        assert ("billing_active_subscriptions",
                frozenset({("owner_type", "organization"), ("plan", "clinic_yearly")})) in samples
        assert not any(name == "billing_monthly_customer_churn_ratio" for name, _ in samples)

    async def test_right_after_a_restart(self, settings: Settings, db: Database,
                                         factory: Factory) -> None:
        await a_month_of_customers(db, factory)
        for _restart in range(2):
            async for client in client_for(create_app(settings, database=db)):
                assert gauges(await scrape(client))["mrr_org"] == 11400

    async def test_newest_daily_metrics_row(self, fresh: httpx.AsyncClient, db: Database) -> None:
        async with db.unit_of_work() as session:
            for day, churn, revenue in ((date(2026, 10, 30), 0.02, 15000),
                                        (date(2026, 10, 31), 0.0625, 42000)):
                session.add(DailyBillingMetrics(
                    day=day, definition_version=1, currency="usd", active_subscriptions=0,
                    new_subscriptions=0, cancelled_subscriptions=0, mrr_cents=0,
                    paying_customers=0, gross_revenue_cents=revenue, refunds_count=0,
                    refunds_cents=0, payments_succeeded=0, payments_failed=0, churn_window_days=30,
                    churn_customers_start=16, churn_customers_lost=1, customer_churn_rate=churn,
                    churn_mrr_start_cents=0, churn_mrr_lost_cents=0, revenue_churn_rate=0.03))
        samples = await scrape(fresh)
        assert value(samples, "billing_monthly_customer_churn_ratio") == 0.0625
        assert value(samples, "billing_monthly_revenue_churn_ratio") == 0.03
        assert value(samples, "billing_daily_revenue_cents") == 42000


class TestCache:
    async def test_scrapes_within_the_window_share_one_query(
            self, settings: Settings, db: Database, factory: Factory,
            statements: list[str]) -> None:
        app = create_app(settings.model_copy(update={"metrics_cache_seconds": 300.0}), database=db)
        async for client in client_for(app):
            first = gauges(await scrape(client))
            queries = len(statements)
            assert queries > 0
            await add_subscriptions(db, [Sub(clinic(), "clinic_yearly")])
            written = len(statements)
            for _ in range(5):
                assert gauges(await scrape(client)) == first
            assert len(statements) == written, "a cached scrape went to the database"

    async def test_without_a_window_every_scrape_is_current(
            self, fresh: httpx.AsyncClient, db: Database) -> None:
        assert gauges(await scrape(fresh))["mrr_org"] == 0
        await add_subscriptions(db, [Sub(clinic(), "clinic_yearly")])
        assert gauges(await scrape(fresh))["mrr_org"] == 8250


class TestSwitchedOff:
    async def test_no_gauges_no_queries_and_callers_unharmed(
            self, settings: Settings, db: Database, statements: list[str]) -> None:
        app = create_app(settings.model_copy(update={"enable_billing_metrics": False}), database=db)
        billing = app.state.runtime.metrics
        async for client in client_for(app):
            before = await scrape(client)
            billing.checkout_created("patient", "basic_monthly", by_proxy=True)
            billing.payment_succeeded("patient", "basic_monthly", 1500)
            billing.alert_sent("webhook_failure")
            billing.audit_write_failed()
            billing.webhooks_received.labels(event_type="invoice.paid").inc()
            billing.refund_amount.observe(500)
            with billing.webhook_seconds.labels(event_type="invoice.paid").time():
                billing.audit_writes.labels("success").inc()
            response = await client.get("/metrics")
            assert response.status_code == 200
            after = parse(response.text)
        assert statements == []
        assert not any(name.startswith(("billing_mrr", "billing_active")) for name, _ in after)
        for name in ("billing_checkouts_created_total", "billing_payments_succeeded_total",
                     "billing_alerts_sent_total", "audit_write_failures_total",
                     "billing_proxy_actions_total", "billing_payment_amount_cents_sum",
                     "billing_webhooks_received_total", "billing_refund_amount_cents_count",
                     "billing_webhook_processing_seconds_count", "billing_audit_writes_total"):
            assert sum(v for (n, _), v in after.items() if n == name) == \
                sum(v for (n, _), v in before.items() if n == name), name
