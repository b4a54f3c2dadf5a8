"""Webhook ack path: how fast ``POST /webhooks/stripe`` answers signed deliveries.

Three servers, each under uvicorn with 1 and then 2 workers, fed the same kind of deliveries
(signed ``invoice.payment_succeeded``, each paying a fresh invoice): (a) a bare ASGI endpoint that
only reads the body; (b) the minimal correct endpoint on asyncpg (verify, then the event row and
one audit row in one transaction); and billwatch's ``POST /webhooks/stripe``, which verifies,
stores the event in the inbox and answers.

billwatch runs in both of its modes. **Embedded processing** (no broker, the default): each
server process also runs the inbox processor, which handles the stored events on the same event
loop, so processing competes with the ack path; the suite waits for the inbox to empty before
each run. **Broker mode**: the server stores and publishes a Celery hand-off to a queue of the
run's own that no worker consumes during the runs, so the figures are the ack path alone; after
them two processor processes (:mod:`bench.processor`) apply what was stored and the queue is
deleted.

1. **Maximum throughput**, closed loop over 32 connections. Target: billwatch >= 0.70 of (b).
2. **Latency under a steady load**, open loop at half of (b)'s measured maximum, each latency
   counted from the request's intended send time. Target: billwatch p99 < 50 ms; (b) at the same
   rate is the baseline.

The server's CPU per delivery (all its processes, PostgreSQL's not included) is recorded for
both, to say what limits a missed target.
"""

from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from enum import StrEnum

import asyncpg
import redis.asyncio

from bench import loadgen
from bench.apps.minimal import SCHEMA
from bench.context import WEBHOOK_SECRET, BenchContext
from bench.processor import run_processors, until_drained
from bench.report import Figure, ratio
from bench.scratch import ScratchDatabase, scratch_database
from bench.seed import Seeded, seed_subscribers
from bench.serving import cpu_seconds, serve_app, serve_billwatch
from bench.stripe_events import invoice_paid_requests
from billwatch.config import Plan, Settings
from billwatch.demo.stack import Service
from billwatch.webhooks.models import UNFINISHED_SQL

BROKER_URL = os.environ.get("BILLWATCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")
"""Broker mode's Redis; each run publishes to a queue of its own, deleted at its end."""
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


