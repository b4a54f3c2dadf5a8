"""Celery tasks: plain sync functions that run the async job code with ``asyncio.run``.

Celery does not await coroutines, so each task runs its own event loop with a fresh database
engine that is disposed before the loop closes: no asyncpg connection ever crosses loops or
forked processes.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import structlog
from celery import Celery, Task
from celery.signals import worker_init, worker_process_init
from sqlalchemy.exc import DBAPIError

from billwatch.alerts import handoff
from billwatch.alerts.delivery import deliver_one, due_alert_ids, promote_due
from billwatch.alerts.raising import raise_audit_write_failure
from billwatch.billing.expiry import expire_due_overrides
from billwatch.billing.refund_sweeper import sweep_pending_refunds
from billwatch.bootstrap import build_runtime
from billwatch.config import Settings, get_settings
from billwatch.db import Database, utcnow
from billwatch.jobs import service
from billwatch.jobs.celery_app import (
    ANOMALY_CHECKS_TASK,
    AUDIT_CHECKPOINT_TASK,
    AUDIT_FAILURE_TASK,
    AUDIT_PARTITIONS_TASK,
    AUDIT_SEAL_TASK,
    CHECK_TASK,
    DAILY_METRICS_TASK,
    DELIVER_TASK,
    IDEMPOTENCY_PRUNE_TASK,
    OVERRIDES_EXPIRE_TASK,
    REFUNDS_SWEEP_TASK,
    SUBSCRIPTION_INTENTS_TASK,
    SWEEP_TASK,
    WEBHOOKS_INBOX_TASK,
    WEBHOOKS_PRUNE_TASK,
    WEBHOOKS_RECONCILE_TASK,
    app,
)
from billwatch.jobs.runs import RunOutcome
from billwatch.logging import configure_logging
from billwatch.runtime import Runtime

log = structlog.get_logger(__name__)
T = TypeVar("T")
DATABASE_RETRIES = 5
"""How often one delivery task retries after a database error before the sweep takes over."""
SWEEP_GRACE = timedelta(seconds=30)
"""The sweep re-sends alerts pending for longer than this (their own hand-off was lost)."""


@dataclass(slots=True)
class WorkerProcess:
    """This worker process's runtime, built at its start (:func:`prepare_process`)."""

    runtime: Runtime | None = None


WORKER = WorkerProcess()


def worker_runtime() -> Runtime:
    """The runtime of this worker process (built now if the start-up signal did not run)."""
    return WORKER.runtime or prepare_process()


def run_async(work: Callable[[Database, Settings], Awaitable[T]]) -> T:
    """Run ``work`` on a new event loop with its own engine, disposed before the loop ends.

    The engine is the task's; the runtime (keys, rules, metrics, the sink) is the process's.
    """
    runtime = worker_runtime()
    settings = runtime.settings

    async def main() -> T:
        db = Database(settings.database_url, runtime=runtime)
        try:
            return await work(db, settings)
        finally:
            await db.dispose()

    return asyncio.run(main())


def retrying_database_errors(task: Task, run: Callable[[], T], event: str, **fields: str) -> T:
    """``run()``; a database error (server gone, deadlock) rolled its transaction back, so the
    task is retried shortly (1, 2, 4... s), ``DATABASE_RETRIES`` times, then left to the sweep."""
    try:
        return run()
    except DBAPIError as error:
        if task.request.retries >= DATABASE_RETRIES:
            raise
        log.warning(event, error=type(error.orig).__name__ if error.orig else type(error).__name__,
                    **fields)
        raise task.retry(countdown=min(2 ** task.request.retries, 30), exc=error) from error


def run_job(job: Callable[[Database, Settings], Awaitable[RunOutcome]]) -> dict[str, Any]:
    """Run a job claimed once per period in ``job_runs``: whether this run did it, and its result."""
    outcome = run_async(job)
    return {"ran": outcome.ran, **outcome.result}


