"""Sealing and verifying an untouched trail: the happy path on both backends."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from billwatch.audit import chain
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.crypto import AuditKeys, keys_for
from billwatch.audit.models import AuditCheckpoint, AuditLog, AuditSeal
from billwatch.audit.sealing import checkpoint, seal
from billwatch.audit.streams import stream_contents
from billwatch.audit.verify import verify
from billwatch.config import Settings
from billwatch.db import Database
from tests.audit.conftest import write_rows


class TestSealing:
    async def test_seal_numbers_every_row_and_signs_a_checkpoint(
            self, db: Database, keys: AuditKeys, store: CheckpointStore) -> None:
        await write_rows(db, 120)
        result = await seal(db, keys=keys, store=store)
        assert result.sealed == 120 and result.checkpoint.last_seq == 120
        assert result.path.exists() and result.checkpoint.valid(keys.hmac_key)
        async with db.sessionmaker() as session:
            seqs = list((await session.scalars(select(AuditSeal.seq).order_by(AuditSeal.seq))).all())
            assert seqs == list(range(1, 121))
            assert await session.scalar(select(func.count()).select_from(AuditCheckpoint)) == 1

        await write_rows(db, 7)
        again = await seal(db, keys=keys, store=store)
        assert (again.sealed, again.checkpoint.last_seq) == (7, 127)
        assert len(store.read_all()) == 2

    async def test_an_intact_trail_verifies(self, db: Database, keys: AuditKeys,
                                            store: CheckpointStore) -> None:
        await write_rows(db, 60)
        await seal(db, keys=keys, store=store)
        await write_rows(db, 9)
        report = await verify(db, keys=keys, store=store)
        assert report.ok, report.problem
        assert (report.sealed_rows, report.unsealed_rows, report.head_seq) == (60, 9, 60)

    async def test_the_database_formats_content_exactly_as_the_recorder_hashed_it(
            self, db: Database, keys: AuditKeys) -> None:
        await write_rows(db, 6)
        async with db.sessionmaker() as session:
            python_side = {str(row.id): chain.column_text(chain.canonical_values(row))
                           for row in (await session.scalars(select(AuditLog))).all()}
        database_side: dict[str, bytes] = {}

        def collect(lines: list[bytes]) -> bool:
            for line in lines:
                columns = line.split(b"\t", 3)[3]
                database_side[columns[:36].decode()] = columns
            return True

        async with db.engine.connect() as conn:
            await stream_contents(conn, collect)
        assert database_side == python_side


class TestHourlyJobEntryPoint:
    async def test_checkpoint_uses_the_configured_keys_and_folder(
            self, db: Database, settings: Settings, tmp_path: Path) -> None:
        configured = settings.model_copy(update={"audit_checkpoint_dir": tmp_path / "hourly"})
        await write_rows(db, 3)
        result = await checkpoint(db, configured)
        assert result.sealed == 3 and result.path.parent == tmp_path / "hourly"
        report = await verify(db, keys=keys_for(configured),
                              store=CheckpointStore(tmp_path / "hourly"))
        assert report.ok and report.sealed_rows == 3
