"""The Prometheus rules file, rendered from the facts the app's own alerts use.

Six alerts exist twice: the app raises them from the audit trail and its hourly checks
(:mod:`billwatch.alerts.rules`, :mod:`billwatch.jobs.anomaly`), and Prometheus evaluates them
from the metrics. Both read their thresholds from :class:`~billwatch.config.Settings` and their
severities from :data:`billwatch.alerts.raising.SPECS`, so the two can only disagree where the
mechanism differs (a rolling window instead of a UTC day), never by a number. Rules about what
the app cannot see from inside (whether it is scraped, how old its backlog is) are written here
too, so ``deploy/prometheus/rules/billwatch.rules.yml`` has one author.

The YAML is written by hand (a handful of shapes) so the package needs no YAML library and the
output is byte-for-byte stable; the tests parse it back and run ``promtool`` on it.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from billwatch.alerts.models import AlertKind, Severity
from billwatch.alerts.raising import spec_for
from billwatch.config import Settings

RULES_PATH = "deploy/prometheus/rules/billwatch.rules.yml"
TESTS_PATH = "deploy/prometheus/tests/billwatch.rules.test.yml"
WEEK_TESTS_PATH = "deploy/prometheus/tests/billwatch.rules.week.test.yml"
"""The cases that need a week of history, on a coarser step so promtool checks them quickly."""


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    expr: str


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One alerting rule; ``fact`` names where its threshold comes from (docs/monitoring.md)."""

    name: str
    expr: str
    severity: Severity
    summary: str
    description: str
    fact: str
    wait: str | None = None
    """Prometheus's ``for``: how long the condition must hold before it fires."""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    rules: Sequence[Record | AlertRule]


def number(value: float) -> str:
    """A threshold as PromQL and people write it: ``3`` rather than ``3.0``, ``0.05``."""
    return format(value, "g")


def percent(ratio: float) -> str:
    return f"{ratio * 100:g}%"


# --- recording rules ------------------------------------------------------------------------

def _attempted(name: str) -> str:
    """Succeeded + failed, and either side alone when the other has no series yet."""
    ok, failed = f"job:billing_payments_succeeded:{name}", f"job:billing_payments_failed:{name}"
    return f"({ok} + {failed})\n  or {ok}\n  or {failed}"


def recording_rules() -> Group:
    window = "7d] offset 1h"
    return Group("billwatch.recording", [
        Record("job:billing_payments_succeeded:increase1h",
               "sum by (job) (increase(billing_payments_succeeded_total[1h]))"),
        Record("job:billing_payments_failed:increase1h",
               "sum by (job) (increase(billing_payments_failed_total[1h]))"),
        Record("job:billing_payments_attempted:increase1h", _attempted("increase1h")),
        Record("job:billing_payment_success:ratio_1h",
               "(job:billing_payments_succeeded:increase1h"
               " or job:billing_payments_failed:increase1h * 0)\n"
               "  / job:billing_payments_attempted:increase1h"),
        Record("job:billing_payment_failure:ratio_1h",
               "(job:billing_payments_failed:increase1h"
               " or job:billing_payments_succeeded:increase1h * 0)\n"
               "  / job:billing_payments_attempted:increase1h"),
        # The 7 days before the checked hour: the app's baseline for the failure rate alert.
        Record("job:billing_payments_succeeded:increase7d_before1h",
               f"sum by (job) (increase(billing_payments_succeeded_total[{window}))"),
        Record("job:billing_payments_failed:increase7d_before1h",
               f"sum by (job) (increase(billing_payments_failed_total[{window}))"),
        Record("job:billing_payments_attempted:increase7d_before1h",
               _attempted("increase7d_before1h")),
        Record("job:billing_payment_failure:ratio_7d_before1h",
               "(job:billing_payments_failed:increase7d_before1h"
               " or job:billing_payments_succeeded:increase7d_before1h * 0)\n"
               "  / (job:billing_payments_attempted:increase7d_before1h > 0)"),
    ])


# --- alerts the app raises too --------------------------------------------------------------

