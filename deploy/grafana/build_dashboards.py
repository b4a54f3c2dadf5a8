#!/usr/bin/env python3
"""Generate the billwatch Grafana dashboards with Grafana's foundation SDK.

    .venv/bin/python deploy/grafana/build_dashboards.py            # rewrite deploy/grafana/dashboards/
    .venv/bin/python deploy/grafana/build_dashboards.py -o DIR     # write somewhere else
    .venv/bin/python deploy/grafana/build_dashboards.py --check    # exit 1 if the checked-in JSON is stale

The JSON files are checked in next to this script; edit this script, not the JSON, and
regenerate. Panels and dashboards are built with ``grafana-foundation-sdk`` (Grafana Labs'
typed builders, pinned in the ``dev`` extra), so a field Grafana does not know is a type
error here rather than a panel that silently ignores it.

Conventions:

* Every panel queries the provisioned Prometheus datasource (uid ``billwatch-prometheus``).
* Counters are per process, so they are summed across instances. Gauges computed from the
  database are exported identically by every replica, so they are deduplicated with
  ``max by (...)`` instead of being summed.
* Money metrics are integer cents; queries divide by 100 and display ``MONEY_UNIT``.
* Expressions may use Grafana's ``$__rate_interval`` and ``$__range``; anything evaluating
  them directly against Prometheus has to substitute a duration first.
* Each panel carries ``"billwatch": {"core": true|false}`` (Grafana ignores the field; it is
  added to the SDK's JSON, which has no place for it). Core panels must return data from any
  scraped billwatch instance that has at least one paid subscription and one processed
  webhook; the others depend on rarer events (refunds, failures, the daily metrics job,
  recording rules) or on metrics a deployment may not export yet (the backlog gauges).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as viz
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="billwatch-prometheus")
# Amounts are divided by 100 in the queries; the unit matches the default billing
# currency (usd). Change it here if the service bills in another currency.
MONEY_UNIT = "currencyUSD"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "dashboards"

Json = dict[str, Any]
PanelBuilder = timeseries.Panel | stat.Panel | bargauge.Panel
Step = tuple[str, float]


@dataclass(frozen=True)
class Tile:
    """A panel and whether it is core: the SDK's panel model has no field for the flag."""

    panel: PanelBuilder
    core: bool


# --- query helpers -----------------------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False,
           fmt: PromQueryFormat | None = None) -> prometheus.Dataquery:
    """One Prometheus query; refIds are assigned when the panel is built."""
    query = prometheus.Dataquery().datasource(DATASOURCE).expr(expr).legend_format(legend)
    query = query.instant() if instant else query.range()
    return query.format(fmt) if fmt is not None else query


def money(expr: str) -> str:
    """Cents to major currency units."""
    return f"({expr}) / 100"


def db_gauge(metric: str, *labels: str) -> str:
    """A gauge computed from the database, deduplicated across replicas."""
    if not labels:
        return f"max({metric})"
    return f"max by ({', '.join(labels)}) ({metric})"


def quantile(q: float, bucket_metric: str, window: str, *labels: str) -> str:
    """A histogram quantile summed across instances, optionally kept apart by ``labels``."""
    by = ", ".join((*labels, "le"))
    return f"histogram_quantile({q}, sum by ({by}) (rate({bucket_metric}[{window}])))"


def ratio_with_missing_sides(good: str, bad: str) -> str:
    """good / (good + bad), where either side may have no series yet.

    With only failures the ratio is 0; with neither side there is no result.
    """
    return f"({good} or {bad} * 0) / (({good} + {bad}) or {good} or {bad})"


# --- panel helpers -----------------------------------------------------------


def thresholds(*steps: Step) -> dashboard.ThresholdsConfig:
    """Green from the bottom, then each (color, value) step."""
    return (dashboard.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps([model.Threshold(value=None, color="green")]
                   + [model.Threshold(value=value, color=color) for color, value in steps]))


def reduce_to_last() -> common.ReduceDataOptions:
    """Single-value panels show the last non-null point of the range."""
    return common.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False)


