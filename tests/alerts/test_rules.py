"""Alert rules over the audit trail: what raises an alert, in which transaction, how often."""

from __future__ import annotations

import pytest

from billwatch.alerts.delivery import deliver_due
from billwatch.alerts.models import AlertKind, AlertStatus, Severity
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.bootstrap import build_runtime
from billwatch.config import Settings
from billwatch.db import Database
from tests.alerts.helpers import (
    RECIPIENTS,
    STRIPE,
    alert_test_settings,
    alerts,
    assert_no_card,
    payment_failed,
    statuses,
    webhook_failures,
)
from tests.alerts.mailbox import Mailbox


class TestFinalPaymentFailure:
    async def test_alerts_once_per_invoice_however_often_stripe_resends(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        await payment_failed(db, invoice="in_once", attempt=1)
        await payment_failed(db, invoice="in_once", attempt=2)
        assert await alerts(db) == []  # below the threshold: no alert
        for _ in range(3):  # the final attempt, and Stripe re-sending it
            await payment_failed(db, invoice="in_once", attempt=3)
        await payment_failed(db, invoice="in_once", attempt=4)
        await deliver_due(db, alert_settings)
        await payment_failed(db, invoice="in_once", attempt=4)  # after the mail went out
        await deliver_due(db, alert_settings)

        assert await statuses(db) == {AlertStatus.SENT: 1, AlertStatus.SUPPRESSED: 4}
        mails = mailbox.messages()
        assert len(mails) == 1
        mail = mails[0]
        assert sorted(mail.rcpt_tos) == sorted(RECIPIENTS)
        assert "in_once" in mail.subject and "ERROR" in mail.subject
        assert mail.message["X-Billwatch-Severity"] == "error"
        assert mail.message["X-Billwatch-Alert-Kind"] == "payment_final_failure"
        for body in (mail.text, mail.html, mail.subject):  # the card in the event stays out
            assert_no_card(body)

    async def test_each_invoice_alerts_once(self, db: Database, alert_settings: Settings,
                                            mailbox: Mailbox) -> None:
        for invoice in ("in_a", "in_b"):
            await payment_failed(db, invoice=invoice, attempt=3)
            await payment_failed(db, invoice=invoice, attempt=3)
        await deliver_due(db, alert_settings)
        assert sorted(a.dedup_key for a in await alerts(db, status=AlertStatus.SENT)) == [
            "payment_final_failure:in_a", "payment_final_failure:in_b"]
        assert len(mailbox.messages()) == 2

    async def test_threshold_comes_from_settings(self, db: Database, database_url: str,
                                                 mailbox: Mailbox) -> None:
        db = db.with_runtime(build_runtime(alert_test_settings(
            database_url, mailbox.port, alert_payment_failure_attempts=5)))
        await payment_failed(db, invoice="in_late", attempt=4)
        assert await alerts(db) == []
        await payment_failed(db, invoice="in_late", attempt=5)
        [alert] = await alerts(db)
        assert alert.kind == AlertKind.PAYMENT_FINAL_FAILURE and alert.severity is Severity.ERROR
        assert alert.payload["attempt_count"] == 5
        assert alert.payload["stripe_invoice_id"] == "in_late"


class TestInTheEventsTransaction:
    async def test_a_rolled_back_event_never_alerts(self, db: Database,
                                                    alert_settings: Settings) -> None:
        with pytest.raises(RuntimeError):
            async with db.unit_of_work() as session:
                recorder.record(session, AuditEvent.WEBHOOK_FAILED, actor=STRIPE,
                                outcome=Outcome.FAILURE, data={"event_type": "invoice.paid"})
                raise RuntimeError("the handler's transaction fails")
        assert await alerts(db) == []

    async def test_the_alert_commits_with_its_audit_row(self, db: Database,
                                                        alert_settings: Settings) -> None:
        await webhook_failures(db, 1, event_type="charge.refunded")
        [alert] = await alerts(db)
        assert alert.kind == "webhook_failure" and alert.status is AlertStatus.PENDING
        assert alert.dedup_key == "webhook_failure:charge.refunded"
        assert_no_card(str(alert.payload))
        assert "4242" in alert.payload["reason"]  # the last four are kept

    async def test_a_successful_webhook_row_does_not_alert(self, db: Database,
                                                           alert_settings: Settings) -> None:
        async with db.unit_of_work() as session:
            recorder.record(session, AuditEvent.WEBHOOK_FAILED, actor=STRIPE,
                            outcome=Outcome.SUCCESS, data={"event_type": "invoice.paid"})
        assert await alerts(db) == []

    async def test_alerts_switched_off_raise_nothing(self, db: Database, database_url: str,
                                                     mailbox: Mailbox) -> None:
        db = db.with_runtime(build_runtime(alert_test_settings(
            database_url, mailbox.port, enable_billing_alerts=False)))
        await webhook_failures(db, 3)
        await payment_failed(db, invoice="in_off", attempt=3)
        assert await alerts(db) == []
