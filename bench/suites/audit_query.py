"""Audit query: filtered, paginated admin reads of ``GET /admin/audit-logs`` at 10 M rows.

A year of audit rows is COPY-loaded as the recorder writes them (:func:`audit_trail.load`; on a
partitioned ``audit_logs`` the loader adds the months the schema lacks, the reads are the same).
Then a mix of what an admin asks (one owner's history, one actor's actions, refunds in a month,
failed payments, the newest page, and second pages through the keyset cursor) is sent one at a
time to billwatch under uvicorn; every read is itself audited, as in production.
Baseline: the same filters as hand-written SQL straight on asyncpg (same join, order and limit,
no decryption or JSON): the database's share of each read. Targets: a page of 50 at p99 < 20 ms,
and p50 <= 4x the raw SQL's p50.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx

from bench import loadgen
from bench.audit_data import AuditData
from bench.context import TOKEN_SECRET, BenchContext
from bench.report import Figure
from bench.scratch import ScratchDatabase, scratch_database
from bench.serving import serve_billwatch
from bench.suites.audit_trail import bench_keys, load
from billwatch.accounts.models import Role, User
from billwatch.accounts.tokens import mint_token
from billwatch.audit.events import matching
from billwatch.config import Settings

SUITE = "audit query"
LIMIT = 50
COLUMNS = "a.*, s.seq"
P99_TARGET_MS = 20.0
P50_TARGET_RATIO = 4.0
"""The API's p50 at most this many times the raw SQL's."""


@dataclass(frozen=True, slots=True)
class Read:
    kind: str
    params: dict[str, str]
    where: list[str]
    args: list[Any]

    def path(self) -> str:
        return "/admin/audit-logs?" + urlencode({**self.params, "limit": str(LIMIT)})

    def sql(self) -> tuple[str, list[Any]]:
        where = f"WHERE {' AND '.join(self.where)}" if self.where else ""
        return (f"SELECT {COLUMNS} FROM audit_logs a LEFT JOIN audit_seals s "
                f"ON s.audit_log_id = a.id {where} ORDER BY a.occurred_at DESC, a.id DESC "
                f"LIMIT {LIMIT + 1}", self.args)


def _reads(data: AuditData, rng: random.Random, count: int) -> list[Read]:
    """``count`` reads, cycling through the kinds an admin uses."""
    month_end = data.end - timedelta(days=rng.randrange(30, 330))
    refunds = [e.value for e in matching("billing.refund.")]
    month_start = month_end - timedelta(days=30)
    makers = [
        lambda: _owner(data, rng),
        lambda: _actor(data, rng),
        lambda: Read("refunds in a month",
                     {"event_type": "billing.refund.", "from": month_start.isoformat(),
                      "to": month_end.isoformat()},
                     ["a.event_type = ANY($1)", "a.occurred_at >= $2", "a.occurred_at < $3"],
                     [refunds, month_start, month_end]),
        lambda: Read("failed payments", {"event_type": "billing.payment.failed", "outcome": "failure"},
                     ["a.event_type = $1", "a.outcome = $2"], ["billing.payment.failed", "failure"]),
        lambda: Read("newest page", {}, [], []),
    ]
    return [makers[n % len(makers)]() for n in range(count)]


def _owner(data: AuditData, rng: random.Random) -> Read:
    owner_type, owner_id = data.owners[rng.randrange(len(data.owners))]
    return Read("one owner's history", {"owner_type": owner_type, "owner_id": str(owner_id)},
                ["a.owner_type = $1", "a.owner_id = $2"], [owner_type, owner_id])


def _actor(data: AuditData, rng: random.Random) -> Read:
    actor = rng.choice(data.actors["patient"])
    return Read("one actor's actions", {"actor_user_id": str(actor)}, ["a.actor_user_id = $1"], [actor])


async def _second_pages(base_url: str, headers: dict[str, str], reads: list[Read]) -> list[Read]:
    """Page 2 of some reads: their cursor comes from page 1, fetched before the clock starts."""
    pages = []
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as http:
        for read in reads:
            body = (await http.get(read.path())).json()
            if body.get("next_cursor"):
                last = body["items"][-1]
                when, row_id = datetime.fromisoformat(last["occurred_at"]), uuid.UUID(last["id"])
                n = len(read.args)
                keyset = f"(a.occurred_at < ${n + 1} OR (a.occurred_at = ${n + 1} AND a.id < ${n + 2}))"
                pages.append(Read(f"{read.kind}, page 2", {**read.params, "cursor": body["next_cursor"]},
                                  [*read.where, keyset], [*read.args, when, row_id]))
    return pages


async def _baseline(dsn: str, reads: list[Read], warmup: int) -> loadgen.LoadResult:
    conn = await asyncpg.connect(dsn)
    latencies: list[float] = []
    try:
        for read in reads[:warmup]:  # warm up like the HTTP run
            await conn.fetch(*_flat(read))
        started = time.perf_counter()
        for read in reads:
            sent = time.perf_counter()
            await conn.fetch(*_flat(read))
            latencies.append((time.perf_counter() - sent) * 1000)
    finally:
        await conn.close()
    return loadgen.LoadResult(len(reads), time.perf_counter() - started, {200: len(reads)}, latencies)


def _flat(read: Read) -> list[Any]:
    sql, args = read.sql()
    return [sql, *args]


async def run(ctx: BenchContext) -> None:
    count = ctx.size("audit_query_rows", 10_000_000, 100_000)
    keys, env = bench_keys()
    data = AuditData(keys)
    async with scratch_database("query", keep=ctx.keep_databases) as db:
        await load(ctx, db, data, count, keep=0)
        await measure(ctx, db, data, env)


async def measure(ctx: BenchContext, db: ScratchDatabase, data: AuditData,
                  env: dict[str, str]) -> None:
    count = ctx.size("audit_reads", 2000, 500)
    warmup = min(50, count // 5)
    rng = random.Random(5)
    admin = User(id=uuid.uuid4(), email="audit-admin@bench.test", name="Audit Admin", role=Role.ADMIN)
    conn = await asyncpg.connect(db.dsn)
    try:
        await conn.execute("INSERT INTO users (id, email, name, role, created_at) "
                           "VALUES ($1, $2, $3, 'admin', now())", admin.id, admin.email, admin.name)
    finally:
        await conn.close()
    token = mint_token(admin, Settings(_env_file=None, token_secret=TOKEN_SECRET))
    headers = {"Authorization": f"Bearer {token}"}
    reads = _reads(data, rng, count)
    with serve_billwatch(ctx.billwatch_env(db.url, **env), workers=1, log_dir=ctx.log_dir) as service:
        reads += await _second_pages(service.url, headers, rng.sample(reads, max(5, count // 10)))
        rng.shuffle(reads)
        ctx.console.print(f"  {SUITE}: {len(reads)} reads, one at a time")
        requests = [loadgen.Request("GET", read.path(), None, headers) for read in reads]
        result = await loadgen.run(service.url, requests, concurrency=1, max_seconds=120,
                                   warmup=warmup)
    if result.errors:
        raise RuntimeError(f"audit reads: answers {result.statuses}; first: {result.first_error}")
    baseline = await _baseline(db.dsn, reads[warmup:], warmup)
    _figures(ctx, result, baseline)


def _figures(ctx: BenchContext, result: loadgen.LoadResult, baseline: loadgen.LoadResult) -> None:
    p50, p99 = result.percentile(50), result.percentile(99)
    raw_p50, raw_p99 = baseline.percentile(50), baseline.percentile(99)
    p50_ratio = p50 / raw_p50
    rows = ctx.sizes.get("audit_query_rows")
    limit = (f"the SQL takes {raw_p50:.2f} ms (p50); the other {p50 - raw_p50:.2f} ms of a read "
             f"are billwatch's: the HTTP stack, the token and the admin's row, the read's own "
             f"audit row committed, decrypting and serialising {LIMIT} rows (not broken down here)")
    ctx.figures += [
        Figure(SUITE, f"page of 50, p50{f', {rows:,} rows' if rows else ''}", p50, "ms",
               "raw SQL p50", raw_p50, f"<= {P50_TARGET_RATIO:g}x raw SQL",
               p50_ratio <= P50_TARGET_RATIO, p50_ratio, details=result.summary(), limit=limit),
        Figure(SUITE, "page of 50, p99", p99, "ms", "raw SQL p99", raw_p99,
               f"< {P99_TARGET_MS:g} ms", p99 < P99_TARGET_MS, p99 / raw_p99,
               details=baseline.summary(),
               limit=f"the SQL's p99 is {raw_p99:.2f} ms; the rest is billwatch's, as for p50"),
    ]
