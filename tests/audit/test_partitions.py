"""audit_logs by month on PostgreSQL: partitions made ahead, a DEFAULT partition that loses
nothing, append-only on every partition, and ``archive --month`` that drops a whole month."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from billwatch.audit.archive import ArchiveRefused, archive_files
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.models import AuditArchive, AuditLog, AuditSeal
from billwatch.audit.monthly import archive_month
from billwatch.audit.partitions import Month, ensure_partitions, partitions
from billwatch.audit.sealing import seal
from billwatch.audit.verify import verify
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.jobs import service
from billwatch.jobs.celery_app import AUDIT_PARTITIONS_TASK, beat_schedule
from billwatch.runtime import Runtime
from tests import support
from tests.audit.conftest import write_rows, write_rows_at
from tests.audit.helpers import DEFAULT_PARTITION

THIS_MONTH = Month.of(utcnow())
OLD = THIS_MONTH.plus(-6)
"""A month old enough to archive (it ended more than 90 days ago)."""
NEXT_OLD = OLD.plus(1)
FAR_AHEAD = THIS_MONTH.plus(60)


@pytest.fixture
async def fresh_db(fresh_migrated_url: str, runtime: Runtime) -> AsyncIterator[Database]:
    """A database of its own: these tests create and drop partitions."""
    database = Database(fresh_migrated_url, runtime=runtime)
    yield database
    await database.dispose()


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    return tmp_path / "archive"


def postgresql_only(db: Database) -> None:
    if db.dialect != "postgresql":
        pytest.skip("SQLite keeps one table")


async def where_rows_are(db: Database) -> dict[str, int]:
    """Rows per partition (PostgreSQL)."""
    async with db.engine.connect() as conn:
        found = await conn.execute(text(
            "SELECT tableoid::regclass::text, count(*) FROM audit_logs GROUP BY 1"))
        return {str(name): int(count) for name, count in found.all()}


async def online_rows(db: Database) -> int:
    async with db.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(AuditLog)) or 0)


async def relation_size(db: Database, name: str) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(text(
            "SELECT coalesce(pg_relation_size(to_regclass(:name)), 0)"),
                                       {"name": name})).scalar_one())


class TestPartitionsAhead:
    async def test_the_migration_makes_this_month_and_the_next_ones(self, fresh_db: Database) -> None:
        postgresql_only(fresh_db)
        async with fresh_db.engine.connect() as conn:
            made = await partitions(conn)
        expected = {THIS_MONTH.plus(step).partition for step in range(4)}
        assert set(made) == expected | {DEFAULT_PARTITION}
        assert made[DEFAULT_PARTITION] == "DEFAULT"
        bound = made[THIS_MONTH.partition]
        assert f"{THIS_MONTH.start:%Y-%m-%d}" in bound and f"{THIS_MONTH.end:%Y-%m-%d}" in bound

    async def test_ensure_adds_what_is_missing_once(self, fresh_db: Database) -> None:
        postgresql_only(fresh_db)
        created = await ensure_partitions(fresh_db, ahead=6)
        assert created == [THIS_MONTH.plus(4).partition, THIS_MONTH.plus(5).partition,
                           THIS_MONTH.plus(6).partition]
        assert await ensure_partitions(fresh_db, ahead=6) == []

    async def test_the_daily_job_runs_once_a_day(self, fresh_db: Database,
                                                 fresh_url: str) -> None:
        postgresql_only(fresh_db)
        settings = support.test_settings(fresh_url, "http://127.0.0.1:9", audit_partitions_ahead=8)
        first = await service.audit_partitions_due(fresh_db, settings)
        assert first.ran and first.result["created"][-1] == THIS_MONTH.plus(8).partition
        assert not (await service.audit_partitions_due(fresh_db, settings)).ran
        async with fresh_db.engine.connect() as conn:
            assert THIS_MONTH.plus(8).partition in await partitions(conn)

    def test_beat_schedules_the_partition_job_daily(self) -> None:
        entry = beat_schedule()["audit-partitions"]
        assert entry["task"] == AUDIT_PARTITIONS_TASK
        assert entry["schedule"].hour == {0} and entry["schedule"].minute == {5}

    def test_the_setting_bounds_the_months_ahead(self) -> None:
        with pytest.raises(ValueError):
            support.test_settings("sqlite+aiosqlite://", "http://127.0.0.1:9", audit_partitions_ahead=0)
        assert Settings.model_fields["audit_partitions_ahead"].default == 3


class TestARowFarAhead:
    async def test_is_kept_sealed_and_verified_then_moved_into_its_month(
            self, fresh_db: Database, keys: AuditKeys, store: CheckpointStore) -> None:
        when = FAR_AHEAD.start + timedelta(days=9)
        ids = await write_rows_at(fresh_db, 3, when)
        await write_rows(fresh_db, 2)
        async with fresh_db.sessionmaker() as session:
            row = await session.get(AuditLog, ids[0])
            assert row is not None and row.occurred_at == when and row.data["n"] == 0
        assert (await seal(fresh_db, keys=keys, store=store)).sealed == 5
        if fresh_db.dialect == "postgresql":
            assert (await where_rows_are(fresh_db))[DEFAULT_PARTITION] == 3
            created = await ensure_partitions(fresh_db, ahead=0, first=FAR_AHEAD)
            assert created == [FAR_AHEAD.partition]
            placed = await where_rows_are(fresh_db)
            assert placed[FAR_AHEAD.partition] == 3 and DEFAULT_PARTITION not in placed
        assert await online_rows(fresh_db) == 5
        report = await verify(fresh_db, keys=keys, store=store)
        assert report.ok, report.problem
        assert report.sealed_rows == 5


class TestAppendOnlyOnNewPartitions:
    @pytest.mark.parametrize("statement", [
        "UPDATE {table} SET reason = 'edited'",
        "UPDATE {table} SET metadata_key_id = 'k1'",
        "DELETE FROM {table}",
        "TRUNCATE {table}",
    ], ids=["update", "update-key", "delete", "truncate"])
    async def test_a_partition_made_later_refuses_changes(
            self, fresh_db: Database, statement: str) -> None:
        postgresql_only(fresh_db)
        month = THIS_MONTH.plus(10)
        assert await ensure_partitions(fresh_db, ahead=0, first=month) == [month.partition]
        await write_rows_at(fresh_db, 2, month.start + timedelta(hours=1))
        assert (await where_rows_are(fresh_db)) == {month.partition: 2}
        for table in (month.partition, "audit_logs"):
            with pytest.raises(DBAPIError, match="append-only"):
                async with fresh_db.engine.begin() as conn:
                    await conn.execute(text(statement.format(table=table)))
        assert await online_rows(fresh_db) == 2


async def two_old_months(db: Database) -> None:
    """Rows in OLD and NEXT_OLD (partitions made for them on PostgreSQL), and rows of today."""
    await ensure_partitions(db, ahead=1, first=OLD)
    await write_rows_at(db, 12, OLD.start + timedelta(days=3))
    await write_rows_at(db, 5, NEXT_OLD.start + timedelta(days=3))
    await write_rows(db, 4)


class TestArchiveMonth:
    async def test_removes_exactly_that_month_and_verify_passes(
            self, fresh_db: Database, keys: AuditKeys, store: CheckpointStore,
            archive_dir: Path) -> None:
        await two_old_months(fresh_db)
        await seal(fresh_db, keys=keys, store=store)
        pg = fresh_db.dialect == "postgresql"
        kept_size = await relation_size(fresh_db, NEXT_OLD.partition) if pg else 0
        done = await archive_month(fresh_db, keys=keys, store=store, directory=archive_dir,
                                   month=OLD)
        assert done is not None
        assert (done.month_rows, done.strays, done.archive.first_seq, done.archive.last_seq) == (
            12, 0, 1, 12)
        assert archive_files(archive_dir) == [done.archive.path]
        async with fresh_db.sessionmaker() as session:
            left = await session.scalar(select(func.count()).select_from(AuditLog).where(
                AuditLog.occurred_at < OLD.end))
            seals = await session.scalar(select(func.min(AuditSeal.seq)))
            manifest = (await session.scalars(select(AuditArchive))).one()
        assert left == 0 and seals == 13
        assert (manifest.month, manifest.first_seq, manifest.last_seq) == (str(OLD), 1, 12)
        assert await online_rows(fresh_db) == 5 + 4 + 1  # and the audit.archived row
        if pg:
            async with fresh_db.engine.connect() as conn:
                made = await partitions(conn)
            assert OLD.partition not in made and NEXT_OLD.partition in made
            assert await relation_size(fresh_db, OLD.partition) == 0  # no such relation left
            assert await relation_size(fresh_db, NEXT_OLD.partition) == kept_size
            placed = await where_rows_are(fresh_db)
            assert placed[NEXT_OLD.partition] == 5 and placed[THIS_MONTH.partition] == 5
        alone = await verify(fresh_db, keys=keys, store=store)
        assert alone.ok, alone.problem
        assert "seq 1..12 are archived" in alone.notes[0]
        across = await verify(fresh_db, keys=keys, store=store, archive_dir=archive_dir)
        assert across.ok, across.problem
        assert (across.archived_rows, across.sealed_rows) == (12, 9)

    async def test_the_chain_goes_on_after_the_archived_months_last_seal(
            self, fresh_db: Database, keys: AuditKeys, store: CheckpointStore,
            archive_dir: Path) -> None:
        await two_old_months(fresh_db)
        first = await archive_month(fresh_db, keys=keys, store=store, directory=archive_dir,
                                    month=OLD)
        await write_rows(fresh_db, 3)
        second = await archive_month(fresh_db, keys=keys, store=store, directory=archive_dir,
                                     month=NEXT_OLD)
        assert first is not None and second is not None
        assert (second.archive.first_seq, second.archive.last_seq) == (13, 17)
        await seal(fresh_db, keys=keys, store=store)
        report = await verify(fresh_db, keys=keys, store=store, archive_dir=archive_dir)
        assert report.ok, report.problem
        assert (report.archived_rows, report.sealed_rows) == (17, 4 + 1 + 3 + 1)

    async def test_a_row_of_the_next_month_sealed_inside_the_span_goes_with_it(
            self, fresh_db: Database, keys: AuditKeys, store: CheckpointStore,
            archive_dir: Path) -> None:
        await ensure_partitions(fresh_db, ahead=1, first=OLD)
        await write_rows_at(fresh_db, 4, OLD.start + timedelta(days=1))
        stray = await write_rows_at(fresh_db, 1, NEXT_OLD.start + timedelta(days=1))
        await seal(fresh_db, keys=keys, store=store)
        await write_rows_at(fresh_db, 2, OLD.end - timedelta(minutes=5))  # committed late
        await write_rows_at(fresh_db, 3, NEXT_OLD.start + timedelta(days=2))
        done = await archive_month(fresh_db, keys=keys, store=store, directory=archive_dir,
                                   month=OLD)
        assert done is not None
        assert (done.month_rows, done.strays, done.archive.last_seq) == (6, 1, 7)
        async with fresh_db.sessionmaker() as session:
            assert await session.get(AuditLog, stray[0]) is None
        assert await online_rows(fresh_db) == 3 + 1
        report = await verify(fresh_db, keys=keys, store=store, archive_dir=archive_dir)
        assert report.ok, report.problem
        assert report.archived_rows == 7

    async def test_refusals_change_nothing(
            self, fresh_db: Database, keys: AuditKeys, store: CheckpointStore,
            archive_dir: Path) -> None:
        await two_old_months(fresh_db)
        with pytest.raises(ArchiveRefused, match="90 days"):
            await archive_month(fresh_db, keys=keys, store=store, directory=archive_dir,
                                month=THIS_MONTH.plus(-2))
        with pytest.raises(ArchiveRefused, match=f"rows of {OLD} are still online"):
            await archive_month(fresh_db, keys=keys, store=store, directory=archive_dir,
                                month=NEXT_OLD)
        if fresh_db.dialect == "postgresql":
            with pytest.raises(ArchiveRefused, match="no partition"):
                await archive_month(fresh_db, keys=keys, store=store, directory=archive_dir,
                                    month=OLD.plus(-3))
        else:
            assert await archive_month(fresh_db, keys=keys, store=store, directory=archive_dir,
                                       month=OLD.plus(-3)) is None
        assert archive_files(archive_dir) == []
        assert await online_rows(fresh_db) == 12 + 5 + 4
        assert (await verify(fresh_db, keys=keys, store=store)).ok


class TestMonthParsing:
    def test_months_and_their_bounds(self) -> None:
        month = Month.parse("2026-12")
        assert (month.start, month.end) == (datetime(2026, 12, 1, tzinfo=UTC),
                                            datetime(2027, 1, 1, tzinfo=UTC))
        assert month.partition == "audit_logs_2026_12" and str(month.plus(-12)) == "2025-12"
        with pytest.raises(ValueError):
            Month.parse("2026-13")
