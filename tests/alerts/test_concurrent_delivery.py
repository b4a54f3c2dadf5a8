"""Many deliverers of one key at once: every occurrence settles, no deadlock loses one."""

from __future__ import annotations

import asyncio

from billwatch.alerts.delivery import deliver_one
from billwatch.alerts.models import AlertKind, AlertStatus
from billwatch.config import Settings
from billwatch.db import Database
from tests.alerts.helpers import alerts, statuses, webhook_failures
from tests.alerts.mailbox import Mailbox


class TestConcurrentDeliverers:
    async def test_a_burst_of_one_key_settles_with_one_mail(
            self, db: Database, alert_settings: Settings, mailbox: Mailbox) -> None:
        await webhook_failures(db, 60)
        ids = [alert.id for alert in await alerts(db)]
        outcomes = await asyncio.gather(*(deliver_one(db, alert_settings, alert_id)
                                          for alert_id in ids), return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert errors == []
        assert await statuses(db, kind=AlertKind.WEBHOOK_FAILURE) == {
            AlertStatus.SENT: 1, AlertStatus.SUPPRESSED: 59}
        assert len(mailbox.messages()) == 1