def _frame(panel: PanelBuilder, title: str, description: str,
           targets: list[prometheus.Dataquery], *, unit: str, width: int,
           height: int) -> None:
    """What every panel shares: text, datasource, unit, size and refIds A, B, ..."""
    panel.title(title).description(description).datasource(DATASOURCE).unit(unit)
    panel.span(width).height(height)
    panel.targets([query.ref_id(chr(ord("A") + index)) for index, query in enumerate(targets)])


def timeseries_panel(
    title: str,
    description: str,
    targets: list[prometheus.Dataquery],
    *,
    unit: str = "short",
    core: bool = False,
    stack: bool = False,
    limit: Step | None = None,
    min_value: float | None = 0,
    width: int = 12,
    height: int = 8,
) -> Tile:
    """A time series; ``limit`` draws a dashed threshold line (e.g. an alert threshold)."""
    panel = (
        timeseries.Panel()
        .draw_style(viz.GraphDrawStyle.LINE).line_width(1).fill_opacity(10)
        .show_points(viz.VisibilityMode.NEVER).span_nulls(False)
        .stacking(common.StackingConfig()
                  .mode(viz.StackingMode.NORMAL if stack else viz.StackingMode.NONE).group("A"))
        .thresholds_style(common.GraphThresholdsStyleConfig().mode(
            viz.GraphThresholdsStyleMode.DASHED if limit else viz.GraphThresholdsStyleMode.OFF))
        .color_scheme(dashboard.FieldColor().mode(model.FieldColorModeId.PALETTE_CLASSIC))
        .thresholds(thresholds(*([limit] if limit else [])))
        .legend(common.VizLegendOptions().display_mode(viz.LegendDisplayMode.LIST)
                .placement(viz.LegendPlacement.BOTTOM).show_legend(True))
        .tooltip(common.VizTooltipOptions().mode(viz.TooltipDisplayMode.MULTI)
                 .sort(viz.SortOrder.DESCENDING))
    )
    if min_value is not None:
        panel.min(min_value)
    _frame(panel, title, description, targets, unit=unit, width=width, height=height)
    return Tile(panel, core)


