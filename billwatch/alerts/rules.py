"""Alert rules that hang off the audit trail.

:class:`AlertRules` is one runtime's set of rules: ``build_runtime`` (:mod:`billwatch.bootstrap`)
makes its :meth:`~AlertRules.on_audit_row` an audit listener and its
:meth:`~AlertRules.on_audit_write_failure` a write-failure hook, so it sees every audit row inside
the transaction that writes it. A matching row adds an alert to the same session (a rolled-back
event never alerts); a rule that needs a query (refunds today) asks for a check after the
commit instead, because a listener must not do I/O. A rule never fails the operation: its own
errors are logged and swallowed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.alerts import handoff
from billwatch.alerts.models import AlertKind
from billwatch.alerts.raising import raise_alert
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.models import AuditLog
from billwatch.audit.recorder import AuditWriteFailure
from billwatch.config import Settings
from billwatch.db import after_commit, utcnow
from billwatch.redaction import redact_text
from billwatch.runtime import Runtime, runtime_of

log = structlog.get_logger(__name__)

Rule = Callable[[AsyncSession, AuditLog, Settings], None]


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def final_payment_failure(session: AsyncSession, row: AuditLog, settings: Settings) -> None:
    """The attempt that reaches the threshold (and any later one) alerts once per invoice."""
    data = row.data or {}
    attempts = _as_int(data.get("attempt_count"))
    if attempts is None or attempts < settings.alert_payment_failure_attempts:
        return
    invoice = row.stripe_invoice_id or data.get("invoice_id") or row.resource_id or str(row.id)
    raise_alert(
        session, AlertKind.PAYMENT_FINAL_FAILURE, dedup_key=f"payment_final_failure:{invoice}",
        subject=f"invoice {invoice} failed attempt {attempts}",
        payload={"stripe_invoice_id": invoice, "attempt_count": attempts,
                 "amount_cents": data.get("amount_cents"), "currency": data.get("currency"),
                 "failure_code": data.get("failure_code"),
                 "decline_code": data.get("decline_code"),
                 "failure_reason": data.get("failure_reason"),
                 "failure_message": data.get("failure_message"), "plan": data.get("plan"),
                 "final_attempt": data.get("final_attempt"),
                 "next_payment_attempt": data.get("next_payment_attempt"),
                 "stripe_customer_id": row.stripe_customer_id,
                 "stripe_subscription_id": row.stripe_subscription_id,
                 "stripe_event_id": row.stripe_event_id,
                 "owner_type": row.owner_type.value if row.owner_type else None,
                 "owner_id": str(row.owner_id) if row.owner_id else None,
                 "audit_id": str(row.id), "occurred_at": _iso(row)})


@dataclass(slots=True)
class Cooldown:
    """When each key last raised, in this process (monotonic clock)."""

    last: dict[str, float] = field(default_factory=dict)

    def allow(self, key: str, seconds: float, *, now: float | None = None) -> bool:
        moment = time.monotonic() if now is None else now
        previous = self.last.get(key)
        if previous is not None and moment - previous < seconds:
            return False
        self.last[key] = moment
        return True


def webhook_failure(session: AsyncSession, row: AuditLog, settings: Settings, *,
                    rejections: Cooldown) -> None:
    """A webhook that failed: one key per Stripe event type (handler failures) or per reject
    reason (deliveries refused at verification), so one outage mails once per window."""
    if row.outcome is not Outcome.FAILURE:
        return
    data = row.data or {}
    if data.get("stage") == "verification":
        reason = str(data.get("reject_reason") or data.get("code") or "unknown")[:60]
        if not rejections.allow(reason, settings.alert_cooldown_seconds):
            return  # unsigned posts are anyone's to send: one alert row per reason per cooldown
        key, subject = f"webhook_failure:rejected:{reason}", f"webhook deliveries rejected ({reason})"
    else:
        event_type = str(data.get("event_type") or data.get("type") or "unknown")[:80]
        key, subject = f"webhook_failure:{event_type}", f"{event_type} could not be processed"
    raise_alert(
        session, AlertKind.WEBHOOK_FAILURE, dedup_key=key, subject=subject,
        payload={"event_type": data.get("event_type") or data.get("type"),
                 "stage": data.get("stage"), "stripe_event_id": row.stripe_event_id,
                 "reason": row.reason, "attempts": data.get("attempts"),
                 "error_type": data.get("error_type"), "audit_id": str(row.id),
                 "occurred_at": _iso(row)})


def refund_written(session: AsyncSession, row: AuditLog, settings: Settings) -> None:
    """Counting today's refunds needs a query: request the check once the refund commits."""
    if row.outcome is Outcome.SUCCESS:
        runtime = runtime_of(session)
        after_commit(session,
                     lambda: handoff.check_requested(runtime, handoff.Check.REFUNDS_TODAY))


