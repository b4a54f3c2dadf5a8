"""The audit trail at 1 M rows: ``audit verify`` throughput (sealing as context), then console pages.

Rows are COPY-loaded as the recorder writes them (see :mod:`bench.audit_data`), sealed into the
chain by the trail's own sealer (as ``billwatch audit checkpoint`` does), then re-verified by its
own :func:`billwatch.audit.verify.verify`. Baseline: a bare SHA-256 chain over each row's
canonical JSON in pure Python, in the same run (on up to 200,000 of the same rows).
Target: >= 150,000 rows/s. The same rows then serve :mod:`bench.suites.console_pages`; the
query suite (:mod:`bench.suites.audit_query`) loads its own, larger table with :func:`load`.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from pathlib import Path

import asyncpg

from bench.audit_data import AUDIT_COLUMNS, AuditData, baseline_chain
from bench.bulk import copy, cover_months
from bench.context import BenchContext
from bench.report import Figure
from bench.scratch import ScratchDatabase, scratch_database
from bench.suites import console_pages
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.crypto import AuditKeys, generate_key_entry, keys_from
from billwatch.audit.sealing import seal
from billwatch.audit.verify import verify
from billwatch.db import Database

SUITE = "audit verify"
BASELINE_ROWS = 200_000


def bench_keys() -> tuple[AuditKeys, dict[str, str]]:
    """Fresh keys (not the public development ones) and the settings that carry them."""
    ring, hmac_key = generate_key_entry("bench"), secrets.token_urlsafe(48)
    return keys_from(ring, hmac_key), {"BILLWATCH_AUDIT_ENCRYPTION_KEYS": ring,
                                       "BILLWATCH_AUDIT_HMAC_KEY": hmac_key}


async def load(ctx: BenchContext, db: ScratchDatabase, data: AuditData, count: int, *,
               keep: int = BASELINE_ROWS) -> None:
    """COPY ``count`` rows of ``data`` (the first ``keep`` also kept as plain dicts), analysed."""
    conn = await asyncpg.connect(db.dsn)
    try:
        started = time.monotonic()
        await cover_months(conn, "audit_logs", data.start, data.end)
        await copy(conn, "audit_logs", AUDIT_COLUMNS, data.rows(count, keep=min(count, keep)),
                   count, ctx.console)
        await conn.execute("VACUUM ANALYZE audit_logs")
        ctx.console.print(f"  loaded {count:,} audit rows in {time.monotonic() - started:.0f} s")
    finally:
        await conn.close()


async def run(ctx: BenchContext) -> None:
    count = ctx.size("audit_rows", 1_000_000, 50_000)
    keys, env = bench_keys()
    data = AuditData(keys)
    async with scratch_database("audit", keep=ctx.keep_databases) as db:
        await load(ctx, db, data, count)
        await measure_verify(ctx, db, keys, data)
        await console_pages.measure(ctx, db, data, env)


async def measure_verify(ctx: BenchContext, db: ScratchDatabase, keys: AuditKeys,
                         data: AuditData) -> None:
    database = Database(db.url)
    with tempfile.TemporaryDirectory(prefix="bench-checkpoints-") as folder:
        store = CheckpointStore(Path(folder))
        try:
            ctx.console.print(f"  {SUITE}: sealing (the hourly checkpoint job)")
            started = time.perf_counter()
            sealed = await seal(database, keys=keys, store=store)
            seal_seconds = time.perf_counter() - started
            ctx.console.print(f"  {SUITE}: billwatch audit verify")
            report = await verify(database, keys=keys, store=store)
        finally:
            await database.dispose()
    if not report.ok:
        raise RuntimeError(f"audit verify failed on untouched rows: {report.problem}")
    started = time.perf_counter()
    baseline_chain(data.sample)
    baseline_rate = len(data.sample) / (time.perf_counter() - started)
    seal_rate = sealed.sealed / seal_seconds
    ctx.figures += [
        Figure(SUITE, f"verify, {report.rows:,} rows", report.rows_per_second, "rows/s",
               "bare SHA-256 chain", baseline_rate, ">= 150,000 rows/s",
               report.rows_per_second >= 150_000, report.rows_per_second / baseline_rate,
               details={"seconds": report.seconds, "rows": report.rows,
                        "baseline_rows": len(data.sample)}),
        Figure(SUITE, f"seal, {sealed.sealed:,} rows", seal_rate, "rows/s",
               "bare SHA-256 chain", baseline_rate, "context", None, seal_rate / baseline_rate,
               details={"seconds": seal_seconds}),
    ]
