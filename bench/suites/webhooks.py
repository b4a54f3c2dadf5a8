"""Webhook ingestion: signed ``invoice.payment_succeeded`` deliveries per second, 32 connections.

Three servers, each under uvicorn with 1 and then 2 workers, fed the same kind of deliveries:
(a) a bare ASGI endpoint that only reads the body; (b) the minimal correct endpoint on asyncpg
(verify, then the event row and one audit row in one transaction); and billwatch's full path
(verify, store, handle: a payment transaction, audit rows, metrics). Target: the full path at
>= 50 % of (b), p99 < 100 ms.
"""

from __future__ import annotations

import asyncpg

from bench import loadgen
from bench.apps.minimal import SCHEMA
from bench.context import WEBHOOK_SECRET, BenchContext
from bench.report import Figure, ratio
from bench.scratch import scratch_database
from bench.seed import seed_subscribers
from bench.serving import serve_app, serve_billwatch
from bench.stripe_events import invoice_paid_requests
from billwatch.config import Settings

CONCURRENCY = 32
SUITE = "webhook ingestion"


async def run(ctx: BenchContext) -> None:
    plan = Settings(_env_file=None).plans[0]
    count = ctx.size("webhook_requests_per_run", 5000, 1500)
    warmup = min(500, count // 5)
    async with scratch_database("webhooks", keep=ctx.keep_databases) as db:
        seeded = await seed_subscribers(db.url, ctx.size("webhook_subscriptions", 4000, 400), plan)
        conn = await asyncpg.connect(db.dsn)
        try:
            await conn.execute(SCHEMA)
        finally:
            await conn.close()
        minimal_env = {"BENCH_PG_DSN": db.dsn, "BENCH_WEBHOOK_SECRET": WEBHOOK_SECRET}
        for workers in (1, 2):
            results: dict[str, loadgen.LoadResult] = {}
            for label in ("bare", "minimal", "full"):
                requests = invoice_paid_requests(seeded.subscriptions, plan, WEBHOOK_SECRET,
                                                 count + warmup)
                ctx.console.print(f"  {SUITE}: {label}, {workers} worker(s), {count} deliveries")
                if label == "full":
                    server = serve_billwatch(ctx.billwatch_env(db.url), workers=workers,
                                             log_dir=ctx.log_dir)
                else:
                    server = serve_app(f"bench.apps.{label}:app", minimal_env, workers=workers,
                                       log_dir=ctx.log_dir)
                with server as service:
                    results[label] = await loadgen.run(service.url, requests, concurrency=CONCURRENCY,
                                                       max_seconds=60, warmup=warmup)
                _check(label, results[label])
            _figures(ctx, workers, results)


def _check(label: str, result: loadgen.LoadResult) -> None:
    if result.errors:
        raise RuntimeError(f"{label}: non-2xx answers {result.statuses}; first: {result.first_error}")


def _figures(ctx: BenchContext, workers: int, results: dict[str, loadgen.LoadResult]) -> None:
    full, minimal, bare = results["full"], results["minimal"], results["bare"]
    share = ratio(full.per_second, minimal.per_second)
    tag = f"{workers} worker{'s' if workers > 1 else ''}"
    ctx.figures += [
        Figure(SUITE, f"(a) bare, {tag}", bare.per_second, "req/s", "", float("nan"),
               "context", None, details=bare.summary()),
        Figure(SUITE, f"(b) asyncpg minimal, {tag}", minimal.per_second, "req/s", "(a) bare",
               bare.per_second, "context", None, ratio(minimal.per_second, bare.per_second),
               details=minimal.summary()),
        Figure(SUITE, f"full path, {tag}", full.per_second, "req/s", "(b) minimal",
               minimal.per_second, ">= 0.50 of (b)", share is not None and share >= 0.5, share,
               details=full.summary()),
        Figure(SUITE, f"full p50, {tag}", full.percentile(50), "ms", "(b) p50",
               minimal.percentile(50), "context", None,
               ratio(full.percentile(50), minimal.percentile(50))),
        Figure(SUITE, f"full p99, {tag}", full.percentile(99), "ms", "(b) p99",
               minimal.percentile(99), "< 100 ms", full.percentile(99) < 100,
               ratio(full.percentile(99), minimal.percentile(99))),
    ]
