"""Webhook ack path: how fast ``POST /webhooks/stripe`` answers signed deliveries.

Three servers, each under uvicorn with 1 and then 2 workers, fed the same kind of deliveries
(signed ``invoice.payment_succeeded``, each paying a fresh invoice): (a) a bare ASGI endpoint that
only reads the body; (b) the minimal correct endpoint on asyncpg (verify, then the event row and
one audit row in one transaction); and billwatch's ``POST /webhooks/stripe`` as it stands.

1. **Maximum throughput**, closed loop over 32 connections. Target: billwatch >= 0.70 of (b).
2. **Latency under a steady load**, open loop at half of (b)'s measured maximum, each latency
   counted from the request's intended send time. Target: billwatch p99 < 50 ms; (b) at the same
   rate is the baseline.

The server's CPU per delivery (all its processes, PostgreSQL's not included) is recorded for
both, to say what limits a missed target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import asyncpg

from bench import loadgen
from bench.apps.minimal import SCHEMA
from bench.context import WEBHOOK_SECRET, BenchContext
from bench.report import Figure, ratio
from bench.scratch import scratch_database
from bench.seed import Seeded, seed_subscribers
from bench.serving import cpu_seconds, serve_app, serve_billwatch
from bench.stripe_events import invoice_paid_requests
from billwatch.config import Plan, Settings
from billwatch.demo.stack import Service

CONCURRENCY = 32
SUITE = "webhook ack path"
THROUGHPUT_TARGET = 0.70
"""billwatch's closed-loop maximum as a share of (b)'s."""
P99_TARGET_MS = 50.0
OPEN_LOOP_SHARE = 0.5
"""The open loop's rate as a share of (b)'s measured maximum."""
OPEN_LOOP_SECONDS = 10
OPEN_LOOP_TIMEOUT = 5.0
"""Seconds after its send time at which an open-loop request counts as unanswered."""


@dataclass(frozen=True, slots=True)
class Measured:
    """One server's closed-loop maximum, its open-loop run and its CPU per delivery."""

    closed: loadgen.LoadResult
    cpu_ms: float
    """Server CPU per delivery in the closed loop (milliseconds)."""
    open: loadgen.LoadResult | None = None


@dataclass(frozen=True, slots=True)
class Load:
    """What one worker count's runs share: the deliveries' targets and the run sizes."""

    seeded: Seeded
    plan: Plan
    count: int
    warmup: int
    open_seconds: int

    def requests(self, count: int) -> list[loadgen.Request]:
        return invoice_paid_requests(self.seeded.subscriptions, self.plan, WEBHOOK_SECRET, count)


