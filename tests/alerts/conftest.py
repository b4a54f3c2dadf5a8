"""Fixtures for alert tests: a real SMTP server and settings that mail to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from billwatch.alerts import raising
from billwatch.config import Settings
from tests.alerts.helpers import alert_test_settings
from tests.alerts.mailbox import Mailbox


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[Mailbox]:
    box = Mailbox()
    box.start()
    yield box
    box.stop()


@pytest.fixture
def mailbox(smtp_server: Mailbox) -> Iterator[Mailbox]:
    smtp_server.start()
    smtp_server.clear()
    yield smtp_server
    smtp_server.start()


@pytest.fixture
def alert_settings(database_url: str, mailbox: Mailbox) -> Iterator[Settings]:
    settings = alert_test_settings(database_url, mailbox.port)
    raising.configure(settings)
    yield settings
    raising._config.settings = None