class CelerySink:
    """Hands committed alerts, requested checks and inbox events to the broker of ``celery``.

    In the app, publishing runs on a one-thread executor so a slow or unreachable broker never
    holds up a request (the alert row stays pending and the sweep re-sends it); in a worker it
    publishes inline. Inbox hand-offs are coalesced: while one inbox task waits to be published,
    further events add nothing (the task drains every due event, theirs included).
    """

    def __init__(self, celery: Celery, *, background: bool) -> None:
        self.celery = celery
        self.background = background
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._inbox_queued = False

    def events_received(self) -> None:
        with self._lock:
            if self._inbox_queued:
                return
            self._inbox_queued = True
        self._publish(WEBHOOKS_INBOX_TASK, before=self._inbox_sent)

    def _inbox_sent(self) -> None:
        with self._lock:  # cleared before sending, so a commit after this publishes again
            self._inbox_queued = False

    def alert_raised(self, alert_id: uuid.UUID) -> None:
        self._publish(DELIVER_TASK, str(alert_id))

    def check_requested(self, check: str) -> None:
        self._publish(CHECK_TASK, check)

    def audit_write_failed(self, details: dict[str, Any]) -> None:
        self._publish(AUDIT_FAILURE_TASK, details)

    def _publish(self, name: str, *args: Any, before: Callable[[], None] | None = None) -> None:
        def send() -> None:
            if before is not None:
                before()
            self.celery.send_task(name, args=args)

        if not self.background:
            send()
            return
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bw-publish")
        future = self._executor.submit(send)
        future.add_done_callback(_log_publish_failure)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _log_publish_failure(future: Any) -> None:
    error = future.exception()
    if error is not None:
        log.warning("alert_publish_failed", error=type(error).__name__)


def prepare_process(**_: Any) -> Runtime:
    """Worker start-up (and each forked child): logging, the runtime, its inline sink."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    runtime = build_runtime(settings)
    sink = CelerySink(app, background=False)
    runtime.attach(alerts=sink, inbox=sink)
    WORKER.runtime = runtime
    return runtime


def task(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``app.task`` with a type, so the task functions below stay checked."""
    decorator: Callable[[Callable[..., Any]], Any] = app.task(**options)
    return decorator


worker_init.connect(prepare_process, weak=False)
worker_process_init.connect(prepare_process, weak=False)


@task(name=DELIVER_TASK, bind=True, max_retries=None)
def deliver_alert(self: Task, alert_id: str) -> str:
    """Deliver one alert; SMTP trouble retries with exponential backoff (kept in the row).

    A database error (the server gone, a deadlock, a serialization failure) rolled its
    transaction back, so the alert is claimable again: try again shortly, a few times, and
    leave the rest to the minute sweep.
    """
    result = retrying_database_errors(
        self, lambda: run_async(lambda db, settings: deliver_one(db, settings, uuid.UUID(alert_id))),
        "alert_delivery_database_error", alert_id=alert_id)
    if result.outcome == "retry" and result.retry_in is not None:
        raise self.retry(countdown=result.retry_in)
    return result.outcome


@task(name=SWEEP_TASK)
def sweep_alerts() -> int:
    """Mail the incident summaries that are due and re-send alerts whose hand-off was lost."""

    async def work(db: Database, settings: Settings) -> list[uuid.UUID]:
        if not settings.enable_billing_alerts:
            return []
        promoted = await promote_due(db, settings)
        stale = await due_alert_ids(db, now=utcnow(), older_than=utcnow() - SWEEP_GRACE)
        return [*promoted, *[alert_id for alert_id in stale if alert_id not in promoted]]

    alert_ids = run_async(work)
    for alert_id in alert_ids:
        deliver_alert.apply_async(args=[str(alert_id)])
    return len(alert_ids)


JOB_RETRY: dict[str, Any] = {"bind": True, "autoretry_for": (Exception,), "retry_backoff": 5,
                             "retry_backoff_max": 600, "retry_jitter": True, "max_retries": 5}


@task(name=DAILY_METRICS_TASK, **JOB_RETRY)
def daily_metrics(self: Task, day: str | None = None, force: bool = False) -> dict[str, Any]:
    """``day`` (YYYY-MM-DD) once; without a day, every recent day that has not run (00:00 beat)."""
    task_id = self.request.id
    if day is None:
        return run_async(lambda db, settings: service.daily_catch_up(db, settings, task_id=task_id))
    outcome = run_async(lambda db, settings: service.daily_metrics_job(
        db, settings, date.fromisoformat(day), force=force, task_id=task_id))
    return {day: outcome.ran}


@task(name=ANOMALY_CHECKS_TASK, **JOB_RETRY)
def anomaly_checks(self: Task, hour: str | None = None) -> dict[str, Any]:
    """``hour`` (YYYY-MM-DDTHH) once; without an hour, every recent hour that has not run."""
    task_id = self.request.id
    if hour is None:
        return run_async(lambda db, settings: service.hourly_catch_up(db, settings, task_id=task_id))
    start = datetime.strptime(hour, "%Y-%m-%dT%H").replace(tzinfo=UTC)
    outcome = run_async(lambda db, settings: service.anomaly_checks_job(
        db, settings, hour_start=start, task_id=task_id))
    return {hour: outcome.ran}


