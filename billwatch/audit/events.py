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
    """A Stripe Checkout session was opened for an owner, by the owner or an admin (a proxy
    writes the proxy variant). Outcome: `success`; `failure` when the request is refused or
    fails."""
    SUBSCRIPTION_VIEWED = "billing.account.viewed"
    """Someone read an owner's billing account (subscriptions, transactions, overrides).
    Outcome: `success`; `failure` when the request is refused or fails."""
    SUBSCRIPTION_CANCELLED = "billing.subscription.cancelled"
    """A subscription was cancelled: by a caller through the API, or by Stripe (actor
    `stripe`) when a webhook reports it. Outcome: `success`; `failure` when the request is
    refused or fails."""
    PORTAL_ACCESSED = "billing.portal.accessed"
    """A Stripe customer-portal link was handed to an owner. Outcome: `success`; `failure`
    when the request is refused or fails."""
    REFUND_ISSUED = "billing.refund.issued"
    """Stripe confirmed a refund billwatch asked for; the actor is the admin who asked.
    Outcome: `success`; `failure` when the request is refused or fails."""
    REFUND_REQUESTED = "billing.refund.requested"
    """The refund's intent: the amount is reserved and Stripe is about to be asked. Outcome:
    `success`."""
    REFUND_FAILED = "billing.refund.failed"
    """Stripe refused a refund and the reservation was released; the actor is the admin who
    asked. Outcome: `failure`: no money moved, and a reader filtering on failures must find it."""
    FREE_SUBSCRIPTION_GRANTED = "billing.free_subscription.granted"
    """An admin granted a free subscription. Outcome: `success`; `failure` when the request
    is refused or fails."""
    OVERRIDE_CREATED = "billing.override.created"
    """A discount or payment exemption is in effect at Stripe. Outcome: `success`; `failure`
    when the request is refused or fails."""
    OVERRIDE_REVOKED = "billing.override.revoked"
    """A discount or exemption was revoked and removed at Stripe, by an admin or by the
    scheduler finishing a revocation. Outcome: `success`; `failure` when the request is
    refused or fails."""
    OVERRIDE_REQUESTED = "billing.override.requested"
    """The intent of a discount or exemption, before Stripe applies it. Outcome: `success`."""
    OVERRIDE_EXPIRED = "billing.override.expired"
    """A discount or exemption removed at Stripe by the scheduler at its ``ends_at``.
    Outcome: `success`."""
    FREE_SUBSCRIPTION_EXPIRED = "billing.free_subscription.expired"
    """A free grant reached its end date and was ended by the scheduler. Outcome: `success`."""
    MANAGER_ASSIGNED = "billing.manager.assigned"
    """A proxy was named billing manager of a patient. Outcome: `success`; `failure` when
    the request is refused or fails."""
    MANAGER_REMOVED = "billing.manager.removed"
    """A proxy's billing authority over a patient was removed. Outcome: `success`; `failure`
    when the request is refused or fails."""
    MANAGERS_VIEWED = "billing.manager.viewed"
    """Someone listed a patient's billing managers. Outcome: `success`; `failure` when the
    request is refused or fails."""
    PROXY_CHECKOUT_CREATED = "billing.proxy.checkout.created"
    """``billing.checkout.created``, by a proxy for a patient. Outcome: `success`; `failure`
    when refused."""
    PROXY_SUBSCRIPTION_CANCELLED = "billing.proxy.subscription.cancelled"
    """``billing.subscription.cancelled``, by a proxy for a patient. Outcome: `success`;
    `failure` when refused."""
    PROXY_ACCOUNT_VIEWED = "billing.proxy.account.viewed"
    """``billing.account.viewed``, by a proxy for a patient. Outcome: `success`; `failure`
    when refused."""
    # two-phase checkout and cancel: the intent, recorded before Stripe is asked
    CHECKOUT_REQUESTED = "billing.checkout.requested"
    """The checkout's intent, recorded before Stripe is asked for a session. Outcome:
    `success`."""
    PROXY_CHECKOUT_REQUESTED = "billing.proxy.checkout.requested"
    """``billing.checkout.requested``, by a proxy for a patient. Outcome: `success`."""
    CHECKOUT_REUSED = "billing.checkout.reused"
    """A checkout request answered with the owner's checkout that is still open, instead of
    a second one. Outcome: `success`."""
    PROXY_CHECKOUT_REUSED = "billing.proxy.checkout.reused"
    """``billing.checkout.reused``, by a proxy for a patient. Outcome: `success`."""
    CHECKOUT_EXPIRED = "billing.checkout.expired"
    """An open checkout session past its expiry was marked expired, by whoever saw it first.
    Outcome: `success`."""
    SUBSCRIPTION_CANCEL_REQUESTED = "billing.subscription.cancel_requested"
    """The cancellation's intent, recorded before Stripe is asked. Outcome: `success`."""
    PROXY_SUBSCRIPTION_CANCEL_REQUESTED = "billing.proxy.subscription.cancel_requested"
    """``billing.subscription.cancel_requested``, by a proxy for a patient. Outcome:
    `success`."""
    # Stripe-initiated (webhooks)
    WEBHOOK_RECEIVED = "billing.webhook.received"
    """A verified Stripe event was handled and marked processed, in the handler's
    transaction. Outcome: `success`."""
    WEBHOOK_FAILED = "billing.webhook.failed"
    """A Stripe delivery was refused before processing (signature, bounds) or its handler
    failed. Outcome: `failure`."""
    SUBSCRIPTION_CREATED = "billing.subscription.created"
    """Stripe reported a new subscription and billwatch stored it. Outcome: `success`."""
    SUBSCRIPTION_UPDATED = "billing.subscription.updated"
    """Stripe reported a change to a subscription (status, plan, period) other than a
    cancellation. Outcome: `success`."""
    PAYMENT_SUCCEEDED = "billing.payment.succeeded"
    """Stripe reported a paid invoice; the payment is in the ledger. Outcome: `success`."""
    PAYMENT_FAILED = "billing.payment.failed"
    """Stripe reported a failed payment attempt; on the final attempt an alert follows.
    Outcome: `failure`."""
    REFUND_RECORDED = "billing.refund.recorded"
    """Stripe reported a refund made outside billwatch (in the Stripe dashboard); it is in
    the ledger. Outcome: `success`."""
    CHECKOUT_COMPLETED = "billing.checkout.completed"
    """Stripe reported a completed Checkout session, linked to its owner and subscription.
    Outcome: `success`."""
    SUBSCRIPTION_DUPLICATE_FLAGGED = "billing.subscription.duplicate_flagged"
    """Stripe reported a second live subscription for an owner who has one; an alert
    follows. Outcome: `success`."""
    # the audit trail and admin reads
    AUDIT_READ = "audit.read"
    """An admin read or exported audit rows. Outcome: `success`; `failure` when the request
    is refused or fails."""
    AUDIT_ACCESS_DENIED = "audit.access_denied"
    """A read of the audit trail was refused for want of a token or the admin role. Outcome:
    `failure`."""
    AUDIT_ARCHIVED = "audit.archived"
    """``billwatch audit archive`` moved rows to a signed archive file. Outcome: `success`."""
    AUDIT_KEY_ROTATED = "audit.key_rotated"
    """``billwatch audit rotate-key`` re-encrypted metadata under the newest key. Outcome:
    `success`."""
    ANONYMOUS_REFUSALS = "audit.anonymous_refusals"
    """Refusals of callers with no valid identity after their bucket's first, as one count.
    Outcome: `failure`."""
    ALERTS_READ = "alerts.read"
    """An admin read the alert ledger or its incidents. Outcome: `success`; `failure` when
    the request is refused or fails."""
    ALERT_ACKNOWLEDGED = "alerts.acknowledged"
    """An admin acknowledged an alert and its incident (API or console). Outcome: `success`;
    `failure` when the request is refused or fails."""
    # the admin console
    CONSOLE_SIGN_IN_REQUESTED = "console.sign_in.requested"
    """A console sign-in link was asked for (by the form or ``billwatch console link``); a
    request over the sign-in limit writes no row. Outcome: `success`; `failure` for an
    unknown address or a user who is not an admin."""
    CONSOLE_SIGNED_IN = "console.signed_in"
    """A sign-in link was used and a console session opened. Outcome: `success`; `failure`
    for a link that is unknown, used or expired."""
    CONSOLE_SIGNED_OUT = "console.signed_out"
    """An admin signed out of the console. Outcome: `success`; `failure` when refused."""
    CONSOLE_VIEWED = "console.viewed"
    """An admin opened a console page (the page and its filters are in the row). Outcome:
    `success`."""
    WEBHOOK_REPLAY_REQUESTED = "billing.webhook.replay_requested"
    """An admin asked the console to replay a stored Stripe event; the row is written before
    the replay runs. Outcome: `success`; `failure` when the request is refused."""


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

