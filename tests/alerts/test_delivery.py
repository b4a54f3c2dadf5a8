"""Delivery: cooldown dedup, SMTP outages, restarts, and what the mail may contain."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy.exc import DBAPIError

from billwatch.accounts.actor import SystemActor
from billwatch.alerts import mail
from billwatch.alerts.delivery import backoff_seconds, deliver_due
from billwatch.alerts.models import Alert, AlertKind, AlertStatus, Severity
from billwatch.alerts.raising import raise_alert
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from billwatch.jobs.embedded import EmbeddedRunner
from tests.alerts.helpers import (
    PAN,
    RECIPIENTS,
    alerts,
    assert_no_card,
    statuses,
    webhook_failures,
)
from tests.alerts.mailbox import Mailbox, wait_until, wait_until_async
from tests.audit.conftest import audit_rows_refused


class TestSmtpOutage:
    async def test_smtp_down_then_up_sends_once_and_loses_nothing(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        mailbox.stop()
        await webhook_failures(db, 1)  # the operation commits although SMTP is down
        await deliver_due(db, alert_settings)
        [alert] = await alerts(db)
        assert alert.status is AlertStatus.PENDING and alert.attempts == 1
        assert alert.copies == 0  # refused before anything was sent: not a copy
        assert alert.last_error and alert.next_attempt_at is not None
        await deliver_due(db, alert_settings, now=alert.next_attempt_at)
        [alert] = await alerts(db)
        assert alert.attempts == 2 and alert.status is AlertStatus.PENDING

        mailbox.start()
        await deliver_due(db, alert_settings, now=alert.next_attempt_at)
        [alert] = await alerts(db)
        assert alert.status is AlertStatus.SENT and alert.attempts == 3 and alert.last_error is None
        assert alert.copies == 1
        await deliver_due(db, alert_settings, now=utcnow() + timedelta(hours=1))
        assert len(mailbox.messages()) == 1

    async def test_backoff_doubles_up_to_its_cap(self, alert_settings: Settings) -> None:
        delays = [backoff_seconds(alert_settings, attempt) for attempt in range(1, 6)]
        assert delays == [0.2, 0.4, 0.8, 1.0, 1.0]

    async def test_gives_up_after_max_attempts(self, db: Database, database_url: str,
                                               mailbox: Mailbox) -> None:
        from tests.alerts.helpers import alert_test_settings

        settings = alert_test_settings(database_url, mailbox.port, alert_max_attempts=2)
        mailbox.stop()
        async with db.unit_of_work() as session:
            raise_alert(session, AlertKind.AUDIT_WRITE_FAILURE, dedup_key="audit_write_failure",
                        subject="audit row not written", payload={})
        now = utcnow()
        for _ in range(3):
            await deliver_due(db, settings, now=now)
            now += timedelta(seconds=5)
        [alert] = await alerts(db)
        assert alert.status is AlertStatus.FAILED and alert.attempts == 2


class TestRestart:
    async def test_pending_alerts_from_before_a_restart_are_delivered(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        await webhook_failures(db, 2)  # committed while no deliverer runs (the process is down)
        runner = EmbeddedRunner(db, alert_settings)
        await runner.start()
        try:
            await mailbox.wait_for(1)
            await wait_until_async(lambda: _no_pending(db), what="no pending alerts")
        finally:
            await runner.stop()
        assert await statuses(db) == {AlertStatus.SENT: 1, AlertStatus.SUPPRESSED: 1}

    async def test_the_runner_delivers_after_commit(self, db: Database, alert_settings: Settings,
                                                    mailbox: Mailbox) -> None:
        runner = EmbeddedRunner(db, alert_settings.model_copy(update={"alert_poll_seconds": 60}))
        await runner.start()
        try:
            await wait_until(lambda: runner.ticks >= 1, what="the first tick")
            await webhook_failures(db, 1)  # wakes the runner; the poll interval is a minute
            [received] = await mailbox.wait_for(1)
        finally:
            await runner.stop()
        assert "Webhook processing failed" in received.subject


async def _no_pending(db: Database) -> bool:
    return not await alerts(db, status=AlertStatus.PENDING)


class TestMessage:
    def alert(self, payload: dict[str, object]) -> Alert:
        return Alert(id=uuid.uuid4(), created_at=utcnow(), kind=AlertKind.WEBHOOK_FAILURE.value,
                     severity=Severity.CRITICAL, dedup_key="webhook_failure:x",
                     subject=f"failed for {PAN}\r\nBcc: attacker@example.test", payload=payload,
                     status=AlertStatus.PENDING, attempts=0, suppressed_count=0)

    def test_values_are_redacted_even_if_the_payload_was_not(self, alert_settings: Settings) -> None:
        message = mail.build_message(self.alert({
            "card": PAN, "note": "key sk_live_abcdefghijklmnop", "cvc": "123"}), alert_settings)
        text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
        html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
        for body in (text, html, str(message["Subject"])):
            assert_no_card(body)
            assert "sk_live_abcdefghijklmnop" not in body
        assert "cvc" not in text

    def test_headers_cannot_be_injected(self, alert_settings: Settings) -> None:
        message = mail.build_message(self.alert({}), alert_settings)
        assert message["Bcc"] is None and "\n" not in str(message["Subject"])
        assert message["To"] == ", ".join(RECIPIENTS)
        assert message["X-Billwatch-Severity"] == "critical"
        assert str(message["Subject"]).startswith("[billwatch] CRITICAL: ")

    def test_html_is_escaped_and_text_is_not(self, alert_settings: Settings) -> None:
        text, html = mail.render(self.alert({"reason": "<script>alert(1)</script> & co"}),
                                 alert_settings)
        assert "<script>" not in html and "&lt;script&gt;" in html
        assert "<script>alert(1)</script> & co" in text


class TestAuditWriteFailure:
    async def test_a_refused_audit_row_alerts_critical_from_a_fresh_transaction(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        runner = EmbeddedRunner(db, alert_settings)
        await runner.start()
        try:
            async with audit_rows_refused(db):  # the database refuses the audit row
                with pytest.raises(DBAPIError):
                    async with db.unit_of_work() as session:
                        recorder.record(session, AuditEvent.REFUND_ISSUED,
                                        actor=SystemActor("test"))
            [received] = await mailbox.wait_for(1)
        finally:
            await runner.stop()
        assert received.message["X-Billwatch-Severity"] == "critical"
        assert "Audit write failed" in received.subject
        assert "billing.refund.issued" in received.subject
        [alert] = await alerts(db)
        assert alert.kind == AlertKind.AUDIT_WRITE_FAILURE and alert.payload["stage"] == "insert"
