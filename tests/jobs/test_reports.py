"""Daily reports only for days the installation existed; a day without data says so."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from billwatch.alerts.delivery import deliver_due
from billwatch.alerts.models import AlertKind
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.jobs import service
from billwatch.jobs.models import Installation
from tests.alerts.helpers import alerts
from tests.alerts.mailbox import Mailbox
from tests.jobs.reports import installed

NOW = datetime(2026, 11, 20, 0, 5, tzinfo=UTC)


class TestOnlyDaysThatExisted:
    async def test_a_fresh_installation_reports_no_day_before_it_existed(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        await installed(db, NOW - timedelta(minutes=10))  # set up at 23:55 the evening before
        ran = await service.run_due_schedule(db, alert_settings, now=NOW)
        assert ran["daily"] == {"2026-11-19": True}  # the day it was set up, not the two before
        await deliver_due(db, alert_settings, now=NOW)
        [mail] = mailbox.messages()
        assert "2026-11-19" in mail.subject
        assert not any(day in m.subject for m in mailbox.messages()
                       for day in ("2026-11-17", "2026-11-18"))

    async def test_set_up_today_means_no_report_at_all(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        await installed(db, NOW)
        assert (await service.run_due_schedule(db, alert_settings, now=NOW))["daily"] == {}
        await deliver_due(db, alert_settings, now=NOW)
        assert mailbox.messages() == [] and await alerts(db, kind=AlertKind.DAILY_REPORT) == []

    async def test_a_database_without_the_record_starts_at_its_first_run(
            self, db: Database, alert_settings: Settings) -> None:
        async with db.unit_of_work() as session:
            for row in (await session.scalars(select(Installation))).all():
                await session.delete(row)
        assert await service.installation_first_day(db, now=NOW) == NOW.date()
        later = NOW + timedelta(days=5)
        assert await service.installation_first_day(db, now=later) == NOW.date()  # kept

    async def test_older_billing_data_counts_as_existing(
            self, db: Database, alert_settings: Settings) -> None:
        from tests.jobs.month import seed_month

        await installed(db, NOW)
        await seed_month(db)  # a history from May and June 2026
        assert await service.installation_first_day(db, now=NOW) < NOW.date() - timedelta(days=100)


class TestEmptyDays:
    async def test_a_day_without_data_says_so(self, db: Database, alert_settings: Settings,
                                              mailbox: Mailbox) -> None:
        await installed(db, NOW - timedelta(days=3))
        await service.run_due_schedule(db, alert_settings, now=NOW)
        await deliver_due(db, alert_settings, now=NOW)
        mails = mailbox.messages()
        assert len(mails) == 3
        for mail in mails:
            assert "no billing data" in mail.subject and "MRR" not in mail.subject
            for body in (mail.text, mail.html):
                assert "No billing data on" in body and "0.00 USD" not in body
