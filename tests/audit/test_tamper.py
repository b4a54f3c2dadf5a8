"""Tamper evidence: every way of editing the trail behind billwatch's back is caught and named."""

from __future__ import annotations

import hashlib
import json
import uuid

import pytest
from sqlalchemy import delete, insert, select, update

from billwatch.audit import chain, crypto
from billwatch.audit.checkpoints import Checkpoint, CheckpointStore
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.events import Outcome
from billwatch.audit.models import AuditLog, AuditSeal
from billwatch.audit.sealing import seal
from billwatch.audit.verify import VerifyReport, verify
from billwatch.db import Database, utcnow
from tests.audit.conftest import write_rows
from tests.audit.tampering import move_seal, protect, rechain_from, row_at, tampering

SEALED = 30


@pytest.fixture
async def trail(db: Database, keys: AuditKeys, store: CheckpointStore) -> list[uuid.UUID]:
    """30 sealed rows under a signed checkpoint, then 4 rows written since."""
    ids = await write_rows(db, SEALED, per_transaction=7)
    await seal(db, keys=keys, store=store)
    return ids + await write_rows(db, 4)


async def check(db: Database, keys: AuditKeys, store: CheckpointStore) -> VerifyReport:
    return await verify(db, keys=keys, store=store)


def attacker_keys() -> AuditKeys:
    return crypto.keys_from(crypto.generate_key_entry("k1"), "an-attacker-guessing-the-hmac-key-0000")


def forged_row(keys: AuditKeys) -> AuditLog:
    row = AuditLog(id=uuid.uuid4(), occurred_at=utcnow(), event_type="billing.refund.issued",
                   action="issued", outcome=Outcome.SUCCESS, resource_type="transaction",
                   resource_id=str(uuid.uuid4()))
    protect(row, {"amount_cents": 99_999, "currency": "usd"}, keys)
    return row


def columns_of(row: AuditLog) -> dict[str, object]:
    return {column.key: getattr(row, column.key) for column in AuditLog.__table__.columns}


class TestIntactTrail:
    async def test_passes(self, trail: list[uuid.UUID], db: Database, keys: AuditKeys,
                          store: CheckpointStore) -> None:
        report = await check(db, keys, store)
        assert report.ok, report.problem
        assert (report.sealed_rows, report.unsealed_rows) == (SEALED, 4)


