"""Metadata is encrypted at rest, readable through billwatch, and re-keyable without a break."""

from __future__ import annotations

import base64
import uuid

import pytest
from sqlalchemy import select, text

from billwatch import secret_keys
from billwatch.accounts.actor import SystemActor
from billwatch.audit import crypto, recorder
from billwatch.audit.checkpoints import CheckpointStore
from billwatch.audit.crypto import AuditKeys, KeyRing
from billwatch.audit.events import AuditEvent
from billwatch.audit.models import AuditLog
from billwatch.audit.rotation import rotate, rows_to_rotate
from billwatch.audit.sealing import seal
from billwatch.audit.verify import verify
from billwatch.bootstrap import build_runtime
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.secret_keys import KeyRingError
from tests.audit.conftest import write_rows

MARKER = "clinic-visit-7f3a9c"


async def raw_rows(db: Database) -> list[tuple[object, ...]]:
    async with db.engine.connect() as conn:
        return [tuple(row) for row in (await conn.execute(text("SELECT * FROM audit_logs"))).all()]


class TestAtRest:
    async def test_a_raw_read_shows_no_plaintext_metadata(self, db: Database,
                                                          keys: AuditKeys) -> None:
        async with db.unit_of_work() as session:
            row = recorder.record(session, AuditEvent.OVERRIDE_CREATED, actor=SystemActor("cli"),
                                  data={"note": MARKER, "percent_off": 25})
        for values in await raw_rows(db):
            for value in values:
                as_bytes = value if isinstance(value, bytes) else str(value).encode()
                assert MARKER.encode() not in as_bytes and b"percent_off" not in as_bytes
        async with db.sessionmaker() as session:
            loaded = await session.get(AuditLog, row.id)
            assert loaded is not None and loaded.data == {"note": MARKER, "percent_off": 25}
            assert loaded.metadata_key_id == "k1"

    async def test_ciphertext_is_bound_to_its_row(self, keys: AuditKeys) -> None:
        kid, blob = keys.ring.encrypt(b'{"a":1}', b"row-one")
        assert keys.ring.decrypt(kid, blob, b"row-one") == b'{"a":1}'
        with pytest.raises(KeyRingError, match="authenticate"):
            keys.ring.decrypt(kid, blob, b"row-two")


class TestKeyRing:
    def test_parses_and_refuses_bad_rings(self) -> None:
        ring = KeyRing.parse(f"{crypto.generate_key_entry('new')},{crypto.generate_key_entry('old')}")
        assert ring.primary_id == "new" and [kid for kid, _ in ring.keys] == ["new", "old"]
        for bad in ("", "nokey", "k1:not-base64!", "k1:" + "QUJD", "bad id:" + "A" * 44):
            with pytest.raises(KeyRingError):
                KeyRing.parse(bad)

    def test_the_development_keys_are_flagged(self) -> None:
        development = crypto.keys_from(secret_keys.DEVELOPMENT_ENCRYPTION_KEYS,
                                       secret_keys.DEVELOPMENT_HMAC_KEY)
        assert development.development
        assert not crypto.keys_from(crypto.generate_key_entry("k"), "x" * 40).development


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class TestRotation:
    async def test_reencrypts_every_row_without_breaking_the_chain(
            self, db: Database, keys: AuditKeys, store: CheckpointStore,
            settings: Settings) -> None:
        ids = await write_rows(db, 45)
        await seal(db, keys=keys, store=store)
        before = {row_id: await _data(db, row_id) for row_id in ids[:3]}

        new = crypto.keys_from(
            f"{crypto.generate_key_entry('k2')},k1:{_b64(keys.ring.keys[0][1])}",
            keys.hmac_key.decode())
        rotating = db.with_runtime(build_runtime(settings, keys=new))  # the new ring deployed
        assert await rows_to_rotate(rotating, new) == 45
        seen: list[int] = []
        result = await rotate(rotating, keys=new, batch=10, progress=seen.append)
        assert (result.rotated, result.key_id, seen) == (45, "k2", [10, 10, 10, 10, 5])
        assert await rows_to_rotate(rotating, new) == 0

        only_new = crypto.keys_from(f"k2:{_b64(new.ring.keys[0][1])}", keys.hmac_key.decode())
        retired = db.with_runtime(build_runtime(settings, keys=only_new))  # k1 gone
        report = await verify(retired, keys=only_new, store=store)
        assert report.ok, report.problem
        assert {row_id: await _data(retired, row_id) for row_id in ids[:3]} == before
        rotated = await _audited(retired, AuditEvent.AUDIT_KEY_ROTATED)
        assert rotated == [{"key_id": "k2", "rows": 45}]


async def _data(db: Database, row_id: uuid.UUID) -> dict[str, object]:
    async with db.sessionmaker() as session:
        row = await session.get(AuditLog, row_id)
        assert row is not None
        return row.data


async def _audited(db: Database, event: AuditEvent) -> list[dict[str, object]]:
    async with db.sessionmaker() as session:
        rows = (await session.scalars(select(AuditLog).where(AuditLog.event_type == event.value))).all()
        return [row.data for row in rows]