@task(name=CHECK_TASK, **JOB_RETRY)
def run_check(self: Task, check: str) -> dict[str, Any]:
    """A check requested by an audit rule after its commit (refunds today)."""
    if check != handoff.Check.REFUNDS_TODAY:
        raise ValueError(f"unknown check {check!r}")
    return run_async(lambda db, settings: service.refunds_check(db, settings))


@task(name=AUDIT_FAILURE_TASK, **JOB_RETRY)
def audit_write_failed(self: Task, details: dict[str, Any]) -> None:
    """Raise the alert for an audit row that could not be written, in its own transaction."""
    run_async(lambda db, _settings: raise_audit_write_failure(db, details))


@task(name=AUDIT_CHECKPOINT_TASK, **JOB_RETRY)
def audit_checkpoint(self: Task) -> dict[str, Any]:
    """``billwatch audit checkpoint``, hourly: seal new audit rows, write a signed checkpoint."""
    return run_job(partial(service.audit_checkpoint_job, task_id=self.request.id))


@task(name=AUDIT_SEAL_TASK, **JOB_RETRY)
def audit_seal(self: Task) -> dict[str, Any]:
    """Every ``audit_seal_interval_seconds``: seal new audit rows, as the embedded runner does."""
    return run_job(service.audit_seal_due)


@task(name=AUDIT_PARTITIONS_TASK, **JOB_RETRY)
def audit_partitions(self: Task) -> dict[str, Any]:
    """Daily: make the audit partitions of this month and the months ahead (PostgreSQL)."""
    return run_job(partial(service.audit_partitions_job, task_id=self.request.id))


@task(name=WEBHOOKS_RECONCILE_TASK, **JOB_RETRY)
def webhooks_reconcile(self: Task) -> dict[str, Any]:
    """``billwatch webhooks reconcile``, hourly: process events no webhook delivered."""
    return run_job(partial(service.webhooks_reconcile_job, task_id=self.request.id))


@task(name=REFUNDS_SWEEP_TASK, **JOB_RETRY)
def sweep_refunds(self: Task) -> dict[str, int]:
    """Every minute: settle refund intents pending past the grace period (same Stripe key)."""
    result = run_async(lambda db, settings: sweep_pending_refunds(db, settings))
    return {"settled": result.settled, "still_pending": result.still_pending}


@task(name=OVERRIDES_EXPIRE_TASK, **JOB_RETRY)
def expire_overrides(self: Task) -> dict[str, Any]:
    """Every minute: end free grants and timed overrides whose end date has passed (once each)."""
    return run_async(lambda db, settings: expire_due_overrides(db, settings))


@task(name=SUBSCRIPTION_INTENTS_TASK, **JOB_RETRY)
def sweep_subscription_intents(self: Task) -> dict[str, Any]:
    """Every minute: retry checkout and cancel intents left pending past their grace period."""
    from billwatch.billing.intent_sweeper import sweep_subscription_intents as sweep

    result = run_async(lambda db, settings: sweep(db, settings))
    return {"checkouts": [str(i) for i in result.checkouts],
            "cancellations": [str(i) for i in result.cancellations],
            "still_pending": result.still_pending}


@task(name=IDEMPOTENCY_PRUNE_TASK, **JOB_RETRY)
def prune_idempotency_keys(self: Task) -> dict[str, Any]:
    """Hourly: delete client idempotency keys past their replay window (once per hour)."""
    return run_job(partial(service.idempotency_prune_job, task_id=self.request.id))


@task(name=WEBHOOKS_INBOX_TASK, bind=True, max_retries=None)
def process_inbox(self: Task) -> dict[str, int]:
    """Drain the webhook inbox: every due event, in leased batches (several workers share it).

    A database error rolled its transaction back and the claims lapse by their lease: try
    again shortly, a few times, then the beat's next sweep takes over.
    """
    from billwatch.payments.gateway import PaymentsGateway
    from billwatch.webhooks.inbox import drain, processor_id

    worker = processor_id(f"celery-{self.request.id or 'inline'}"[:40])

    async def work(db: Database, settings: Settings) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in await drain(db, PaymentsGateway(settings), settings, worker=worker):
            counts[result.outcome.value] = counts.get(result.outcome.value, 0) + 1
        return counts

    return retrying_database_errors(self, lambda: run_async(work), "inbox_database_error")


@task(name=WEBHOOKS_PRUNE_TASK, **JOB_RETRY)
def prune_webhook_payloads(self: Task) -> dict[str, Any]:
    """Daily: drop stored Stripe payloads past their retention (rows and hashes stay)."""
    return run_job(partial(service.webhooks_prune_job, task_id=self.request.id))
