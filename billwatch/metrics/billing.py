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
