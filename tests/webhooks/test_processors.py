"""Inbox processors: leases, the embedded runner's hand-off, payload pruning, a killed worker."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from billwatch.accounts.models import OwnerType, Role
from billwatch.audit.models import AuditLog
from billwatch.billing.models import StripeCustomer, Subscription
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.jobs import service as jobs
from billwatch.jobs.celery_app import WEBHOOKS_INBOX_TASK, WEBHOOKS_PRUNE_TASK, beat_schedule
from billwatch.jobs.embedded import EmbeddedRunner
from billwatch.jobs.lifecycle import start_delivery
from billwatch.jobs.tasks import CelerySink
from billwatch.payments.gateway import PaymentsGateway
from billwatch.webhooks import service, store
from billwatch.webhooks.inbox import accept, drain, lease, process_now
from billwatch.webhooks.models import (
    UNFINISHED,
    AttemptOutcome,
    EventStatus,
    StripeEvent,
    StripeEventAttempt,
)
from billwatch.webhooks.processing import Delivery, ProcessOutcome, process_claimed
from billwatch.webhooks.retention import prune_payloads
from tests.jobs.workers import Worker, new_queue, publisher, worker_settings
from tests.support import Factory, audit_rows
from tests.webhooks import stripe_events as se
from tests.webhooks.conftest import attempts_of_event, eventually, stored_event

PRICE = "billwatch_basic_monthly"


def ignored_event() -> dict[str, Any]:
    return se.event("plan.created", se.shape("event")["data"]["object"])


async def claim(db: Database, settings: Settings, worker: str, *, at: Any = None) -> list[Any]:
    async with db.unit_of_work() as session:
        return await store.claim_batch(session, worker=worker, now=at or utcnow(),
                                       lease=lease(settings), limit=10)


class TestLeases:
    async def test_a_dead_processors_events_are_claimed_again_once_its_lease_lapses(
            self, db: Database, settings: Settings) -> None:
        event = ignored_event()
        await accept(db, event)
        [held] = await claim(db, settings, "dead-processor")  # it claimed, then died
        stored = await stored_event(db, event["id"])
        assert stored is not None and stored.status is EventStatus.PROCESSING
        assert stored.claimed_by == "dead-processor" and stored.attempts == 1
        gateway = PaymentsGateway(settings)
        assert await drain(db, gateway, settings) == []  # its lease still holds
        lapsed = utcnow() + lease(settings) + timedelta(seconds=1)
        [result] = await drain(db, gateway, settings, now=lapsed)
        assert result.outcome is ProcessOutcome.IGNORED and result.attempts == 2
        rows = await attempts_of_event(db, event["id"])
        assert (rows[0].attempt, rows[0].outcome, rows[0].worker) == (
            1, AttemptOutcome.ABANDONED, "dead-processor")
        assert rows[0].started_at == held.claimed_at and rows[0].finished_at is None
        assert rows[1].attempt == 2 and rows[1].outcome is AttemptOutcome.IGNORED
        assert len(await audit_rows(db, event_type="billing.webhook.received")) == 1

    async def test_an_event_whose_processors_keep_dying_is_given_up_after_the_last_attempt(
            self, db: Database, settings: Settings) -> None:
        once = settings.model_copy(update={"webhook_max_attempts": 1})
        event = ignored_event()
        await accept(db, event)
        await claim(db, once, "dead-processor")  # attempt 1 of 1 never finishes
        lapsed = utcnow() + lease(once) + timedelta(seconds=1)
        [result] = await drain(db, PaymentsGateway(once), once, now=lapsed)
        assert result.outcome is ProcessOutcome.FAILED and result.error is not None
        assert "gave up: 1 attempts never finished" in result.error
        stored = await stored_event(db, event["id"])
        assert stored is not None and stored.status is EventStatus.FAILED
        assert [a.outcome for a in await attempts_of_event(db, event["id"])] == [
            AttemptOutcome.ABANDONED, AttemptOutcome.FAILED]
        [failure] = await audit_rows(db, event_type="billing.webhook.failed")
        assert failure.stripe_event_id == event["id"] and failure.data["attempts"] == 2
        assert not await audit_rows(db, event_type="billing.webhook.received")  # never handled

    async def test_a_processor_that_lost_its_claim_changes_nothing(
            self, db: Database, settings: Settings) -> None:
        event = ignored_event()
        await accept(db, event)
        [slow] = await claim(db, settings, "slow-processor")
        lapsed = utcnow() + lease(settings) + timedelta(seconds=1)
        [taken] = await claim(db, settings, "next-processor", at=lapsed)
        gateway = PaymentsGateway(settings)
        late = await process_claimed(db, gateway, settings, slow, worker="slow-processor")
        assert late.outcome is ProcessOutcome.DUPLICATE  # it finds its claim gone: no change
        assert await audit_rows(db) == []
        done = await process_claimed(db, gateway, settings, taken, worker="next-processor")
        assert done.outcome is ProcessOutcome.IGNORED
        assert len(await audit_rows(db, event_type="billing.webhook.received")) == 1

    async def test_a_replay_never_takes_an_event_a_processor_holds(
            self, db: Database, settings: Settings) -> None:
        event = ignored_event()
        await accept(db, event)
        await claim(db, settings, "busy-processor")
        result = await process_now(db, PaymentsGateway(settings), settings, event["id"],
                                   delivery=Delivery.REPLAY)
        assert result is not None and result.outcome is ProcessOutcome.DUPLICATE
        assert result.note == "being processed by another processor"


class TestEmbeddedRunner:
    async def test_a_stored_event_is_processed_right_after_its_commit(
            self, db: Database, settings: Settings) -> None:
        # a poll far longer than the test: only the hand-off can have woken the runner
        slow_poll = settings.model_copy(update={"webhook_poll_seconds": 3600.0,
                                                "alert_poll_seconds": 3600.0})
        runner = EmbeddedRunner(db, slow_poll, schedule=False)
        await runner.start()
        try:
            await eventually(lambda: _quiet(db), within=10, what="the first inbox pass")
            event = ignored_event()
            assert (await accept(db, event)).stored
            processed = await eventually(lambda: _status_is(db, event["id"], EventStatus.IGNORED),
                                         within=10, what="the runner to process the event")
            assert processed
        finally:
            await runner.stop()
        assert len(await audit_rows(db, event_type="billing.webhook.received")) == 1


async def _quiet(db: Database) -> bool:
    async with db.sessionmaker() as session:
        count = await session.scalar(select(func.count()).select_from(StripeEvent)
                                     .where(StripeEvent.status.in_(UNFINISHED)))
    return count == 0


async def _status_is(db: Database, event_id: str, status: EventStatus) -> bool:
    stored = await stored_event(db, event_id)
    return stored is not None and stored.status is status


class TestPruning:
    async def test_old_finished_payloads_go_and_their_hash_stays(
            self, db: Database, settings: Settings) -> None:
        old, waiting = ignored_event(), ignored_event()
        await accept(db, old)
        await drain(db, PaymentsGateway(settings), settings)
        await accept(db, waiting)  # never processed: kept whatever its age
        before = await stored_event(db, old["id"])
        assert before is not None and before.payload is not None and before.payload_sha256
        assert before.payload_sha256 == store.payload_hash(before.payload)
        assert await prune_payloads(db, settings) == 0  # nothing is old enough yet
        later = utcnow() + timedelta(days=settings.webhook_payload_retention_days, seconds=1)
        assert await prune_payloads(db, settings, now=later) == 1
        assert await prune_payloads(db, settings, now=later) == 0
        after = await stored_event(db, old["id"])
        assert after is not None and after.payload is None and after.payload_pruned_at is not None
        assert after.payload_sha256 == before.payload_sha256
        assert after.status is EventStatus.IGNORED and after.type == before.type
        kept = await stored_event(db, waiting["id"])
        assert kept is not None and kept.payload == waiting and kept.payload_pruned_at is None
        replayed = await service.replay(db, PaymentsGateway(settings), settings, old["id"])
        assert replayed.outcome is ProcessOutcome.DUPLICATE
        assert replayed.note == "payload pruned: nothing to handle"

    async def test_the_daily_job_prunes_once_per_day(self, db: Database, settings: Settings) -> None:
        await accept(db, ignored_event())
        await drain(db, PaymentsGateway(settings), settings)
        later = utcnow() + timedelta(days=settings.webhook_payload_retention_days + 1)
        first = await jobs.webhooks_prune_job(db, settings, now=later)
        assert first.ran and first.result == {"pruned": 1}
        assert not (await jobs.webhooks_prune_job(db, settings, now=later)).ran


# --- real Celery workers ----------------------------------------------------------------------

WORKER_ENV = {"BILLWATCH_WEBHOOK_LEASE_SECONDS": "4", "BILLWATCH_WEBHOOK_BATCH_SIZE": "20",
              "BILLWATCH_STRIPE_API_BASE": "http://127.0.0.1:9",
              "BILLWATCH_ENABLE_BILLING_ALERTS": "false"}
"""Short leases, so a dead worker's claims lapse within the test; no Stripe is ever reached."""


