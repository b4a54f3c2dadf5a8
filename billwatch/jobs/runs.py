"""Run a job's effect once per period: the claim and the effect share one transaction.

``run_once`` upserts the ``(job, period)`` row of ``job_runs`` as its first statement and does
the job's work in the same transaction:

- two beats (or a retry racing a late original) fire the same period: the second upsert waits
  on the unique key (PostgreSQL row lock, SQLite write lock), then sees ``succeeded`` and does
  nothing;
- a worker killed mid-job drops its connection, the database rolls everything back (claim
  included), and the re-delivered message runs the job from scratch;
- a job that raised is recorded as ``failed`` in a fresh transaction, and a later run of the
  same period takes it over.

``force=True`` (the CLI's re-run and backfill) recomputes a period that already succeeded.

Jobs whose work opens transactions of its own (sealing the audit trail, reconciling Stripe
events) cannot share the claim's transaction; :func:`run_claimed` claims first, in a short
transaction, then works. A run killed mid-way leaves its period claimed (at most once rather
than exactly once), which suits those jobs: each run catches up everything before it.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.context import Origin, bound_origin
from billwatch.db import Database, utcnow
from billwatch.jobs.models import JobRun, RunStatus
from billwatch.redaction import redact, redact_text

log = structlog.get_logger(__name__)

Effect = Callable[[AsyncSession], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class RunOutcome:
    ran: bool
    """False when the period had already run (and ``force`` was not given)."""
    result: dict[str, Any] = field(default_factory=dict)


def _insert(session: AsyncSession) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


async def _claim(session: AsyncSession, *, job: str, period: str, force: bool,
                 task_id: str | None, retake_running: bool = True) -> uuid.UUID | None:
    """The run's id when this caller may run the period; None when it already ran (or runs)."""
    now = utcnow()
    statement = _insert(session)(JobRun).values(
        id=uuid.uuid4(), job=job, period=period, status=RunStatus.RUNNING, attempts=1,
        started_at=now, task_id=task_id, result={})
    statement = statement.on_conflict_do_update(
        index_elements=["job", "period"],
        set_={"status": RunStatus.RUNNING.value, "attempts": JobRun.attempts + 1,
              "started_at": now, "finished_at": None, "task_id": task_id, "error": None},
        where=None if force else (JobRun.status != RunStatus.SUCCEEDED.value if retake_running
                                  else JobRun.status == RunStatus.FAILED.value),
    ).returning(JobRun.id)
    return (await session.execute(statement)).scalar_one_or_none()


async def run_once(db: Database, *, job: str, period: str, effect: Effect, force: bool = False,
                   task_id: str | None = None) -> RunOutcome:
    """Run ``effect`` for ``(job, period)`` unless that period already succeeded."""
    with bound_origin(Origin(job_id=f"{job}:{period}"[:128])):
        try:
            async with db.unit_of_work() as session:
                run_id = await _claim(session, job=job, period=period, force=force,
                                      task_id=task_id)
                if run_id is None:
                    log.info("job_already_ran", job=job, period=period)
                    return RunOutcome(ran=False)
                result = redact(await effect(session))
                await session.execute(update(JobRun).where(JobRun.id == run_id).values(
                    status=RunStatus.SUCCEEDED, finished_at=utcnow(), result=result))
        except Exception as error:
            await _record_failure(db, job=job, period=period, error=error, task_id=task_id)
            raise
    log.info("job_ran", job=job, period=period)
    return RunOutcome(ran=True, result=result)


Work = Callable[[], Awaitable[dict[str, Any]]]


async def run_claimed(db: Database, *, job: str, period: str, work: Work,
                      task_id: str | None = None) -> RunOutcome:
    """Claim ``(job, period)`` in its own transaction, then run ``work`` (at most once)."""
    with bound_origin(Origin(job_id=f"{job}:{period}"[:128])):
        async with db.unit_of_work() as session:
            run_id = await _claim(session, job=job, period=period, force=False, task_id=task_id,
                                  retake_running=False)
        if run_id is None:
            log.info("job_already_ran", job=job, period=period)
            return RunOutcome(ran=False)
        try:
            result = redact(await work())
        except Exception as error:
            await _record_failure(db, job=job, period=period, error=error, task_id=task_id)
            raise
        async with db.unit_of_work() as session:
            await session.execute(update(JobRun).where(JobRun.id == run_id).values(
                status=RunStatus.SUCCEEDED, finished_at=utcnow(), result=result))
    log.info("job_ran", job=job, period=period)
    return RunOutcome(ran=True, result=result)


async def _record_failure(db: Database, *, job: str, period: str, error: Exception,
                          task_id: str | None) -> None:
    message = redact_text(f"{type(error).__name__}: {error}")[:2000]
    log.error("job_failed", job=job, period=period, error=message)
    try:
        async with db.unit_of_work() as session:
            now = utcnow()
            statement = _insert(session)(JobRun).values(
                id=uuid.uuid4(), job=job, period=period, status=RunStatus.FAILED, attempts=1,
                started_at=now, finished_at=now, task_id=task_id, error=message, result={})
            await session.execute(statement.on_conflict_do_update(
                index_elements=["job", "period"],
                set_={"status": RunStatus.FAILED.value, "finished_at": now, "error": message,
                      "attempts": JobRun.attempts + 1},
                where=JobRun.status != RunStatus.SUCCEEDED.value))
    except Exception:
        log.exception("job_failure_not_recorded", job=job, period=period)
