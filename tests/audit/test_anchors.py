"""Seals the embedded runner makes on its own, the checkpoint chain, and anchors off the host."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import delete, select

from billwatch.audit.anchors import HttpAnchor, MailAnchor, load_anchor, parse_anchor
from billwatch.audit.checkpoints import Checkpoint, CheckpointStore
from billwatch.audit.crypto import AuditKeys
from billwatch.audit.models import AuditCheckpoint, AuditLog, AuditSeal
from billwatch.audit.sealing import seal
from billwatch.audit.verify import AnchorCopy, verify
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.jobs.embedded import EmbeddedRunner
from tests.alerts.mailbox import Mailbox
from tests.audit.anchor_server import AnchorServer
from tests.audit.conftest import write_rows
from tests.audit.tampering import tampering
from tests.audit.test_cli import ring_spec, run

T0 = datetime(2026, 12, 1, 10, 0, 7, tzinfo=UTC)


@pytest.fixture
def sealing_settings(settings: Settings, keys: AuditKeys, tmp_path: Path) -> Settings:
    """The test settings with this test's audit keys, its own store and the embedded schedule."""
    return settings.model_copy(update={
        "audit_encryption_keys": SecretStr(ring_spec(keys)),
        "audit_hmac_key": SecretStr(keys.hmac_key.decode()),
        "audit_checkpoint_dir": tmp_path / "checkpoints",
        "embedded_scheduler": True, "enable_billing_alerts": False})


@pytest.fixture
def anchor_server() -> Iterator[AnchorServer]:
    server = AnchorServer(token="anchor-test-token")
    server.start()
    yield server
    server.stop()


async def delete_tail_and_newest_checkpoint(db: Database, store: CheckpointStore,
                                            keep_seq: int) -> None:
    """What an operator of the database host can do: rows, seals, checkpoint copy and file."""
    async with tampering(db) as conn:
        doomed = select(AuditSeal.audit_log_id).where(AuditSeal.seq > keep_seq)
        await conn.execute(delete(AuditLog).where(AuditLog.id.in_(doomed)))
        await conn.execute(delete(AuditSeal).where(AuditSeal.seq > keep_seq))
        await conn.execute(delete(AuditCheckpoint).where(AuditCheckpoint.last_seq > keep_seq))
    for stored in store.read_all():
        assert stored.checkpoint is not None
        if stored.checkpoint.last_seq > keep_seq:
            os.chmod(stored.path, 0o644)
            stored.path.unlink()


class TestEmbeddedSealer:
    async def test_seals_once_per_interval_and_not_when_idle(
            self, db: Database, sealing_settings: Settings) -> None:
        store = CheckpointStore(sealing_settings.audit_checkpoint_dir)
        runner = EmbeddedRunner(db, sealing_settings)
        await write_rows(db, 4)
        await runner.tick(now=T0)
        report = await verify(db, keys=db.required_runtime().keys, store=store)
        assert report.ok, report.problem
        assert (report.sealed_rows, report.unsealed_rows, report.checkpoints) == (4, 0, 1)

        await write_rows(db, 2)
        await runner.tick(now=T0 + timedelta(minutes=1))  # same 5-minute slot: nothing
        assert (await verify(db, keys=db.required_runtime().keys, store=store)).unsealed_rows == 2
        await runner.tick(now=T0 + timedelta(minutes=5))
        report = await verify(db, keys=db.required_runtime().keys, store=store)
        assert (report.sealed_rows, report.unsealed_rows, report.checkpoints) == (6, 0, 2)
        await runner.tick(now=T0 + timedelta(minutes=10))  # idle slot: no new checkpoint
        assert len(store.read_all()) == 2

    async def test_a_row_deleted_after_the_sealer_ran_is_detected(
            self, db: Database, sealing_settings: Settings) -> None:
        """The refund row was unsealed when written; the schedule sealed it; deleting it shows."""
        ids = await write_rows(db, 3)  # ids[0] is a billing.refund.issued row
        await EmbeddedRunner(db, sealing_settings).tick(now=T0)
        async with tampering(db) as conn:
            await conn.execute(delete(AuditLog).where(AuditLog.id == ids[0]))
        report = await verify(db, keys=db.required_runtime().keys,
                              store=CheckpointStore(sealing_settings.audit_checkpoint_dir))
        assert not report.ok
        assert report.problem is not None and report.problem.seq == 1
        assert str(ids[0]) in report.problem.message

    async def test_the_scheduled_seal_goes_to_the_configured_anchor(
            self, db: Database, sealing_settings: Settings, anchor_server: AnchorServer) -> None:
        configured = sealing_settings.model_copy(update={
            "audit_anchor_url": anchor_server.url,
            "audit_anchor_token": SecretStr("anchor-test-token")})
        await write_rows(db, 3)
        await EmbeddedRunner(db, configured).tick(now=T0)
        [received] = anchor_server.received
        assert received["last_seq"] == 3 and received["version"] == 2
        assert Checkpoint.from_fields(received).valid(db.required_runtime().keys.hmac_key)

    async def test_without_the_schedule_nothing_is_sealed(
            self, db: Database, sealing_settings: Settings) -> None:
        await write_rows(db, 2)
        await EmbeddedRunner(db, sealing_settings, schedule=False).tick(now=T0)
        async with db.sessionmaker() as session:
            assert await session.scalar(select(AuditSeal.seq)) is None


