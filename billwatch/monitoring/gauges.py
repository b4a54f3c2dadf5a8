"""Gauges computed from the database: active subscriptions, MRR, paying customers, ARPU, churn,
and the backlogs (Stripe events by status, the oldest unprocessed event and pending alert, audit
rows not yet sealed).

They are SQL aggregates rather than process-local Gauge objects, so they are right straight after
a restart and identical whichever worker is scraped. The query runs asynchronously in the
``/metrics`` endpoint (:meth:`GaugeCache.refresh`) and its result is kept for
``metrics_cache_seconds``, so scrapes never hammer the database; the synchronous collector that
``prometheus_client`` calls while rendering only reads that cached snapshot. In multiprocess mode
the collector is added to the per-scrape registry of the scraping process, never written to the
shared gauge files, so workers' values are never summed. The backlog ages are stored as the
oldest timestamps and turned into ages when rendered, so a cached snapshot never reads younger
than the truth.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from billwatch import money
from billwatch.alerts import ledger
from billwatch.audit import sealing
from billwatch.billing import revenue, stats
from billwatch.config import Plan, Settings
from billwatch.db import Database, utcnow
from billwatch.jobs import daily_metrics
from billwatch.metrics import labels
from billwatch.webhooks import store

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class DailyFigures:
    """The newest row of the daily metrics job."""

    customer_churn_ratio: float | None
    revenue_churn_ratio: float | None
    revenue_cents: float | None


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits: Stripe events by status, the oldest unprocessed event and pending alert,
    and audit rows the sealer has not chained yet."""

    events: Mapping[str, int]
    oldest_unprocessed_event: datetime | None
    oldest_pending_alert: datetime | None
    unsealed_audit_rows: int


@dataclass(frozen=True, slots=True)
class GaugeSnapshot:
    active: Mapping[tuple[str, str], int]
    mrr_cents: Mapping[str, int]
    paying_customers: Mapping[str, int]
    proxy_managed: int
    daily: DailyFigures | None = None
    backlog: Backlog | None = None

    @property
    def arpu_cents(self) -> int:
        """MRR / paying customers, half up (the daily job's rule); 0 without any."""
        average = money.average_cents(sum(self.mrr_cents.values()),
                                      sum(self.paying_customers.values()))
        return average if average is not None else 0


@dataclass(slots=True)
class GaugeCache:
    """Runs the aggregates at most once per ``ttl_seconds`` and keeps the result for the collector."""

    db: Database
    plans: tuple[Plan, ...]
    ttl_seconds: float
    snapshot: GaugeSnapshot | None = None
    fetched_at: float | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def for_settings(cls, db: Database, settings: Settings) -> GaugeCache:
        return cls(db, tuple(settings.plans), settings.metrics_cache_seconds)

    def fresh(self) -> bool:
        return self.fetched_at is not None and time.monotonic() - self.fetched_at < self.ttl_seconds

    async def refresh(self) -> GaugeSnapshot | None:
        """Query unless a fresh result exists; concurrent scrapes share one query."""
        if self.fresh():
            return self.snapshot
        async with self._lock:
            if self.fresh():
                return self.snapshot
            try:
                self.snapshot = await query_snapshot(self.db, self.plans)
            except Exception as error:
                # Absent gauges are visible (and alertable); stale or zero ones would lie.
                log.warning("metrics_gauges_unavailable", error_type=type(error).__name__)
                self.snapshot = None
            self.fetched_at = time.monotonic()
            return self.snapshot


async def query_snapshot(db: Database, plans: Sequence[Plan],
                         now: datetime | None = None) -> GaugeSnapshot:
    """Every gauge from one read-only connection."""
    async with db.engine.connect() as conn:
        active = await _active_subscriptions(conn, frozenset(plan.code for plan in plans))
        mrr, paying = await _revenue(conn, plans, now or utcnow())
        proxy_managed = await stats.proxy_managed_active(conn)
        daily = await _daily_figures(conn)
        backlog = await query_backlog(conn)
    return GaugeSnapshot(active, mrr, paying, proxy_managed, daily, backlog)


async def query_backlog(conn: AsyncConnection) -> Backlog:
    """The backlog figures, each asked of the domain that owns the table."""
    return Backlog(await store.count_by_status(conn), await store.oldest_unfinished(conn),
                   await ledger.oldest_pending(conn), await sealing.count_unsealed(conn))


async def _active_subscriptions(conn: AsyncConnection,
                                plans: frozenset[str]) -> dict[tuple[str, str], int]:
    result = {(owner, plan): 0 for owner in labels.OWNER_TYPES for plan in sorted(plans)}
    for (owner_type, plan_code), count in (await stats.active_by_owner_plan(conn)).items():
        key = (labels.owner_type(owner_type), labels.closed(plan_code, plans))
        result[key] = result.get(key, 0) + count
    return result


