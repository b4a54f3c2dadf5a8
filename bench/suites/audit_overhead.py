"""Audit overhead: one billing operation with and without the audit trail and the metrics.

The operation is ``POST /admin/free-grants`` (a free subscription for one owner): pure database
work, so no Stripe round trip dilutes the difference (a discount override goes to Stripe).
billwatch serves it with its audit row (redacted, encrypted, hashed, in the same transaction)
and its metrics; :mod:`bench.apps.billing_baseline` serves the
same business writes without either. Both run under uvicorn with one worker and are loaded in
alternating rounds (16 connections) so drift on a shared machine hits both alike.
Figure: time per operation with / without (the inverse of the throughput ratio); target <= 1.15.
Each server's CPU per operation (its processes, PostgreSQL's not included) is recorded to say
where the difference goes.
"""

from __future__ import annotations

import json
import random
import statistics

from bench import loadgen
from bench.context import TOKEN_SECRET, BenchContext
from bench.report import Figure, ratio
from bench.scratch import scratch_database
from bench.seed import seed_subscribers
from bench.serving import cpu_seconds, serve_app, serve_billwatch
from billwatch.accounts.models import Role, User
from billwatch.accounts.tokens import mint_token
from billwatch.config import Settings

SUITE = "audit overhead"
CONCURRENCY = 16
ROUNDS = 5
TARGET = 1.15


def _requests(admin: User, patients: list[str], settings: Settings) -> list[loadgen.Request]:
    """One free grant per owner: an owner holds one live subscription, so none is asked twice."""
    headers = {"Authorization": f"Bearer {mint_token(admin, settings)}",
               "Content-Type": "application/json"}
    rng = random.Random(1)
    return [loadgen.Request("POST", "/admin/free-grants", json.dumps({
        "owner_type": "patient", "owner_id": owner, "plan_code": settings.plans[0].code,
        "months": rng.choice((1, 3, 6)), "reason": "Benchmark hardship programme"}).encode(),
        headers) for owner in patients]


async def run(ctx: BenchContext) -> None:
    per_round = ctx.size("free_grant_requests_per_round", 1500, 600)
    warmup = min(100, per_round // 5)
    settings = Settings(_env_file=None, token_secret=TOKEN_SECRET)
    async with scratch_database("overhead", keep=ctx.keep_databases) as db:
        rounds = 1 if ctx.smoke else ROUNDS  # smoke: that it runs
        owners_needed = (per_round + warmup) * rounds * 2
        seeded = await seed_subscribers(db.url, owners_needed, settings.plans[0], subscribed=False)
        admin = User(id=seeded.admin_id, email="admin@bench.test", name="Bench Admin", role=Role.ADMIN)
        patients = iter(str(p) for p in seeded.patient_ids)
        env = ctx.billwatch_env(db.url)
        rates: dict[str, list[loadgen.LoadResult]] = {"with": [], "without": []}
        cpu: dict[str, float] = {"with": 0.0, "without": 0.0}
        with serve_billwatch(env, workers=1, log_dir=ctx.log_dir) as full, \
                serve_app("bench.apps.billing_baseline:create_app", env, workers=1,
                          log_dir=ctx.log_dir, factory=True) as bare:
            for round_no in range(rounds):
                for label, service in (("with", full), ("without", bare)):
                    ctx.console.print(f"  {SUITE}: round {round_no + 1}, {label} audit + metrics")
                    owners = [next(patients) for _ in range(per_round + warmup)]
                    requests = _requests(admin, owners, settings)
                    before = cpu_seconds(service)
                    result = await loadgen.run(service.url, requests, concurrency=CONCURRENCY,
                                               max_seconds=60, warmup=warmup)
                    # per operation: the warm-up requests are the same operation
                    cpu[label] += (cpu_seconds(service) - before) / len(requests) / rounds
                    if result.errors:
                        raise RuntimeError(f"free grant {label} audit: answers {result.statuses}; "
                                           f"first: {result.first_error}")
                    rates[label].append(result)
    _figures(ctx, rates, cpu)


def _figures(ctx: BenchContext, rates: dict[str, list[loadgen.LoadResult]],
             cpu: dict[str, float]) -> None:
    with_rate = statistics.median(r.per_second for r in rates["with"])
    without_rate = statistics.median(r.per_second for r in rates["without"])
    cost = without_rate / with_rate
    with_p50 = statistics.median(r.percentile(50) for r in rates["with"])
    without_p50 = statistics.median(r.percentile(50) for r in rates["without"])
    per_round = [b.per_second / a.per_second for a, b in zip(rates["with"], rates["without"],
                                                             strict=True)]
    ctx.figures += [
        Figure(SUITE, "free grant, audited", with_rate, "ops/s",
               "without", without_rate, "context", None, with_rate / without_rate,
               details={"rounds": [r.summary() for r in rates["with"]]}),
        Figure(SUITE, "time per op, with / without", cost, "x", "", float("nan"),
               f"<= {TARGET:.2f}", cost <= TARGET, cost,
               details={"without_rounds": [r.summary() for r in rates["without"]],
                        "server_cpu_ms_per_op": {k: round(v * 1000, 3) for k, v in cpu.items()}},
               limit=(f"recording (redaction, AES-GCM, an HMAC and one more row in the "
                      f"transaction) and the metrics after commit: {cpu['with'] * 1000:.2f} ms "
                      f"of server CPU per operation against {cpu['without'] * 1000:.2f} ms "
                      f"without ({ratio(cpu['with'], cpu['without']) or float('nan'):.2f} x); "
                      f"the rounds' ratios "
                      f"ranged {min(per_round):.2f} to {max(per_round):.2f} x")),
        Figure(SUITE, "p50, with / without", with_p50, "ms", "without", without_p50,
               "context", None, with_p50 / without_p50),
    ]