def stat_panel(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str = "short",
    core: bool = False,
    steps: tuple[Step, ...] = (),
    decimals: int | None = None,
    width: int = 6,
) -> Tile:
    """One number with its sparkline, colored by ``steps``."""
    panel = (
        stat.Panel()
        .color_scheme(dashboard.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .thresholds(thresholds(*steps))
        .reduce_options(reduce_to_last())
        .color_mode(viz.BigValueColorMode.VALUE).graph_mode(viz.BigValueGraphMode.AREA)
        .justify_mode(viz.BigValueJustifyMode.AUTO).orientation(viz.VizOrientation.AUTO)
        .text_mode(viz.BigValueTextMode.AUTO)
    )
    if decimals is not None:
        panel.decimals(decimals)
    _frame(panel, title, description, [target(expr)], unit=unit, width=width, height=4)
    return Tile(panel, core)


def bucket_distribution(title: str, description: str, bucket_metric: str, *,
                        core: bool = False) -> Tile:
    """Histogram bucket counts over the selected range, one bar per bucket."""
    expr = f"sum by (le) (increase({bucket_metric}[$__range]))"
    panel = (
        bargauge.Panel()
        .color_scheme(dashboard.FieldColor().mode(model.FieldColorModeId.CONTINUOUS_BL_PU))
        .thresholds(thresholds()).min(0)
        .display_mode(viz.BarGaugeDisplayMode.GRADIENT)
        .orientation(viz.VizOrientation.HORIZONTAL)
        .reduce_options(reduce_to_last())
        .show_unfilled(True).value_mode(viz.BarGaugeValueMode.COLOR)
    )
    targets = [target(expr, "<= {{le}} cents", instant=True, fmt=PromQueryFormat.HEATMAP)]
    _frame(panel, title, description, targets, unit="short", width=12, height=8)
    return Tile(panel, core)


# --- dashboard helper --------------------------------------------------------


def board(uid: str, title: str, description: str, tiles: list[Tile], *, time_from: str) -> Json:
    """A dashboard of ``tiles``, numbered and flowed left to right, top to bottom, by the SDK."""
    builder = (
        dashboard.Dashboard(title).uid(uid)
        .description(f"{description} Generated by deploy/grafana/build_dashboards.py.")
        .tags(["billwatch"]).version(1).readonly()
        .tooltip(model.DashboardCursorSync.CROSSHAIR).timezone("utc")
        .time(time_from, "now").refresh("1m")
        .link(dashboard.DashboardLink("Billwatch").type(model.DashboardLinkType.DASHBOARDS)
              .tags(["billwatch"]).as_dropdown(True).keep_time(True).include_vars(False))
    )
    for panel_id, tile in enumerate(tiles, start=1):
        builder.with_panel(tile.panel.id(panel_id))
    built: Json = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for panel, tile in zip(built["panels"], tiles, strict=True):
        panel["billwatch"] = {"core": tile.core}
    return built


# --- the dashboards ----------------------------------------------------------

ACTIVE = "billing_active_subscriptions"
PAID = "billing_payment_amount_cents"
REFUNDED = "billing_refund_amount_cents"


def revenue() -> Json:
    revenue_24h = f"sum(increase({PAID}_sum[1d]))"
    refunds_24h = f"sum(increase({REFUNDED}_sum[1d]))"
    tiles = [
        stat_panel("MRR", "Monthly recurring revenue of all active subscriptions.",
                   money(f"sum({db_gauge('billing_mrr_cents', 'owner_type')})"),
                   unit=MONEY_UNIT, core=True),
        stat_panel("ARPU", "Average revenue per paying customer.",
                   money(db_gauge("billing_arpu_cents")), unit=MONEY_UNIT, core=True),
        stat_panel("Paying customers", "Customers with at least one paid subscription.",
                   f"sum({db_gauge('billing_paying_customers', 'owner_type')})", core=True),
        stat_panel("Revenue (selected range)", "Successful payments in the selected time range.",
                   money(f"sum(increase({PAID}_sum[$__range]))"), unit=MONEY_UNIT, core=True),
        timeseries_panel("MRR by owner type", "Monthly recurring revenue, stacked by owner type.",
                         [target(money(db_gauge("billing_mrr_cents", "owner_type")),
                                 "{{owner_type}}")],
                         unit=MONEY_UNIT, core=True, stack=True),
        timeseries_panel("Paying customers by owner type", "Customers with a paid subscription.",
                         [target(db_gauge("billing_paying_customers", "owner_type"),
                                 "{{owner_type}}")],
                         core=True, stack=True),
        timeseries_panel("Revenue per day by owner type (rolling 24h)",
                         "Sum of successful payments over the preceding 24 hours.",
                         [target(money(f"sum by (owner_type) (increase({PAID}_sum[1d]))"),
                                 "{{owner_type}}")],
                         unit=MONEY_UNIT, core=True, stack=True),
        timeseries_panel("Daily revenue (daily metrics job)",
                         "Revenue of the last completed day, from the daily metrics row.",
                         [target(money(db_gauge("billing_daily_revenue_cents")), "daily revenue")],
                         unit=MONEY_UNIT),
        timeseries_panel(
            "Net revenue per day (rolling 24h)",
            "Successful payments minus refunds over the preceding 24 hours.",
            [target(money(f"({revenue_24h} or vector(0)) - ({refunds_24h} or vector(0))"), "net"),
             target(money(revenue_24h), "payments"),
             target(money(refunds_24h), "refunds")],
            unit=MONEY_UNIT, min_value=None, width=24),
    ]
    return board("billwatch-revenue", "Billwatch / Revenue",
                 "MRR, ARPU and collected revenue.", tiles, time_from="now-30d")


def subscriptions() -> Json:
    created = "billing_subscriptions_created_total"
    cancelled = "billing_subscriptions_cancelled_total"
    checkouts = "billing_checkouts_created_total"
    active_total = f"sum({db_gauge(ACTIVE, 'owner_type', 'plan')})"
    tiles = [
        stat_panel("Active subscriptions", "Subscriptions currently active.", active_total,
                   core=True),
        stat_panel("New subscriptions (selected range)", "Subscriptions created in the range.",
                   f"sum(increase({created}[$__range]))", core=True, decimals=0),
        stat_panel("Cancellations (selected range)", "Subscriptions cancelled in the range.",
                   f"sum(increase({cancelled}[$__range]))", decimals=0),
        stat_panel("Monthly customer churn", "From the latest daily metrics row; alert above 5%.",
                   db_gauge("billing_monthly_customer_churn_ratio"), unit="percentunit",
                   steps=(("red", 0.05),)),
        timeseries_panel("Active subscriptions by plan", "Active subscriptions, stacked by plan.",
                         [target(f"sum by (plan) ({db_gauge(ACTIVE, 'owner_type', 'plan')})",
                                 "{{plan}}")],
                         core=True, stack=True),
        timeseries_panel("Active subscriptions by owner type",
                         "Active subscriptions, stacked by owner type.",
                         [target(f"sum by (owner_type) ({db_gauge(ACTIVE, 'owner_type', 'plan')})",
                                 "{{owner_type}}")],
                         core=True, stack=True),
        timeseries_panel("New subscriptions per day by plan (rolling 24h)",
                         "Subscriptions created over the preceding 24 hours.",
                         [target(f"sum by (plan) (increase({created}[1d]))", "{{plan}}")],
                         core=True, stack=True),
        timeseries_panel("Cancellations per day by who cancelled (rolling 24h)",
                         "Subscriptions cancelled over the preceding 24 hours, by who cancelled: "
                         "owner, proxy, admin or stripe.",
                         [target(f"sum by (cancelled_by) (increase({cancelled}[1d]))",
                                 "{{cancelled_by}}")],
                         stack=True),
        timeseries_panel("Checkouts started per day by plan (rolling 24h)",
                         "Checkout sessions created over the preceding 24 hours.",
                         [target(f"sum by (plan) (increase({checkouts}[1d]))", "{{plan}}")],
                         core=True, stack=True),
        timeseries_panel("Monthly churn", "Customer and revenue churn from the daily metrics row. "
                         "The dashed line is the 5% customer churn alert threshold.",
                         [target(db_gauge("billing_monthly_customer_churn_ratio"),
                                 "customer churn"),
                          target(db_gauge("billing_monthly_revenue_churn_ratio"),
                                 "revenue churn")],
                         unit="percentunit", limit=("red", 0.05)),
    ]
    return board("billwatch-subscriptions", "Billwatch / Subscriptions",
                 "Active, new and cancelled subscriptions and churn.", tiles,
                 time_from="now-30d")


def payments() -> Json:
    succeeded = "billing_payments_succeeded_total"
    failed = "billing_payments_failed_total"
    final = "billing_payment_final_failures_total"
    success_rate = ratio_with_missing_sides(
        f"sum(rate({succeeded}[$__rate_interval]))", f"sum(rate({failed}[$__rate_interval]))"
    )
    tiles = [
        stat_panel("Success rate (last hour)",
                   "Recording rule job:billing_payment_success:ratio_1h.",
                   "min(job:billing_payment_success:ratio_1h)", unit="percentunit",
                   steps=(("red", 0), ("orange", 0.7), ("green", 0.9))),
        stat_panel("Payment attempts (last hour)",
                   "Recording rule job:billing_payments_attempted:increase1h.",
                   "sum(job:billing_payments_attempted:increase1h)", decimals=0),
        stat_panel("Failed payments (selected range)", "Failed payment attempts in the range.",
                   f"sum(increase({failed}[$__range]))", decimals=0, steps=(("orange", 1),)),
        stat_panel("Final failures (selected range)",
                   "Payments that failed their third and last attempt.",
                   f"sum(increase({final}[$__range]))", decimals=0, steps=(("red", 1),)),
        timeseries_panel("Success rate", "Successful payments / all payment attempts.",
                         [target(success_rate, "success rate")],
                         unit="percentunit", core=True, limit=("red", 0.7)),
        timeseries_panel("Payments per hour by owner type (rolling 1h)",
                         "Succeeded and failed payment attempts over the preceding hour.",
                         [target(f"sum by (owner_type) (increase({succeeded}[1h]))",
                                 "succeeded {{owner_type}}"),
                          target(f"sum by (owner_type) (increase({failed}[1h]))",
                                 "failed {{owner_type}}")],
                         core=True),
        timeseries_panel("Failures by reason (rolling 1h)",
                         "Failed payment attempts over the preceding hour, by decline reason.",
                         [target(f"sum by (reason) (increase({failed}[1h]))", "{{reason}}")],
                         stack=True),
        timeseries_panel("Final failures by owner type (rolling 24h)",
                         "Payments that failed their last attempt over the preceding 24 hours.",
                         [target(f"sum by (owner_type) (increase({final}[1d]))",
                                 "{{owner_type}}")],
                         stack=True),
        timeseries_panel("Payment amount quantiles (rolling 24h)",
                         "Estimated from the amount histogram (buckets 10 to 1000).",
                         [target(money(quantile(q, f"{PAID}_bucket", "1d")), f"p{int(q * 100)}")
                          for q in (0.5, 0.9, 0.99)],
                         unit=MONEY_UNIT, core=True),
        timeseries_panel("Average payment by owner type (rolling 24h)",
                         "Mean successful payment amount over the preceding 24 hours.",
                         [target(money(f"sum by (owner_type) (increase({PAID}_sum[1d])) "
                                       f"/ sum by (owner_type) (increase({PAID}_count[1d]))"),
                                 "{{owner_type}}")],
                         unit=MONEY_UNIT, core=True),
        bucket_distribution("Payment amount distribution (selected range)",
                            "Number of successful payments per amount bucket.",
                            f"{PAID}_bucket", core=True),
    ]
    return board("billwatch-payments", "Billwatch / Payments",
                 "Payment success rate, failures and amounts.", tiles, time_from="now-24h")


# The backlog gauges: computed from the database, so deduplicated with max like the others.
WEBHOOK_EVENTS = "billwatch_webhook_events"
WEBHOOK_OLDEST = "billwatch_webhook_oldest_unprocessed_age_seconds"
ALERT_OLDEST = "billwatch_alert_oldest_pending_age_seconds"
UNSEALED = "billwatch_audit_unsealed_rows"
BACKLOG_LIMIT: Step = ("red", 300)


def webhook_backlog() -> list[Tile]:
    """Work stored but not yet done: unprocessed webhooks, undelivered alerts, unsealed rows."""
    return [
        stat_panel("Oldest unprocessed webhook event",
                   "Age of the oldest stored event not yet processed, ignored or failed; red "
                   "from 5 minutes.",
                   db_gauge(WEBHOOK_OLDEST), unit="s", steps=(BACKLOG_LIMIT,), width=8),
        stat_panel("Oldest pending alert", "Age of the oldest alert not yet delivered; red "
                   "from 5 minutes.",
                   db_gauge(ALERT_OLDEST), unit="s", steps=(BACKLOG_LIMIT,), width=8),
        stat_panel("Unsealed audit rows",
                   "Audit rows not yet sealed into the hash chain; sealing runs every 5 minutes "
                   "(embedded) or hourly (beat), so this falls back after each run.",
                   db_gauge(UNSEALED), decimals=0, width=8),
        timeseries_panel("Stored webhook events by status",
                         "Events in the webhook store, by status. Processed ones only grow; "
                         "watch the others.",
                         [target(db_gauge(WEBHOOK_EVENTS, "status"), "{{status}}")],
                         width=8),
        timeseries_panel("Backlog age", "Oldest unprocessed webhook event and oldest pending "
                         "alert. The dashed line marks 5 minutes.",
                         [target(db_gauge(WEBHOOK_OLDEST), "webhook event"),
                          target(db_gauge(ALERT_OLDEST), "alert")],
                         unit="s", limit=BACKLOG_LIMIT, width=8),
        timeseries_panel("Unsealed audit rows over time", "A line that only climbs means sealing stopped.",
                         [target(db_gauge(UNSEALED), "unsealed rows")], width=8),
    ]


def webhooks() -> Json:
    received = "billing_webhooks_received_total"
    failed = "billing_webhooks_failed_total"
    rejected = "billing_webhooks_rejected_total"
    seconds = "billing_webhook_processing_seconds_bucket"
    tiles = [
        stat_panel("Received (selected range)", "Webhook events accepted for processing.",
                   f"sum(increase({received}[$__range]))", core=True, decimals=0),
        stat_panel("Failed (selected range)", "Webhook events whose processing failed.",
                   f"sum(increase({failed}[$__range]))", decimals=0, steps=(("red", 1),)),
        stat_panel("Rejected (selected range)",
                   "Deliveries rejected before processing (signature, timestamp, malformed, "
                   "too large).",
                   f"sum(increase({rejected}[$__range]))", decimals=0, steps=(("orange", 1),)),
        stat_panel("p99 processing time (selected range)", "Across all event types.",
                   quantile(0.99, seconds, "$__range"), unit="s", core=True,
                   steps=(("orange", 1), ("red", 5))),
        timeseries_panel("Received per second by event type", "Rate of webhook events received.",
                         [target(f"sum by (event_type) (rate({received}[$__rate_interval]))",
                                 "{{event_type}}")],
                         unit="reqps", core=True, stack=True),
        timeseries_panel("Processing time p50 / p99", "Time to process one webhook event.",
                         [target(quantile(0.5, seconds, "$__rate_interval"), "p50"),
                          target(quantile(0.99, seconds, "$__rate_interval"), "p99")],
                         unit="s", core=True),
        timeseries_panel("p99 processing time by event type", "Slowest event types first.",
                         [target(quantile(0.99, seconds, "$__rate_interval", "event_type"),
                                 "{{event_type}}")],
                         unit="s", core=True),
        timeseries_panel("Failures per second by event type",
                         "Any sustained failure rate fires BillwatchWebhookFailures after 5m.",
                         [target(f"sum by (event_type) (rate({failed}[$__rate_interval]))",
                                 "{{event_type}}")],
                         unit="reqps", stack=True),
        timeseries_panel("Failure ratio by event type", "Failed / received, per event type.",
                         [target(f"sum by (event_type) (rate({failed}[$__rate_interval])) "
                                 f"/ sum by (event_type) (rate({received}[$__rate_interval]))",
                                 "{{event_type}}")],
                         unit="percentunit"),
        timeseries_panel("Rejected per hour by reason (rolling 1h)",
                         "A burst of signature rejections means a stale signing secret or forged "
                         "deliveries.",
                         [target(f"sum by (reason) (increase({rejected}[1h]))", "{{reason}}")],
                         stack=True),
        *webhook_backlog(),
    ]
    return board("billwatch-webhooks", "Billwatch / Webhooks",
                 "Stripe webhook intake, processing time, failures and rejections, and the "
                 "backlogs of webhook events, alerts and audit seals.",
                 tiles, time_from="now-6h")


def refunds() -> Json:
    issued = "billing_refunds_issued_total"
    tiles = [
        stat_panel("Refunds (last 24h)", "BillwatchRefundsHigh fires above 5 a day.",
                   f"sum(increase({issued}[1d]))", decimals=0,
                   steps=(("orange", 3), ("red", 5))),
        stat_panel("Refunded (selected range)", "Total amount refunded in the range.",
                   money(f"sum(increase({REFUNDED}_sum[$__range]))"), unit=MONEY_UNIT),
        stat_panel("Refund rate (last 24h)", "Refunds / successful payments over 24 hours.",
                   f"sum(increase({issued}[1d])) "
                   "/ sum(increase(billing_payments_succeeded_total[1d]))",
                   unit="percentunit", steps=(("orange", 0.02), ("red", 0.05))),
        stat_panel("Refunds (selected range)", "Refunds issued in the range.",
                   f"sum(increase({issued}[$__range]))", decimals=0),
        timeseries_panel("Refunds per day (rolling 24h)",
                         "The dashed line is the alert threshold of 5 refunds a day.",
                         [target(f"sum(increase({issued}[1d]))", "refunds")],
                         limit=("red", 5)),
        timeseries_panel("Refunds per day by reason category (rolling 24h)",
                         "requested_by_customer, duplicate, fraudulent, service_issue, "
                         "billing_error or other.",
                         [target(f"sum by (reason_category) (increase({issued}[1d]))",
                                 "{{reason_category}}")],
                         stack=True),
        timeseries_panel("Refunded amount per day (rolling 24h)",
                         "Sum of refunds over the preceding 24 hours.",
                         [target(money(f"sum(increase({REFUNDED}_sum[1d]))"), "refunded")],
                         unit=MONEY_UNIT),
        timeseries_panel("Refund amount quantiles (rolling 7d)",
                         "Estimated from the refund amount histogram.",
                         [target(money(quantile(q, f"{REFUNDED}_bucket", "7d")),
                                 f"p{int(q * 100)}")
                          for q in (0.5, 0.9)],
                         unit=MONEY_UNIT),
        bucket_distribution("Refund amount distribution (selected range)",
                            "Number of refunds per amount bucket.", f"{REFUNDED}_bucket"),
    ]
    return board("billwatch-refunds", "Billwatch / Refunds",
                 "Refund counts, reasons and amounts.", tiles, time_from="now-30d")


def proxy_billing() -> Json:
    managed = db_gauge("billing_proxy_managed_subscriptions")
    assignments = "billing_manager_assignments_total"
    actions = "billing_proxy_actions_total"
    tiles = [
        stat_panel("Proxy-managed subscriptions", "Active subscriptions a proxy manages.",
                   managed, core=True),
        stat_panel("Share managed by proxies", "Proxy-managed / all active subscriptions.",
                   f"{managed} / sum({db_gauge(ACTIVE, 'owner_type', 'plan')})",
                   unit="percentunit", core=True),
        stat_panel("Manager assignments (selected range)", "Billing managers assigned.",
                   f"sum(increase({assignments}[$__range]))", decimals=0),
        stat_panel("Proxy actions (selected range)",
                   "Checkouts, cancellations and views by proxies.",
                   f"sum(increase({actions}[$__range]))", decimals=0),
        timeseries_panel("Proxy-managed subscriptions", "Active subscriptions a proxy manages.",
                         [target(managed, "proxy-managed")], core=True),
        timeseries_panel("Manager assignments per day (rolling 24h)",
                         "Billing manager assignments over the preceding 24 hours, by who "
                         "assigned (patient or admin).",
                         [target(f"sum by (assigned_by_type) (increase({assignments}[1d]))",
                                 "{{assigned_by_type}}")],
                         stack=True),
        timeseries_panel("Proxy actions per hour by type (rolling 1h)",
                         "checkout, cancel and view actions taken by proxies.",
                         [target(f"sum by (action_type) (increase({actions}[1h]))",
                                 "{{action_type}}")],
                         stack=True),
        timeseries_panel("Cancellations by proxies per day (rolling 24h)",
                         "Subscriptions cancelled by a proxy over the preceding 24 hours.",
                         [target('sum(increase(billing_subscriptions_cancelled_total'
                                 '{cancelled_by="proxy"}[1d]))', "cancelled by proxy")]),
    ]
    return board("billwatch-proxy-billing", "Billwatch / Proxy billing",
                 "Subscriptions managed by proxies, manager assignments and proxy actions.",
                 tiles, time_from="now-30d")


DASHBOARDS: dict[str, Callable[[], Json]] = {
    "billwatch-revenue.json": revenue,
    "billwatch-subscriptions.json": subscriptions,
    "billwatch-payments.json": payments,
    "billwatch-webhooks.json": webhooks,
    "billwatch-refunds.json": refunds,
    "billwatch-proxy-billing.json": proxy_billing,
}


def render(build: Callable[[], Json]) -> str:
    """The file text of one dashboard: stable key order, so a rebuild diffs only real changes."""
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT,
                        help="directory to write the dashboards to")
    parser.add_argument("--check", action="store_true",
                        help="only report whether the files in --output are up to date")
    args = parser.parse_args(argv)

    stale = []
    if not args.check:
        args.output.mkdir(parents=True, exist_ok=True)
    for name, build in DASHBOARDS.items():
        path = args.output / name
        text = render(build)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("stale dashboards, run build_dashboards.py:", ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
