"""Alert e-mail: Jinja2 templates (HTML autoescaped, plain-text alternative) sent with aiosmtplib.

Every value that reaches a template or a header passes through the redactor first, so a card
number or a secret that slipped into a payload never leaves the process; headers also lose
line breaks, so nothing can inject a header.
"""

from __future__ import annotations

from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from billwatch.alerts.explain import Owner, explain, format_money, link, runbook_path
from billwatch.alerts.models import Alert, AlertKind
from billwatch.alerts.raising import spec_for
from billwatch.config import Settings
from billwatch.db import utcnow
from billwatch.redaction import redact
from billwatch.smtp import header_text


@lru_cache(maxsize=1)
def environment() -> Environment:
    return Environment(
        loader=PackageLoader("billwatch.alerts", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html.j2",),
                                     disabled_extensions=("txt.j2",), default=True),
        undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True)


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
