"""Inbox processing: how many stored events a second billwatch's processors apply.

A scratch database is preloaded with N received ``invoice.paid`` events of existing
subscriptions (stored by the inbox's own ``store``), then 1 and 2 processor processes drain it
(:mod:`bench.processor`, each running :func:`billwatch.webhooks.inbox.drain`: leased batches,
one transaction per event, the handler's payment, its audit rows and the attempt). The baseline,
in the same run and with as many processes, drains the same number of events from a bare
asyncpg table: one transaction per event that claims it (``FOR UPDATE SKIP LOCKED``), inserts
the payment and one audit row and marks it processed. Target: billwatch >= 0.5 of it.

After every billwatch drain the rows are counted: every event processed, one payment and one
``billing.payment.succeeded`` row per event, or the suite fails.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from bench.context import WEBHOOK_SECRET, BenchContext
from bench.loadgen import Request
from bench.processor import BASELINE_SCHEMA, Drained, applied_counts, run_processors
from bench.report import Figure, ratio
from bench.scratch import ScratchDatabase, scratch_database
from bench.seed import seed_subscribers
from bench.stripe_events import invoice_paid_requests
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.webhooks import store
from billwatch.webhooks.models import EventSource
from billwatch.webhooks.payload import redacted_payload

SUITE = "inbox processing"
TARGET = 0.5
"""billwatch's events/s as a share of the baseline's, with the same number of processes."""
PRELOAD_CHUNK = 1000


async def run(ctx: BenchContext) -> None:
    plan = Settings(_env_file=None).plans[0]
    count = ctx.size("processing_events", 20_000, 2000)
    async with scratch_database("processing", keep=ctx.keep_databases) as db:
        seeded = await seed_subscribers(db.url, ctx.size("processing_subscriptions", 4000, 400),
                                        plan)
        conn = await asyncpg.connect(db.dsn)
        try:
            await conn.execute(BASELINE_SCHEMA)
            applied = 0
            def events() -> list[Request]:  # fresh invoices for every drain
                return invoice_paid_requests(seeded.subscriptions, plan, WEBHOOK_SECRET, count,
                                             event_type="invoice.paid")

            for processes in (1,) if ctx.smoke else (1, 2):  # smoke: that it runs
                ctx.console.print(f"  {SUITE}: {count:,} events, {processes} process(es), baseline")
                await _preload_baseline(conn, events())
                baseline = await run_processors("baseline", processes, {"BENCH_PG_DSN": db.dsn},
                                                log_dir=ctx.log_dir, within=_timeout(count))
                ctx.console.print(f"  {SUITE}: {count:,} events, {processes} process(es), "
                                  f"billwatch")
                await _preload_inbox(db, events())
                measured = await run_processors("billwatch", processes, ctx.billwatch_env(db.url),
                                                log_dir=ctx.log_dir, within=_timeout(count))
                applied += count
                await _check(conn, baseline, measured, count, applied)
                _figures(ctx, processes, baseline, measured)
        finally:
            await conn.close()


def _timeout(count: int) -> float:
    """Generous: a drain slower than 10 events/s is broken, not slow."""
    return 120 + count / 10


async def _preload_baseline(conn: asyncpg.Connection, requests: list[Request]) -> None:
    rows = []
    for request in requests:
        assert request.body is not None
        event = json.loads(request.body)
        rows.append((uuid.uuid4(), event["id"], event["type"], request.body.decode(), "received"))
    await conn.executemany("INSERT INTO bench_inbox (id, stripe_event_id, type, payload, status) "
                           "VALUES ($1, $2, $3, $4::jsonb, $5)", rows)
    await conn.execute("ANALYZE bench_inbox")


async def _preload_inbox(db: ScratchDatabase, requests: list[Request]) -> None:
    """Store the events as the endpoint does (redacted payload, ``received``), in chunks."""
    database = Database(db.url)
    try:
        for start in range(0, len(requests), PRELOAD_CHUNK):
            async with database.unit_of_work() as session:
                for request in requests[start:start + PRELOAD_CHUNK]:
                    assert request.body is not None
                    event: dict[str, Any] = json.loads(request.body)
                    await store.store(session, event, redacted_payload(request.body, event),
                                      EventSource.WEBHOOK)
        async with database.engine.connect() as conn:
            await conn.exec_driver_sql("ANALYZE stripe_events")
    finally:
        await database.dispose()


async def _check(conn: asyncpg.Connection, baseline: Drained, measured: Drained, count: int,
                 applied: int) -> None:
    """Every event applied once, by either processor; ``applied`` is billwatch's running total."""
    if baseline.events != count or await conn.fetchval(
            "SELECT count(*) FROM bench_inbox WHERE status <> 'processed'"):
        raise RuntimeError(f"baseline processed {baseline.events} of {count} events")
    statuses, payments, invoices, audited = await applied_counts(conn)
    if measured.events != count or statuses != {"processed": applied} or \
            not payments == invoices == audited == applied:
        raise RuntimeError(f"billwatch processed {measured.events} of {count}; events by status "
                           f"{statuses}, payments {payments} ({invoices} invoices), payment audit "
                           f"rows {audited}, expected {applied} of each")


def _figures(ctx: BenchContext, processes: int, baseline: Drained, measured: Drained) -> None:
    tag = f"{processes} process{'es' if processes > 1 else ''}"
    share = ratio(measured.per_second, baseline.per_second)
    cpu_ms, baseline_cpu_ms = (d.cpu_seconds * 1000 / max(1, d.events) for d in (measured, baseline))
    details: dict[str, Any] = {
        "events": measured.events, "seconds": round(measured.seconds, 3),
        "per_process": measured.per_process, "processor_cpu_ms_per_event": round(cpu_ms, 3),
        "baseline": {"seconds": round(baseline.seconds, 3), "per_process": baseline.per_process,
                     "per_second": round(baseline.per_second, 1),
                     "processor_cpu_ms_per_event": round(baseline_cpu_ms, 3)}}
    ctx.figures.append(Figure(
        SUITE, f"billwatch processors, {tag}", measured.per_second, "events/s",
        "raw asyncpg", baseline.per_second, f">= {TARGET:.2f} of baseline",
        share is not None and share >= TARGET, share, details=details,
        limit=(f"each event costs the processor {cpu_ms:.2f} ms of its own CPU against "
               f"{baseline_cpu_ms:.2f} ms for the baseline (the ORM session, the lease check, "
               f"the subscription and owner lookups, the payment's and the event's audit rows "
               f"with their sealed fields, the attempt row), with PostgreSQL and the other "
               f"processes on the same cores")))
