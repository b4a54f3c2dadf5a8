"""Month-end burst: 50,000 signed ``invoice.paid`` events for 10,000 subscriptions, as fast as
the generator can post them, to ``billwatch serve`` with its processors running.

billwatch runs in its default mode, with no broker: each of the server's 2 worker processes
acknowledges deliveries and runs the embedded inbox processor beside them, so the posting and
the processing share those processes (and the 2 cores, with PostgreSQL and the generator).
The generator posts in a closed loop over 64 connections. Then the suite waits until nothing is
unprocessed and checks from the tables that every delivery was acknowledged (2xx) and applied
exactly once: one ``processed`` event row, one payment and one ``billing.payment.succeeded`` audit
row per event.

Reported, from the rows' own times: the drain (first receipt to last processed, and last
receipt to last processed) and the peak of ``billwatch_webhook_oldest_unprocessed_age_seconds``.
The gauge at time t is t minus the receipt of the oldest event not yet processed, so its peak
over the run is the longest any event waited: max(processed_at - received_at), exact, where
scraping would only sample it. It is set next to the backlog alert's threshold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

from bench import loadgen
from bench.context import WEBHOOK_SECRET, BenchContext
from bench.processor import applied_counts, until_drained
from bench.report import Figure, ratio
from bench.scratch import scratch_database
from bench.seed import seed_subscribers
from bench.serving import serve_billwatch
from bench.stripe_events import invoice_paid_requests
from billwatch.config import Settings

SUITE = "webhook burst"
CONNECTIONS = 64
WORKERS = 2


@dataclass(frozen=True, slots=True)
class Applied:
    """What the tables say once the inbox is empty."""

    statuses: dict[str, int]
    payments: int
    invoices: int
    audited: int
    drain_seconds: float
    """First receipt to last processed."""
    after_last_ack_seconds: float
    """Last receipt to last processed."""
    peak_age_seconds: float


async def run(ctx: BenchContext) -> None:
    settings = Settings(_env_file=None)
    plan = settings.plans[0]
    count = ctx.size("burst_events", 50_000, 2000)
    async with scratch_database("burst", keep=ctx.keep_databases) as db:
        seeded = await seed_subscribers(db.url, ctx.size("burst_subscriptions", 10_000, 400), plan)
        requests = invoice_paid_requests(seeded.subscriptions, plan, WEBHOOK_SECRET, count,
                                         event_type="invoice.paid")
        workers = 1 if ctx.smoke else WORKERS
        conn = await asyncpg.connect(db.dsn)
        try:
            with serve_billwatch(ctx.billwatch_env(db.url), workers=workers,
                                 log_dir=ctx.log_dir, name="billwatch-burst") as service:
                ctx.console.print(f"  {SUITE}: {count:,} events, {workers} worker(s), "
                                  f"{CONNECTIONS} connections")
                posted = await loadgen.run(service.url, requests, concurrency=CONNECTIONS,
                                           max_seconds=max(600.0, count / 20))
                waited = time.monotonic()
                await until_drained(conn, stored=count, within=max(600.0, count / 10))
                ctx.console.print(f"  {SUITE}: inbox empty {time.monotonic() - waited:.0f} s "
                                  f"after the last answer")
            applied = await _applied(conn)
        finally:
            await conn.close()
    _check(posted, applied, count)
    _figures(ctx, posted, applied, count, settings.alert_webhook_backlog_seconds, workers)


async def _applied(conn: asyncpg.Connection) -> Applied:
    statuses, payments, invoices, audited = await applied_counts(conn)
    drain, after_last, peak = await conn.fetchrow(
        "SELECT extract(epoch FROM max(processed_at) - min(received_at)), "
        "extract(epoch FROM max(processed_at) - max(received_at)), "
        "extract(epoch FROM max(processed_at - received_at)) FROM stripe_events")
    return Applied(statuses, payments, invoices, audited, float(drain), float(after_last),
                   float(peak))


def _check(posted: loadgen.LoadResult, applied: Applied, count: int) -> None:
    """The burst's correctness is not a figure to miss: a lost or doubled event fails the run."""
    if posted.requests != count or posted.errors:
        raise RuntimeError(f"{posted.requests} of {count} deliveries answered, statuses "
                           f"{posted.statuses}; first: {posted.first_error}")
    if applied.statuses != {"processed": count} or \
            not applied.payments == applied.invoices == applied.audited == count:
        raise RuntimeError(f"after the drain: events by status {applied.statuses}, payments "
                           f"{applied.payments} ({applied.invoices} invoices), payment audit rows "
                           f"{applied.audited}; expected {count} of each")


def _figures(ctx: BenchContext, posted: loadgen.LoadResult, applied: Applied, count: int,
             threshold: int, workers: int) -> None:
    acked = sum(n for status, n in posted.statuses.items() if 200 <= status < 300)
    tag = f"{workers} worker{'s' if workers > 1 else ''}"
    ctx.figures += [
        Figure(SUITE, f"acknowledged (2xx), {tag}", acked, "events", "posted", count,
               "every one", acked == count, ratio(acked, count), details=posted.summary()),
        Figure(SUITE, "applied once (payments, audit rows)", applied.payments, "events", "posted",
               count, "exactly once", applied.payments == applied.audited == count,
               ratio(applied.payments, count),
               details={"statuses": applied.statuses, "distinct_invoices": applied.invoices,
                        "payment_audit_rows": applied.audited}),
        Figure(SUITE, f"posting rate, {CONNECTIONS} connections", posted.per_second, "req/s", "",
               float("nan"), "context", None,
               details={"p50_ms": round(posted.percentile(50), 2),
                        "p99_ms": round(posted.percentile(99), 2), "seconds": posted.seconds}),
        Figure(SUITE, "drain, first receipt to last processed", applied.drain_seconds, "s", "",
               float("nan"), "reported", None,
               details={"events_per_second": round(count / applied.drain_seconds, 1)
                        if applied.drain_seconds else None,
                        "after_last_receipt_seconds": round(applied.after_last_ack_seconds, 3)}),
        Figure(SUITE, "drain after the last receipt", applied.after_last_ack_seconds, "s", "",
               float("nan"), "reported", None),
        Figure(SUITE, "peak oldest-unprocessed age", applied.peak_age_seconds, "s",
               "backlog alert threshold", threshold, "reported", None,
               ratio(applied.peak_age_seconds, threshold)),
    ]