class TestCelery:
    def test_the_beat_sweeps_the_inbox_every_poll_and_prunes_daily(self, settings: Settings) -> None:
        schedule = beat_schedule(settings.model_copy(update={"webhook_poll_seconds": 7.0}))
        assert schedule["webhooks-inbox"] == {"task": WEBHOOKS_INBOX_TASK, "schedule": 7.0}
        assert schedule["webhooks-prune"]["task"] == WEBHOOKS_PRUNE_TASK

    async def test_an_event_the_app_stores_is_handed_to_a_worker_after_commit(
            self, db: Database, database_url: str, tmp_path: Path) -> None:
        settings = worker_settings(database_url, 9, new_queue())
        runtime = db.required_runtime()
        stop_delivery = await start_delivery(db, settings)  # as the app's lifespan does
        worker = Worker(settings, tmp_path / "workers", concurrency=1, extra_env=WORKER_ENV)
        try:
            assert isinstance(runtime.inbox_sink, CelerySink)
            event = ignored_event()
            assert (await accept(db, event)).stored  # no beat runs: only the hand-off can wake it
            await eventually(lambda: _status_is(db, event["id"], EventStatus.IGNORED),
                             within=30, what="the worker to process the event")
        finally:
            await stop_delivery()
            worker.stop()
        [attempt] = await attempts_of_event(db, event["id"])
        assert ":celery-" in attempt.worker and attempt.outcome is AttemptOutcome.IGNORED