class TestCheckpointChain:
    async def test_each_checkpoint_signs_the_previous_one(
            self, db: Database, keys: AuditKeys, store: CheckpointStore) -> None:
        await write_rows(db, 2)
        first = (await seal(db, keys=keys, store=store)).checkpoint
        await write_rows(db, 2)
        second = (await seal(db, keys=keys, store=store)).checkpoint
        assert first.prev_hash == "" and second.prev_hash == first.digest()
        assert second.valid(keys.hmac_key)
        assert not Checkpoint(**{**second.payload(), "signature": second.signature,
                                 "prev_hash": "00" * 32}).valid(keys.hmac_key)
        assert (await verify(db, keys=keys, store=store)).ok

    async def test_a_checkpoint_deleted_from_the_middle_is_detected(
            self, db: Database, keys: AuditKeys, store: CheckpointStore) -> None:
        paths = []
        for _ in range(3):
            await write_rows(db, 2)
            paths.append((await seal(db, keys=keys, store=store)).checkpoint)
        middle = paths[1]
        async with tampering(db) as conn:
            await conn.execute(delete(AuditCheckpoint).where(
                AuditCheckpoint.file_name == middle.file_name))
        (store.directory / middle.file_name).chmod(0o644)
        (store.directory / middle.file_name).unlink()
        report = await verify(db, keys=keys, store=store)
        assert report.problem is not None and "checkpoint chain is broken" in report.problem.message