class TestChangedRows:
    async def test_a_changed_column_names_its_row(self, trail: list[uuid.UUID], db: Database,
                                                  keys: AuditKeys, store: CheckpointStore) -> None:
        victim = await row_at(db, 12)
        async with tampering(db) as conn:
            await conn.execute(update(AuditLog).where(AuditLog.id == victim)
                               .values(outcome=Outcome.FAILURE, reason="never happened"))
        report = await check(db, keys, store)
        assert report.problem is not None
        assert (report.problem.kind, report.problem.seq, report.problem.row_id) == (
            "changed", 12, str(victim))

    async def test_metadata_moved_from_another_row_does_not_open(
            self, trail: list[uuid.UUID], db: Database, keys: AuditKeys,
            store: CheckpointStore) -> None:
        donor, victim = await row_at(db, 3), await row_at(db, 20)
        async with tampering(db) as conn:
            blob = (await conn.execute(select(AuditLog.metadata_ciphertext)
                                       .where(AuditLog.id == donor))).scalar_one()
            await conn.execute(update(AuditLog).where(AuditLog.id == victim)
                               .values(metadata_ciphertext=blob))
        problem = (await check(db, keys, store)).problem
        assert problem is not None and (problem.kind, problem.row_id) == ("changed", str(victim))

    async def test_a_changed_unsealed_row_is_named(self, trail: list[uuid.UUID], db: Database,
                                                   keys: AuditKeys, store: CheckpointStore) -> None:
        async with tampering(db) as conn:
            await conn.execute(update(AuditLog).where(AuditLog.id == trail[-1])
                               .values(idempotency_key="op:other"))
        problem = (await check(db, keys, store)).problem
        assert problem is not None and (problem.kind, problem.row_id) == ("changed", str(trail[-1]))

    async def test_rehashing_without_the_key_is_caught_at_the_changed_row(
            self, trail: list[uuid.UUID], db: Database, keys: AuditKeys,
            store: CheckpointStore, tmp_path) -> None:
        """Change a row, re-hash it and re-chain everything after it, sign a new checkpoint."""
        victim = await row_at(db, 9)
        forged = attacker_keys()
        async with tampering(db) as conn:
            row = (await conn.execute(select(AuditLog).where(AuditLog.id == victim))).one()
            values = list(chain.CONTENT_COLUMNS)
            text_values = [chain._text(name, getattr(row, name)) for name in values]
            text_values[values.index("reason")] = "rewritten"
            plaintext = keys.ring.decrypt(row.metadata_key_id, row.metadata_ciphertext,
                                          chain.associated_data(victim))
            digest = chain.RowHasher(forged.hmac_key)(
                chain.content_bytes(chain.column_text(text_values), plaintext))
            await conn.execute(update(AuditLog).where(AuditLog.id == victim)
                               .values(reason="rewritten", content_hash=digest))
            await rechain_from(conn, 9)
            head = (await conn.execute(select(AuditSeal.chain_hash)
                                       .where(AuditSeal.seq == SEALED))).scalar_one()
        fake = Checkpoint(last_seq=SEALED, last_id=str(await row_at(db, SEALED)),
                          row_count=SEALED, batch_rows=0, head_hash=head.hex(),
                          created_at=utcnow().isoformat()).signed(forged.hmac_key)
        store.write(fake)
        problem = (await check(db, keys, store)).problem
        assert problem is not None and (problem.kind, problem.row_id) == ("changed", str(victim))

    async def test_a_checkpoint_signed_without_the_key_is_refused(
            self, trail: list[uuid.UUID], db: Database, keys: AuditKeys,
            store: CheckpointStore) -> None:
        fake = Checkpoint(last_seq=SEALED, last_id=None, row_count=SEALED, batch_rows=0,
                          head_hash="00" * 32, created_at=utcnow().isoformat())
        path = store.write(fake.signed(attacker_keys().hmac_key))
        problem = (await check(db, keys, store)).problem
        assert problem is not None and problem.kind == "checkpoint" and path.name in problem.message


class TestDeletedRows:
    async def test_a_deleted_middle_row_is_named(self, trail: list[uuid.UUID], db: Database,
                                                 keys: AuditKeys, store: CheckpointStore) -> None:
        victim = await row_at(db, 15)
        async with tampering(db) as conn:
            await conn.execute(delete(AuditLog).where(AuditLog.id == victim))
        problem = (await check(db, keys, store)).problem
        assert problem is not None
        assert (problem.kind, problem.seq, problem.row_id) == ("deleted", 15, str(victim))

    async def test_a_row_deleted_with_its_seal_leaves_a_gap(
            self, trail: list[uuid.UUID], db: Database, keys: AuditKeys,
            store: CheckpointStore) -> None:
        victim = await row_at(db, 15)
        async with tampering(db) as conn:
            await conn.execute(delete(AuditLog).where(AuditLog.id == victim))
            await conn.execute(delete(AuditSeal).where(AuditSeal.seq == 15))
        problem = (await check(db, keys, store)).problem
        assert problem is not None and (problem.kind, problem.seq) == ("deleted", 15)

    async def test_a_deletion_hidden_by_renumbering_breaks_the_chain(
            self, trail: list[uuid.UUID], db: Database, keys: AuditKeys,
            store: CheckpointStore) -> None:
        victim = await row_at(db, 15)  # read before the tampering transaction holds the lock
        async with tampering(db) as conn:
            await conn.execute(delete(AuditLog).where(AuditLog.id == victim))
            await conn.execute(delete(AuditSeal).where(AuditSeal.seq == 15))
            for seq in range(16, SEALED + 1):
                await move_seal(conn, seq, seq - 1)
        problem = (await check(db, keys, store)).problem
        assert problem is not None and (problem.kind, problem.seq) == ("deleted", 15)

    async def test_truncating_the_newest_rows_is_caught_by_the_checkpoint(
            self, trail: list[uuid.UUID], db: Database, keys: AuditKeys,
            store: CheckpointStore) -> None:
        newest = [await row_at(db, seq) for seq in range(SEALED - 4, SEALED + 1)]
        async with tampering(db) as conn:
            await conn.execute(delete(AuditSeal).where(AuditSeal.seq > SEALED - 5))
            await conn.execute(delete(AuditLog).where(AuditLog.id.in_(newest)))
        problem = (await check(db, keys, store)).problem
        assert problem is not None and problem.kind == "truncated"
        assert f"seq {SEALED - 5}" in problem.message and f"seq {SEALED}" in problem.message

    async def test_an_emptied_checkpoint_store_fails_loudly(
            self, trail: list[uuid.UUID], db: Database, keys: AuditKeys, tmp_path) -> None:
        problem = (await check(db, keys, CheckpointStore(tmp_path / "elsewhere"))).problem
        assert problem is not None and problem.kind == "checkpoint"


