"""Each ``billwatch audit verify`` leaves a ``job_runs`` row: when, by whom, and did the trail hold.

Without it nothing but the operator's terminal knows when the trail was last proven, so the
console could not tell an admin whether "intact" is an hour or a year old. The row is written
after the verify, in a short transaction of its own; ``succeeded`` means intact, ``failed``
means broken (or not verifiable, such as an unreadable anchor), with the first problem kept.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.audit.verify import VerifyReport
from billwatch.db import Database, utcnow
from billwatch.jobs.models import JobRun, RunStatus
from billwatch.redaction import redact, redact_text

AUDIT_VERIFY = "audit_verify"
"""The ``job_runs.job`` of verify runs; each run's period is its start time (unique per run)."""


@dataclass(frozen=True, slots=True)
class VerifyRun:
    """The last verify, as the console shows it."""

    finished_at: datetime
    by: str
    """Who ran it: the operator's account and the command's job id."""
    ok: bool
    problem: str | None
    sealed_rows: int | None
    head_seq: int | None


def _period(started_at: datetime) -> str:
    # ISO time first, so the (job, period) index returns the newest run first.
    return f"{started_at.strftime('%Y-%m-%dT%H:%M:%S.%f')}-{uuid.uuid4().hex[:6]}"


async def record(db: Database, *, started_at: datetime, by: str, job_id: str | None,
                 report: VerifyReport | None, error: str | None = None) -> None:
    """Store one verify run: its report, or the ``error`` that kept it from finishing."""
    problem = (error if report is None
               else None if report.problem is None
               else f"{report.problem.kind}: {report.problem.message}")
    result: dict[str, object] = {"ok": report is not None and report.ok, "by": by}
    if report is not None:
        result.update(sealed_rows=report.sealed_rows, unsealed_rows=report.unsealed_rows,
                      archived_rows=report.archived_rows, head_seq=report.head_seq,
                      checkpoints=report.checkpoints, seconds=round(report.seconds, 3))
    async with db.unit_of_work() as session:
        session.add(JobRun(
            id=uuid.uuid4(), job=AUDIT_VERIFY, period=_period(started_at),
            status=RunStatus.SUCCEEDED if result["ok"] else RunStatus.FAILED, attempts=1,
            started_at=started_at, finished_at=utcnow(), task_id=job_id,
            error=None if problem is None else redact_text(problem)[:2000], result=redact(result)))


async def last_run(session: AsyncSession) -> VerifyRun | None:
    """The newest recorded verify, or None when the trail was never verified here."""
    row = (await session.scalars(select(JobRun).where(JobRun.job == AUDIT_VERIFY)
                                 .order_by(JobRun.period.desc()).limit(1))).first()
    if row is None:
        return None
    result = row.result or {}
    by = str(result.get("by") or "unknown")
    return VerifyRun(
        finished_at=row.finished_at or row.started_at,
        by=f"{by} ({row.task_id})" if row.task_id else by,
        ok=row.status is RunStatus.SUCCEEDED, problem=row.error,
        sealed_rows=result.get("sealed_rows"), head_seq=result.get("head_seq"))