def app_alerts(settings: Settings) -> list[AlertRule]:
    """The alerts :mod:`billwatch.alerts` raises, with the same thresholds and severities."""
    final = settings.alert_payment_failure_attempts
    refunds = settings.alert_refunds_per_day
    churn = settings.alert_churn_rate
    factor = settings.alert_payment_failure_rate_factor
    min_attempts = settings.alert_payment_failure_min_attempts
    min_increase = settings.alert_payment_failure_rate_min_increase
    webhook = spec_for(AlertKind.WEBHOOK_FAILURE).severity
    baseline = ("(job:billing_payment_failure:ratio_7d_before1h"
                " or job:billing_payment_failure:ratio_1h * 0)")
    return [
        AlertRule(
            "BillwatchWebhookFailures",
            "sum by (job, event_type) (increase(billing_webhooks_failed_total[5m])) > 0",
            webhook, "Stripe webhooks of type {{ $labels.event_type }} are failing",
            "{{ $value | printf \"%.0f\" }} {{ $labels.event_type }} webhook(s) failed in the last"
            " 5 minutes. The events are stored as failed; fix the cause, then replay them"
            " (billwatch webhooks replay). Local billing state lags Stripe until then.",
            "any failure, as the app's webhook_failure alert (one key per event type)"),
        AlertRule(
            "BillwatchWebhookRejections",
            "sum by (job, reason) (increase(billing_webhooks_rejected_total[5m])) > 0",
            webhook, "Webhook deliveries rejected ({{ $labels.reason }})",
            "{{ $value | printf \"%.0f\" }} webhook deliveries were rejected for"
            " {{ $labels.reason }} in the last 5 minutes. Either the signing secret is out of"
            " date (real Stripe events are being dropped) or someone is posting forged events.",
            "any rejection, as the app's webhook_failure alert (one key per reject reason)"),
        AlertRule(
            "BillwatchPaymentFailureSpike",
            "job:billing_payment_failure:ratio_1h\n"
            f"  >= {number(factor)} * {baseline}\n"
            "and on (job)\n"
            "  job:billing_payment_failure:ratio_1h\n"
            f"    - {baseline}\n"
            f"  >= {number(min_increase)}\n"
            "and on (job)\n"
            f"  job:billing_payments_attempted:increase1h >= {number(min_attempts)}",
            spec_for(AlertKind.PAYMENT_FAILURE_RATE).severity,
            "Payment failure rate far above its 7-day baseline",
            "{{ $value | humanizePercentage }} of payment attempts failed over the last hour:"
            f" at least {number(factor)} times the rate of the 7 days before and"
            f" {percent(min_increase)} above it, over at least {number(min_attempts)} attempts."
            " Check the failures by reason on the Payments dashboard and Stripe's status page.",
            "BILLWATCH_ALERT_PAYMENT_FAILURE_RATE_FACTOR, _MIN_INCREASE and _MIN_ATTEMPTS"),
        AlertRule(
            "BillwatchPaymentFinalFailure",
            "sum by (job, owner_type) (increase(billing_payment_final_failures_total[1h])) > 0",
            spec_for(AlertKind.PAYMENT_FINAL_FAILURE).severity,
            f"A {{{{ $labels.owner_type }}}} payment failed its final attempt ({final})",
            "{{ $value | printf \"%.0f\" }} {{ $labels.owner_type }} payment(s) failed attempt"
            f" {final} or later in the last hour. The subscription will lapse unless billing"
            " staff reach the customer.",
            "BILLWATCH_ALERT_PAYMENT_FAILURE_ATTEMPTS (which attempt the metric counts as final)"),
        AlertRule(
            "BillwatchRefundsHigh",
            # Counts are whole: >= N + 1 is "more than N" without tripping on extrapolation.
            f"sum by (job) (increase(billing_refunds_issued_total[1d])) >= {refunds + 1}",
            spec_for(AlertKind.REFUNDS_HIGH).severity,
            f"More than {refunds} refunds issued in the last 24 hours",
            "{{ $value | printf \"%.0f\" }} refunds were issued in the last 24 hours"
            f" (threshold {refunds}). See the Refunds dashboard for the reason categories.",
            "BILLWATCH_ALERT_REFUNDS_PER_DAY"),
        AlertRule(
            "BillwatchMonthlyChurnHigh",
            f"billing_monthly_customer_churn_ratio > {number(churn)}",
            spec_for(AlertKind.CHURN_HIGH).severity,
            f"Monthly customer churn is above {percent(churn)}",
            "Monthly customer churn is {{ $value | humanizePercentage }} according to the"
            f" latest daily metrics run (threshold {percent(churn)}).",
            "BILLWATCH_ALERT_CHURN_RATE"),
        AlertRule(
            "BillwatchAuditWriteFailures",
            "sum by (job, instance) (increase(audit_write_failures_total[5m])) > 0",
            spec_for(AlertKind.AUDIT_WRITE_FAILURE).severity,
            "Audit log writes are failing on {{ $labels.instance }}",
            "{{ $value | printf \"%.0f\" }} audit log write(s) failed on {{ $labels.instance }}"
            " in the last 5 minutes. Billing actions without an audit record break the audit"
            " trail; investigate the database immediately.",
            "any failure, as the app's audit_write_failure alert"),
    ]


# --- alerts only Prometheus can raise -------------------------------------------------------

