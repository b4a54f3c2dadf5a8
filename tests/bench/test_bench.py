"""The benchmarks still run: every suite at smoke sizes, through ``python -m bench``.

Only that they run and report is checked here; speed targets are the benchmarks' business,
never a test's.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bench(results: Path, suites: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", suites,
                           "--results", str(results)], cwd=REPO, capture_output=True, text=True,
                          timeout=110, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, object] = json.loads(next(results.glob("bench-*.json")).read_text())
    return report


@pytest.mark.parametrize(("suites", "reported"), [
    ("webhooks", {"webhook ack path"}),
    ("processing", {"inbox processing"}),
    ("overhead,daily", {"audit overhead", "daily metrics"}),
    ("audit,query", {"audit verify", "console pages", "audit query"}),
])
def test_suites_run_and_report_each_figure_with_its_baseline(tmp_path: Path, suites: str,
                                                             reported: set[str]) -> None:
    every_figure_reported(run_bench(tmp_path, suites), reported)


def every_figure_reported(report: dict[str, object], reported: set[str]) -> None:
    figures = report["figures"]
    assert isinstance(figures, list) and figures
    assert {f["suite"] for f in figures} == reported
    for figure in figures:
        assert figure["value"] > 0, figure
        assert figure["met"] is None or figure["baseline_name"] or figure["unit"] == "x", figure
    machine = report["machine"]
    assert isinstance(machine, dict) and machine["postgresql"] and machine["cores"]


def test_a_burst_is_acknowledged_and_applied_once_and_its_backlog_age_measured(
        tmp_path: Path) -> None:
    """Correctness, unlike speed, is every run's business: each event of the burst is answered
    2xx and applied once (the suite also fails on a lost or doubled event), and the backlog's
    peak age is a time of the run, not a placeholder."""
    report = run_bench(tmp_path, "burst")
    every_figure_reported(report, {"webhook burst"})
    figures = {f["name"]: f for f in report["figures"]}  # type: ignore[union-attr]
    sizes = report["sizes"]
    assert isinstance(sizes, dict)
    acknowledged = next(f for name, f in figures.items() if name.startswith("acknowledged"))
    assert acknowledged["met"] is True and acknowledged["value"] == sizes["burst_events"]
    applied = figures["applied once (payments, audit rows)"]
    assert applied["met"] is True and applied["value"] == sizes["burst_events"]
    assert applied["details"]["payment_audit_rows"] == sizes["burst_events"]
    drain = figures["drain, first receipt to last processed"]["value"]
    assert 0 < figures["peak oldest-unprocessed age"]["value"] <= drain


def test_an_open_loop_counts_latency_from_the_intended_send_time(tmp_path: Path) -> None:
    """One connection to a server that takes 20 ms a request, offered 100 a second: the requests
    queue in the generator (50 a second more than it can send), so from their intended send
    time the middle one waits about half a second, although each answer takes 20 ms."""
    done = subprocess.run([sys.executable, "-c", OPEN_LOOP_PROBE], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["answered"] == 100
    assert figures["p50_ms"] > 250  # timed from the actual send it would be about 20


OPEN_LOOP_PROBE = """
import asyncio, json
from aiohttp import web
from bench import loadgen

async def main():
    async def slow(request):
        await asyncio.sleep(0.02)
        return web.Response(text="ok")
    app = web.Application()
    app.router.add_get("/", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        result = await loadgen.run_open(f"http://127.0.0.1:{port}",
                                        [loadgen.Request("GET", "/")] * 100, rate=100,
                                        max_seconds=5, answer_within=10, connections=1)
    finally:
        await runner.cleanup()
    print(json.dumps({"answered": result.statuses.get(200, 0), "p50_ms": result.percentile(50)}))

asyncio.run(main())
"""


PARTITION_BY_MONTH = """
CREATE TABLE audit_logs_by_month (LIKE audit_logs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (occurred_at);
DROP TABLE audit_logs;
ALTER TABLE audit_logs_by_month RENAME TO audit_logs;
ALTER TABLE audit_logs ADD CONSTRAINT pk_audit_logs PRIMARY KEY (id, occurred_at);
CREATE INDEX ix_audit_logs_owner_time ON audit_logs (owner_type, owner_id, occurred_at);
CREATE INDEX ix_audit_logs_time_brin ON audit_logs USING brin (occurred_at);
"""


async def test_the_audit_loader_serves_a_table_partitioned_by_month(tmp_path: Path) -> None:
    """Partitions for the months ahead only, as a scheduler leaves them: the loader adds the past
    months, keeps the existing one, and builds the indexes on every partition."""
    import asyncpg
    from rich.console import Console

    from bench.audit_data import AuditData
    from bench.context import BenchContext
    from bench.scratch import scratch_database
    from bench.suites.audit_trail import bench_keys, load

    data = AuditData(bench_keys()[0])
    month = data.end.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    ctx = BenchContext(Console(file=io.StringIO()), 1.0, tmp_path)
    async with scratch_database("partitioned") as db:
        conn = await asyncpg.connect(db.dsn)
        try:
            await conn.execute(PARTITION_BY_MONTH)
            await conn.execute("CREATE TABLE audit_logs_ahead PARTITION OF audit_logs "
                               f"FOR VALUES FROM ('{month.isoformat()}') TO (MAXVALUE)")
            await load(ctx, db, data, 3000, keep=0)
            per_partition = dict(await conn.fetch(
                "SELECT tableoid::regclass::text, count(*) FROM audit_logs GROUP BY 1"))
            unbuilt = await conn.fetchval(  # partitions with fewer indexes than the table has
                "SELECT count(*) FROM pg_inherits i WHERE i.inhparent = 'audit_logs'::regclass "
                "AND (SELECT count(*) FROM pg_index WHERE indrelid = i.inhrelid) < "
                "(SELECT count(*) FROM pg_index WHERE indrelid = 'audit_logs'::regclass)")
        finally:
            await conn.close()
    assert sum(per_partition.values()) == 3000
    assert per_partition.get("audit_logs_ahead", 0) > 0
    assert len(per_partition) >= 12  # a year of rows over monthly partitions
    assert unbuilt == 0