async def _revenue(conn: AsyncConnection, plans: Sequence[Plan],
                   now: datetime) -> tuple[dict[str, int], dict[str, int]]:
    """MRR and paying customers by owner type, as :mod:`billwatch.billing.revenue` counts them."""
    mrr = dict.fromkeys(labels.OWNER_TYPES, 0)
    paying = dict.fromkeys(labels.OWNER_TYPES, 0)
    for owner_type, (total, owners) in (await revenue.mrr_by_owner_type(conn, plans, now)).items():
        key = labels.owner_type(owner_type)
        mrr[key] = mrr.get(key, 0) + total
        paying[key] = paying.get(key, 0) + owners
    return mrr, paying


async def _daily_figures(conn: AsyncConnection) -> DailyFigures | None:
    """The newest row of the daily metrics job; None before its first run."""
    try:
        row = await daily_metrics.newest_figures(conn)
    except DBAPIError:
        # A database not yet migrated to the jobs schema still gets the other gauges.
        log.warning("metrics_daily_figures_unavailable")
        return None
    if row is None:
        return None
    customer_churn, revenue_churn, revenue = row
    return DailyFigures(customer_churn, revenue_churn,
                        float(revenue) if revenue is not None else None)


class GaugeCollector(Collector):
    """Renders the cached snapshot; never touches the database itself."""

    def __init__(self, cache: GaugeCache) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        snapshot = self._cache.snapshot
        if snapshot is None:
            return
        yield from _families(snapshot)
        if snapshot.backlog is not None:
            yield from _backlog_families(snapshot.backlog, utcnow())


def _families(snapshot: GaugeSnapshot) -> Iterator[Metric]:
    active = GaugeMetricFamily(
        "billing_active_subscriptions",
        "Subscriptions in status active, trialing or past_due, from the database.",
        labels=["owner_type", "plan"])
    for (owner, plan), count in sorted(snapshot.active.items()):
        active.add_metric([owner, plan], count)
    yield active
    mrr = GaugeMetricFamily(
        "billing_mrr_cents", "Monthly recurring revenue in minor units: what active and "
        "past_due Stripe subscriptions are charged after discounts, yearly plans / 12 "
        "(half up); exempted (paused) subscriptions, trials and free grants count zero.",
        labels=["owner_type"])
    paying = GaugeMetricFamily("billing_paying_customers", "Owners whose MRR is above zero.",
                               labels=["owner_type"])
    for owner in sorted(snapshot.mrr_cents):
        mrr.add_metric([owner], snapshot.mrr_cents[owner])
        paying.add_metric([owner], snapshot.paying_customers.get(owner, 0))
    yield mrr
    yield paying
    yield GaugeMetricFamily("billing_arpu_cents", "MRR divided by paying customers, minor units.",
                            value=snapshot.arpu_cents)
    yield GaugeMetricFamily(
        "billing_proxy_managed_subscriptions",
        "Active subscriptions set up and managed by a proxy (billing manager).",
        value=snapshot.proxy_managed)
    yield from _daily_families(snapshot.daily)


def _daily_families(daily: DailyFigures | None) -> Iterator[Metric]:
    if daily is None:
        return
    figures = (
        ("billing_monthly_customer_churn_ratio", daily.customer_churn_ratio,
         "Customer churn over the last month (0..1), from the newest daily metrics row."),
        ("billing_monthly_revenue_churn_ratio", daily.revenue_churn_ratio,
         "Revenue churn over the last month (0..1), from the newest daily metrics row."),
        ("billing_daily_revenue_cents", daily.revenue_cents,
         "Gross revenue of the newest day the daily metrics job computed, minor units."),
    )
    for name, value, documentation in figures:
        if value is not None:
            yield GaugeMetricFamily(name, documentation, value=value)


def age_seconds(oldest: datetime | None, now: datetime) -> float:
    """How long ``oldest`` has waited at ``now``; 0 when nothing waits (never negative)."""
    return max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0


def _backlog_families(backlog: Backlog, now: datetime) -> Iterator[Metric]:
    events = GaugeMetricFamily("billwatch_webhook_events",
                               "Stored Stripe events by status, from the database.",
                               labels=["status"])
    for status, count in sorted(backlog.events.items()):
        events.add_metric([status], count)
    yield events
    yield GaugeMetricFamily(
        "billwatch_webhook_oldest_unprocessed_age_seconds",
        "Age of the oldest Stripe event not yet processed, ignored or failed; 0 when none waits.",
        value=age_seconds(backlog.oldest_unprocessed_event, now))
    yield GaugeMetricFamily(
        "billwatch_alert_oldest_pending_age_seconds",
        "Age of the oldest alert waiting for delivery; 0 when none waits.",
        value=age_seconds(backlog.oldest_pending_alert, now))
    yield GaugeMetricFamily("billwatch_audit_unsealed_rows",
                            "Audit rows not yet given their place in the seal chain.",
                            value=backlog.unsealed_audit_rows)