def outside_alerts(settings: Settings) -> list[AlertRule]:
    """What the app cannot alert on itself: being scraped, and a backlog nobody works off."""
    backlog = settings.alert_webhook_backlog_seconds
    return [
        AlertRule(
            "BillwatchWebhookBacklog",
            f"max by (job) (billwatch_webhook_oldest_unprocessed_age_seconds) > {backlog}",
            Severity.ERROR, "Stripe events are waiting to be processed",
            "The oldest unprocessed Stripe event has waited {{ $value | humanizeDuration }}"
            f" (threshold {backlog} s). Nothing is working off the inbox, or it cannot keep up:"
            " check the workers and the failed events.",
            "BILLWATCH_ALERT_WEBHOOK_BACKLOG_SECONDS"),
        AlertRule(
            "BillwatchScrapeFailing", 'up{job="billwatch"} == 0', Severity.CRITICAL,
            "Prometheus cannot scrape billwatch on {{ $labels.instance }}",
            "The billwatch target {{ $labels.instance }} has been down or returning errors on"
            " /metrics for more than 2 minutes. Billing metrics and alerts are blind.",
            "Prometheus only (scrape health)", wait="2m"),
        AlertRule(
            "BillwatchTargetMissing", 'absent(up{job="billwatch"})', Severity.CRITICAL,
            "No billwatch scrape target is known to Prometheus",
            "Prometheus has had no billwatch target for more than 2 minutes. The scrape"
            " configuration or service discovery lost the service, so no billing alert can fire.",
            "Prometheus only (scrape health)", wait="2m"),
    ]


def groups(settings: Settings) -> list[Group]:
    return [recording_rules(),
            Group("billwatch.alerts", [*app_alerts(settings), *outside_alerts(settings)])]


# --- YAML -----------------------------------------------------------------------------------

HEADER = f"""\
# Recording and alerting rules for billwatch.
#
# Generated by `billwatch monitoring render-rules` from the settings and alert kinds the
# app's own alerts use (billwatch/monitoring/prometheus_rules.py): edit there, not here.
#
# Counters are per process, so they are summed across instances. The gauges
# computed from the database (MRR, churn, the backlog, ...) are exported
# identically by every replica, so they are never summed across instances.
#
# Unit tests: {TESTS_PATH} and {WEEK_TESTS_PATH}
#   promtool test rules {TESTS_PATH} {WEEK_TESTS_PATH}
"""


def _scalar(text: str) -> str:
    """A single-quoted YAML scalar, or double-quoted (JSON's escapes are YAML's) if it has a '."""
    return f"'{text}'" if "'" not in text else json.dumps(text, ensure_ascii=False)


TEMPLATE_ACTION = re.compile(r"\{\{.*?\}\}")
NO_BREAK = "\x00"


def _block(key: str, text: str, indent: str) -> Iterator[str]:
    """``key: |-`` with ``text``'s lines, or one quoted line when it is a single line."""
    if "\n" not in text:
        yield f"{indent}{key}: {_scalar(text)}"
        return
    yield f"{indent}{key}: |-"
    yield from (f"{indent}  {line}" for line in text.splitlines())


def _folded(key: str, text: str, indent: str) -> Iterator[str]:
    """``key: >-`` with ``text`` wrapped; folding joins the lines back with single spaces."""
    if "\n" in text or "  " in text or text != text.strip():
        raise ValueError(f"{key} must be one line with single spaces: {text!r}")
    yield f"{indent}{key}: >-"
    # A template action ({{ $value | ... }}) stays on one line: its spaces are not break points.
    kept = TEMPLATE_ACTION.sub(lambda match: match.group(0).replace(" ", NO_BREAK), text)
    for line in textwrap.wrap(kept, 84 - len(indent), break_long_words=False,
                              break_on_hyphens=False):
        yield f"{indent}  {line.replace(NO_BREAK, ' ')}"


def _rule_lines(rule: Record | AlertRule) -> Iterator[str]:
    if isinstance(rule, Record):
        yield f"      - record: {rule.name}"
        yield from _block("expr", rule.expr, "        ")
        return
    yield f"      - alert: {rule.name}"
    yield from _block("expr", rule.expr, "        ")
    if rule.wait:
        yield f"        for: {rule.wait}"
    yield "        labels:"
    for name, label in sorted({**rule.labels, "severity": rule.severity.value}.items()):
        yield f"          {name}: {label}"
    yield "        annotations:"
    yield from _block("summary", rule.summary, "          ")
    yield from _folded("description", rule.description, "          ")


def render(settings: Settings) -> str:
    """The whole rules file for ``settings``."""
    lines = [HEADER.rstrip("\n"), "", "groups:"]
    for index, group in enumerate(groups(settings)):
        if index:
            lines.append("")
        lines += [f"  - name: {group.name}", "    rules:"]
        for rule in group.rules:
            lines.extend(_rule_lines(rule))
    return "\n".join(lines) + "\n"


def shipped_settings() -> Settings:
    """The defaults alone, as the committed rules file is rendered (no environment, no .env)."""
    return Settings.model_construct()
