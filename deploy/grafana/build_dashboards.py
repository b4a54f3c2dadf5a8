#!/usr/bin/env python3
"""Generate the billwatch Grafana dashboards.

    python deploy/grafana/build_dashboards.py            # rewrite deploy/grafana/dashboards/
    python deploy/grafana/build_dashboards.py -o DIR     # write somewhere else
    python deploy/grafana/build_dashboards.py --check    # exit 1 if the checked-in JSON is stale

The JSON files are checked in next to this script; edit this script, not the JSON, and
regenerate. Standard library only.

Conventions:

* Every panel queries the provisioned Prometheus datasource (uid ``billwatch-prometheus``).
* Counters are per process, so they are summed across instances. Gauges computed from the
  database are exported identically by every replica, so they are deduplicated with
  ``max by (...)`` instead of being summed.
* Money metrics are integer cents; queries divide by 100 and display ``MONEY_UNIT``.
* Expressions may use Grafana's ``$__rate_interval`` and ``$__range``; anything evaluating
  them directly against Prometheus has to substitute a duration first.
* Each panel carries ``"billwatch": {"core": true|false}`` (Grafana ignores the field).
  Core panels must return data from any scraped billwatch instance that has at least one
  paid subscription and one processed webhook; the others depend on rarer events (refunds,
  failures, the daily metrics job, recording rules).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "billwatch-prometheus"}
SCHEMA_VERSION = 39
# Amounts are divided by 100 in the queries; the unit matches the default billing
# currency (usd). Change it here if the service bills in another currency.
MONEY_UNIT = "currencyUSD"
GRID_WIDTH = 24
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "dashboards"

Json = dict[str, Any]


# --- query helpers -----------------------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False, fmt: str = "") -> Json:
    """One Prometheus query; refIds are assigned when the panel is built."""
    result: Json = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
    if instant:
        result["instant"] = True
        result["range"] = False
    else:
        result["range"] = True
    if fmt:
        result["format"] = fmt
    return result


def money(expr: str) -> str:
    """Cents to major currency units."""
    return f"({expr}) / 100"


def db_gauge(metric: str, *labels: str) -> str:
    """A gauge computed from the database, deduplicated across replicas."""
    if not labels:
        return f"max({metric})"
    return f"max by ({', '.join(labels)}) ({metric})"


def quantile(q: float, bucket_metric: str, window: str, *labels: str) -> str:
    by = ", ".join((*labels, "le"))
    return f"histogram_quantile({q}, sum by ({by}) (rate({bucket_metric}[{window}])))"


def ratio_with_missing_sides(good: str, bad: str) -> str:
    """good / (good + bad), where either side may have no series yet.

    With only failures the ratio is 0; with neither side there is no result.
    """
    return f"({good} or {bad} * 0) / (({good} + {bad}) or {good} or {bad})"


# --- panel helpers -----------------------------------------------------------


def thresholds(*steps: tuple[str, float]) -> Json:
    return {
        "mode": "absolute",
        "steps": [{"color": "green", "value": None}]
        + [{"color": color, "value": value} for color, value in steps],
    }


def _panel(
    kind: str,
    title: str,
    description: str,
    targets: list[Json],
    *,
    unit: str,
    core: bool,
    width: int,
    height: int,
    defaults: Json,
    options: Json,
) -> Json:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "fieldConfig": {"defaults": {"unit": unit, **defaults}, "overrides": []},
        "options": options,
        "targets": [
            {**t, "refId": chr(ord("A") + index)} for index, t in enumerate(targets)
        ],
        "billwatch": {"core": core},
    }


def timeseries(
    title: str,
    description: str,
    targets: list[Json],
    *,
    unit: str = "short",
    core: bool = False,
    stack: bool = False,
    bars: bool = False,
    limit: tuple[str, float] | None = None,
    min_value: float | None = 0,
    width: int = 12,
    height: int = 8,
) -> Json:
    """A time series; ``limit`` draws a dashed threshold line (e.g. an alert threshold)."""
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 80 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "dashed" if limit else "off"},
    }
    defaults: Json = {
        "custom": custom,
        "color": {"mode": "palette-classic"},
        "thresholds": thresholds(*([limit] if limit else [])),
    }
    if min_value is not None:
        defaults["min"] = min_value
    options = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel("timeseries", title, description, targets, unit=unit, core=core,
                  width=width, height=height, defaults=defaults, options=options)


def stat(
    title: str,
    description: str,
    expr: str,
    *,
    unit: str = "short",
    core: bool = False,
    steps: tuple[tuple[str, float], ...] = (),
    decimals: int | None = None,
    width: int = 6,
    height: int = 4,
) -> Json:
    defaults: Json = {"color": {"mode": "thresholds"}, "thresholds": thresholds(*steps)}
    if decimals is not None:
        defaults["decimals"] = decimals
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "textMode": "auto",
    }
    return _panel("stat", title, description, [target(expr)], unit=unit, core=core,
                  width=width, height=height, defaults=defaults, options=options)


def bucket_distribution(
    title: str, description: str, bucket_metric: str, *, core: bool = False
) -> Json:
    """Histogram bucket counts over the selected range, one bar per bucket."""
    expr = f"sum by (le) (increase({bucket_metric}[$__range]))"
    defaults: Json = {"color": {"mode": "continuous-BlPu"}, "thresholds": thresholds(),
                      "min": 0}
    options = {
        "displayMode": "gradient",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
        "valueMode": "color",
    }
    targets = [target(expr, "<= {{le}} cents", instant=True, fmt="heatmap")]
    return _panel("bargauge", title, description, targets, unit="short", core=core,
                  width=12, height=8, defaults=defaults, options=options)


# --- dashboard helpers -------------------------------------------------------


def layout(panels: list[Json]) -> list[Json]:
    """Number the panels and flow them left to right, top to bottom."""
    x = y = row_height = 0
    for panel_id, panel in enumerate(panels, start=1):
        grid = panel["gridPos"]
        if x + grid["w"] > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        grid["x"], grid["y"] = x, y
        x += grid["w"]
        row_height = max(row_height, grid["h"])
        panel["id"] = panel_id
    return panels


def dashboard(uid: str, title: str, description: str, panels: list[Json], *,
              time_from: str) -> Json:
    return {
        "uid": uid,
        "title": title,
        "description": f"{description} Generated by deploy/grafana/build_dashboards.py.",
        "tags": ["billwatch"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "timezone": "utc",
        "time": {"from": time_from, "to": "now"},
        "refresh": "1m",
        "links": [
            {"type": "dashboards", "title": "Billwatch", "tags": ["billwatch"],
             "asDropdown": True, "keepTime": True, "includeVars": False}
        ],
        "annotations": {"list": []},
        "templating": {"list": []},
        "panels": layout(panels),
    }


# --- the dashboards ----------------------------------------------------------

ACTIVE = "billing_active_subscriptions"
PAID = "billing_payment_amount_cents"
REFUNDED = "billing_refund_amount_cents"


def revenue() -> Json:
    revenue_24h = f"sum(increase({PAID}_sum[1d]))"
    refunds_24h = f"sum(increase({REFUNDED}_sum[1d]))"
    panels = [
        stat("MRR", "Monthly recurring revenue of all active subscriptions.",
             money(f"sum({db_gauge('billing_mrr_cents', 'owner_type')})"),
             unit=MONEY_UNIT, core=True),
        stat("ARPU", "Average revenue per paying customer.",
             money(db_gauge("billing_arpu_cents")), unit=MONEY_UNIT, core=True),
        stat("Paying customers", "Customers with at least one paid subscription.",
             f"sum({db_gauge('billing_paying_customers', 'owner_type')})", core=True),
        stat("Revenue (selected range)", "Successful payments in the selected time range.",
             money(f"sum(increase({PAID}_sum[$__range]))"), unit=MONEY_UNIT, core=True),
        timeseries("MRR by owner type", "Monthly recurring revenue, stacked by owner type.",
                   [target(money(db_gauge("billing_mrr_cents", "owner_type")),
                           "{{owner_type}}")],
                   unit=MONEY_UNIT, core=True, stack=True),
        timeseries("Paying customers by owner type", "Customers with a paid subscription.",
                   [target(db_gauge("billing_paying_customers", "owner_type"),
                           "{{owner_type}}")],
                   core=True, stack=True),
        timeseries("Revenue per day by owner type (rolling 24h)",
                   "Sum of successful payments over the preceding 24 hours.",
                   [target(money(f"sum by (owner_type) (increase({PAID}_sum[1d]))"),
                           "{{owner_type}}")],
                   unit=MONEY_UNIT, core=True, stack=True),
        timeseries("Daily revenue (daily metrics job)",
                   "Revenue of the last completed day, from the daily metrics row.",
                   [target(money(db_gauge("billing_daily_revenue_cents")), "daily revenue")],
                   unit=MONEY_UNIT),
        timeseries("Net revenue per day (rolling 24h)",
                   "Successful payments minus refunds over the preceding 24 hours.",
                   [target(money(f"({revenue_24h} or vector(0)) - ({refunds_24h} or vector(0))"),
                           "net"),
                    target(money(revenue_24h), "payments"),
                    target(money(refunds_24h), "refunds")],
                   unit=MONEY_UNIT, min_value=None, width=24),
    ]
    return dashboard("billwatch-revenue", "Billwatch / Revenue",
                     "MRR, ARPU and collected revenue.", panels, time_from="now-30d")


def subscriptions() -> Json:
    created = "billing_subscriptions_created_total"
    cancelled = "billing_subscriptions_cancelled_total"
    checkouts = "billing_checkouts_created_total"
    active_total = f"sum({db_gauge(ACTIVE, 'owner_type', 'plan')})"
    panels = [
        stat("Active subscriptions", "Subscriptions currently active.", active_total,
             core=True),
        stat("New subscriptions (selected range)", "Subscriptions created in the range.",
             f"sum(increase({created}[$__range]))", core=True, decimals=0),
        stat("Cancellations (selected range)", "Subscriptions cancelled in the range.",
             f"sum(increase({cancelled}[$__range]))", decimals=0),
        stat("Monthly customer churn", "From the latest daily metrics row; alert above 5%.",
             db_gauge("billing_monthly_customer_churn_ratio"), unit="percentunit",
             steps=(("red", 0.05),)),
        timeseries("Active subscriptions by plan", "Active subscriptions, stacked by plan.",
                   [target(f"sum by (plan) ({db_gauge(ACTIVE, 'owner_type', 'plan')})",
                           "{{plan}}")],
                   core=True, stack=True),
        timeseries("Active subscriptions by owner type",
                   "Active subscriptions, stacked by owner type.",
                   [target(f"sum by (owner_type) ({db_gauge(ACTIVE, 'owner_type', 'plan')})",
                           "{{owner_type}}")],
                   core=True, stack=True),
        timeseries("New subscriptions per day by plan (rolling 24h)",
                   "Subscriptions created over the preceding 24 hours.",
                   [target(f"sum by (plan) (increase({created}[1d]))", "{{plan}}")],
                   core=True, stack=True),
        timeseries("Cancellations per day by who cancelled (rolling 24h)",
                   "Subscriptions cancelled over the preceding 24 hours, by who cancelled: "
                   "owner, proxy, admin or stripe.",
                   [target(f"sum by (cancelled_by) (increase({cancelled}[1d]))",
                           "{{cancelled_by}}")],
                   stack=True),
        timeseries("Checkouts started per day by plan (rolling 24h)",
                   "Checkout sessions created over the preceding 24 hours.",
                   [target(f"sum by (plan) (increase({checkouts}[1d]))", "{{plan}}")],
                   core=True, stack=True),
        timeseries("Monthly churn", "Customer and revenue churn from the daily metrics row. "
                   "The dashed line is the 5% customer churn alert threshold.",
                   [target(db_gauge("billing_monthly_customer_churn_ratio"), "customer churn"),
                    target(db_gauge("billing_monthly_revenue_churn_ratio"), "revenue churn")],
                   unit="percentunit", limit=("red", 0.05)),
    ]
    return dashboard("billwatch-subscriptions", "Billwatch / Subscriptions",
                     "Active, new and cancelled subscriptions and churn.", panels,
                     time_from="now-30d")


def payments() -> Json:
    succeeded = "billing_payments_succeeded_total"
    failed = "billing_payments_failed_total"
    final = "billing_payment_final_failures_total"
    success_rate = ratio_with_missing_sides(
        f"sum(rate({succeeded}[$__rate_interval]))", f"sum(rate({failed}[$__rate_interval]))"
    )
    panels = [
        stat("Success rate (last hour)", "Recording rule job:billing_payment_success:ratio_1h.",
             "min(job:billing_payment_success:ratio_1h)", unit="percentunit",
             steps=(("red", 0), ("orange", 0.7), ("green", 0.9))),
        stat("Payment attempts (last hour)",
             "Recording rule job:billing_payments_attempted:increase1h.",
             "sum(job:billing_payments_attempted:increase1h)", decimals=0),
        stat("Failed payments (selected range)", "Failed payment attempts in the range.",
             f"sum(increase({failed}[$__range]))", decimals=0, steps=(("orange", 1),)),
        stat("Final failures (selected range)",
             "Payments that failed their third and last attempt.",
             f"sum(increase({final}[$__range]))", decimals=0, steps=(("red", 1),)),
        timeseries("Success rate", "Successful payments / all payment attempts.",
                   [target(success_rate, "success rate")],
                   unit="percentunit", core=True, limit=("red", 0.7)),
        timeseries("Payments per hour by owner type (rolling 1h)",
                   "Succeeded and failed payment attempts over the preceding hour.",
                   [target(f"sum by (owner_type) (increase({succeeded}[1h]))",
                           "succeeded {{owner_type}}"),
                    target(f"sum by (owner_type) (increase({failed}[1h]))",
                           "failed {{owner_type}}")],
                   core=True),
        timeseries("Failures by reason (rolling 1h)",
                   "Failed payment attempts over the preceding hour, by decline reason.",
                   [target(f"sum by (reason) (increase({failed}[1h]))", "{{reason}}")],
                   stack=True),
        timeseries("Final failures by owner type (rolling 24h)",
                   "Payments that failed their last attempt over the preceding 24 hours.",
                   [target(f"sum by (owner_type) (increase({final}[1d]))", "{{owner_type}}")],
                   stack=True),
        timeseries("Payment amount quantiles (rolling 24h)",
                   "Estimated from the amount histogram (buckets 10 to 1000).",
                   [target(money(quantile(q, f"{PAID}_bucket", "1d")), f"p{int(q * 100)}")
                    for q in (0.5, 0.9, 0.99)],
                   unit=MONEY_UNIT, core=True),
        timeseries("Average payment by owner type (rolling 24h)",
                   "Mean successful payment amount over the preceding 24 hours.",
                   [target(money(f"sum by (owner_type) (increase({PAID}_sum[1d])) "
                                 f"/ sum by (owner_type) (increase({PAID}_count[1d]))"),
                           "{{owner_type}}")],
                   unit=MONEY_UNIT, core=True),
        bucket_distribution("Payment amount distribution (selected range)",
                            "Number of successful payments per amount bucket.",
                            f"{PAID}_bucket", core=True),
    ]
    return dashboard("billwatch-payments", "Billwatch / Payments",
                     "Payment success rate, failures and amounts.", panels,
                     time_from="now-24h")


def webhooks() -> Json:
    received = "billing_webhooks_received_total"
    failed = "billing_webhooks_failed_total"
    rejected = "billing_webhooks_rejected_total"
    seconds = "billing_webhook_processing_seconds_bucket"
    panels = [
        stat("Received (selected range)", "Webhook events accepted for processing.",
             f"sum(increase({received}[$__range]))", core=True, decimals=0),
        stat("Failed (selected range)", "Webhook events whose processing failed.",
             f"sum(increase({failed}[$__range]))", decimals=0, steps=(("red", 1),)),
        stat("Rejected (selected range)",
             "Deliveries rejected before processing (signature, timestamp, malformed, "
             "too large).",
             f"sum(increase({rejected}[$__range]))", decimals=0, steps=(("orange", 1),)),
        stat("p99 processing time (selected range)", "Across all event types.",
             quantile(0.99, seconds, "$__range"), unit="s", core=True,
             steps=(("orange", 1), ("red", 5))),
        timeseries("Received per second by event type", "Rate of webhook events received.",
                   [target(f"sum by (event_type) (rate({received}[$__rate_interval]))",
                           "{{event_type}}")],
                   unit="reqps", core=True, stack=True),
        timeseries("Processing time p50 / p99", "Time to process one webhook event.",
                   [target(quantile(0.5, seconds, "$__rate_interval"), "p50"),
                    target(quantile(0.99, seconds, "$__rate_interval"), "p99")],
                   unit="s", core=True),
        timeseries("p99 processing time by event type", "Slowest event types first.",
                   [target(quantile(0.99, seconds, "$__rate_interval", "event_type"),
                           "{{event_type}}")],
                   unit="s", core=True),
        timeseries("Failures per second by event type",
                   "Any sustained failure rate fires BillwatchWebhookFailures after 5m.",
                   [target(f"sum by (event_type) (rate({failed}[$__rate_interval]))",
                           "{{event_type}}")],
                   unit="reqps", stack=True),
        timeseries("Failure ratio by event type", "Failed / received, per event type.",
                   [target(f"sum by (event_type) (rate({failed}[$__rate_interval])) "
                           f"/ sum by (event_type) (rate({received}[$__rate_interval]))",
                           "{{event_type}}")],
                   unit="percentunit"),
        timeseries("Rejected per hour by reason (rolling 1h)",
                   "A burst of signature rejections means a stale signing secret or forged "
                   "deliveries.",
                   [target(f"sum by (reason) (increase({rejected}[1h]))", "{{reason}}")],
                   stack=True),
    ]
    return dashboard("billwatch-webhooks", "Billwatch / Webhooks",
                     "Stripe webhook intake, processing time, failures and rejections.",
                     panels, time_from="now-6h")


def refunds() -> Json:
    issued = "billing_refunds_issued_total"
    panels = [
        stat("Refunds (last 24h)", "BillwatchRefundsHigh fires above 5 a day.",
             f"sum(increase({issued}[1d]))", decimals=0, steps=(("orange", 3), ("red", 5))),
        stat("Refunded (selected range)", "Total amount refunded in the range.",
             money(f"sum(increase({REFUNDED}_sum[$__range]))"), unit=MONEY_UNIT),
        stat("Refund rate (last 24h)", "Refunds / successful payments over 24 hours.",
             f"sum(increase({issued}[1d])) "
             "/ sum(increase(billing_payments_succeeded_total[1d]))",
             unit="percentunit", steps=(("orange", 0.02), ("red", 0.05))),
        stat("Refunds (selected range)", "Refunds issued in the range.",
             f"sum(increase({issued}[$__range]))", decimals=0),
        timeseries("Refunds per day (rolling 24h)",
                   "The dashed line is the alert threshold of 5 refunds a day.",
                   [target(f"sum(increase({issued}[1d]))", "refunds")],
                   limit=("red", 5)),
        timeseries("Refunds per day by reason category (rolling 24h)",
                   "requested_by_customer, duplicate, fraudulent, service_issue, "
                   "billing_error or other.",
                   [target(f"sum by (reason_category) (increase({issued}[1d]))",
                           "{{reason_category}}")],
                   stack=True),
        timeseries("Refunded amount per day (rolling 24h)",
                   "Sum of refunds over the preceding 24 hours.",
                   [target(money(f"sum(increase({REFUNDED}_sum[1d]))"), "refunded")],
                   unit=MONEY_UNIT),
        timeseries("Refund amount quantiles (rolling 7d)",
                   "Estimated from the refund amount histogram.",
                   [target(money(quantile(q, f"{REFUNDED}_bucket", "7d")), f"p{int(q * 100)}")
                    for q in (0.5, 0.9)],
                   unit=MONEY_UNIT),
        bucket_distribution("Refund amount distribution (selected range)",
                            "Number of refunds per amount bucket.", f"{REFUNDED}_bucket"),
    ]
    return dashboard("billwatch-refunds", "Billwatch / Refunds",
                     "Refund counts, reasons and amounts.", panels, time_from="now-30d")


def proxy_billing() -> Json:
    managed = db_gauge("billing_proxy_managed_subscriptions")
    assignments = "billing_manager_assignments_total"
    actions = "billing_proxy_actions_total"
    panels = [
        stat("Proxy-managed subscriptions", "Active subscriptions a proxy manages.",
             managed, core=True),
        stat("Share managed by proxies", "Proxy-managed / all active subscriptions.",
             f"{managed} / sum({db_gauge(ACTIVE, 'owner_type', 'plan')})",
             unit="percentunit", core=True),
        stat("Manager assignments (selected range)", "Billing managers assigned.",
             f"sum(increase({assignments}[$__range]))", decimals=0),
        stat("Proxy actions (selected range)", "Checkouts, cancellations and views by proxies.",
             f"sum(increase({actions}[$__range]))", decimals=0),
        timeseries("Proxy-managed subscriptions", "Active subscriptions a proxy manages.",
                   [target(managed, "proxy-managed")], core=True),
        timeseries("Manager assignments per day (rolling 24h)",
                   "Billing manager assignments over the preceding 24 hours, by who assigned "
                   "(patient or admin).",
                   [target(f"sum by (assigned_by_type) (increase({assignments}[1d]))",
                           "{{assigned_by_type}}")],
                   stack=True),
        timeseries("Proxy actions per hour by type (rolling 1h)",
                   "checkout, cancel and view actions taken by proxies.",
                   [target(f"sum by (action_type) (increase({actions}[1h]))",
                           "{{action_type}}")],
                   stack=True),
        timeseries("Cancellations by proxies per day (rolling 24h)",
                   "Subscriptions cancelled by a proxy over the preceding 24 hours.",
                   [target('sum(increase(billing_subscriptions_cancelled_total'
                           '{cancelled_by="proxy"}[1d]))', "cancelled by proxy")]),
    ]
    return dashboard("billwatch-proxy-billing", "Billwatch / Proxy billing",
                     "Subscriptions managed by proxies, manager assignments and proxy "
                     "actions.", panels, time_from="now-30d")


DASHBOARDS = {
    "billwatch-revenue.json": revenue,
    "billwatch-subscriptions.json": subscriptions,
    "billwatch-payments.json": payments,
    "billwatch-webhooks.json": webhooks,
    "billwatch-refunds.json": refunds,
    "billwatch-proxy-billing.json": proxy_billing,
}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
