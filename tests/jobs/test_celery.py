"""Real Celery workers run the tasks: dedup, an SMTP outage, a killed worker, two beats.

Each test starts ``billwatch worker`` against Redis and the test's database (both backends),
mails to a real SMTP server and reads what arrived.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from celery import Celery
from sqlalchemy import func, select

from billwatch.alerts.models import AlertIncident, AlertKind, AlertStatus
from billwatch.audit.models import AuditLog
from billwatch.bootstrap import build_runtime
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.jobs.celery_app import DAILY_METRICS_TASK
from billwatch.jobs.lifecycle import start_delivery
from billwatch.jobs.models import DailyBillingMetrics, JobRun, RunStatus
from billwatch.jobs.tasks import CelerySink
from billwatch.runtime import Runtime
from tests.alerts.helpers import (
    alerts,
    assert_no_card,
    payment_failed,
    statuses,
    webhook_failures,
)
from tests.alerts.mailbox import Mailbox, wait_until, wait_until_async
from tests.jobs.month import DAY, seed_month
from tests.jobs.workers import Worker, new_queue, publisher, worker_settings


@pytest.fixture
def celery_settings(database_url: str, mailbox: Mailbox) -> Settings:
    return worker_settings(database_url, mailbox.port, new_queue())


@pytest.fixture
def runtime(celery_settings: Settings) -> Runtime:
    """The test process's runtime has the settings its workers have (alerts on, its queue)."""
    return build_runtime(celery_settings)


@pytest.fixture
async def celery_env(db: Database, celery_settings: Settings) -> AsyncIterator[tuple[Settings, Celery]]:
    """Settings shared by the test and its workers, a publisher for the test's own tasks, and
    committed alerts handed to the broker exactly as the app's lifespan does it."""
    settings = celery_settings
    runtime = db.required_runtime()
    celery = publisher(settings)
    stop_delivery = await start_delivery(db, settings)
    assert isinstance(runtime.alert_sink, CelerySink)
    yield settings, celery
    await stop_delivery()
    celery.close()


StartWorker = Callable[[int], Worker]


@pytest.fixture
def start_worker(celery_env: tuple[Settings, Celery], tmp_path: Path) -> Iterator[StartWorker]:
    workers: list[Worker] = []

    def start(concurrency: int) -> Worker:
        worker = Worker(celery_env[0], tmp_path / "workers", concurrency=concurrency)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


async def settled(db: Database) -> bool:
    """Every alert is past delivery (nothing pending any more)."""
    return bool(await alerts(db)) and not await alerts(db, status=AlertStatus.PENDING)


async def settled_while_progressing(db: Database, *, stall: float, what: str) -> None:
    """Wait until nothing is pending; fail only when ``stall`` seconds pass with no alert settled.

    A burst takes seconds on idle cores and several times that on shared ones, so a deadline on
    the whole burst measures the machine; a pending count that stops moving is a lost delivery.
    """
    pending, moved = -1, time.monotonic()
    while not await settled(db):
        now = len(await alerts(db, status=AlertStatus.PENDING))
        if now != pending:
            pending, moved = now, time.monotonic()
        elif time.monotonic() - moved > stall:
            raise TimeoutError(f"{pending} alert(s) still pending, none settled for {stall}s: {what}")
        await asyncio.sleep(0.1)


class TestDedupThroughTheWorker:
    async def test_a_hundred_failures_one_mail_then_a_count(
            self, db: Database, celery_env: tuple[Settings, Celery], start_worker: StartWorker,
            mailbox: Mailbox) -> None:
        settings, _ = celery_env
        start_worker(2)
        await webhook_failures(db, 100)
        for _ in range(3):  # a final payment failure re-sent by Stripe: one mail per invoice
            await payment_failed(db, invoice="in_worker", attempt=3)
        # 103 deliveries, each its own task with its own engine, on two worker processes.
        # Before the key's lock came first everywhere, a deadlock lost one now and then.
        await settled_while_progressing(db, stall=30, what="all 103 alerts handled")
        assert await statuses(db, kind=AlertKind.WEBHOOK_FAILURE) == {
            AlertStatus.SENT: 1, AlertStatus.SUPPRESSED: 99}
        assert await statuses(db, kind=AlertKind.PAYMENT_FINAL_FAILURE) == {
            AlertStatus.SENT: 1, AlertStatus.SUPPRESSED: 2}
        assert len(mailbox.messages()) == 2

        async with db.unit_of_work() as session:  # as if the group interval had passed
            for incident in (await session.scalars(select(AlertIncident))).all():
                assert incident.last_mail_at is not None
                incident.last_mail_at -= timedelta(
                    seconds=settings.alert_group_interval_error_seconds + 1)
        await webhook_failures(db, 1)  # its delivery finds the summary due and carries it
        [latest] = await mailbox.wait_for(1, lambda m: "more)" in m.subject)
        assert "(+99 more)" in latest.subject and "and 99 more since" in latest.text
        assert latest.message["X-Billwatch-Severity"] == "error"
        assert sorted(latest.rcpt_tos) == sorted(settings.billing_alert_emails)
        assert_no_card(latest.text + latest.html)  # the card in the failure reason is masked
        assert "4242" in latest.text