# --- a real worker killed mid-batch ---------------------------------------------------------

EVENTS = 240


async def seeded_events(db: Database, factory: Factory) -> list[dict[str, Any]]:
    """One new subscription event per patient, whose customer billwatch already knows."""
    events = []
    users = [await factory.user(Role.PATIENT) for _ in range(EVENTS)]
    async with db.unit_of_work() as session:
        for user in users:
            customer = se.new_id("cus")
            session.add(StripeCustomer(id=uuid.uuid4(), owner_type=OwnerType.PATIENT,
                                       owner_id=user.id, stripe_customer_id=customer,
                                       idempotency_key=f"test:{customer}"))
            events.append(se.event("customer.subscription.created", se.subscription(
                sub_id=se.new_id("sub"), customer=customer, price=PRICE)))
    return events


async def counts(db: Database) -> dict[str, int]:
    async with db.sessionmaker() as session:
        by_status = dict((await session.execute(
            select(StripeEvent.status, func.count()).group_by(StripeEvent.status))).all())
        return {str(status): n for status, n in by_status.items()}


class TestKilledWorker:
    async def test_every_event_is_applied_exactly_once_after_a_sigkill_and_a_restart(
            self, backend: str, db: Database, database_url: str, factory: Factory,
            tmp_path: Path) -> None:
        if backend != "postgresql":
            pytest.skip("several worker processes on one database: PostgreSQL")
        settings = worker_settings(database_url, 9, new_queue())
        extra = WORKER_ENV
        events = await seeded_events(db, factory)
        for event in events:
            assert (await accept(db, event)).stored
        celery = publisher(settings)
        first = Worker(settings, tmp_path / "workers", concurrency=1, extra_env=extra)
        second: Worker | None = None
        try:
            celery.send_task(WEBHOOKS_INBOX_TASK)
            await eventually(lambda: _mid_batch(db, 20), within=60,
                             what="the worker to be well into the inbox, holding claims")
            os.kill(first.process.pid, signal.SIGSTOP)  # no new pool process, no re-delivery
            for child in first.pool_processes():
                os.kill(child, signal.SIGKILL)  # mid-batch: its claimed events stay leased
            first.process.kill()
            first.process.wait(timeout=10)
            at_kill = await counts(db)
            assert at_kill.get("processing", 0) > 0, at_kill  # it died holding claims
            assert at_kill.get("processed", 0) < EVENTS, at_kill

            second = Worker(settings, tmp_path / "workers", concurrency=2, extra_env=extra)

            async def all_processed() -> bool:
                celery.send_task(WEBHOOKS_INBOX_TASK)  # what the beat's sweep sends
                await asyncio.sleep(0.5)
                return (await counts(db)).get("processed", 0) == EVENTS

            await eventually(all_processed, within=90, what="every event processed")
        finally:
            first.stop()
            if second is not None:
                second.stop()
            celery.close()
        async with db.sessionmaker() as session:
            subscriptions = await session.scalar(select(func.count()).select_from(Subscription))
            received = (await session.execute(
                select(AuditLog.stripe_event_id, func.count())
                .where(AuditLog.event_type == "billing.webhook.received")
                .group_by(AuditLog.stripe_event_id))).all()
            created = await session.scalar(select(func.count()).select_from(AuditLog).where(
                AuditLog.event_type == "billing.subscription.created"))
            abandoned = await session.scalar(select(func.count()).select_from(StripeEventAttempt)
                                             .where(StripeEventAttempt.outcome
                                                    == AttemptOutcome.ABANDONED))
        assert subscriptions == EVENTS and created == EVENTS
        assert sorted(event_id for event_id, _ in received) == sorted(e["id"] for e in events)
        assert {n for _, n in received} == {1}  # every event applied exactly once
        # each claim the kill cut short is on record (a slow batch on a busy machine may add more)
        assert abandoned is not None and abandoned >= at_kill["processing"]


async def _mid_batch(db: Database, n: int) -> bool:
    """At least ``n`` processed and a batch claimed: a kill now cuts a batch short (on a loaded
    machine, waiting for ``n`` alone once found the worker between two batches)."""
    now = await counts(db)
    return now.get("processed", 0) >= n and now.get("processing", 0) > 0