class Mode(StrEnum):
    """How the server under test processes what it stores."""

    EMBEDDED = "embedded processing"
    """No broker (the default): each server process also runs the inbox processor."""
    BROKER = "broker mode"
    """A broker is set: the server only stores and publishes; workers elsewhere process."""


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
            load = Load(seeded, plan, count, min(500, count // 5), open_seconds)
            for workers in (1,) if ctx.smoke else (1, 2):  # smoke: that it runs
                await _worker_count(ctx, db, conn, load, workers)
        finally:
            await conn.close()


async def _worker_count(ctx: BenchContext, db: ScratchDatabase, conn: asyncpg.Connection,
                        load: Load, workers: int) -> None:
    """(a), (b), then billwatch in its two modes, every server with ``workers`` workers."""
    minimal_env = {"BENCH_PG_DSN": db.dsn, "BENCH_WEBHOOK_SECRET": WEBHOOK_SECRET}
    with serve_app("bench.apps.bare:app", minimal_env, workers=workers,
                   log_dir=ctx.log_dir) as service:
        bare = await _closed(ctx, "(a) bare", workers, service, load)
    with serve_app("bench.apps.minimal:app", minimal_env, workers=workers,
                   log_dir=ctx.log_dir) as service:
        minimal = await _closed(ctx, "(b) minimal", workers, service, load)
        rate = OPEN_LOOP_SHARE * minimal.closed.per_second
        minimal = await _open(ctx, "(b) minimal", workers, service, load, minimal, rate)
    measured: dict[Mode, Measured] = {}
    with serve_billwatch(ctx.billwatch_env(db.url), workers=workers,
                         log_dir=ctx.log_dir) as service:
        label = f"billwatch, {Mode.EMBEDDED.value}"
        closed = await _closed(ctx, label, workers, service, load)
        # every run starts with an empty inbox: the server's own processors finish the backlog
        await until_drained(conn, within=max(600.0, load.count / 5))
        measured[Mode.EMBEDDED] = await _open(ctx, label, workers, service, load, closed, rate)
        await until_drained(conn, within=max(600.0, load.count / 5))
    queue = f"bench-{uuid.uuid4().hex[:12]}"
    broker_env = ctx.billwatch_env(db.url, BILLWATCH_BROKER_URL=BROKER_URL,
                                   BILLWATCH_CELERY_QUEUE=queue)
    try:
        with serve_billwatch(broker_env, workers=workers, log_dir=ctx.log_dir) as service:
            label = f"billwatch, {Mode.BROKER.value}"
            measured[Mode.BROKER] = await _open(ctx, label, workers, service, load, await _closed(
                ctx, label, workers, service, load), rate)
    finally:
        published = await _drop_queue(queue)
    stored = await conn.fetchval(f"SELECT count(*) FROM stripe_events WHERE {UNFINISHED_SQL}")
    # nobody consumed the queue: processors in processes of their own apply what was stored
    await run_processors("billwatch", 2, ctx.billwatch_env(db.url), log_dir=ctx.log_dir,
                         within=max(600.0, load.count / 5))
    await until_drained(conn, within=60)
    _figures(ctx, workers, bare, minimal, measured, Handoffs(published, stored))


@dataclass(frozen=True, slots=True)
class Handoffs:
    """Broker mode: inbox tasks the servers published, for how many stored events."""

    published: int
    stored: int


async def _drop_queue(queue: str) -> int:
    """Delete the run's Celery queue (tasks nobody was meant to consume); how many it held."""
    client = redis.asyncio.Redis.from_url(BROKER_URL)
    try:
        held = int(await client.llen(queue))
        await client.delete(queue, f"_kombu.binding.{queue}")
        return held
    finally:
        await client.aclose()


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
             measured: dict[Mode, Measured], handoffs: Handoffs) -> None:
    assert minimal.open is not None
    tag = f"{workers} worker{'s' if workers > 1 else ''}"
    b = minimal.closed
    ctx.figures += [
        Figure(SUITE, f"(a) bare, {tag}", bare.closed.per_second, "req/s", "", float("nan"),
               "context", None, details=bare.closed.summary()),
        Figure(SUITE, f"(b) asyncpg minimal, {tag}", b.per_second, "req/s", "(a) bare",
               bare.closed.per_second, "context", None, ratio(b.per_second, bare.closed.per_second),
               details={**b.summary(), "server_cpu_ms_per_request": round(minimal.cpu_ms, 3)}),
    ]
    for mode, full in measured.items():
        assert full.open is not None
        mine = full.closed
        share = ratio(mine.per_second, b.per_second)
        p99, b_p99 = full.open.percentile(99), minimal.open.percentile(99)
        rate = full.open.offered_rate or 0.0
        ctx.figures += [
            Figure(SUITE, f"billwatch ({mode.value}), {tag}", mine.per_second, "req/s",
                   "(b) minimal", b.per_second, f">= {THROUGHPUT_TARGET:.2f} of (b)",
                   share is not None and share >= THROUGHPUT_TARGET, share,
                   details={**mine.summary(), "server_cpu_ms_per_request": round(full.cpu_ms, 3),
                            **({"inbox_tasks_published": handoffs.published,
                                "events_stored": handoffs.stored} if mode is Mode.BROKER else {})},
                   limit=_throughput_limit(mode, minimal, full, handoffs)),
            Figure(SUITE, f"billwatch ({mode.value}) p99, {CONCURRENCY} connections, {tag}",
                   mine.percentile(99), "ms", "(b) p99", b.percentile(99), "context", None,
                   ratio(mine.percentile(99), b.percentile(99))),
            Figure(SUITE, f"billwatch ({mode.value}) p99, open loop {rate:,.0f}/s, {tag}", p99,
                   "ms", "(b) same rate", b_p99, f"< {P99_TARGET_MS:.0f} ms", p99 < P99_TARGET_MS,
                   ratio(p99, b_p99),
                   details={"billwatch": full.open.summary(), "minimal": minimal.open.summary()},
                   limit=_latency_limit(full)),
        ]


def _throughput_limit(mode: Mode, minimal: Measured, full: Measured, handoffs: Handoffs) -> str:
    where = ("the server's processes also run the inbox processor, which handles every stored "
             "event on the same event loops" if mode is Mode.EMBEDDED else
             f"the request verifies and stores through the ORM, and the servers published "
             f"{handoffs.published:,} Celery inbox tasks for {handoffs.stored:,} stored events")
    return (f"{full.cpu_ms:.2f} ms of server CPU per delivery against {minimal.cpu_ms:.2f} ms "
            f"for (b) ({where}), so the workers saturate at {full.closed.per_second:,.0f} req/s "
            f"on cores shared with PostgreSQL and the generator")


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
