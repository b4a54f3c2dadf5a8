"""The overview shows the last ``billwatch audit verify``: when, by whom, intact or broken.

The verify runs as an operator runs it, a separate ``billwatch`` process on the same database;
the page is read in Debian's Chromium.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from sqlalchemy import delete, select

from billwatch.audit.models import AuditLog
from billwatch.audit.verify_runs import AUDIT_VERIFY
from billwatch.jobs.models import JobRun, RunStatus
from tests.audit.tampering import row_at, tampering
from tests.console.conftest import Console, admin

BILLWATCH = str(Path(sys.executable).parent / "billwatch")


async def audit_command(console: Console, folder: Path, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLWATCH_")}
    env.update({"BILLWATCH_ENV": "development", "BILLWATCH_LOG_LEVEL": "WARNING",
                "BILLWATCH_DATABASE_URL": console.settings.database_url,
                "BILLWATCH_AUDIT_CHECKPOINT_DIR": str(folder / "checkpoints"), "COLUMNS": "200"})
    process = await asyncio.create_subprocess_exec(
        BILLWATCH, "audit", *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, output.decode()


async def verify_runs(console: Console) -> list[JobRun]:
    async with console.db.sessionmaker() as session:
        return list((await session.scalars(select(JobRun).where(JobRun.job == AUDIT_VERIFY)
                                           .order_by(JobRun.period))).all())


class TestLastVerify:
    async def test_the_overview_shows_the_last_verify_intact_then_broken(
            self, console: Console, tmp_path: Path) -> None:
        await console.sign_in(await admin(console))
        page = console.page
        shown = page.locator("#last-verify")
        assert "No verify recorded yet" in await shown.inner_text()

        assert (await audit_command(console, tmp_path, "checkpoint"))[0] == 0
        code, out = await audit_command(console, tmp_path, "verify")
        assert code == 0 and "audit trail intact" in out, out
        [intact] = await verify_runs(console)
        assert intact.status is RunStatus.SUCCEEDED and intact.result["ok"] is True
        assert intact.task_id is not None and intact.task_id.startswith("cli:audit-verify:")
        await page.reload()
        text = await shown.inner_text()
        assert text.startswith("Last verify: intact at "), text
        assert intact.task_id in text and f"by {intact.result['by']} " in text
        assert f"head seq {intact.result['head_seq']}" in text
        await console.screenshot("overview-last-verify")

        victim = await row_at(console.db, 1)
        async with tampering(console.db) as conn:
            await conn.execute(delete(AuditLog).where(AuditLog.id == victim))
        code, out = await audit_command(console, tmp_path, "verify")
        assert code == 1 and "BROKEN (deleted)" in out, out
        runs = await verify_runs(console)
        assert [r.status for r in runs] == [RunStatus.SUCCEEDED, RunStatus.FAILED]
        await page.reload()
        text = await shown.inner_text()
        assert text.startswith("Last verify: BROKEN at "), text
        assert "First problem: deleted:" in text and str(victim) in text
        assert "sealed rows" not in text  # a verify that stopped at a break counted only part
        assert await page.locator("#last-verify.tampered").count() == 1
        await console.screenshot("overview-last-verify-broken")
