"""Every counter and histogram of one runtime, in its own registry, moved after commit.

Callers register these methods with ``after_commit(session, ...)``, so a rolled-back operation
never counts. Label values come from closed sets (plan codes, owner types, reason categories,
handled Stripe event types), never ids or free text, so the series count stays bounded; the
billing metrics (:mod:`billwatch.metrics.switched`) map anything else to ``other`` and go silent
when ``BILLWATCH_ENABLE_BILLING_METRICS=false``, so callers never check the setting themselves.
The HTTP, anchor, refusal and reconciliation counters describe the service, not billing, and
always count. One :class:`BillingMetrics` belongs to one runtime (:mod:`billwatch.runtime`):
two apps in a process, or a test and its app, never count into each other's series.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from billwatch.config import Settings
from billwatch.metrics import labels
from billwatch.metrics.switched import BillingCounter, BillingHistogram, Normaliser, Switch, one_of

AMOUNT_BUCKETS = (1000, 2500, 5000, 10000, 25000, 50000, 100000)

payment_failure_reason = labels.payment_failure_reason


class BillingMetrics:
    """The metrics of one runtime, registered in ``registry`` (a fresh one unless given)."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.switch = switch = Switch.of(settings)
        reg = self.registry
        owner = {"owner_type": labels.owner_type}
        owner_plan = {**owner, "plan": switch.plan}
        event = {"event_type": labels.webhook_event_type}

        def counter(name: str, doc: str, names: list[str] | None = None,
                    closed: Mapping[str, Normaliser] | None = None) -> BillingCounter:
            return BillingCounter(name, doc, names or [], switch=switch, closed=closed,
                                  registry=reg)

        def histogram(name: str, doc: str, names: list[str] | None = None,
                      closed: Mapping[str, Normaliser] | None = None,
                      buckets: tuple[float, ...] = Histogram.DEFAULT_BUCKETS) -> BillingHistogram:
            return BillingHistogram(name, doc, names or [], switch=switch, closed=closed,
                                    buckets=buckets, registry=reg)

        # --- user-initiated operations
        self.checkouts = counter("billing_checkouts_created_total", "Checkout sessions created.",
                                 ["owner_type", "plan"], owner_plan)
        self.subscriptions_cancelled = counter(
            "billing_subscriptions_cancelled_total", "Subscriptions cancelled.",
            ["owner_type", "cancelled_by"], {**owner, "cancelled_by": one_of(labels.CANCELLED_BY)})
        self.refunds = counter("billing_refunds_issued_total", "Refunds issued.",
                               ["reason_category"], {"reason_category": labels.reason_category})
        self.refund_amount = histogram("billing_refund_amount_cents",
                                       "Refund amounts in minor units.", buckets=AMOUNT_BUCKETS)
        self.manager_assignments = counter(
            "billing_manager_assignments_total", "Billing managers assigned.", ["assigned_by_type"],
            {"assigned_by_type": one_of(labels.ASSIGNED_BY_TYPES)})
        self.proxy_actions = counter(
            "billing_proxy_actions_total", "Actions proxies took for patients.", ["action_type"],
            {"action_type": one_of(labels.PROXY_ACTION_TYPES)})
        # --- Stripe-driven (webhooks)
        self.payments_succeeded = counter("billing_payments_succeeded_total",
                                          "Payments that succeeded.", ["owner_type", "plan"],
                                          owner_plan)
        self.payments_failed = counter(
            "billing_payments_failed_total", "Payment attempts that failed.",
            ["owner_type", "reason"], {**owner, "reason": labels.payment_failure_reason})
        self.payment_final_failures = counter("billing_payment_final_failures_total",
                                              "Payments that failed their final attempt.",
                                              ["owner_type"], owner)
        self.payment_amount = histogram("billing_payment_amount_cents",
                                        "Paid amounts in minor units.", ["owner_type"], owner,
                                        buckets=AMOUNT_BUCKETS)
        self.subscriptions_created = counter("billing_subscriptions_created_total",
                                             "Subscriptions started.", ["owner_type", "plan"],
                                             owner_plan)
        self.webhooks_received = counter("billing_webhooks_received_total",
                                         "Verified webhook events.", ["event_type"], event)
        self.webhooks_failed = counter("billing_webhooks_failed_total",
                                       "Webhook events whose handling failed.", ["event_type"],
                                       event)
        self.webhooks_rejected = counter(
            "billing_webhooks_rejected_total", "Webhook deliveries refused.", ["reason"],
            {"reason": one_of(labels.WEBHOOK_REJECT_REASONS)})
        self.webhook_seconds = histogram("billing_webhook_processing_seconds",
                                         "Webhook handling time.", ["event_type"], event)
        self.webhook_retries = counter(
            "billing_webhook_retries_total",
            "Handler attempts that failed and were scheduled to run again.", ["event_type"], event)
        # --- the audit trail and alerts
        self.audit_writes = counter("billing_audit_writes_total", "Audit rows committed.",
                                    ["outcome"], {"outcome": one_of(labels.AUDIT_OUTCOMES)})
        self.audit_write_failures = counter(
            "audit_write_failures_total",
            "Audit rows that could not be written (the operation failed too).")
        self.alerts_sent = counter("billing_alerts_sent_total", "Alert e-mails delivered.",
                                   ["kind"], {"kind": labels.alert_kind})
        # --- the service itself: on whatever the billing switch says
        self.webhooks_missed = Counter(
            "billing_webhooks_missed_total",
            "Stripe events found by reconciliation that no webhook delivery had brought.",
            ["event_type"], registry=reg)
        self.anonymous_refusals = Counter(
            "audit_anonymous_refusals_total",
            "Requests refused to callers with no valid identity (every one is counted).",
            ["source"], registry=reg)
        self.anchor_failures = Counter(
            "audit_anchor_failures_total",
            "Checkpoints an anchor did not accept (sent again with the next one).", ["anchor"],
            registry=reg)
        self.anchor_sent = Counter("audit_anchor_sent_total", "Checkpoints an anchor accepted.",
                                   ["anchor"], registry=reg)
        self.http_requests = Counter("billing_http_requests_total",
                                     "HTTP requests by route template and status.",
                                     ["method", "route", "status"], registry=reg)
        self.http_seconds = Histogram("billing_http_request_duration_seconds",
                                      "HTTP request duration by route template.",
                                      ["method", "route"], registry=reg)
        self.http_in_progress = Gauge("billing_http_requests_in_progress",
                                      "HTTP requests being served.", multiprocess_mode="livesum",
                                      registry=reg)
        if switch.is_enabled():
            self._initialise_series(sorted(switch.plans))

    def _initialise_series(self, plans: list[str]) -> None:
        """With metrics on, every known label combination starts at zero.

        Pre-created series let dashboards and rules see a 0 instead of "no data" before the
        first event, which is what makes ``rate()`` and ``increase()`` meaningful from the start.
        """
        for owner in labels.OWNER_TYPES:
            for plan in [*plans, labels.OTHER]:
                self.checkouts.labels(owner_type=owner, plan=plan)
                self.payments_succeeded.labels(owner_type=owner, plan=plan)
                self.subscriptions_created.labels(owner_type=owner, plan=plan)
            for reason in labels.PAYMENT_FAILURE_REASONS:
                self.payments_failed.labels(owner_type=owner, reason=reason)
            for who in labels.CANCELLED_BY:
                self.subscriptions_cancelled.labels(owner_type=owner, cancelled_by=who)
            self.payment_final_failures.labels(owner_type=owner)
            self.payment_amount.labels(owner_type=owner)
        for category in labels.REFUND_REASON_CATEGORIES:
            self.refunds.labels(reason_category=category)
        for by in labels.ASSIGNED_BY_TYPES:
            self.manager_assignments.labels(assigned_by_type=by)
        for action in labels.PROXY_ACTION_TYPES:
            self.proxy_actions.labels(action_type=action)
        for event_type in labels.webhook_event_types():
            self.webhooks_received.labels(event_type=event_type)
            self.webhooks_failed.labels(event_type=event_type)
            self.webhook_seconds.labels(event_type=event_type)
        for reason in labels.WEBHOOK_REJECT_REASONS:
            self.webhooks_rejected.labels(reason=reason)
        for outcome in labels.AUDIT_OUTCOMES:
            self.audit_writes.labels(outcome=outcome)
        for kind in labels.alert_kinds():
            self.alerts_sent.labels(kind=kind)

    # --- user-initiated operations

    def checkout_created(self, owner_type: str, plan: str, *, by_proxy: bool) -> None:
        self.checkouts.labels(owner_type=owner_type, plan=plan).inc()
        if by_proxy:
            self.proxy_actions.labels(action_type="checkout").inc()

    def subscription_cancelled(self, owner_type: str, cancelled_by: str) -> None:
        self.subscriptions_cancelled.labels(owner_type=owner_type, cancelled_by=cancelled_by).inc()
        if cancelled_by == "proxy":
            self.proxy_actions.labels(action_type="cancel").inc()

    def refund_issued(self, reason_category: str, amount_cents: int) -> None:
        self.refunds.labels(reason_category=reason_category).inc()
        self.refund_amount.observe(amount_cents)

    def manager_assigned(self, assigned_by_type: str) -> None:
        self.manager_assignments.labels(assigned_by_type=assigned_by_type).inc()

    def proxy_viewed(self) -> None:
        self.proxy_actions.labels(action_type="view").inc()

    # --- Stripe-driven (webhooks)

    def payment_succeeded(self, owner_type: str, plan: str, amount_cents: int) -> None:
        self.payments_succeeded.labels(owner_type=owner_type, plan=plan).inc()
        self.payment_amount.labels(owner_type=owner_type).observe(amount_cents)

    def payment_failed(self, owner_type: str, code: str | None, *, final: bool) -> None:
        self.payments_failed.labels(owner_type=owner_type, reason=code).inc()
        if final:
            self.payment_final_failures.labels(owner_type=owner_type).inc()

    def subscription_created(self, owner_type: str, plan: str) -> None:
        self.subscriptions_created.labels(owner_type=owner_type, plan=plan).inc()

    # --- the audit trail and alerts

    def audit_written(self, outcome: str) -> None:
        self.audit_writes.labels(outcome=outcome).inc()

    def audit_write_failed(self) -> None:
        self.audit_write_failures.inc()

    def alert_sent(self, kind: str) -> None:
        self.alerts_sent.labels(kind=kind).inc()
