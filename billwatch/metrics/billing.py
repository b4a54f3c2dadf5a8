"""Billing counters and histograms, moved only after the transaction commits.

Callers register these functions with ``after_commit(session, ...)``, so a rolled-back operation
never counts. Label values come from closed sets (plan codes, owner types, reason categories,
handled Stripe event types), never ids or free text, so the series count stays bounded; the
metric classes of :mod:`billwatch.metrics.switched` map anything else to ``other`` and go silent
when ``BILLWATCH_ENABLE_BILLING_METRICS=false``, so callers never check the setting themselves,
whether they use these functions or the metric objects directly.
"""

from __future__ import annotations

from collections.abc import Iterable

from billwatch.config import Settings
from billwatch.metrics import labels
from billwatch.metrics.switched import SWITCH, BillingCounter, BillingHistogram, one_of

AMOUNT_BUCKETS = (1000, 2500, 5000, 10000, 25000, 50000, 100000)

_OWNER = {"owner_type": labels.owner_type}
_OWNER_PLAN = {**_OWNER, "plan": SWITCH.plan}
_EVENT = {"event_type": labels.webhook_event_type}

CHECKOUTS = BillingCounter("billing_checkouts_created_total", "Checkout sessions created.",
                           ["owner_type", "plan"], closed=_OWNER_PLAN)
SUBSCRIPTIONS_CANCELLED = BillingCounter(
    "billing_subscriptions_cancelled_total", "Subscriptions cancelled.",
    ["owner_type", "cancelled_by"], closed={**_OWNER, "cancelled_by": one_of(labels.CANCELLED_BY)})
REFUNDS = BillingCounter("billing_refunds_issued_total", "Refunds issued.", ["reason_category"],
                         closed={"reason_category": labels.reason_category})
REFUND_AMOUNT = BillingHistogram("billing_refund_amount_cents", "Refund amounts in minor units.",
                                 buckets=AMOUNT_BUCKETS)
MANAGER_ASSIGNMENTS = BillingCounter(
    "billing_manager_assignments_total", "Billing managers assigned.", ["assigned_by_type"],
    closed={"assigned_by_type": one_of(labels.ASSIGNED_BY_TYPES)})
PROXY_ACTIONS = BillingCounter("billing_proxy_actions_total", "Actions proxies took for patients.",
                               ["action_type"],
                               closed={"action_type": one_of(labels.PROXY_ACTION_TYPES)})

# --- Stripe-driven (webhooks) ---------------------------------------------------------------

PAYMENTS_SUCCEEDED = BillingCounter("billing_payments_succeeded_total", "Payments that succeeded.",
                                    ["owner_type", "plan"], closed=_OWNER_PLAN)
PAYMENTS_FAILED = BillingCounter(
    "billing_payments_failed_total", "Payment attempts that failed.", ["owner_type", "reason"],
    closed={**_OWNER, "reason": labels.payment_failure_reason})
PAYMENT_FINAL_FAILURES = BillingCounter("billing_payment_final_failures_total",
                                        "Payments that failed their final attempt.",
                                        ["owner_type"], closed=_OWNER)
PAYMENT_AMOUNT = BillingHistogram("billing_payment_amount_cents", "Paid amounts in minor units.",
                                  ["owner_type"], closed=_OWNER, buckets=AMOUNT_BUCKETS)
SUBSCRIPTIONS_CREATED = BillingCounter("billing_subscriptions_created_total",
                                       "Subscriptions started.", ["owner_type", "plan"],
                                       closed=_OWNER_PLAN)
WEBHOOKS_RECEIVED = BillingCounter("billing_webhooks_received_total", "Verified webhook events.",
                                   ["event_type"], closed=_EVENT)
WEBHOOKS_FAILED = BillingCounter("billing_webhooks_failed_total",
                                 "Webhook events whose handling failed.", ["event_type"],
                                 closed=_EVENT)
WEBHOOKS_REJECTED = BillingCounter("billing_webhooks_rejected_total", "Webhook deliveries refused.",
                                   ["reason"],
                                   closed={"reason": one_of(labels.WEBHOOK_REJECT_REASONS)})
WEBHOOK_SECONDS = BillingHistogram("billing_webhook_processing_seconds", "Webhook handling time.",
                                   ["event_type"], closed=_EVENT)

# --- the audit trail and alerts -------------------------------------------------------------

AUDIT_WRITES = BillingCounter("billing_audit_writes_total", "Audit rows committed.", ["outcome"],
                              closed={"outcome": one_of(labels.AUDIT_OUTCOMES)})
AUDIT_WRITE_FAILURES = BillingCounter(
    "audit_write_failures_total", "Audit rows that could not be written (the operation failed too).")
