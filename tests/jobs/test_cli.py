"""``billwatch jobs ...``, ``billwatch worker`` and ``billwatch beat`` as an operator runs them."""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import date
from pathlib import Path

from sqlalchemy import select

from billwatch.db import Database
from billwatch.jobs.models import DailyBillingMetrics
from tests.jobs.month import DAY, EXPECTED, seed_month
from tests.jobs.workers import BIN


def billwatch(*args: str, cwd: Path, database_url: str = "",
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BILLWATCH_")}
    environment.update({"BILLWATCH_ENV": "development",
                        "BILLWATCH_DATABASE_URL": database_url, "BILLWATCH_LOG_LEVEL": "WARNING",
                        "COLUMNS": "160", **(env or {})})
    return subprocess.run([str(BIN / "billwatch"), *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=120, check=False)


async def stored_days(db: Database) -> dict[date, int]:
    async with db.sessionmaker() as session:
        rows = await session.scalars(select(DailyBillingMetrics))
        return {row.day: row.mrr_cents for row in rows}


class TestJobsCommands:
    async def test_backfill_then_recompute_one_day(self, db: Database, database_url: str,
                                                   tmp_path: Path) -> None:
        await seed_month(db)
        backfill = await asyncio.to_thread(
            billwatch, "jobs", "backfill", "--from", "2026-06-28", "--to", "2026-06-30",
            cwd=tmp_path, database_url=database_url)
        assert backfill.returncode == 0, backfill.stderr
        assert "3 days computed" in backfill.stdout and "daily metrics" in backfill.stdout
        days = await stored_days(db)
        assert sorted(days) == [date(2026, 6, 28), date(2026, 6, 29), DAY]
        assert days[DAY] == EXPECTED["mrr_cents"]

        one = await asyncio.to_thread(billwatch, "jobs", "daily-metrics", "--date", "2026-06-30",
                                      cwd=tmp_path, database_url=database_url)
        assert one.returncode == 0, one.stderr
        assert "mrr_cents" in one.stdout and "21150" in one.stdout
        assert len(await stored_days(db)) == 3  # recomputed in place

    async def test_a_range_backwards_is_refused(self, database_url: str, tmp_path: Path) -> None:
        refused = await asyncio.to_thread(
            billwatch, "jobs", "backfill", "--from", "2026-06-30", "--to", "2026-06-01",
            cwd=tmp_path, database_url=database_url)
        assert refused.returncode == 2 and "--to is before --from" in refused.stderr


def test_worker_and_beat_need_a_broker(tmp_path: Path) -> None:
    for command in ("worker", "beat"):
        refused = billwatch(command, cwd=tmp_path, env={"BILLWATCH_BROKER_URL": ""})
        assert refused.returncode == 2
        assert "BILLWATCH_BROKER_URL is empty" in refused.stdout
