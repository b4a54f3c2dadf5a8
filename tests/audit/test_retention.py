"""Retention: old rows move to verifiable archive files; the chain verifies across both."""

from __future__ import annotations

import gzip
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from billwatch.audit.archive import ArchiveRefused, archive, archive_files
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.models import AuditArchive, AuditLog, AuditSeal
from billwatch.audit.verify import verify
from billwatch.db import Database, utcnow
from tests.audit.conftest import write_rows, write_rows_at


async def online(db: Database) -> tuple[int, int]:
    async with db.sessionmaker() as session:
        logs = await session.scalar(select(func.count()).select_from(AuditLog))
        seals = await session.scalar(select(func.count()).select_from(AuditSeal))
        return int(logs or 0), int(seals or 0)


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    return tmp_path / "archive"


class TestArchive:
    async def test_refuses_to_cut_into_the_last_90_days(
            self, db: Database, keys: AuditKeys, store: CheckpointStore,
            archive_dir: Path) -> None:
        await write_rows_at(db, 3, utcnow() - timedelta(days=120))
        with pytest.raises(ArchiveRefused, match="90 days"):
            await archive(db, keys=keys, store=store, directory=archive_dir,
                          before=utcnow() - timedelta(days=89))
        assert await online(db) == (3, 0) and archive_files(archive_dir) == []

    async def test_moves_old_rows_to_a_file_and_verifies_across_both(
            self, db: Database, keys: AuditKeys, store: CheckpointStore,
            archive_dir: Path) -> None:
        await write_rows_at(db, 20, utcnow() - timedelta(days=400))
        await write_rows_at(db, 5, utcnow() - timedelta(days=200))
        await write_rows(db, 6)
        result = await archive(db, keys=keys, store=store, directory=archive_dir,
                               before=utcnow() - timedelta(days=365))
        assert result is not None and (result.first_seq, result.last_seq, result.rows) == (1, 20, 20)
        assert result.path.exists() and result.path.suffix == ".gz"
        assert await online(db) == (5 + 6 + 1, 11)  # the audit.archived row is not sealed yet

        without = await verify(db, keys=keys, store=store)
        assert without.ok, without.problem
        assert "pass --archive-dir" in without.notes[0]
        across = await verify(db, keys=keys, store=store, archive_dir=archive_dir)
        assert across.ok, across.problem
        assert (across.archived_rows, across.sealed_rows, across.unsealed_rows) == (20, 11, 1)

    async def test_nothing_old_enough_changes_nothing(
            self, db: Database, keys: AuditKeys, store: CheckpointStore,
            archive_dir: Path) -> None:
        await write_rows(db, 4)
        assert await archive(db, keys=keys, store=store, directory=archive_dir,
                             before=utcnow() - timedelta(days=365)) is None
        assert await online(db) == (4, 4)

    async def test_a_second_archive_continues_the_first(
            self, db: Database, keys: AuditKeys, store: CheckpointStore,
            archive_dir: Path) -> None:
        await write_rows_at(db, 8, utcnow() - timedelta(days=500))
        await write_rows_at(db, 7, utcnow() - timedelta(days=300))
        await write_rows(db, 2)
        first = await archive(db, keys=keys, store=store, directory=archive_dir,
                              before=utcnow() - timedelta(days=400))
        second = await archive(db, keys=keys, store=store, directory=archive_dir,
                               before=utcnow() - timedelta(days=100))
        assert first is not None and second is not None
        assert (first.last_seq, second.first_seq, second.last_seq) == (8, 9, 15)
        async with db.sessionmaker() as session:
            assert await session.scalar(select(func.count()).select_from(AuditArchive)) == 2
        report = await verify(db, keys=keys, store=store, archive_dir=archive_dir)
        assert report.ok, report.problem
        assert report.archived_rows == 15


class TestTamperedArchives:
    @pytest.fixture
    async def archived(self, db: Database, keys: AuditKeys, store: CheckpointStore,
                       archive_dir: Path) -> Path:
        await write_rows_at(db, 12, utcnow() - timedelta(days=400))
        await write_rows(db, 3)
        result = await archive(db, keys=keys, store=store, directory=archive_dir,
                               before=utcnow() - timedelta(days=365))
        assert result is not None
        return result.path

    async def test_an_edited_archive_names_the_row(
            self, archived: Path, db: Database, keys: AuditKeys, store: CheckpointStore,
            archive_dir: Path) -> None:
        edit_line(archived, 5, b"payment.succeeded", b"payment.failed")
        problem = (await verify(db, keys=keys, store=store, archive_dir=archive_dir)).problem
        assert problem is not None and problem.kind == "changed" and problem.seq == 5
        assert archived.name in problem.message

    async def test_a_missing_archive_is_reported(
            self, archived: Path, db: Database, keys: AuditKeys, store: CheckpointStore,
            archive_dir: Path) -> None:
        remove(archived)
        problem = (await verify(db, keys=keys, store=store, archive_dir=archive_dir)).problem
        assert problem is not None and problem.kind == "archive"
        assert archive_files(archive_dir) == []


def edit_line(path: Path, number: int, old: bytes, new: bytes) -> None:
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    lines[number] = lines[number].replace(old, new)
    path.chmod(0o644)
    path.write_bytes(gzip.compress(b"\n".join(lines)))


def remove(path: Path) -> None:
    path.unlink()
