"""Audit overhead: one billing operation with and without the audit trail and the metrics.

The operation is ``POST /admin/overrides`` (a discount): pure database work, so no Stripe round
trip dilutes the difference. billwatch serves it with its audit row (redacted, encrypted,
hashed, in the same transaction) and its metrics; :mod:`bench.apps.billing_baseline` serves the
same business writes without either. Both run under uvicorn with one worker and are loaded in
alternating rounds (16 connections) so drift on a shared machine hits both alike.
Figure: time per operation with / without (the inverse of the throughput ratio); target <= 1.15.
"""

from __future__ import annotations

import json
import random
import statistics

from bench import loadgen
from bench.context import TOKEN_SECRET, BenchContext
from bench.report import Figure
from bench.scratch import scratch_database
from bench.seed import seed_subscribers
from bench.serving import serve_app, serve_billwatch
from billwatch.accounts.models import Role, User
from billwatch.accounts.tokens import mint_token
from billwatch.config import Settings

SUITE = "audit overhead"
CONCURRENCY = 16
ROUNDS = 5


def _requests(admin: User, patients: list[str], count: int, settings: Settings) -> list[loadgen.Request]:
    headers = {"Authorization": f"Bearer {mint_token(admin, settings)}",
               "Content-Type": "application/json"}
    rng = random.Random(1)
    return [loadgen.Request("POST", "/admin/overrides", json.dumps({
        "owner_type": "patient", "owner_id": rng.choice(patients), "kind": "discount",
        "percent_off": rng.choice((10, 20, 50)), "reason": "Benchmark loyalty discount"}).encode(),
        headers) for _ in range(count)]


async def run(ctx: BenchContext) -> None:
    per_round = ctx.size("override_requests_per_round", 1500, 600)
    warmup = min(100, per_round // 5)
    settings = Settings(_env_file=None, token_secret=TOKEN_SECRET)
    async with scratch_database("overhead", keep=ctx.keep_databases) as db:
        seeded = await seed_subscribers(db.url, 1000, settings.plans[0])
        admin = User(id=seeded.admin_id, email="admin@bench.test", name="Bench Admin", role=Role.ADMIN)
        patients = [str(p) for p in seeded.patient_ids]
        env = ctx.billwatch_env(db.url)
        rates: dict[str, list[loadgen.LoadResult]] = {"with": [], "without": []}
        with serve_billwatch(env, workers=1, log_dir=ctx.log_dir) as full, \
                serve_app("bench.apps.billing_baseline:create_app", env, workers=1,
                          log_dir=ctx.log_dir, factory=True) as bare:
            for round_no in range(ROUNDS):
                for label, service in (("with", full), ("without", bare)):
                    ctx.console.print(f"  {SUITE}: round {round_no + 1}, {label} audit + metrics")
                    requests = _requests(admin, patients, per_round + warmup, settings)
                    result = await loadgen.run(service.url, requests, concurrency=CONCURRENCY,
                                               max_seconds=60, warmup=warmup)
                    if result.errors:
                        raise RuntimeError(f"override {label} audit: answers {result.statuses}; "
                                           f"first: {result.first_error}")
                    rates[label].append(result)
    _figures(ctx, rates)


def _figures(ctx: BenchContext, rates: dict[str, list[loadgen.LoadResult]]) -> None:
    with_rate = statistics.median(r.per_second for r in rates["with"])
    without_rate = statistics.median(r.per_second for r in rates["without"])
    cost = without_rate / with_rate
    with_p50 = statistics.median(r.percentile(50) for r in rates["with"])
    without_p50 = statistics.median(r.percentile(50) for r in rates["without"])
    ctx.figures += [
        Figure(SUITE, "override create, audited", with_rate, "ops/s",
               "without", without_rate, "context", None, with_rate / without_rate,
               details={"rounds": [r.summary() for r in rates["with"]]}),
        Figure(SUITE, "time per op, with / without", cost, "x", "", float("nan"),
               "<= 1.15", cost <= 1.15, cost,
               details={"without_rounds": [r.summary() for r in rates["without"]]}),
        Figure(SUITE, "p50, with / without", with_p50, "ms", "without", without_p50,
               "context", None, with_p50 / without_p50),
    ]
