"""Alert e-mail: Jinja2 templates (HTML autoescaped, plain-text alternative) sent with aiosmtplib.

Every value that reaches a template or a header passes through the redactor first, so a card
number or a secret that slipped into a payload never leaves the process; headers also lose
line breaks, so nothing can inject a header.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from functools import lru_cache
from typing import Any

import aiosmtplib
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from billwatch.alerts.explain import Owner, explain, format_money, link, runbook_path
from billwatch.alerts.models import Alert, AlertKind
from billwatch.alerts.raising import spec_for
from billwatch.config import Settings
from billwatch.db import utcnow
from billwatch.redaction import redact, redact_text

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


_SHOWN_ELSEWHERE = {"report", "amount_cents", "currency", "owner_type", "owner_id"}


def _details(payload: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [(name.replace("_", " "), str(value)) for name, value in payload.items()
            if value is not None and name not in _SHOWN_ELSEWHERE]
    if payload.get("amount_cents") is not None:
        rows.insert(0, ("amount", format_money(payload.get("amount_cents"), payload.get("currency"))))
    return rows


def _concerns(owner: Owner | None) -> str | None:
    if owner is None:
        return None
    label = "patient" if owner.kind == "patient" else "organization"
    return f"{owner.name} ({label}{', ' + owner.email if owner.email else ''})"


def _links(alert: Alert, settings: Settings, owner: Owner | None) -> list[tuple[str, str]]:
    runbook = runbook_path(alert.kind)
    console = settings.console_url if settings.console_base_url else ""  # links only when declared
    candidates = [
        ("Runbook", link(settings.docs_base_url, runbook) if runbook else None),
        ("This alert", link(console, f"alerts/{alert.id}")),
        ("The owner", link(console, f"owners/{owner.kind}/{owner.id}")
         if owner is not None else None),
    ]
    return [(name, url) for name, url in candidates if url]


def context(alert: Alert, settings: Settings, owner: Owner | None = None) -> dict[str, Any]:
    """Everything a template may show, redacted (again) on the way in."""
    spec = spec_for(alert.kind)
    payload: dict[str, Any] = redact(dict(alert.payload or {}))  # key-aware: drops CVCs first
    explained = explain(alert.kind, payload, owner)
    values: dict[str, Any] = {
        "subject": subject_line(alert), "title": spec.title, "summary": alert.subject,
        "severity": alert.severity.value, "kind": alert.kind, "dedup_key": alert.dedup_key,
        "alert_id": str(alert.id), "raised_at": _iso(alert.created_at),
        "suppressed_count": alert.suppressed_count,
        "suppressed_since": _iso(alert.suppressed_since),
        "happened": explained.happened, "next_step": explained.next_step,
        "concerns": _concerns(owner),
        "links": _links(alert, settings, owner),
        "details": _details(payload),
        "report": payload.get("report", {}),
    }
    redacted: dict[str, Any] = redact(values)
    redacted["details"] = [tuple(pair) for pair in redacted["details"]]
    redacted["links"] = [tuple(pair) for pair in redacted["links"]]
    return redacted


def render(alert: Alert, settings: Settings, owner: Owner | None = None) -> tuple[str, str]:
    """(plain text, HTML) bodies for ``alert``."""
    name = "daily_report" if alert.kind == AlertKind.DAILY_REPORT else "alert"
    values = context(alert, settings, owner)
    env = environment()
    return (env.get_template(f"{name}.txt.j2").render(values),
            env.get_template(f"{name}.html.j2").render(values))


def build_message(alert: Alert, settings: Settings, owner: Owner | None = None) -> EmailMessage:
    text, html = render(alert, settings, owner)
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


class UncertainDelivery(Exception):
    """The whole message reached the server, but its final answer did not come back.

    The server has probably accepted it (RFC 5321 lets the reply take ten minutes): the caller
    must not send it again at once. Every other exception from :func:`send` means the message
    was not accepted and may be retried.
    """


_LEADING_DOT = re.compile(rb"(?m)^\.")


def wire_bytes(message: EmailMessage) -> bytes:
    """The DATA payload: CRLF lines, leading dots doubled, the final ``.`` line."""
    raw = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
    return _LEADING_DOT.sub(b"..", raw) + (b"" if raw.endswith(b"\r\n") else b"\r\n") + b".\r\n"


async def send(settings: Settings, message: EmailMessage,
               recipients: Sequence[str] | None = None) -> None:
    """Hand ``message`` to the SMTP server in steps, each with its own timeout.

    It goes to the alert recipients unless ``recipients`` names others (a sign-in link).

    Connecting, every command and the reply to DATA have separate limits; once the final dot
    is written, a timeout or a dropped connection raises :class:`UncertainDelivery`.
    """
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    client = aiosmtplib.SMTP(
        hostname=settings.smtp_host, port=settings.smtp_port, start_tls=settings.smtp_starttls,
        username=settings.smtp_user, password=password, timeout=settings.smtp_timeout_seconds)
    await client.connect(timeout=settings.smtp_connect_timeout_seconds)
    try:
        await client.mail(_address(settings.smtp_from))
        for recipient in settings.billing_alert_emails if recipients is None else recipients:
            await client.rcpt(_address(recipient))
        start = await client.execute_command(b"DATA")
        if start.code != 354:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        await _transmit_and_wait(client, wire_bytes(message), settings.smtp_data_timeout_seconds)
    finally:
        client.close()


def _address(value: str) -> str:
    return parseaddr(header_text(value))[1] or header_text(value)


async def _transmit_and_wait(client: aiosmtplib.SMTP, payload: bytes, reply_seconds: float) -> None:
    protocol = client.protocol
    if protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("connection lost before the message was sent")
    protocol.write(payload)  # from here on the server may hold the whole message
    try:
        reply = await protocol.read_response(timeout=reply_seconds)
    except (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected, OSError) as error:
        raise UncertainDelivery(f"no reply to the message within {reply_seconds:g} s: "
                                f"{type(error).__name__}") from error
    if reply.code != 250:
        raise aiosmtplib.SMTPDataError(reply.code, reply.message)


def smtp_lease_seconds(settings: Settings) -> float:
    """The longest one delivery may take: connect, every command, the reply to DATA."""
    commands = 5 + len(settings.billing_alert_emails)
    return (settings.smtp_connect_timeout_seconds + commands * settings.smtp_timeout_seconds
            + settings.smtp_data_timeout_seconds + 30)