class TestSmtpOutage:
    async def test_the_operation_succeeds_and_the_alert_is_sent_once_smtp_is_back(
            self, db: Database, celery_env: tuple[Settings, Celery], start_worker: StartWorker,
            mailbox: Mailbox) -> None:
        start_worker(1)
        mailbox.stop()
        await webhook_failures(db, 1)
        async with db.sessionmaker() as session:  # the operation (its audit row) committed
            assert await session.scalar(select(func.count()).select_from(AuditLog)) == 1

        async def retried() -> bool:  # two attempts failed and were recorded
            [alert] = await alerts(db)
            return (alert.attempts >= 2 and alert.status is AlertStatus.PENDING
                    and alert.claimed_until is None and alert.last_error is not None)

        await wait_until_async(retried, what="two failed attempts")
        mailbox.start()
        await mailbox.wait_for(1)
        await wait_until_async(lambda: settled(db), what="the alert marked sent")
        [alert] = await alerts(db)
        assert alert.status is AlertStatus.SENT and alert.attempts >= 3
        assert len(mailbox.messages()) == 1


class Lock:
    """Holds the database so a job blocks mid-transaction: PostgreSQL locks the metrics table
    (the job has claimed its run and blocks writing its figures); SQLite takes the write lock."""

    def __init__(self, backend: str, database_url: str) -> None:
        self.backend, self.url = backend, database_url
        self.pg: asyncpg.Connection | None = None
        self.sqlite: sqlite3.Connection | None = None

    async def hold(self) -> None:
        if self.backend == "postgresql":
            self.pg = await asyncpg.connect(self.url.replace("postgresql+asyncpg", "postgresql"))
            await self.pg.execute("BEGIN; LOCK TABLE daily_billing_metrics IN ACCESS EXCLUSIVE MODE")
        else:
            self.sqlite = sqlite3.connect(self.url.split("///", 1)[1], isolation_level=None)
            self.sqlite.execute("BEGIN IMMEDIATE")

    async def waiters(self) -> int:
        """PostgreSQL sessions of this database waiting on a lock (SQLite cannot tell)."""
        if self.pg is None:
            return 0
        await self.pg.execute("SELECT pg_stat_clear_snapshot()")  # fresh, inside our transaction
        count = await self.pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'")
        return int(count)

    async def release(self) -> None:
        if self.pg is not None:
            await self.pg.execute("ROLLBACK")
            await self.pg.close()
            self.pg = None
        if self.sqlite is not None:
            self.sqlite.execute("ROLLBACK")
            self.sqlite.close()
            self.sqlite = None


async def blocked(lock: Lock, celery: Celery, task_ids: list[str], waiting: int) -> None:
    """Wait until every task has started and (PostgreSQL) ``waiting`` of them wait on a lock."""
    await wait_until(lambda: all(celery.AsyncResult(t).state == "STARTED" for t in task_ids),
                     what="the tasks to start")
    if lock.backend == "postgresql":
        await wait_until_async(lambda: _at_least(lock, waiting), what="the job to block")


async def _at_least(lock: Lock, waiting: int) -> bool:
    return await lock.waiters() >= waiting


async def one_run(db: Database) -> None:
    async with db.sessionmaker() as session:
        [run] = (await session.scalars(select(JobRun))).all()
        assert run.status is RunStatus.SUCCEEDED and run.attempts == 1
        assert run.period == DAY.isoformat()
        assert await session.scalar(select(func.count()).select_from(DailyBillingMetrics)) == 1
    assert len(await alerts(db, kind=AlertKind.DAILY_REPORT)) == 1


class TestRunsOnce:
    async def test_a_worker_killed_mid_task_is_redelivered_and_applies_once(
            self, db: Database, backend: str, database_url: str,
            celery_env: tuple[Settings, Celery], start_worker: StartWorker, mailbox: Mailbox) -> None:
        _, celery = celery_env
        await seed_month(db)
        worker = start_worker(1)
        lock = Lock(backend, database_url)
        await lock.hold()
        try:
            task = celery.send_task(DAILY_METRICS_TASK, kwargs={"day": DAY.isoformat()})
            await blocked(lock, celery, [task.id], waiting=1)
            [child] = worker.pool_processes()
            os.kill(child, signal.SIGKILL)  # the pool process dies inside the job's transaction
            await wait_until(lambda: child not in worker.pool_processes(), what="a new pool process")
        finally:
            await lock.release()
        assert await wait_until(lambda: task.ready(), what="the re-delivered task")
        assert task.get(timeout=5) == {DAY.isoformat(): True}  # the re-delivery did the work
        assert "WorkerLostError" in worker.output() or "SIGKILL" in worker.output()
        await one_run(db)
        await mailbox.wait_for(1, lambda m: m.message["X-Billwatch-Alert-Kind"] == "daily_report")
        await wait_until_async(lambda: settled(db), what="alerts delivered")
        assert len(mailbox.messages(
            lambda m: m.message["X-Billwatch-Alert-Kind"] == "daily_report")) == 1

    async def test_two_beats_firing_the_same_daily_job_apply_it_once(
            self, db: Database, backend: str, database_url: str,
            celery_env: tuple[Settings, Celery], start_worker: StartWorker, mailbox: Mailbox) -> None:
        _, celery = celery_env
        await seed_month(db)
        start_worker(2)
        lock = Lock(backend, database_url)
        await lock.hold()
        try:  # both tasks are inside the job before either can finish
            tasks = [celery.send_task(DAILY_METRICS_TASK, kwargs={"day": DAY.isoformat()})
                     for _beat in range(2)]
            await blocked(lock, celery, [t.id for t in tasks], waiting=2)
        finally:
            await lock.release()
        results = [task.get(timeout=30) for task in tasks]
        assert sorted(r[DAY.isoformat()] for r in results) == [False, True]
        await one_run(db)
        await wait_until_async(lambda: settled(db), what="alerts delivered")
        assert len(mailbox.messages(
            lambda m: m.message["X-Billwatch-Alert-Kind"] == "daily_report")) == 1
