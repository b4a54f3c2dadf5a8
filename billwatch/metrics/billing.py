"""Billing counters and histograms, moved only after the transaction commits.

Label values come from closed sets (plan codes, owner types, reason categories), never ids
or free text, so the series count stays bounded.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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

# --- the audit trail ------------------------------------------------------------------------

AUDIT_WRITES = Counter("billing_audit_writes_total", "Audit rows committed.", ["outcome"])
AUDIT_WRITE_FAILURES = Counter("audit_write_failures_total",
                               "Audit rows that could not be written (the operation failed too).")

PAYMENT_FAILURE_REASONS = frozenset({"card_declined", "insufficient_funds", "expired_card",
                                     "incorrect_cvc", "processing_error",
                                     "authentication_required", "other"})


def payment_failure_reason(code: str | None) -> str:
    """Map a Stripe decline or failure code onto the closed label set."""
    return code if code in PAYMENT_FAILURE_REASONS else "other"


def payment_succeeded(owner_type: str, plan: str, amount_cents: int) -> None:
    PAYMENTS_SUCCEEDED.labels(owner_type=owner_type, plan=plan).inc()
    PAYMENT_AMOUNT.labels(owner_type=owner_type).observe(amount_cents)


def payment_failed(owner_type: str, code: str | None, *, final: bool) -> None:
    PAYMENTS_FAILED.labels(owner_type=owner_type, reason=payment_failure_reason(code)).inc()
    if final:
        PAYMENT_FINAL_FAILURES.labels(owner_type=owner_type).inc()


def subscription_created(owner_type: str, plan: str) -> None:
    SUBSCRIPTIONS_CREATED.labels(owner_type=owner_type, plan=plan).inc()
