"""Billing counters and histograms, moved only after the transaction commits.

Callers register these functions with ``after_commit(session, ...)``, so a rolled-back operation
never counts. Label values come from closed sets (plan codes, owner types, reason categories,
handled Stripe event types), never ids or free text, so the series count stays bounded; see
:mod:`billwatch.metrics.labels`. ``BILLWATCH_ENABLE_BILLING_METRICS=false`` turns every function
here into a no-op, so callers never need to check the setting themselves.

The metric objects stay importable for reading in tests; code that counts calls the functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Histogram

from billwatch.config import Settings, get_settings
from billwatch.metrics import labels
from billwatch.metrics.labels import PAYMENT_FAILURE_REASONS as _REASONS

AMOUNT_BUCKETS = (1000, 2500, 5000, 10000, 25000, 50000, 100000)

CHECKOUTS = Counter("billing_checkouts_created_total", "Checkout sessions created.",
                    ["owner_type", "plan"])
SUBSCRIPTIONS_CANCELLED = Counter("billing_subscriptions_cancelled_total",
                                  "Subscriptions cancelled.", ["owner_type", "cancelled_by"])
REFUNDS = Counter("billing_refunds_issued_total", "Refunds issued.", ["reason_category"])
REFUND_AMOUNT = Histogram("billing_refund_amount_cents", "Refund amounts in minor units.",
                          buckets=AMOUNT_BUCKETS)
MANAGER_ASSIGNMENTS = Counter("billing_manager_assignments_total",
                              "Billing managers assigned.", ["assigned_by_type"])
PROXY_ACTIONS = Counter("billing_proxy_actions_total", "Actions proxies took for patients.",
                        ["action_type"])

# --- Stripe-driven (webhooks) ---------------------------------------------------------------

PAYMENTS_SUCCEEDED = Counter("billing_payments_succeeded_total", "Payments that succeeded.",
                             ["owner_type", "plan"])
PAYMENTS_FAILED = Counter("billing_payments_failed_total", "Payment attempts that failed.",
                          ["owner_type", "reason"])
PAYMENT_FINAL_FAILURES = Counter("billing_payment_final_failures_total",
                                 "Payments that failed their final attempt.", ["owner_type"])
PAYMENT_AMOUNT = Histogram("billing_payment_amount_cents", "Paid amounts in minor units.",
                           ["owner_type"], buckets=AMOUNT_BUCKETS)
SUBSCRIPTIONS_CREATED = Counter("billing_subscriptions_created_total", "Subscriptions started.",
                                ["owner_type", "plan"])
WEBHOOKS_RECEIVED = Counter("billing_webhooks_received_total", "Verified webhook events.",
                            ["event_type"])
WEBHOOKS_FAILED = Counter("billing_webhooks_failed_total", "Webhook events whose handling failed.",
                          ["event_type"])
WEBHOOKS_REJECTED = Counter("billing_webhooks_rejected_total", "Webhook deliveries refused.",
                            ["reason"])
WEBHOOK_SECONDS = Histogram("billing_webhook_processing_seconds", "Webhook handling time.",
                            ["event_type"])

# --- the audit trail and alerts -------------------------------------------------------------

AUDIT_WRITES = Counter("billing_audit_writes_total", "Audit rows committed.", ["outcome"])
AUDIT_WRITE_FAILURES = Counter("audit_write_failures_total",
                               "Audit rows that could not be written (the operation failed too).")
ALERTS_SENT = Counter("billing_alerts_sent_total", "Alert e-mails delivered.", ["kind"])

PAYMENT_FAILURE_REASONS = frozenset(_REASONS)
payment_failure_reason = labels.payment_failure_reason


@dataclass(slots=True)
class _Switch:
    """Whether billing metrics are on, and the plan codes that may appear as labels.

    ``None`` means "not configured yet": the first use reads the process settings, so a worker
    or CLI that never builds the app still honours ``BILLWATCH_ENABLE_BILLING_METRICS``.
    """

    enabled: bool | None = None
    plans: frozenset[str] | None = None

    def load(self) -> None:
        if self.enabled is None or self.plans is None:
            configure(get_settings())


_switch = _Switch()


def configure(settings: Settings) -> None:
    """Apply the settings; with metrics on, every known label combination starts at zero.

    Pre-created series let dashboards and rules see a 0 instead of "no data" before the first
    event, which is what makes ``rate()`` and ``increase()`` meaningful from the start.
    """
    _switch.enabled = settings.enable_billing_metrics
    _switch.plans = frozenset(plan.code for plan in settings.plans)
    if _switch.enabled:
        _initialise_series(sorted(_switch.plans))


def is_enabled() -> bool:
    _switch.load()
    return bool(_switch.enabled)


def plan_label(code: str | None) -> str:
    _switch.load()
    return labels.closed(code, _switch.plans or ())


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
    for event_type in labels.WEBHOOK_EVENT_TYPES:
        WEBHOOKS_RECEIVED.labels(event_type=event_type)
        WEBHOOKS_FAILED.labels(event_type=event_type)
        WEBHOOK_SECONDS.labels(event_type=event_type)
    for reason in labels.WEBHOOK_REJECT_REASONS:
        WEBHOOKS_REJECTED.labels(reason=reason)
    for outcome in labels.AUDIT_OUTCOMES:
        AUDIT_WRITES.labels(outcome=outcome)
    for kind in labels.ALERT_KINDS:
        ALERTS_SENT.labels(kind=kind)


# --- user-initiated operations --------------------------------------------------------------

def checkout_created(owner_type: str, plan: str, *, by_proxy: bool) -> None:
    if not is_enabled():
        return
    CHECKOUTS.labels(owner_type=labels.owner_type(owner_type), plan=plan_label(plan)).inc()
    if by_proxy:
        PROXY_ACTIONS.labels(action_type="checkout").inc()


def subscription_cancelled(owner_type: str, cancelled_by: str) -> None:
    if not is_enabled():
        return
    who = labels.closed(cancelled_by, labels.CANCELLED_BY)
    SUBSCRIPTIONS_CANCELLED.labels(owner_type=labels.owner_type(owner_type), cancelled_by=who).inc()
    if who == "proxy":
        PROXY_ACTIONS.labels(action_type="cancel").inc()


def refund_issued(reason_category: str, amount_cents: int) -> None:
    if not is_enabled():
        return
    REFUNDS.labels(reason_category=labels.reason_category(reason_category)).inc()
    REFUND_AMOUNT.observe(amount_cents)


def manager_assigned(assigned_by_type: str) -> None:
    if not is_enabled():
        return
    by = labels.closed(assigned_by_type, labels.ASSIGNED_BY_TYPES)
    MANAGER_ASSIGNMENTS.labels(assigned_by_type=by).inc()


def proxy_viewed() -> None:
    if is_enabled():
        PROXY_ACTIONS.labels(action_type="view").inc()


# --- Stripe-driven (webhooks) ---------------------------------------------------------------

def payment_succeeded(owner_type: str, plan: str, amount_cents: int) -> None:
    if not is_enabled():
        return
    owner = labels.owner_type(owner_type)
    PAYMENTS_SUCCEEDED.labels(owner_type=owner, plan=plan_label(plan)).inc()
    PAYMENT_AMOUNT.labels(owner_type=owner).observe(amount_cents)


def payment_failed(owner_type: str, code: str | None, *, final: bool) -> None:
    if not is_enabled():
        return
    owner = labels.owner_type(owner_type)
    PAYMENTS_FAILED.labels(owner_type=owner, reason=payment_failure_reason(code)).inc()
    if final:
        PAYMENT_FINAL_FAILURES.labels(owner_type=owner).inc()


def subscription_created(owner_type: str, plan: str) -> None:
    if is_enabled():
        SUBSCRIPTIONS_CREATED.labels(owner_type=labels.owner_type(owner_type),
                                     plan=plan_label(plan)).inc()


def webhook_received(event_type: str | None) -> None:
    if is_enabled():
        WEBHOOKS_RECEIVED.labels(event_type=labels.webhook_event_type(event_type)).inc()


def webhook_failed(event_type: str | None) -> None:
    if is_enabled():
        WEBHOOKS_FAILED.labels(event_type=labels.webhook_event_type(event_type)).inc()


def webhook_rejected(reason: str) -> None:
    if is_enabled():
        WEBHOOKS_REJECTED.labels(reason=labels.closed(reason, labels.WEBHOOK_REJECT_REASONS)).inc()


def webhook_processed(event_type: str | None, seconds: float) -> None:
    if is_enabled():
        WEBHOOK_SECONDS.labels(event_type=labels.webhook_event_type(event_type)).observe(seconds)


# --- the audit trail and alerts -------------------------------------------------------------

def audit_written(outcome: str) -> None:
    if is_enabled():
        AUDIT_WRITES.labels(outcome=labels.closed(outcome, labels.AUDIT_OUTCOMES)).inc()


def audit_write_failed() -> None:
    if is_enabled():
        AUDIT_WRITE_FAILURES.inc()


def alert_sent(kind: str) -> None:
    if is_enabled():
        ALERTS_SENT.labels(kind=labels.alert_kind(kind)).inc()
