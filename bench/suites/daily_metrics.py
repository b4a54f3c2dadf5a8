"""Daily metrics: one day's computation by the jobs' own function at 1 M subscriptions, 5 M transactions.

Measured: :func:`billwatch.jobs.daily_metrics.compute` plus :func:`store` in one transaction,
as the job runs them (median of warm runs; the first, cold run is reported too).
Baseline: a single hand-written SQL query for the core figures (active subscriptions, MRR by
owner type and plan, customer churn over 30 days) with the same definitions, on asyncpg: the
floor for this computation. Its MRR and churn counts must equal the job's (checked and
reported). Target: < 2 s.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.billing_data import SUBSCRIPTION_COLUMNS, TRANSACTION_COLUMNS, BillingData
from bench.bulk import copy
from bench.context import BenchContext
from bench.report import Figure
from bench.scratch import scratch_database
from billwatch.bootstrap import build_runtime
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.jobs import daily_metrics

SUITE = "daily metrics"
RUNS = 5
BASELINE_SQL = """
WITH prices(plan_code, monthly) AS (SELECT * FROM unnest($3::text[], $4::int[])),
live AS (
    SELECT s.owner_type, s.owner_id, s.plan_code, p.monthly, s.created_at <= $1 AS at_start,
           stop IS NULL OR stop > $2 AS at_end
    FROM subscriptions s JOIN prices p USING (plan_code),
         LATERAL (SELECT COALESCE(s.ended_at, CASE WHEN s.status IN ('canceled', 'unpaid', 'paused',
                  'incomplete_expired') THEN COALESCE(s.canceled_at, s.updated_at) END) AS stop) st
    WHERE s.source = 'stripe' AND s.status NOT IN ('trialing', 'incomplete', 'incomplete_expired')
      AND s.created_at <= $2 AND (stop IS NULL OR stop > $1)),
grouped AS (  -- one scan: per owner (churn) and per owner type and plan (MRR) at once
    SELECT owner_type, plan_code, GROUPING(owner_id) AS per_plan,
           sum(monthly) FILTER (WHERE at_start) AS mrr_start,
           sum(monthly) FILTER (WHERE at_end) AS mrr_end,
           count(*) FILTER (WHERE at_end) AS paying
    FROM live GROUP BY GROUPING SETS ((owner_type, owner_id), (owner_type, plan_code)))
SELECT sum(paying) FILTER (WHERE per_plan = 1) AS paying_subscriptions,
       json_object_agg(owner_type || '/' || plan_code, mrr_end) FILTER (WHERE per_plan = 1)
           AS mrr_by_owner_plan,
       coalesce(sum(mrr_end) FILTER (WHERE per_plan = 1), 0) AS mrr,
       count(*) FILTER (WHERE per_plan = 0 AND mrr_start > 0) AS customers_start,
       count(*) FILTER (WHERE per_plan = 0 AND mrr_start > 0 AND coalesce(mrr_end, 0) = 0)
           AS customers_lost
FROM grouped"""


async def _load(ctx: BenchContext, dsn: str, plans: Settings) -> None:
    data = BillingData(plans.plans)
    n_subs = ctx.size("daily_subscriptions", 1_000_000, 20_000)
    n_txs = ctx.size("daily_transactions", 5_000_000, 100_000)
    conn = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        await copy(conn, "subscriptions", SUBSCRIPTION_COLUMNS, data.subscriptions(n_subs), n_subs,
                   ctx.console)
        await copy(conn, "transactions", TRANSACTION_COLUMNS, data.transactions(n_txs), n_txs,
                   ctx.console)
        await conn.execute("VACUUM ANALYZE subscriptions")
        await conn.execute("VACUUM ANALYZE transactions")
        ctx.console.print(f"  loaded {n_subs:,} subscriptions and {n_txs:,} transactions "
                          f"in {time.monotonic() - started:.0f} s")
    finally:
        await conn.close()


async def _job_runs(url: str, settings: Settings, day: object) -> tuple[list[float], tuple[int, ...]]:
    db = Database(url, runtime=build_runtime(settings))
    times: list[float] = []
    core: tuple[int, ...] = ()
    try:
        for _ in range(RUNS):
            started = time.perf_counter()
            async with db.unit_of_work() as session:
                figures = await daily_metrics.compute(session, settings, day)  # type: ignore[arg-type]
                await daily_metrics.store(session, figures)
            times.append(time.perf_counter() - started)
            core = (int(figures["mrr_cents"]), int(figures["churn_customers_start"]),
                    int(figures["churn_customers_lost"]))
    finally:
        await db.dispose()
    return times, core


async def _baseline_runs(dsn: str, settings: Settings,
                         end: datetime) -> tuple[list[float], tuple[int, ...]]:
    conn = await asyncpg.connect(dsn)
    codes = [p.code for p in settings.plans]
    prices = [p.monthly_cents for p in settings.plans]
    times: list[float] = []
    core: tuple[int, ...] = ()
    try:
        for _ in range(RUNS):
            started = time.perf_counter()
            row = await conn.fetchrow(BASELINE_SQL, end - timedelta(days=30), end, codes, prices)
            times.append(time.perf_counter() - started)
            core = (int(row["mrr"]), int(row["customers_start"]), int(row["customers_lost"]))
    finally:
        await conn.close()
    return times, core


async def run(ctx: BenchContext) -> None:
    async with scratch_database("daily", keep=ctx.keep_databases) as db:
        settings = Settings(_env_file=None, database_url=db.url)
        await _load(ctx, db.dsn, settings)
        day = (datetime.now(UTC) - timedelta(days=1)).date()
        end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        ctx.console.print(f"  {SUITE}: the job's computation for {day}, {RUNS} runs")
        job_times, job_core = await _job_runs(db.url, settings, day)
        ctx.console.print(f"  {SUITE}: the single-query baseline, {RUNS} runs")
        base_times, base_core = await _baseline_runs(db.dsn, settings, end)
    warm_job, warm_base = statistics.median(job_times[1:]), statistics.median(base_times[1:])
    ctx.figures += [
        Figure(SUITE, "one day, warm (median)", warm_job, "s", "one SQL query", warm_base,
               "< 2 s", warm_job < 2.0, warm_job / warm_base,
               details={"runs_s": job_times, "baseline_runs_s": base_times,
                        "mrr_churn_start_lost": job_core, "baseline_mrr_churn_start_lost": base_core,
                        "figures_agree": job_core == base_core}),
        Figure(SUITE, "one day, first run", job_times[0], "s", "one SQL query", base_times[0],
               "context", None, job_times[0] / base_times[0]),
    ]
    if job_core != base_core:
        ctx.console.print(f"  [yellow]MRR / churn differ: job {job_core}, baseline {base_core}[/yellow]")