def duplicate_subscription(session: AsyncSession, row: AuditLog, settings: Settings) -> None:
    """A second live subscription for one owner: the owner may be billed twice, alert once."""
    data = row.data or {}
    stripe_id = row.stripe_subscription_id or row.resource_id or str(row.id)
    raise_alert(
        session, AlertKind.DUPLICATE_SUBSCRIPTION, dedup_key=f"duplicate_subscription:{stripe_id}",
        subject=f"second live subscription {stripe_id} for one owner",
        payload={"stripe_subscription_id": row.stripe_subscription_id,
                 "subscription_id": row.resource_id, "plan": data.get("plan"),
                 "duplicate_of_id": data.get("duplicate_of_id"),
                 "duplicate_of_stripe_subscription_id":
                     data.get("duplicate_of_stripe_subscription_id"),
                 "stripe_customer_id": row.stripe_customer_id,
                 "stripe_event_id": row.stripe_event_id,
                 "owner_type": row.owner_type.value if row.owner_type else None,
                 "owner_id": str(row.owner_id) if row.owner_id else None,
                 "audit_id": str(row.id), "occurred_at": _iso(row)})


def _iso(row: AuditLog) -> str:
    # the column default is applied at flush, after listeners ran
    return (row.occurred_at or utcnow()).isoformat()


RULES: dict[str, Rule] = {
    AuditEvent.PAYMENT_FAILED.value: final_payment_failure,
    AuditEvent.REFUND_ISSUED.value: refund_written,
    AuditEvent.REFUND_RECORDED.value: refund_written,
    AuditEvent.SUBSCRIPTION_DUPLICATE_FLAGGED.value: duplicate_subscription,
}
"""The rules that keep no memory; :class:`AlertRules` adds the webhook-failure rule, bound to
its runtime's cooldown for refused deliveries."""


class AlertRules:
    """The alert rules of one runtime, with the in-process memory they keep."""

    def __init__(self) -> None:
        self.rejections = Cooldown()
        """When each refused-delivery reason last raised (unsigned posts are anyone's to send)."""
        self.rules: dict[str, Rule] = {
            **RULES,
            AuditEvent.WEBHOOK_FAILED.value: partial(webhook_failure, rejections=self.rejections)}

    def on_audit_row(self, session: AsyncSession, row: AuditLog) -> None:
        """The audit listener: apply the rule for ``row``'s event, if any, inside its transaction."""
        rule = self.rules.get(row.event_type)
        if rule is None:
            return
        settings = runtime_of(session).settings
        if not settings.enable_billing_alerts:
            return
        try:
            rule(session, row, settings)
        except Exception:  # an alert rule must never fail the operation it observes
            log.exception("alert_rule_failed", audit_event=row.event_type)

    def on_audit_write_failure(self, runtime: Runtime, failure: AuditWriteFailure) -> None:
        """The audit recorder could not write a row (and its operation failed): hand it off."""
        if not runtime.settings.enable_billing_alerts:
            return
        handoff.audit_write_failed(runtime, {
            "event_types": list(failure.event_types), "stage": failure.stage,
            "error_type": type(failure.error).__name__,
            "error": redact_text(str(failure.error))[:500], "occurred_at": utcnow().isoformat()})
