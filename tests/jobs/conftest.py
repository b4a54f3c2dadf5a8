"""Fixtures for job tests: the alert fixtures (real SMTP, alert settings, their runtime) are shared."""

from tests.alerts.conftest import alert_settings, mailbox, runtime, smtp_server

__all__ = ["alert_settings", "mailbox", "runtime", "smtp_server"]
