"""Incidents decide what mails: at once, after a group wait, summaries at the group interval."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from billwatch.alerts.delivery import deliver_due
from billwatch.alerts.models import (
    AlertIncident,
    AlertKind,
    AlertStatus,
    IncidentStatus,
)
from billwatch.alerts.raising import raise_alert
from billwatch.config import Settings
from billwatch.db import Database, utcnow
from tests.alerts.helpers import alert_test_settings, statuses
from tests.alerts.mailbox import Mailbox


async def occurrences(db: Database, count: int, *, at: datetime,
                      kind: AlertKind = AlertKind.WEBHOOK_FAILURE,
                      key: str = "webhook_failure:invoice.paid",
                      spacing: timedelta = timedelta(seconds=1)) -> None:
    """``count`` occurrences of ``key`` from ``at`` on, one per ``spacing`` (a controlled clock)."""
    async with db.unit_of_work() as session:
        for n in range(count):
            alert = raise_alert(session, kind, dedup_key=key, subject=f"{key} failed",
                                payload={"n": n})
            assert alert is not None
            alert.created_at = at + n * spacing


async def incidents(db: Database) -> list[AlertIncident]:
    async with db.sessionmaker() as session:
        return list((await session.scalars(
            select(AlertIncident).order_by(AlertIncident.first_seen_at))).all())


T0 = utcnow().replace(microsecond=0) - timedelta(hours=2)


class TestNewIncidentsMailAtOnce:
    async def test_two_incidents_of_one_key_30_minutes_apart_both_mail_at_once(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        key = "audit_write_failure"
        await occurrences(db, 1, at=T0, kind=AlertKind.AUDIT_WRITE_FAILURE, key=key)
        await deliver_due(db, alert_settings, now=T0)
        assert len(mailbox.messages()) == 1

        later = T0 + timedelta(minutes=30)  # well inside the one-hour cooldown of old
        await occurrences(db, 3, at=later, kind=AlertKind.AUDIT_WRITE_FAILURE, key=key)
        await deliver_due(db, alert_settings, now=later)
        mails = mailbox.messages()
        assert len(mails) == 2, "the second incident must not wait for the first one's window"
        assert "more" not in mails[1].subject
        first, second = await incidents(db)
        assert first.status is IncidentStatus.RESOLVED and first.occurrences == 1
        assert first.resolved_at == T0 + timedelta(seconds=alert_settings.alert_resolve_seconds)
        assert second.status is IncidentStatus.FIRING and second.occurrences == 3
        assert second.mails_sent == 1 and second.first_seen_at == later

    async def test_a_non_critical_incident_waits_for_its_group_wait(
            self, db: Database, database_url: str, mailbox: Mailbox) -> None:
        settings = alert_test_settings(database_url, mailbox.port, alert_group_wait_seconds=30)
        await occurrences(db, 3, at=T0)
        await deliver_due(db, settings, now=T0 + timedelta(seconds=5))
        assert mailbox.messages() == []
        await deliver_due(db, settings, now=T0 + timedelta(seconds=30))
        [mail] = mailbox.messages()
        assert "(+2 more)" in mail.subject  # the burst left in one mail
        assert await statuses(db) == {AlertStatus.SENT: 1, AlertStatus.SUPPRESSED: 2}


class TestSummaries:
    async def test_a_hundred_occurrences_give_one_mail_and_summaries_at_the_group_interval(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        interval = timedelta(seconds=alert_settings.alert_group_interval_error_seconds)
        assert interval == timedelta(minutes=5)  # the default for errors
        await occurrences(db, 50, at=T0)
        first_mail = T0 + timedelta(seconds=50)
        await deliver_due(db, alert_settings, now=first_mail)
        assert len(mailbox.messages()) == 1 and "more" not in mailbox.messages()[0].subject

        await occurrences(db, 30, at=T0 + timedelta(minutes=2))
        await deliver_due(db, alert_settings, now=T0 + timedelta(minutes=3))
        await deliver_due(db, alert_settings, now=first_mail + interval - timedelta(seconds=5))
        assert len(mailbox.messages()) == 1  # not before the group interval

        second_mail = first_mail + interval
        await deliver_due(db, alert_settings, now=second_mail)
        mails = mailbox.messages()
        assert len(mails) == 2 and "(+78 more)" in mails[1].subject  # 49 + 30 in one summary
        assert "and 78 more since" in mails[1].text and "and 78 more since" in mails[1].html

        await occurrences(db, 20, at=T0 + timedelta(minutes=6))
        await deliver_due(db, alert_settings, now=T0 + timedelta(minutes=8))
        assert len(mailbox.messages()) == 2
        await deliver_due(db, alert_settings, now=second_mail + interval)
        mails = mailbox.messages()
        assert len(mails) == 3 and "(+19 more)" in mails[2].subject
        [incident] = await incidents(db)
        assert (incident.occurrences, incident.mailed_occurrences, incident.mails_sent) == (
            100, 100, 3)
        await deliver_due(db, alert_settings, now=second_mail + 10 * interval)
        assert len(mailbox.messages()) == 3  # every occurrence was reported exactly once

    async def test_a_count_left_by_a_failed_mail_is_mailed_without_a_new_occurrence(
            self, db: Database, database_url: str, mailbox: Mailbox) -> None:
        settings = alert_test_settings(database_url, mailbox.port, alert_max_attempts=2,
                                       alert_retry_base_seconds=10, alert_retry_max_seconds=60)
        mailbox.stop()
        await occurrences(db, 1, at=T0)
        await deliver_due(db, settings, now=T0)  # the carrier's first attempt fails
        await occurrences(db, 3, at=T0 + timedelta(seconds=1))
        await deliver_due(db, settings, now=T0 + timedelta(seconds=2))  # counted, not mailed
        assert await statuses(db) == {AlertStatus.PENDING: 1, AlertStatus.SUPPRESSED: 3}
        await deliver_due(db, settings, now=T0 + timedelta(seconds=10))  # and it gives up
        assert await statuses(db) == {AlertStatus.FAILED: 1, AlertStatus.SUPPRESSED: 3}
        mailbox.start()
        await deliver_due(db, settings, now=T0 + timedelta(seconds=11))
        [mail] = mailbox.messages()
        assert "(+2 more)" in mail.subject  # the newest of the three carried the other two
        assert await statuses(db) == {AlertStatus.FAILED: 1, AlertStatus.SENT: 1,
                                      AlertStatus.SUPPRESSED: 2}

    async def test_identical_repeats_of_one_fact_wait_for_the_repeat_interval(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        key = "payment_final_failure:in_repeat"
        await occurrences(db, 1, at=T0, kind=AlertKind.PAYMENT_FINAL_FAILURE, key=key)
        await deliver_due(db, alert_settings, now=T0)
        await occurrences(db, 2, at=T0 + timedelta(minutes=1), kind=AlertKind.PAYMENT_FINAL_FAILURE,
                          key=key, spacing=timedelta(minutes=4))
        interval = timedelta(seconds=alert_settings.alert_group_interval_error_seconds)
        await deliver_due(db, alert_settings, now=T0 + 2 * interval)
        assert len(mailbox.messages()) == 1  # a repeat is not news at the group interval
        [incident] = await incidents(db)
        assert incident.occurrences == 3 and incident.status is IncidentStatus.FIRING


class TestAcknowledgedIncidents:
    async def test_an_acknowledged_incident_mails_no_summary_and_the_next_one_mails(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        await occurrences(db, 5, at=T0)
        await deliver_due(db, alert_settings, now=T0 + timedelta(seconds=5))
        [incident] = await incidents(db)
        async with db.unit_of_work() as session:
            found = await session.get(AlertIncident, incident.id)
            assert found is not None
            found.acknowledged_at = T0 + timedelta(seconds=6)
        await deliver_due(db, alert_settings, now=T0 + timedelta(minutes=6))
        assert len(mailbox.messages()) == 1  # the operator is on it
        after_quiet = T0 + timedelta(minutes=30)
        await occurrences(db, 1, at=after_quiet)
        await deliver_due(db, alert_settings, now=after_quiet)
        assert len(mailbox.messages()) == 2
        assert len(await incidents(db)) == 2
