"""At most two copies of any mail, whatever the SMTP server does."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest

from billwatch.alerts.delivery import deliver_due
from billwatch.alerts.models import AlertKind, AlertStatus
from billwatch.alerts.raising import raise_alert
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from tests.alerts.helpers import alert_test_settings, alerts
from tests.alerts.mailbox import Mailbox, wait_until_async

REPLY_AFTER = 8.0  # the server answers DATA after 8 s ...
CLIENT_WAITS = 3.0  # ... the client waits 3 s for it
RESEND_AFTER = 2.0  # the long backoff before the one re-send, compressed for the test


@pytest.fixture
def slow_server() -> Iterator[Mailbox]:
    box = Mailbox(reply_delay=REPLY_AFTER)
    box.start()
    yield box
    box.stop()


class TestSlowServer:
    async def test_a_server_that_answers_data_late_gets_at_most_two_copies(
            self, db: Database, database_url: str, slow_server: Mailbox,
            alert_settings: Settings) -> None:  # alert_settings: alerts are switched on
        settings = alert_test_settings(
            database_url, slow_server.port, smtp_data_timeout_seconds=CLIENT_WAITS,
            alert_uncertain_resend_seconds=RESEND_AFTER, alert_retry_base_seconds=0.2)
        async with db.unit_of_work() as session:
            for n in range(3):
                raise_alert(session, AlertKind.AUDIT_WRITE_FAILURE, dedup_key=f"slow:{n}",
                            subject=f"audit row {n} not written", payload={})
        started = time.monotonic()

        async def delivered_for_good() -> bool:  # keep delivering as a deliverer would
            await deliver_due(db, settings, now=utcnow())
            rows = await alerts(db)
            return all(a.status is AlertStatus.UNCERTAIN and a.next_attempt_at is None
                       for a in rows)

        await wait_until_async(delivered_for_good, within=80, what="every alert given up as uncertain")
        for _ in range(3):  # and nothing more leaves, however often the deliverer runs
            await deliver_due(db, settings, now=utcnow())
        assert time.monotonic() - started < 80

        per_message = Counter(str(m.message["Message-ID"]) for m in slow_server.messages())
        rows = await alerts(db)
        assert set(per_message) == {f"<alert-{a.id}@billwatch>" for a in rows}
        assert all(count == 2 for count in per_message.values()), per_message  # never a third
        for alert in rows:
            assert alert.copies == 2 and alert.uncertain_at is not None
            assert alert.last_error and "no reply" in alert.last_error

    async def test_an_uncertain_mail_that_is_answered_on_its_resend_is_sent(
            self, db: Database, database_url: str, slow_server: Mailbox,
            alert_settings: Settings) -> None:  # alert_settings: alerts are switched on
        settings = alert_test_settings(
            database_url, slow_server.port, smtp_data_timeout_seconds=CLIENT_WAITS,
            alert_uncertain_resend_seconds=RESEND_AFTER)
        async with db.unit_of_work() as session:
            raise_alert(session, AlertKind.AUDIT_WRITE_FAILURE, dedup_key="slow:once",
                        subject="audit row not written", payload={})
        first = utcnow()
        await deliver_due(db, settings, now=first)
        [alert] = await alerts(db)
        assert alert.status is AlertStatus.UNCERTAIN and alert.copies == 1
        assert alert.next_attempt_at is not None
        await deliver_due(db, settings, now=first)  # not before the long backoff
        assert len(slow_server.messages()) == 1

        slow_server.reply_delay = 0  # the server is healthy again
        await deliver_due(db, settings, now=alert.next_attempt_at)
        [alert] = await alerts(db)
        assert alert.status is AlertStatus.SENT and alert.copies == 2
        messages = slow_server.messages()
        assert len(messages) == 2 and len({str(m.message["Message-ID"]) for m in messages}) == 1


class TestCrashes:
    async def test_a_deliverer_that_died_with_two_copies_out_leaves_the_alert_uncertain(
            self, db: Database, database_url: str, mailbox: Mailbox,
            alert_settings: Settings) -> None:
        settings = alert_test_settings(database_url, mailbox.port)
        async with db.unit_of_work() as session:
            alert = raise_alert(session, AlertKind.AUDIT_WRITE_FAILURE, dedup_key="crashed",
                                subject="audit row not written", payload={})
            assert alert is not None
            alert.copies, alert.attempts = 2, 2  # two sends began; neither was recorded
            alert.claimed_until = utcnow() - timedelta(seconds=1)  # and the lease lapsed
        await deliver_due(db, settings)
        [stored] = await alerts(db)
        assert stored.status is AlertStatus.UNCERTAIN and stored.next_attempt_at is None
        assert mailbox.messages() == []  # never a third copy
