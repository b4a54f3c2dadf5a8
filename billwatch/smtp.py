"""Sending one message over SMTP, with a timeout on every step; no alert or audit knowledge.

Alert mail, checkpoint anchors and console sign-in links all go out through :func:`send`, so
it sits below the domains that write those messages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import parseaddr

import aiosmtplib

from billwatch.config import Settings
from billwatch.redaction import redact_text

_HEADER_UNSAFE = re.compile(r"[\r\n\t]+")


def header_text(value: str) -> str:
    """``value`` redacted and on one line, so nothing can inject a header."""
    return _HEADER_UNSAFE.sub(" ", redact_text(value)).strip()


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
