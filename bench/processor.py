"""One inbox processor in a process of its own (``python -m bench.processor billwatch|baseline``).

``billwatch`` runs what every processor runs (:func:`billwatch.webhooks.inbox.drain`, settings
from the ``BILLWATCH_`` environment); ``baseline`` is the least a processor can do on bare
asyncpg (:data:`BASELINE_SCHEMA`): one transaction per event that claims it, inserts the payment
and one audit row and marks it processed. Both connect first and say ``READY``, then wait for a
line on stdin, so several processes start draining together and the start-up stays out of the
figures; at the end each prints ``RESULT`` and a JSON line (events, wall-clock start and end,
its own CPU seconds). :func:`run_processors` is the parent's side of that exchange.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg

READY, RESULT = "READY", "RESULT "
POLL_SECONDS = 0.5
_REPO = Path(__file__).resolve().parent.parent
BASELINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_inbox (
    id uuid PRIMARY KEY, stripe_event_id text NOT NULL UNIQUE, type text NOT NULL,
    payload jsonb NOT NULL, status text NOT NULL, received_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz);
CREATE INDEX IF NOT EXISTS bench_inbox_received ON bench_inbox (received_at)
    WHERE status = 'received';
CREATE TABLE IF NOT EXISTS bench_payments (
    id uuid PRIMARY KEY, stripe_invoice_id text NOT NULL UNIQUE, stripe_customer_id text,
    amount_cents integer NOT NULL, currency text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS bench_processed_audit (
    id uuid PRIMARY KEY, occurred_at timestamptz NOT NULL DEFAULT now(), event_type text NOT NULL,
    stripe_event_id text NOT NULL, stripe_invoice_id text, metadata jsonb NOT NULL);
"""
CLAIM = """
UPDATE bench_inbox SET status = 'processing' WHERE id = (
    SELECT id FROM bench_inbox WHERE status = 'received' ORDER BY received_at LIMIT 1
    FOR UPDATE SKIP LOCKED) RETURNING id, stripe_event_id, payload"""
INSERT_PAYMENT = """
INSERT INTO bench_payments (id, stripe_invoice_id, stripe_customer_id, amount_cents, currency)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT (stripe_invoice_id) DO NOTHING"""
INSERT_AUDIT = """
INSERT INTO bench_processed_audit (id, event_type, stripe_event_id, stripe_invoice_id, metadata)
VALUES ($1, 'billing.payment.succeeded', $2, $3, $4::jsonb)"""
MARK = "UPDATE bench_inbox SET status = 'processed', processed_at = now() WHERE id = $1"


@dataclass
class _Clock:
    """When this processor was told to go, by the wall clock (shared) and its own CPU clock."""

    started: float = 0.0
    cpu: float = 0.0

    def ready(self) -> None:
        print(READY, flush=True)
        sys.stdin.readline()  # the go signal: every processor is connected
        self.started, self.cpu = time.time(), time.process_time()


async def _baseline(dsn: str, clock: _Clock) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.fetchval("SELECT 1")
        clock.ready()
        done = 0
        while True:
            async with conn.transaction():
                row = await conn.fetchrow(CLAIM)
                if row is None:
                    return done
                obj = json.loads(row["payload"])["data"]["object"]
                await conn.execute(INSERT_PAYMENT, uuid.uuid4(), obj["id"], obj.get("customer"),
                                   obj["amount_paid"], obj["currency"])
                await conn.execute(INSERT_AUDIT, uuid.uuid4(), row["stripe_event_id"], obj["id"],
                                   json.dumps({"amount_cents": obj["amount_paid"],
                                               "currency": obj["currency"]}))
                await conn.execute(MARK, row["id"])
            done += 1
    finally:
        await conn.close()


