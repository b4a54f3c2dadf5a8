"""Raising an alert: one row in the caller's transaction, a hand-off once it commits.

Raising never sends anything and never waits on anything: the row is the durable outbox entry,
and :mod:`billwatch.alerts.handoff` wakes whichever deliverer runs (an in-process task or a
Celery worker) after the commit. A rolled-back transaction takes its alert with it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.alerts import handoff
from billwatch.alerts.models import Alert, AlertKind, AlertStatus, Severity
from billwatch.db import Database, after_commit, utcnow
from billwatch.redaction import redact, redact_text
from billwatch.runtime import runtime_of


@dataclass(frozen=True, slots=True)
class KindSpec:
    """How a kind of alert is mailed: its severity, title, and whether its key names one fact.

    ``once`` kinds carry their subject in the key (an invoice, a day, an hour): a later raise
    within the incident is an identical repeat, mailed again only after the repeat interval.
    For other kinds each raise is news, summarised at the group interval
    (:mod:`billwatch.alerts.incidents`).
    """

    severity: Severity
    title: str
    once: bool


SPECS: dict[str, KindSpec] = {
    AlertKind.PAYMENT_FINAL_FAILURE: KindSpec(Severity.ERROR, "Final payment failure", once=True),
    AlertKind.WEBHOOK_FAILURE: KindSpec(Severity.ERROR, "Webhook processing failed", once=False),
    AlertKind.CHURN_HIGH: KindSpec(Severity.WARNING, "Monthly churn above threshold", once=True),
    AlertKind.REFUNDS_HIGH: KindSpec(Severity.WARNING, "Refunds today above threshold", once=True),
    AlertKind.AUDIT_WRITE_FAILURE: KindSpec(Severity.CRITICAL, "Audit write failed", once=False),
    AlertKind.PAYMENT_FAILURE_RATE: KindSpec(Severity.ERROR, "Payment failure rate far above "
                                             "its 7-day baseline", once=True),
    AlertKind.DAILY_REPORT: KindSpec(Severity.INFO, "Daily billing report", once=True),
    AlertKind.DUPLICATE_SUBSCRIPTION: KindSpec(Severity.ERROR, "Second live subscription for "
                                               "one owner", once=True),
}


def spec_for(kind: str) -> KindSpec:
    return SPECS.get(kind) or KindSpec(Severity.WARNING, kind.replace("_", " ").capitalize(),
                                       once=False)


def raise_alert(session: AsyncSession, kind: AlertKind | str, *, dedup_key: str, subject: str,
                payload: Mapping[str, Any], severity: Severity | None = None) -> Alert | None:
    """Add an alert to ``session``; it is delivered after the transaction commits.

    Returns None (and adds nothing) when the runtime's ``BILLWATCH_ENABLE_BILLING_ALERTS`` is
    off. The deliverer woken after the commit is the one attached to the session's runtime.
    """
    runtime = runtime_of(session)
    if not runtime.settings.enable_billing_alerts:
        return None
    kind_value = str(getattr(kind, "value", kind))
    alert = Alert(
        id=uuid.uuid4(), created_at=utcnow(), kind=kind_value,
        severity=severity or spec_for(kind_value).severity,
        dedup_key=redact_text(dedup_key)[:200], subject=redact_text(subject)[:200],
        payload=redact(dict(payload)), status=AlertStatus.PENDING, attempts=0,
        suppressed_count=0)
    session.add(alert)
    alert_id = alert.id
    after_commit(session, lambda: handoff.alert_raised(runtime, alert_id))
    return alert


async def raise_audit_write_failure(db: Database, details: Mapping[str, Any]) -> None:
    """The audit-write-failure alert, in a transaction of its own (the failed one is gone)."""
    async with db.unit_of_work() as session:
        raise_alert(session, AlertKind.AUDIT_WRITE_FAILURE, dedup_key="audit_write_failure",
                    subject=(f"audit row for {', '.join(details.get('event_types') or ['?'])} "
                             f"not written ({details.get('error_type', 'error')})"),
                    payload=details)
