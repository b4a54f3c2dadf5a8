"""Alert e-mail: Jinja2 templates (HTML autoescaped, plain-text alternative) sent with aiosmtplib.

Every value that reaches a template or a header passes through the redactor first, so a card
number or a secret that slipped into a payload never leaves the process; headers also lose
line breaks, so nothing can inject a header.
"""

from __future__ import annotations

import re
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache
from typing import Any

import aiosmtplib
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from billwatch.alerts.models import Alert, AlertKind
from billwatch.alerts.raising import spec_for
from billwatch.audit.redaction import redact, redact_text
from billwatch.config import Settings
from billwatch.db import utcnow

_HEADER_UNSAFE = re.compile(r"[\r\n\t]+")


@lru_cache(maxsize=1)
def environment() -> Environment:
    return Environment(
        loader=PackageLoader("billwatch.alerts", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",),
                                     disabled_extensions=("txt.j2",), default=True),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)


def header_text(value: str) -> str:
    return _HEADER_UNSAFE.sub(" ", redact_text(value)).strip()


def subject_line(alert: Alert) -> str:
    spec = spec_for(alert.kind)
    more = f" (+{alert.suppressed_count} more)" if alert.suppressed_count else ""
    return header_text(f"[billwatch] {alert.severity.value.upper()}: {spec.title} - "
                       f"{alert.subject}{more}")


def _iso(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def _details(payload: dict[str, Any]) -> list[tuple[str, str]]:
    return [(name.replace("_", " "), str(value)) for name, value in payload.items()
            if value is not None and name != "report"]


def context(alert: Alert, settings: Settings) -> dict[str, Any]:
    """Everything a template may show, redacted (again) on the way in."""
    spec = spec_for(alert.kind)
    payload: dict[str, Any] = redact(dict(alert.payload or {}))  # key-aware: drops CVCs first
    values: dict[str, Any] = {
        "subject": subject_line(alert), "title": spec.title, "summary": alert.subject,
        "severity": alert.severity.value, "kind": alert.kind, "dedup_key": alert.dedup_key,
        "alert_id": str(alert.id), "raised_at": _iso(alert.created_at),
        "suppressed_count": alert.suppressed_count,
        "suppressed_since": _iso(alert.suppressed_since),
        "cooldown": _duration(settings.alert_cooldown_seconds),
        "details": _details(payload),
        "report": payload.get("report", {}),
    }
    redacted: dict[str, Any] = redact(values)
    redacted["details"] = [tuple(pair) for pair in redacted["details"]]
    return redacted


def render(alert: Alert, settings: Settings) -> tuple[str, str]:
    """(plain text, HTML) bodies for ``alert``."""
    name = "daily_report" if alert.kind == AlertKind.DAILY_REPORT else "alert"
    values = context(alert, settings)
    env = environment()
    return (env.get_template(f"{name}.txt.j2").render(values),
            env.get_template(f"{name}.html.j2").render(values))


def build_message(alert: Alert, settings: Settings) -> EmailMessage:
    text, html = render(alert, settings)
    message = EmailMessage()
    message["Subject"] = subject_line(alert)
    message["From"] = header_text(settings.smtp_from)
    message["To"] = ", ".join(header_text(address) for address in settings.billing_alert_emails)
    message["Date"] = format_datetime(utcnow())
    # a stable id: if a crash makes us send twice, receivers can tell it is the same alert
    message["Message-ID"] = f"<alert-{alert.id}@billwatch>"
    message["X-Billwatch-Severity"] = alert.severity.value
    message["X-Billwatch-Alert-Kind"] = header_text(alert.kind)
    message["X-Billwatch-Alert-Id"] = str(alert.id)
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


async def send(settings: Settings, message: EmailMessage) -> None:
    """Hand ``message`` to the SMTP server; raises on any failure (the caller retries)."""
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    await aiosmtplib.send(
        message, hostname=settings.smtp_host, port=settings.smtp_port,
        start_tls=settings.smtp_starttls, username=settings.smtp_user, password=password,
        timeout=settings.smtp_timeout_seconds)
