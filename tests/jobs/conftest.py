"""Fixtures for job tests: the alert fixtures (real SMTP, alert settings) are shared."""

from tests.alerts.conftest import alert_settings, mailbox, smtp_server

__all__ = ["alert_settings", "mailbox", "smtp_server"]
