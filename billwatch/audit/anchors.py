"""Anchors: copies of every signed checkpoint kept off the database host.

The checkpoint folder and the ``audit_checkpoints`` table may live where one operator can
delete the newest checkpoint together with the rows it covers; the checkpoint chain cannot
notice a missing *newest* link. An anchor can: the checkpoint also goes

* to an HTTP(S) endpoint (``BILLWATCH_AUDIT_ANCHOR_URL``) as a POST of its signed JSON
  (``application/json``, optional bearer token); a GET of the same URL is expected to return
  what it received (one checkpoint, a JSON array, ``{"checkpoints": [...]}`` or JSON lines);
* by mail to the admins (``BILLWATCH_AUDIT_ANCHOR_MAIL`` + ``BILLWATCH_BILLING_ALERT_EMAILS``,
  the alerts' SMTP settings), the JSON between ``BEGIN``/``END`` marker lines, so a saved mail
  is itself an anchor file.

``billwatch audit verify --anchor FILE|URL`` reads them back (:func:`load_anchor`). Sending
happens after the seal committed and the file was written, never inside a transaction; a
failed send is logged and counted (``audit_anchor_failures_total``), it never undoes a seal.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email import message_from_string, policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import httpx
import structlog

from billwatch.audit.checkpoints import Checkpoint
from billwatch.config import Settings
from billwatch.db import utcnow
from billwatch.smtp import header_text, send

if TYPE_CHECKING:
    from billwatch.metrics.billing import BillingMetrics

log = structlog.get_logger(__name__)

BEGIN = "-----BEGIN BILLWATCH AUDIT CHECKPOINT-----"
END = "-----END BILLWATCH AUDIT CHECKPOINT-----"
_ARMOURED = re.compile(re.escape(BEGIN) + r"\s*(\{.*?\})\s*" + re.escape(END), re.DOTALL)
_HEADER = re.compile(r"^[A-Za-z][A-Za-z0-9-]*: ")
MAX_ANCHOR_BYTES = 16 * 1024 * 1024



class CheckpointAnchor(Protocol):
    @property
    def name(self) -> str: ...

    async def send(self, checkpoint: Checkpoint) -> None: ...


@dataclass(frozen=True, slots=True)
class HttpAnchor:
    """POSTs each checkpoint's signed JSON to an endpoint off the database host."""

    url: str
    token: str | None = None
    timeout: float = 10.0
    name: str = "http"

    async def send(self, checkpoint: Checkpoint) -> None:
        async with httpx.AsyncClient(timeout=self.timeout) as client:
            response = await client.post(self.url, content=checkpoint.to_json().encode(),
                                         headers=_headers(self.token, json_body=True))
            response.raise_for_status()


@dataclass(frozen=True, slots=True)
class MailAnchor:
    """Mails each checkpoint to the admins, armoured so the saved mail is an anchor file."""

    settings: Settings
    name: str = "mail"

    async def send(self, checkpoint: Checkpoint) -> None:
        message = EmailMessage()
        message["Subject"] = (f"billwatch audit checkpoint seq {checkpoint.last_seq} "
                              f"({checkpoint.created_at[:19]}Z)")
        message["From"] = header_text(self.settings.smtp_from)
        message["To"] = ", ".join(header_text(a) for a in self.settings.billing_alert_emails)
        message["Date"] = format_datetime(utcnow())
        message["Message-ID"] = f"<audit-checkpoint-{checkpoint.signature[:32]}@billwatch>"
        message.set_content(
            "A signed checkpoint of the billwatch audit trail. Keep this mail: `billwatch audit "
            "verify --anchor FILE` (this mail saved as FILE) proves that no sealed row up to "
            f"seq {checkpoint.last_seq} has been removed since.\n\n"
            f"{BEGIN}\n{checkpoint.to_json()}\n{END}\n")
        await send(self.settings, message)