async def run(ctx: BenchContext) -> None:
    plan = Settings(_env_file=None).plans[0]
    count = ctx.size("webhook_requests_per_run", 5000, 1500)
    open_seconds = 1 if ctx.smoke else max(5, round(OPEN_LOOP_SECONDS * ctx.scale))
    ctx.sizes["webhook_open_loop_seconds"] = open_seconds
    async with scratch_database("webhooks", keep=ctx.keep_databases) as db:
        seeded = await seed_subscribers(db.url, ctx.size("webhook_subscriptions", 4000, 400), plan)
        conn = await asyncpg.connect(db.dsn)
        try:
            await conn.execute(SCHEMA)
        finally:
            await conn.close()
        load = Load(seeded, plan, count, min(500, count // 5), open_seconds)
        minimal_env = {"BENCH_PG_DSN": db.dsn, "BENCH_WEBHOOK_SECRET": WEBHOOK_SECRET}
        for workers in (1,) if ctx.smoke else (1, 2):  # smoke: that it runs
            with serve_app("bench.apps.bare:app", minimal_env, workers=workers,
                           log_dir=ctx.log_dir) as service:
                bare = await _closed(ctx, "(a) bare", workers, service, load)
            with serve_app("bench.apps.minimal:app", minimal_env, workers=workers,
                           log_dir=ctx.log_dir) as service:
                minimal = await _closed(ctx, "(b) minimal", workers, service, load)
                rate = OPEN_LOOP_SHARE * minimal.closed.per_second
                minimal = await _open(ctx, "(b) minimal", workers, service, load, minimal, rate)
            with serve_billwatch(ctx.billwatch_env(db.url), workers=workers,
                                 log_dir=ctx.log_dir) as service:
                full = await _closed(ctx, "billwatch", workers, service, load)
                full = await _open(ctx, "billwatch", workers, service, load, full, rate)
            _figures(ctx, workers, bare, minimal, full)


async def _closed(ctx: BenchContext, label: str, workers: int, service: Service,
                  load: Load) -> Measured:
    ctx.console.print(f"  {SUITE}: {label}, {workers} worker(s), {load.count} deliveries, "
                      f"closed loop")
    requests = load.requests(load.warmup + load.count)
    await loadgen.run(service.url, requests[:load.warmup], concurrency=CONCURRENCY, max_seconds=60)
    before = cpu_seconds(service)
    result = await loadgen.run(service.url, requests[load.warmup:], concurrency=CONCURRENCY,
                               max_seconds=60)
    _check(label, result)
    return Measured(result, (cpu_seconds(service) - before) * 1000 / max(1, result.requests))


async def _open(ctx: BenchContext, label: str, workers: int, service: Service, load: Load,
                measured: Measured, rate: float) -> Measured:
    count = math.ceil(rate * load.open_seconds)
    ctx.console.print(f"  {SUITE}: {label}, {workers} worker(s), open loop at {rate:,.0f}/s "
                      f"for {load.open_seconds} s")
    result = await loadgen.run_open(service.url, load.requests(count), rate=rate,
                                    max_seconds=load.open_seconds, answer_within=OPEN_LOOP_TIMEOUT)
    answered = {s: n for s, n in result.statuses.items() if s >= 100}
    if any(not 200 <= s < 300 for s in answered):  # no answer in time is a figure, not a fault
        raise RuntimeError(f"{label}: non-2xx answers {answered}; first: {result.first_error}")
    return Measured(measured.closed, measured.cpu_ms, result)


def _check(label: str, result: loadgen.LoadResult) -> None:
    if result.errors:
        raise RuntimeError(f"{label}: non-2xx answers {result.statuses}; first: {result.first_error}")


def _figures(ctx: BenchContext, workers: int, bare: Measured, minimal: Measured,
             full: Measured) -> None:
    assert minimal.open is not None and full.open is not None
    tag = f"{workers} worker{'s' if workers > 1 else ''}"
    b, mine = minimal.closed, full.closed
    share = ratio(mine.per_second, b.per_second)
    p99, b_p99 = full.open.percentile(99), minimal.open.percentile(99)
    rate = full.open.offered_rate or 0.0
    ctx.figures += [
        Figure(SUITE, f"(a) bare, {tag}", bare.closed.per_second, "req/s", "", float("nan"),
               "context", None, details=bare.closed.summary()),
        Figure(SUITE, f"(b) asyncpg minimal, {tag}", b.per_second, "req/s", "(a) bare",
               bare.closed.per_second, "context", None, ratio(b.per_second, bare.closed.per_second),
               details={**b.summary(), "server_cpu_ms_per_request": round(minimal.cpu_ms, 3)}),
        Figure(SUITE, f"billwatch, {tag}", mine.per_second, "req/s", "(b) minimal", b.per_second,
               f">= {THROUGHPUT_TARGET:.2f} of (b)",
               share is not None and share >= THROUGHPUT_TARGET, share,
               details={**mine.summary(), "server_cpu_ms_per_request": round(full.cpu_ms, 3)},
               limit=_throughput_limit(minimal, full)),
        Figure(SUITE, f"billwatch p99, {CONCURRENCY} connections, {tag}", mine.percentile(99), "ms",
               "(b) p99", b.percentile(99), "context", None,
               ratio(mine.percentile(99), b.percentile(99))),
        Figure(SUITE, f"billwatch p99, open loop {rate:,.0f}/s, {tag}", p99, "ms",
               "(b) same rate", b_p99,
               f"< {P99_TARGET_MS:.0f} ms", p99 < P99_TARGET_MS, ratio(p99, b_p99),
               details={"billwatch": full.open.summary(), "minimal": minimal.open.summary()},
               limit=_latency_limit(full)),
    ]


def _throughput_limit(minimal: Measured, full: Measured) -> str:
    return (f"the request does the whole handling (verify, claim the event row, the handler's "
            f"writes, audit rows, commit, metrics): {full.cpu_ms:.2f} ms of server CPU per "
            f"delivery against {minimal.cpu_ms:.2f} ms for (b), so the workers saturate at "
            f"{full.closed.per_second:,.0f} req/s; storing the event and answering (the inbox) "
            f"takes the handling off the request")


def _latency_limit(full: Measured) -> str:
    assert full.open is not None
    offered = full.open.offered_rate or 0.0
    late = full.open.statuses.get(loadgen.TIMED_OUT, 0)
    if full.closed.per_second < offered:
        return (f"{offered:,.0f} req/s offered is above the {full.closed.per_second:,.0f} req/s "
                f"the path completes at most, so a queue grows for the whole run and latency "
                f"counted from the intended send time grows with it ({late:,} of "
                f"{full.open.requests:,} had no answer within {OPEN_LOOP_TIMEOUT:g} s"
                f"{', so the p99 shown is that cut-off' if late > full.open.requests / 100 else ''})")
    return (f"the path's capacity ({full.closed.per_second:,.0f} req/s) is close to the "
            f"{offered:,.0f} req/s offered: at {full.cpu_ms:.2f} ms of CPU per delivery, bursts "
            f"of arrivals queue behind each other")
