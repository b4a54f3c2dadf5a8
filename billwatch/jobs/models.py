"""Job runs (one per job and period) and the stored daily billing metrics."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Float, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from billwatch.db import Base, UUIDPrimaryKey, enum_column, utcnow
from billwatch.redacted import RedactedString, RedactedText


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobRun(UUIDPrimaryKey, Base):
    """The one run of ``job`` for ``period``; its uniqueness is what makes a job run once.

    The row is claimed in the same transaction as the job's effect, so a duplicate run (two
    beats, a re-delivered message) waits on the unique key and then finds ``succeeded``, and a
    killed run leaves nothing behind for its re-delivery to trip over.
    """

    __tablename__ = "job_runs"
    __table_args__ = (UniqueConstraint("job", "period", name="job_period"),)

    job: Mapped[str] = mapped_column(String(60))
    period: Mapped[str] = mapped_column(String(40))
    """``YYYY-MM-DD`` for daily jobs, ``YYYY-MM-DDTHH`` for hourly ones."""
    status: Mapped[RunStatus] = mapped_column(enum_column(RunStatus, "job_run_status"))
    attempts: Mapped[int] = mapped_column(default=1)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    task_id: Mapped[str | None] = mapped_column(RedactedString(255))
    error: Mapped[str | None] = mapped_column(RedactedText())
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)


class DailyBillingMetrics(Base):
    """The billing figures of one UTC day; recomputed in place (upsert) whenever it is re-run.

    The formulas are in the README and in :mod:`billwatch.jobs.daily_metrics`;
    ``definition_version`` says which formulas produced the row.
    """

    __tablename__ = "daily_billing_metrics"

    day: Mapped[date] = mapped_column(primary_key=True)
    definition_version: Mapped[int]
    computed_at: Mapped[datetime] = mapped_column(default=utcnow)
    currency: Mapped[str] = mapped_column(String(3))
    active_subscriptions: Mapped[int]
    active_by_owner_plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """``{owner_type: {plan_code: count}}`` at the end of the day."""
    new_subscriptions: Mapped[int]
    cancelled_subscriptions: Mapped[int]
    mrr_cents: Mapped[int] = mapped_column(BigInteger)
    paying_customers: Mapped[int]
    arpu_cents: Mapped[int | None]
    gross_revenue_cents: Mapped[int] = mapped_column(BigInteger)
    refunds_count: Mapped[int]
    refunds_cents: Mapped[int] = mapped_column(BigInteger)
    payments_succeeded: Mapped[int]
    payments_failed: Mapped[int]
    payment_success_rate: Mapped[float | None] = mapped_column(Float)
    churn_window_days: Mapped[int]
    churn_customers_start: Mapped[int]
    churn_customers_lost: Mapped[int]
    customer_churn_rate: Mapped[float | None] = mapped_column(Float)
    churn_mrr_start_cents: Mapped[int] = mapped_column(BigInteger)
    churn_mrr_lost_cents: Mapped[int] = mapped_column(BigInteger)
    revenue_churn_rate: Mapped[float | None] = mapped_column(Float)



class Installation(Base):
    """When this database was set up: one row, written by its migration (or the first catch-up).

    The daily catch-up never reports a day before the installation's first day (or before the
    first billing data, for a database that was filled with older history).
    """

    __tablename__ = "installation"

    id: Mapped[int] = mapped_column(primary_key=True)
    installed_at: Mapped[datetime] = mapped_column(default=utcnow)