ALERTS_SENT = BillingCounter("billing_alerts_sent_total", "Alert e-mails delivered.", ["kind"],
                             closed={"kind": labels.alert_kind})

payment_failure_reason = labels.payment_failure_reason


def configure(settings: Settings) -> None:
    """Apply the settings; with metrics on, every known label combination starts at zero.

    Pre-created series let dashboards and rules see a 0 instead of "no data" before the first
    event, which is what makes ``rate()`` and ``increase()`` meaningful from the start.
    """
    SWITCH.apply(settings)
    if SWITCH.is_enabled():
        _initialise_series(sorted(SWITCH.plans or ()))


def _initialise_series(plans: Iterable[str]) -> None:
    plan_list = [*plans, labels.OTHER]
    for owner in labels.OWNER_TYPES:
        for plan in plan_list:
            CHECKOUTS.labels(owner_type=owner, plan=plan)
            PAYMENTS_SUCCEEDED.labels(owner_type=owner, plan=plan)
            SUBSCRIPTIONS_CREATED.labels(owner_type=owner, plan=plan)
        for reason in labels.PAYMENT_FAILURE_REASONS:
            PAYMENTS_FAILED.labels(owner_type=owner, reason=reason)
        for who in labels.CANCELLED_BY:
            SUBSCRIPTIONS_CANCELLED.labels(owner_type=owner, cancelled_by=who)
        PAYMENT_FINAL_FAILURES.labels(owner_type=owner)
        PAYMENT_AMOUNT.labels(owner_type=owner)
    for category in labels.REFUND_REASON_CATEGORIES:
        REFUNDS.labels(reason_category=category)
    for by in labels.ASSIGNED_BY_TYPES:
        MANAGER_ASSIGNMENTS.labels(assigned_by_type=by)
    for action in labels.PROXY_ACTION_TYPES:
        PROXY_ACTIONS.labels(action_type=action)
    for event_type in labels.webhook_event_types():
        WEBHOOKS_RECEIVED.labels(event_type=event_type)
        WEBHOOKS_FAILED.labels(event_type=event_type)
        WEBHOOK_SECONDS.labels(event_type=event_type)
    for reason in labels.WEBHOOK_REJECT_REASONS:
        WEBHOOKS_REJECTED.labels(reason=reason)
    for outcome in labels.AUDIT_OUTCOMES:
        AUDIT_WRITES.labels(outcome=outcome)
    for kind in labels.alert_kinds():
        ALERTS_SENT.labels(kind=kind)


# --- user-initiated operations --------------------------------------------------------------

def checkout_created(owner_type: str, plan: str, *, by_proxy: bool) -> None:
    CHECKOUTS.labels(owner_type=owner_type, plan=plan).inc()
    if by_proxy:
        PROXY_ACTIONS.labels(action_type="checkout").inc()


def subscription_cancelled(owner_type: str, cancelled_by: str) -> None:
    SUBSCRIPTIONS_CANCELLED.labels(owner_type=owner_type, cancelled_by=cancelled_by).inc()
    if cancelled_by == "proxy":
        PROXY_ACTIONS.labels(action_type="cancel").inc()


def refund_issued(reason_category: str, amount_cents: int) -> None:
    REFUNDS.labels(reason_category=reason_category).inc()
    REFUND_AMOUNT.observe(amount_cents)


def manager_assigned(assigned_by_type: str) -> None:
    MANAGER_ASSIGNMENTS.labels(assigned_by_type=assigned_by_type).inc()


def proxy_viewed() -> None:
    PROXY_ACTIONS.labels(action_type="view").inc()


# --- Stripe-driven (webhooks) ---------------------------------------------------------------

def payment_succeeded(owner_type: str, plan: str, amount_cents: int) -> None:
    PAYMENTS_SUCCEEDED.labels(owner_type=owner_type, plan=plan).inc()
    PAYMENT_AMOUNT.labels(owner_type=owner_type).observe(amount_cents)


def payment_failed(owner_type: str, code: str | None, *, final: bool) -> None:
    PAYMENTS_FAILED.labels(owner_type=owner_type, reason=code).inc()
    if final:
        PAYMENT_FINAL_FAILURES.labels(owner_type=owner_type).inc()


def subscription_created(owner_type: str, plan: str) -> None:
    SUBSCRIPTIONS_CREATED.labels(owner_type=owner_type, plan=plan).inc()


# --- the audit trail and alerts -------------------------------------------------------------

def audit_written(outcome: str) -> None:
    AUDIT_WRITES.labels(outcome=outcome).inc()


def audit_write_failed() -> None:
    AUDIT_WRITE_FAILURES.inc()


def alert_sent(kind: str) -> None:
    ALERTS_SENT.labels(kind=kind).inc()
