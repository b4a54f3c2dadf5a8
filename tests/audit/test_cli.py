"""The ``billwatch audit`` commands, run as the operator runs them: a separate process."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete

from billwatch.audit import crypto
from billwatch.audit.crypto import AuditKeys, KeyRing
from billwatch.audit.models import AuditLog
from billwatch.audit.partitions import Month, ensure_partitions
from billwatch.db import Database, utcnow
from tests.audit.conftest import write_rows, write_rows_at
from tests.audit.tampering import row_at, tampering

BILLWATCH = str(Path(sys.executable).parent / "billwatch")


def ring_spec(keys: AuditKeys) -> str:
    return ",".join(f"{kid}:{base64.b64encode(key).decode()}" for kid, key in keys.ring.keys)


@pytest.fixture
def cli_env(database_url: str, keys: AuditKeys, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLWATCH_")}
    env.update({
        "BILLWATCH_ENV": "development",
        "BILLWATCH_DATABASE_URL": database_url,
        "BILLWATCH_AUDIT_ENCRYPTION_KEYS": ring_spec(keys),
        "BILLWATCH_AUDIT_HMAC_KEY": keys.hmac_key.decode(),
        "BILLWATCH_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "BILLWATCH_AUDIT_ARCHIVE_DIR": str(tmp_path / "archive"),
        "BILLWATCH_LOG_LEVEL": "WARNING",
        "COLUMNS": "200",
    })
    return env


async def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        BILLWATCH, "audit", *args, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


class TestVerifyCommand:
    async def test_exit_0_when_intact_and_1_naming_the_deleted_row(
            self, db: Database, keys: AuditKeys, cli_env: dict[str, str]) -> None:
        await write_rows(db, 12)
        code, out = await run(cli_env, "checkpoint")
        assert code == 0 and "sealed 12 rows" in out, out
        code, out = await run(cli_env, "verify")
        assert code == 0 and "audit trail intact" in out, out

        victim = await row_at(db, 6)
        async with tampering(db) as conn:
            await conn.execute(delete(AuditLog).where(AuditLog.id == victim))
        code, out = await run(cli_env, "verify")
        assert code == 1 and "BROKEN (deleted)" in out and str(victim) in out.replace("\n", ""), out
        code, out = await run(cli_env, "verify", "--json")
        assert code == 1 and '"kind": "deleted"' in out and str(victim) in out


class TestRotateKeyCommand:
    async def test_reencrypts_with_a_progress_bar_and_still_verifies(
            self, db: Database, keys: AuditKeys, cli_env: dict[str, str]) -> None:
        await write_rows(db, 30)
        assert (await run(cli_env, "checkpoint"))[0] == 0
        new_entry = crypto.generate_key_entry("k2")
        env = {**cli_env, "BILLWATCH_AUDIT_ENCRYPTION_KEYS": f"{new_entry},{ring_spec(keys)}"}
        code, out = await run(env, "rotate-key", "--batch-size", "7")
        assert code == 0 and "re-encrypting" in out and "30 rows now under key 'k2'" in out, out
        only_new = {**cli_env, "BILLWATCH_AUDIT_ENCRYPTION_KEYS": new_entry}
        code, out = await run(only_new, "verify")
        assert code == 0 and "intact" in out, out


class TestArchiveCommand:
    async def test_refuses_recent_dates_and_archives_old_rows(
            self, db: Database, keys: AuditKeys, cli_env: dict[str, str]) -> None:
        await write_rows_at(db, 9, utcnow() - timedelta(days=500))
        await write_rows(db, 3)
        recent = (utcnow() - timedelta(days=30)).strftime("%Y-%m-%d")
        code, out = await run(cli_env, "archive", "--before", recent)
        assert code == 1 and "90 days" in out, out
        code, out = await run(cli_env, "archive")
        assert code == 0 and "archived 9 rows (seq 1..9)" in out, out
        code, out = await run(cli_env, "verify", "--archive-dir", cli_env["BILLWATCH_AUDIT_ARCHIVE_DIR"])
        assert code == 0 and "archived 9" in out, out


class TestArchiveMonthCommand:
    async def test_archives_one_month_and_verify_passes(
            self, db: Database, keys: AuditKeys, cli_env: dict[str, str]) -> None:
        month = Month.of(utcnow()).plus(-6)
        await ensure_partitions(db, ahead=0, first=month)
        await write_rows_at(db, 6, month.start + timedelta(days=2))
        await write_rows(db, 2)
        code, out = await run(cli_env, "archive", "--month", "2026-13")
        assert code == 2 and "YYYY-MM" in out, out
        code, out = await run(cli_env, "archive", "--month", str(month))
        assert code == 0 and f"archived {month}: 6 rows and 0 of other months" in out, out
        assert (f"partition {month.partition} dropped" in out) == (db.dialect == "postgresql")
        code, out = await run(cli_env, "verify", "--archive-dir", cli_env["BILLWATCH_AUDIT_ARCHIVE_DIR"])
        assert code == 0 and "archived 6" in out and "intact" in out, out


async def test_migrate_makes_the_partitions_the_setting_asks_for(
        fresh_url: str, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "BILLWATCH_DATABASE_URL": fresh_url, "BILLWATCH_AUDIT_PARTITIONS_AHEAD": "5"}
    process = await asyncio.create_subprocess_exec(
        BILLWATCH, "migrate", env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    output = (await process.communicate())[0].decode()
    assert process.returncode == 0, output
    ahead = Month.of(utcnow()).plus(5).partition
    assert (f"audit partitions created: {Month.of(utcnow()).plus(4).partition}, {ahead}" in output) == (
        fresh_url.startswith("postgresql")), output


async def test_keygen_prints_a_usable_ring_entry() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLWATCH_")}
    code, out = await run(env, "keygen", "--kid", "k2031")
    assert code == 0
    assert KeyRing.parse(out.strip()).primary_id == "k2031"
