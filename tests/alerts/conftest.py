"""Fixtures for alert tests: a real SMTP server and settings that mail to it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from billwatch.bootstrap import build_runtime
from billwatch.config import Settings
from billwatch.runtime import Runtime
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
def alert_settings(database_url: str, mailbox: Mailbox) -> Settings:
    return alert_test_settings(database_url, mailbox.port)


@pytest.fixture
def runtime(settings: Settings, request: pytest.FixtureRequest) -> Runtime:
    """A test that asks for ``alert_settings`` gets a database whose runtime has them (alerts on,
    mailing to the test's SMTP server), as a process started with them would."""
    if "alert_settings" in request.fixturenames:
        return build_runtime(request.getfixturevalue("alert_settings"))
    return build_runtime(settings)