class TestAnchors:
    async def test_tail_and_newest_checkpoint_deleted_pass_without_an_anchor_only(
            self, db: Database, keys: AuditKeys, store: CheckpointStore, tmp_path: Path) -> None:
        await write_rows(db, 5)
        await seal(db, keys=keys, store=store)
        await write_rows(db, 3)
        newest = (await seal(db, keys=keys, store=store)).checkpoint
        anchor_file = tmp_path / "anchor.json"
        anchor_file.write_text(newest.to_json())

        await delete_tail_and_newest_checkpoint(db, store, keep_seq=5)
        assert (await verify(db, keys=keys, store=store)).ok  # why an anchor is needed
        copies = [AnchorCopy(str(anchor_file), await load_anchor(str(anchor_file)))]
        report = await verify(db, keys=keys, store=store, anchors=copies)
        assert report.problem is not None and report.problem.kind == "truncated"
        assert "seq 8" in report.problem.message and str(anchor_file) in report.problem.message

    async def test_the_http_anchor_receives_each_checkpoint_and_catches_the_deletion(
            self, db: Database, keys: AuditKeys, store: CheckpointStore,
            anchor_server: AnchorServer) -> None:
        anchor = HttpAnchor(anchor_server.url, token="anchor-test-token")
        await write_rows(db, 4)
        await seal(db, keys=keys, store=store, anchors=[anchor])
        await write_rows(db, 4)
        await seal(db, keys=keys, store=store, anchors=[anchor])
        assert [c["last_seq"] for c in anchor_server.received] == [4, 8]

        held = await load_anchor(anchor_server.url)
        assert (await verify(db, keys=keys, store=store,
                             anchors=[AnchorCopy(anchor_server.url, held)])).ok
        await delete_tail_and_newest_checkpoint(db, store, keep_seq=4)
        report = await verify(db, keys=keys, store=store,
                              anchors=[AnchorCopy(anchor_server.url, held)])
        assert report.problem is not None and report.problem.kind == "truncated"

    async def test_an_unreachable_anchor_never_undoes_the_seal(
            self, db: Database, keys: AuditKeys, store: CheckpointStore,
            anchor_server: AnchorServer) -> None:
        await write_rows(db, 2)
        refused = HttpAnchor(anchor_server.url, token="wrong-token")
        result = await seal(db, keys=keys, store=store, anchors=[refused])
        assert result.sealed == 2 and anchor_server.received == []
        assert (await verify(db, keys=keys, store=store)).ok

    async def test_the_mail_anchor_is_a_saved_anchor_file(
            self, db: Database, keys: AuditKeys, store: CheckpointStore, settings: Settings,
            tmp_path: Path) -> None:
        box = Mailbox()
        box.start()
        try:
            mail_settings = settings.model_copy(update={
                "smtp_port": box.port, "billing_alert_emails": ["audit@example.test"],
                "audit_anchor_mail": True})
            await write_rows(db, 3)
            sent = (await seal(db, keys=keys, store=store,
                               anchors=[MailAnchor(mail_settings)])).checkpoint
            [mail] = await box.wait_for(1)
        finally:
            box.stop()
        assert mail.rcpt_tos == ["audit@example.test"]
        saved = tmp_path / "checkpoint.eml"
        saved.write_bytes(bytes(mail.message))
        assert await load_anchor(str(saved)) == [sent]

    async def test_a_forged_anchor_checkpoint_is_refused(
            self, db: Database, keys: AuditKeys, store: CheckpointStore) -> None:
        await write_rows(db, 2)
        real = (await seal(db, keys=keys, store=store)).checkpoint
        forged = Checkpoint(**{**real.payload(), "signature": "ab" * 32, "last_seq": 99})
        report = await verify(db, keys=keys, store=store,
                              anchors=[AnchorCopy("forged.json", parse_anchor(forged.to_json()))])
        assert report.problem is not None and "bad signature" in report.problem.message


class TestCommandLine:
    async def test_verify_with_an_anchor_exits_1_and_grants_name_the_sealer(
            self, db: Database, keys: AuditKeys, database_url: str, tmp_path: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BILLWATCH_")}
        env.update({"BILLWATCH_DATABASE_URL": database_url,
                    "BILLWATCH_AUDIT_ENCRYPTION_KEYS": ring_spec(keys),
                    "BILLWATCH_AUDIT_HMAC_KEY": keys.hmac_key.decode(),
                    "BILLWATCH_AUDIT_CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
                    "BILLWATCH_ENV": "development",
                    "BILLWATCH_LOG_LEVEL": "WARNING", "COLUMNS": "200"})
        store = CheckpointStore(tmp_path / "checkpoints")
        await write_rows(db, 3)
        await seal(db, keys=keys, store=store)
        await write_rows(db, 2)
        newest = (await seal(db, keys=keys, store=store)).checkpoint
        (tmp_path / "anchor.json").write_text(newest.to_json())
        await delete_tail_and_newest_checkpoint(db, store, keep_seq=3)

        code, output = await run(env, "verify")
        assert code == 0, output
        code, output = await run(env, "verify", "--anchor", str(tmp_path / "anchor.json"))
        assert code == 1 and "BROKEN (truncated)" in output, output
        code, output = await run(env, "verify", "--anchor", str(tmp_path / "missing.json"))
        assert code == 1 and "NOT verified" in output, output
        code, output = await run(env, "grants", "--sealer-role", "audit_sealer")
        assert code == 0 and "GRANT INSERT ON public.audit_seals, public.audit_checkpoints TO " \
            "audit_sealer;" in output
        assert "REVOKE INSERT ON public.audit_seals, public.audit_checkpoints, " \
            "public.audit_archives FROM billwatch_app;" in output