async def _billwatch(clock: _Clock) -> int:
    from billwatch.bootstrap import open_database
    from billwatch.config import get_settings
    from billwatch.logging import configure_logging
    from billwatch.payments.gateway import PaymentsGateway
    from billwatch.webhooks.inbox import drain, processor_id

    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    db = open_database(settings)
    try:
        async with db.engine.connect() as conn:  # the pool's first connection, before the clock
            await conn.exec_driver_sql("SELECT 1")
        clock.ready()
        worker, gateway, done = processor_id("bench"), PaymentsGateway(settings), 0
        while batch := await drain(db, gateway, settings, worker=worker):
            done += len(batch)
        return done
    finally:
        await db.dispose()


def main(mode: str) -> None:
    clock = _Clock()
    done = asyncio.run(_baseline(os.environ["BENCH_PG_DSN"], clock) if mode == "baseline"
                       else _billwatch(clock))
    finished = time.time()
    print(RESULT + json.dumps({"events": done, "started": clock.started, "finished": finished,
                               "cpu_seconds": time.process_time() - clock.cpu}), flush=True)


@dataclass(frozen=True, slots=True)
class Drained:
    """What a set of processors did together."""

    events: int
    seconds: float
    """From the go signal to the last processor's end."""
    cpu_seconds: float
    """The processors' own CPU (PostgreSQL's not included)."""
    per_process: list[int]

    @property
    def per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


async def run_processors(mode: str, count: int, env: dict[str, str], *, log_dir: Path,
                         within: float) -> Drained:
    """Start ``count`` processors, let them drain together, and collect what each did."""
    procs = []
    for n in range(count):
        with (log_dir / f"processor-{mode}-{n}.log").open("ab") as errors:
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.processor", mode, cwd=_REPO,
                env={**os.environ, **env, "PYTHONPATH": str(_REPO)},
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=errors))
    try:
        async with asyncio.timeout(within):
            await asyncio.gather(*(_line(proc, READY) for proc in procs))
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            lines = await asyncio.gather(*(_line(proc, RESULT) for proc in procs))
            results = [json.loads(line) for line in lines]
            for proc in procs:
                await proc.wait()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    started = min(r["started"] for r in results)
    return Drained(sum(r["events"] for r in results),
                   max(r["finished"] for r in results) - started,
                   sum(r["cpu_seconds"] for r in results), [r["events"] for r in results])


async def applied_counts(conn: asyncpg.Connection) -> tuple[dict[str, int], int, int, int]:
    """Events by status, payments, their distinct invoices and ``billing.payment.succeeded``
    rows: what "every event applied exactly once" is checked against after a drain."""
    statuses = dict(await conn.fetch("SELECT status::text, count(*) FROM stripe_events GROUP BY 1"))
    payments, invoices = await conn.fetchrow(
        "SELECT count(*), count(DISTINCT stripe_invoice_id) FROM transactions "
        "WHERE kind = 'payment'")
    audited = await conn.fetchval(
        "SELECT count(*) FROM audit_logs WHERE event_type = 'billing.payment.succeeded'")
    return statuses, int(payments), int(invoices), int(audited)


async def until_drained(conn: asyncpg.Connection, *, stored: int = 0, within: float) -> None:
    """Wait until at least ``stored`` events are stored and none is unprocessed."""
    from billwatch.webhooks.models import UNFINISHED_SQL

    async with asyncio.timeout(within):
        while True:
            count, waiting = await conn.fetchrow(
                f"SELECT count(*), count(*) FILTER (WHERE {UNFINISHED_SQL}) FROM stripe_events")
            if count >= stored and not waiting:
                return
            await asyncio.sleep(POLL_SECONDS)


async def _line(proc: asyncio.subprocess.Process, prefix: str) -> str:
    """The rest of the first stdout line starting with ``prefix`` (logs may come before it)."""
    assert proc.stdout is not None
    while line := (await proc.stdout.readline()).decode():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    raise RuntimeError(f"bench processor ended without {prefix.strip()} (exit "
                       f"{await proc.wait()}); see the processor logs in the bench log folder")


if __name__ == "__main__":
    main(sys.argv[1])