class TestInsertedRows:
    async def test_a_forged_row_spliced_into_the_chain_is_named(
            self, trail: list[uuid.UUID], db: Database, keys: AuditKeys,
            store: CheckpointStore) -> None:
        forged = forged_row(attacker_keys())
        async with tampering(db) as conn:
            for seq in range(SEALED, 9, -1):
                await move_seal(conn, seq, seq + 1)
            await conn.execute(insert(AuditLog).values(columns_of(forged)))
            previous = (await conn.execute(select(AuditSeal.chain_hash)
                                           .where(AuditSeal.seq == 9))).scalar_one()
            await conn.execute(insert(AuditSeal).values(
                seq=10, audit_log_id=forged.id, sealed_at=utcnow(),
                chain_hash=hashlib.sha256(previous + forged.content_hash).digest()))
        problem = (await check(db, keys, store)).problem
        assert problem is not None
        assert (problem.kind, problem.seq, problem.row_id) == ("inserted", 10, str(forged.id))

    async def test_a_forged_unsealed_row_is_named(self, trail: list[uuid.UUID], db: Database,
                                                  keys: AuditKeys, store: CheckpointStore) -> None:
        forged = forged_row(attacker_keys())
        async with tampering(db) as conn:
            await conn.execute(insert(AuditLog).values(columns_of(forged)))
        problem = (await check(db, keys, store)).problem
        assert problem is not None and (problem.kind, problem.row_id) == ("inserted", str(forged.id))


class TestReorderedRows:
    async def test_swapped_rows_are_named(self, trail: list[uuid.UUID], db: Database,
                                          keys: AuditKeys, store: CheckpointStore) -> None:
        first, second = await row_at(db, 7), await row_at(db, 8)
        async with tampering(db) as conn:
            await move_seal(conn, 7, -1)
            await move_seal(conn, 8, 7)
            await move_seal(conn, -1, 8)
        problem = (await check(db, keys, store)).problem
        assert problem is not None and problem.kind == "reordered"
        assert (problem.seq, problem.row_id) == (7, str(second))
        assert str(first) in problem.message

    async def test_reordering_with_a_recomputed_chain_disagrees_with_the_checkpoint(
            self, trail: list[uuid.UUID], db: Database, keys: AuditKeys,
            store: CheckpointStore) -> None:
        async with tampering(db) as conn:
            await move_seal(conn, 7, -1)
            await move_seal(conn, 8, 7)
            await move_seal(conn, -1, 8)
            await rechain_from(conn, 7)
        problem = (await check(db, keys, store)).problem
        assert problem is not None and (problem.kind, problem.seq) == ("rewritten", SEALED)


def test_checkpoint_files_are_plain_signed_json(tmp_path) -> None:
    store = CheckpointStore(tmp_path)
    key = b"k" * 32
    path = store.write(Checkpoint(last_seq=3, last_id=None, row_count=3, batch_rows=3,
                                  head_hash="ab" * 32, created_at=utcnow().isoformat()).signed(key))
    body = json.loads(path.read_text())
    assert body["last_seq"] == 3 and len(body["signature"]) == 64
    assert Checkpoint.from_json(path.read_text()).valid(key)
    with pytest.raises(FileExistsError):
        store.write(Checkpoint.from_json(path.read_text()))
