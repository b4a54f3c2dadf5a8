"""Console pages: server time of each admin page over the audit suite's 1 M rows.

Every page is asked for one at a time by a signed-in admin (a console session row made directly,
as a sign-in would leave it), so the figure is the page's own server time, audit row included.
Baseline: ``GET /admin/audit-logs`` (newest page of 50, JSON) on the same server and data: what
the API answers for the read the explorer does. Target: p95 < 100 ms for every page.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from bench import loadgen
from bench.audit_data import AuditData
from bench.context import TOKEN_SECRET, BenchContext
from bench.report import Figure
from bench.scratch import ScratchDatabase
from bench.serving import serve_billwatch
from billwatch.accounts.models import Role, User
from billwatch.accounts.tokens import mint_token
from billwatch.config import Settings

SUITE = "console pages"


async def _admin_session(dsn: str, data: AuditData) -> tuple[User, str, dict[str, str]]:
    """An admin, a live console session for it, and the pages to ask for (real ids)."""
    admin = User(id=uuid.uuid4(), email="console-admin@bench.test", name="Console Admin",
                 role=Role.ADMIN)
    token = secrets.token_urlsafe(32)
    owner_type, owner_id = next(o for o in data.owners if o[0] == "patient")
    now = datetime.now(UTC)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO users (id, email, name, role, created_at) "
                           "VALUES ($1, $2, $3, 'admin', now()), ($4, $5, $6, 'patient', now()) "
                           "ON CONFLICT DO NOTHING", admin.id, admin.email, admin.name,
                           owner_id, f"patient-{owner_id.hex[:8]}@bench.test", "Bench Patient")
        await conn.execute(
            "INSERT INTO console_sessions (id, token_hash, user_id, csrf_token, created_at, "
            "last_seen_at, expires_at) VALUES ($1, $2, $3, $4, $5, $5, $6)",
            uuid.uuid4(), hashlib.sha256(token.encode()).digest(), admin.id,
            secrets.token_urlsafe(32), now, now + timedelta(hours=12))
        row_id = await conn.fetchval("SELECT id FROM audit_logs ORDER BY occurred_at DESC LIMIT 1")
    finally:
        await conn.close()
    pages = {
        "overview": "/console",
        "audit explorer": "/console/audit",
        "audit explorer, filtered": "/console/audit?q=event:billing.refund.*+outcome:success",
        "audit row with proof": f"/console/audit/{row_id}",
        "owner": f"/console/owners/{owner_type}/{owner_id}",
        "alerts": "/console/alerts",
        "webhooks": "/console/webhooks",
    }
    return admin, token, pages


async def measure(ctx: BenchContext, db: ScratchDatabase, data: AuditData,
                  env: dict[str, str]) -> None:
    count = ctx.size("console_pages", 100, 20)
    admin, token, pages = await _admin_session(db.dsn, data)
    cookie = {"Cookie": f"billwatch_console={token}"}
    bearer = {"Authorization": "Bearer " + mint_token(admin, Settings(_env_file=None,
                                                                      token_secret=TOKEN_SECRET))}
    results: dict[str, loadgen.LoadResult] = {}
    with serve_billwatch(ctx.billwatch_env(db.url, **env), workers=1, log_dir=ctx.log_dir) as service:
        ctx.console.print(f"  {SUITE}: {len(pages)} pages x {count}, one at a time")
        api = [loadgen.Request("GET", "/admin/audit-logs?limit=50", None, bearer)] * count
        results["baseline"] = await loadgen.run(service.url, api, concurrency=1, max_seconds=60,
                                                warmup=min(10, count // 5))
        for name, path in pages.items():
            requests = [loadgen.Request("GET", path, None, cookie)] * count
            results[name] = await loadgen.run(service.url, requests, concurrency=1, max_seconds=60,
                                              warmup=min(10, count // 5))
    for name, result in results.items():
        if result.errors:
            raise RuntimeError(f"console page {name}: answers {result.statuses}; "
                               f"first: {result.first_error}")
    baseline = results.pop("baseline").percentile(95)
    for name, result in results.items():
        p95 = result.percentile(95)
        ctx.figures.append(Figure(SUITE, f"{name}, p95", p95, "ms", "API audit page p95", baseline,
                                  "< 100 ms", p95 < 100, p95 / baseline, details=result.summary()))
