"""Backlog gauges from the database: Stripe events by status, the oldest unprocessed event and
pending alert, unsealed audit rows; read from a real scrape on both backends."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from billwatch.alerts.models import Alert, AlertKind, AlertStatus, Severity
from billwatch.app import create_app
from billwatch.audit.sealing import checkpoint
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.monitoring.gauges import Backlog, GaugeCache, GaugeCollector, GaugeSnapshot, age_seconds
from billwatch.webhooks.models import UNFINISHED, EventStatus, StripeEvent
from tests.audit.conftest import write_rows
from tests.metrics.helpers import Samples, parse, scrape, value

FINISHED = [status for status in EventStatus if status not in UNFINISHED]

AGE = "billwatch_webhook_oldest_unprocessed_age_seconds"
ALERT_AGE = "billwatch_alert_oldest_pending_age_seconds"
UNSEALED = "billwatch_audit_unsealed_rows"


@pytest.fixture
async def fresh(settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """An app whose gauges are re-queried on every scrape."""
    app = create_app(settings.model_copy(update={"metrics_cache_seconds": 0.0}), database=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as client:
        yield client


def events_by_status(samples: Samples) -> dict[str, float]:
    return {dict(labels)["status"]: v for (name, labels), v in samples.items()
            if name == "billwatch_webhook_events"}


async def add_events(db: Database, *ages: tuple[EventStatus, timedelta]) -> None:
    now = utcnow()
    async with db.unit_of_work() as session:
        for status, age in ages:
            session.add(StripeEvent(
                stripe_event_id=f"evt_backlog{uuid.uuid4().hex[:16]}", type="invoice.paid",
                stripe_created=now - age, payload={"id": "evt"}, status=status,
                received_at=now - age))


async def add_alerts(db: Database, *ages: tuple[AlertStatus, timedelta]) -> None:
    now = utcnow()
    async with db.unit_of_work() as session:
        for status, age in ages:
            session.add(Alert(id=uuid.uuid4(), created_at=now - age, kind=AlertKind.REFUNDS_HIGH,
                              severity=Severity.WARNING, dedup_key=f"refunds_high:{uuid.uuid4()}",
                              subject="refunds", payload={}, status=status))


class TestEmpty:
    async def test_nothing_waits_and_every_status_reads_zero(self, fresh: httpx.AsyncClient) -> None:
        samples = await scrape(fresh)
        assert events_by_status(samples) == {status.value: 0.0 for status in EventStatus}
        assert (AGE, frozenset()) in samples and value(samples, AGE) == 0.0
        assert (ALERT_AGE, frozenset()) in samples and value(samples, ALERT_AGE) == 0.0
        assert (UNSEALED, frozenset()) in samples and value(samples, UNSEALED) == 0.0


class TestWebhookEvents:
    async def test_counts_by_status_and_the_oldest_unprocessed_one(
            self, fresh: httpx.AsyncClient, db: Database) -> None:
        # Terminal events older than the waiting ones must not count towards the age.
        await add_events(db, (EventStatus.PROCESSED, timedelta(hours=2)),
                         (EventStatus.FAILED, timedelta(hours=3)),
                         (EventStatus.IGNORED, timedelta(hours=4)),
                         (EventStatus.RECEIVED, timedelta(minutes=10)),
                         (EventStatus.RECEIVED, timedelta(minutes=1)))
        before = utcnow()
        samples = await scrape(fresh)
        elapsed = (utcnow() - before).total_seconds()
        assert events_by_status(samples) == {"processed": 1, "failed": 1, "ignored": 1,
                                             "received": 2, "processing": 0, "retrying": 0}
        assert 600 <= value(samples, AGE) <= 600 + elapsed + 5

    async def test_only_terminal_events_read_zero_age(self, fresh: httpx.AsyncClient,
                                                      db: Database) -> None:
        await add_events(db, *((status, timedelta(hours=1)) for status in FINISHED))
        samples = await scrape(fresh)
        assert value(samples, AGE) == 0.0
        assert sum(events_by_status(samples).values()) == len(FINISHED)

    async def test_claimed_and_retrying_events_are_backlog(self, fresh: httpx.AsyncClient,
                                                           db: Database) -> None:
        await add_events(db, (EventStatus.PROCESSING, timedelta(minutes=7)),
                         (EventStatus.RETRYING, timedelta(minutes=3)),
                         (EventStatus.PROCESSED, timedelta(hours=1)))
        before = utcnow()
        samples = await scrape(fresh)
        elapsed = (utcnow() - before).total_seconds()
        assert 420 <= value(samples, AGE) <= 420 + elapsed + 5


class TestAlerts:
    async def test_the_oldest_pending_alert(self, fresh: httpx.AsyncClient, db: Database) -> None:
        await add_alerts(db, (AlertStatus.SENT, timedelta(hours=1)),
                         (AlertStatus.FAILED, timedelta(hours=2)),
                         (AlertStatus.SUPPRESSED, timedelta(minutes=30)),
                         (AlertStatus.UNCERTAIN, timedelta(minutes=40)),
                         (AlertStatus.PENDING, timedelta(minutes=5)),
                         (AlertStatus.PENDING, timedelta(minutes=1)))
        before = utcnow()
        samples = await scrape(fresh)
        elapsed = (utcnow() - before).total_seconds()
        assert 300 <= value(samples, ALERT_AGE) <= 300 + elapsed + 5


class TestAuditSeals:
    async def test_unsealed_rows_until_the_sealer_runs(
            self, fresh: httpx.AsyncClient, db: Database, settings: Settings,
            tmp_path: Path) -> None:
        configured = settings.model_copy(update={"audit_checkpoint_dir": tmp_path / "checkpoints"})
        start = value(await scrape(fresh), UNSEALED)
        await write_rows(db, 4)
        assert value(await scrape(fresh), UNSEALED) == start + 4
        result = await checkpoint(db, configured)
        assert result.sealed == start + 4
        assert value(await scrape(fresh), UNSEALED) == 0
        await write_rows(db, 2)
        assert value(await scrape(fresh), UNSEALED) == 2


class TestEveryWorker:
    async def test_the_same_after_a_restart_and_from_every_app(
            self, settings: Settings, db: Database) -> None:
        await add_events(db, (EventStatus.RECEIVED, timedelta(minutes=20)),
                         (EventStatus.PROCESSED, timedelta(minutes=30)))
        await add_alerts(db, (AlertStatus.PENDING, timedelta(minutes=15)))
        seen: list[tuple[dict[str, float], int, int]] = []
        for _worker in range(2):
            app = create_app(settings, database=db)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://testserver") as client:
                samples = await scrape(client)
            seen.append((events_by_status(samples), int(value(samples, AGE) // 60),
                         int(value(samples, ALERT_AGE) // 60)))
        assert seen[0] == seen[1]
        assert seen[0][0]["received"] == 1 and seen[0][1] == 20 and seen[0][2] == 15


class TestAges:
    def test_age_is_taken_at_render_time_from_the_cached_timestamp(self) -> None:
        oldest = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
        assert age_seconds(oldest, oldest + timedelta(minutes=7)) == 420
        assert age_seconds(None, oldest) == 0
        assert age_seconds(oldest + timedelta(seconds=3), oldest) == 0  # clock skew: never < 0

    async def test_a_snapshot_cached_an_hour_ago_reads_an_hour_old(self, db: Database) -> None:
        cache = GaugeCache(db, (), ttl_seconds=3600)
        long_ago = utcnow() - timedelta(hours=1)
        cache.snapshot = GaugeSnapshot({}, {}, {}, 0, backlog=Backlog({}, long_ago, None, 0))
        registry = CollectorRegistry()
        registry.register(GaugeCollector(cache))
        first = value(parse(generate_latest(registry).decode()), AGE)
        assert 3600 <= first < 3700
