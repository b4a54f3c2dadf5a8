"""The registry of audit event types: every name billwatch may write.

A name is registered once (``@unique`` refuses an alias); the recorder accepts only members, so
writing an unregistered name fails at the call, in tests, not in production data.
"""

from __future__ import annotations

from enum import StrEnum, unique


class Outcome(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


@unique
class AuditEvent(StrEnum):
    # user-initiated billing operations
    CHECKOUT_CREATED = "billing.checkout.created"
    SUBSCRIPTION_VIEWED = "billing.account.viewed"
    SUBSCRIPTION_CANCELLED = "billing.subscription.cancelled"
    PORTAL_ACCESSED = "billing.portal.accessed"
    REFUND_ISSUED = "billing.refund.issued"
    REFUND_REQUESTED = "billing.refund.requested"
    REFUND_FAILED = "billing.refund.failed"
    FREE_SUBSCRIPTION_GRANTED = "billing.free_subscription.granted"
    OVERRIDE_CREATED = "billing.override.created"
    OVERRIDE_REVOKED = "billing.override.revoked"
    OVERRIDE_REQUESTED = "billing.override.requested"
    """The intent of a discount or exemption, before Stripe applies it."""
    OVERRIDE_EXPIRED = "billing.override.expired"
    """A discount or exemption removed at Stripe by the scheduler at its ``ends_at``."""
    FREE_SUBSCRIPTION_EXPIRED = "billing.free_subscription.expired"
    MANAGER_ASSIGNED = "billing.manager.assigned"
    MANAGER_REMOVED = "billing.manager.removed"
    MANAGERS_VIEWED = "billing.manager.viewed"
    PROXY_CHECKOUT_CREATED = "billing.proxy.checkout.created"
    PROXY_SUBSCRIPTION_CANCELLED = "billing.proxy.subscription.cancelled"
    PROXY_ACCOUNT_VIEWED = "billing.proxy.account.viewed"
    # two-phase checkout and cancel: the intent, recorded before Stripe is asked
    CHECKOUT_REQUESTED = "billing.checkout.requested"
    PROXY_CHECKOUT_REQUESTED = "billing.proxy.checkout.requested"
    CHECKOUT_REUSED = "billing.checkout.reused"
    PROXY_CHECKOUT_REUSED = "billing.proxy.checkout.reused"
    CHECKOUT_EXPIRED = "billing.checkout.expired"
    SUBSCRIPTION_CANCEL_REQUESTED = "billing.subscription.cancel_requested"
    PROXY_SUBSCRIPTION_CANCEL_REQUESTED = "billing.proxy.subscription.cancel_requested"
    # Stripe-initiated (webhooks)
    WEBHOOK_RECEIVED = "billing.webhook.received"
    WEBHOOK_FAILED = "billing.webhook.failed"
    SUBSCRIPTION_CREATED = "billing.subscription.created"
    SUBSCRIPTION_UPDATED = "billing.subscription.updated"
    PAYMENT_SUCCEEDED = "billing.payment.succeeded"
    PAYMENT_FAILED = "billing.payment.failed"
    REFUND_RECORDED = "billing.refund.recorded"
    CHECKOUT_COMPLETED = "billing.checkout.completed"
    SUBSCRIPTION_DUPLICATE_FLAGGED = "billing.subscription.duplicate_flagged"
    # the audit trail and admin reads
    AUDIT_READ = "audit.read"
    AUDIT_ACCESS_DENIED = "audit.access_denied"
    AUDIT_ARCHIVED = "audit.archived"
    AUDIT_KEY_ROTATED = "audit.key_rotated"
    ANONYMOUS_REFUSALS = "audit.anonymous_refusals"
    """Refusals of callers with no valid identity after their bucket's first, as one count."""
    ALERTS_READ = "alerts.read"
    ALERT_ACKNOWLEDGED = "alerts.acknowledged"
    # the admin console
    CONSOLE_SIGN_IN_REQUESTED = "console.sign_in.requested"
    CONSOLE_SIGNED_IN = "console.signed_in"
    CONSOLE_SIGNED_OUT = "console.signed_out"
    CONSOLE_VIEWED = "console.viewed"
    WEBHOOK_REPLAY_REQUESTED = "billing.webhook.replay_requested"


PROXY_VARIANTS: dict[AuditEvent, AuditEvent] = {
    AuditEvent.CHECKOUT_CREATED: AuditEvent.PROXY_CHECKOUT_CREATED,
    AuditEvent.SUBSCRIPTION_CANCELLED: AuditEvent.PROXY_SUBSCRIPTION_CANCELLED,
    AuditEvent.SUBSCRIPTION_VIEWED: AuditEvent.PROXY_ACCOUNT_VIEWED,
    AuditEvent.CHECKOUT_REQUESTED: AuditEvent.PROXY_CHECKOUT_REQUESTED,
    AuditEvent.CHECKOUT_REUSED: AuditEvent.PROXY_CHECKOUT_REUSED,
    AuditEvent.SUBSCRIPTION_CANCEL_REQUESTED: AuditEvent.PROXY_SUBSCRIPTION_CANCEL_REQUESTED,
}
"""A proxy acting for a patient writes the proxy variant, so its actions are one filter away."""


def for_actor(event: AuditEvent, *, via_assignment: bool) -> AuditEvent:
    return PROXY_VARIANTS.get(event, event) if via_assignment else event


def matching(prefix: str) -> list[AuditEvent]:
    """Registered events whose name starts with ``prefix`` (``billing.proxy.``).

    Filters turn a prefix into this closed list, so the query is an index-friendly ``IN`` on
    every backend and collation, instead of a ``LIKE`` that needs special indexes.
    """
    return [event for event in AuditEvent if event.value.startswith(prefix)]