def anchors_for(settings: Settings) -> list[CheckpointAnchor]:
    """The anchors the settings configure (none by default: the README says what that risks)."""
    anchors: list[CheckpointAnchor] = []
    if settings.audit_anchor_url:
        token = settings.audit_anchor_token
        anchors.append(HttpAnchor(settings.audit_anchor_url,
                                  token.get_secret_value() if token else None,
                                  settings.audit_anchor_timeout_seconds))
    if settings.audit_anchor_mail and settings.billing_alert_emails:
        anchors.append(MailAnchor(settings))
    return anchors


async def send_to_anchors(checkpoint: Checkpoint, anchors: Sequence[CheckpointAnchor],
                          metrics: BillingMetrics | None = None) -> dict[str, bool]:
    """Send ``checkpoint`` to every anchor; which accepted it (a failure never raises).

    ``metrics`` (the sealing runtime's) counts each anchor's acceptances and failures.
    """
    accepted: dict[str, bool] = {}
    for anchor in anchors:
        try:
            await anchor.send(checkpoint)
        except Exception as error:  # an unreachable anchor must not undo a committed seal
            if metrics is not None:
                metrics.anchor_failures.labels(anchor=anchor.name).inc()
            log.warning("audit_anchor_failed", anchor=anchor.name, seq=checkpoint.last_seq,
                        error_type=type(error).__name__)
            accepted[anchor.name] = False
        else:
            if metrics is not None:
                metrics.anchor_sent.labels(anchor=anchor.name).inc()
            accepted[anchor.name] = True
    return accepted


def _headers(token: str | None, *, json_body: bool = False) -> dict[str, str]:
    headers = {"Content-Type": "application/json"} if json_body else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


class AnchorUnreadable(ValueError):
    """The anchor could not be read, or held nothing that looks like a checkpoint."""


async def load_anchor(source: str, *, token: str | None = None,
                      http_timeout: float = 10.0) -> list[Checkpoint]:
    """The checkpoints an anchor holds: a file (JSON, JSON lines, a saved mail) or a URL."""
    if source.startswith(("http://", "https://")):
        try:
            async with httpx.AsyncClient(timeout=http_timeout) as client:
                response = await client.get(source, headers=_headers(token))
                response.raise_for_status()
        except httpx.HTTPError as error:
            raise AnchorUnreadable(f"anchor {source} unreachable: {type(error).__name__}") from error
        text = response.text
    else:
        text = await asyncio.to_thread(_read_file, source)
    try:
        found = parse_anchor(text)
    except (ValueError, TypeError) as error:
        raise AnchorUnreadable(f"anchor {source} holds something that is not a billwatch audit "
                               f"checkpoint ({type(error).__name__})") from error
    if not found:
        raise AnchorUnreadable(f"anchor {source} holds no billwatch audit checkpoint")
    return found


def _read_file(source: str) -> str:
    path = Path(source)
    try:
        if path.stat().st_size > MAX_ANCHOR_BYTES:
            raise AnchorUnreadable(f"anchor file {source} is over 16 MiB")
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise AnchorUnreadable(f"anchor file {source} unreadable: {error.strerror}") from error


def _mail_text(text: str) -> str:
    """The plain-text body of a saved mail (transfer encodings undone), else nothing."""
    if not _HEADER.match(text):
        return ""
    body = message_from_string(text, policy=policy.default).get_body(preferencelist=("plain",))
    return str(body.get_content()) if isinstance(body, EmailMessage) else ""


def parse_anchor(text: str) -> list[Checkpoint]:
    """Every checkpoint in ``text``, in whichever of the accepted shapes it came."""
    text = _mail_text(text) or text
    armoured = _ARMOURED.findall(text)
    if armoured:
        return [Checkpoint.from_json(body) for body in armoured]
    try:
        document: object = json.loads(text)
    except json.JSONDecodeError:
        return [Checkpoint.from_json(line) for line in text.splitlines() if line.strip()]
    if isinstance(document, dict) and isinstance(document.get("checkpoints"), list):
        document = document["checkpoints"]
    if isinstance(document, list):
        return [Checkpoint.from_fields(item) for item in document]
    return [Checkpoint.from_fields(document)]
