"""Checks for deploy/: the Prometheus config, the alert rules and their unit tests, and the
Grafana provisioning and dashboards.

promtool is required (Debian: ``apt-get install prometheus``). Without it these tests fail
rather than skip, so CI cannot go green without running the rule unit tests.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from billwatch.alerts.models import Severity

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
METRICS_TOKEN_FILE = "billwatch-metrics-token"
RULES = DEPLOY / "prometheus" / "rules" / "billwatch.rules.yml"
RULE_TESTS = (
    DEPLOY / "prometheus" / "tests" / "billwatch.rules.test.yml",
    # The week-long cases, on a coarser evaluation step (30 s of promtool CPU at one minute).
    DEPLOY / "prometheus" / "tests" / "billwatch.rules.week.test.yml",
)
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
BUILD_SCRIPT = GRAFANA / "build_dashboards.py"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "billwatch.yml"

DATASOURCE_UID = "billwatch-prometheus"

# The /metrics contract of the service: metric name -> label names.
COUNTERS: dict[str, tuple[str, ...]] = {
    "billing_checkouts_created_total": ("owner_type", "plan"),
    "billing_payments_succeeded_total": ("owner_type", "plan"),
    "billing_payments_failed_total": ("owner_type", "reason"),
    "billing_refunds_issued_total": ("reason_category",),
    "billing_subscriptions_created_total": ("owner_type", "plan"),
    "billing_subscriptions_cancelled_total": ("owner_type", "cancelled_by"),
    "billing_manager_assignments_total": ("assigned_by_type",),
    "billing_proxy_actions_total": ("action_type",),
    "billing_webhooks_received_total": ("event_type",),
    "billing_webhooks_failed_total": ("event_type",),
    "billing_webhooks_rejected_total": ("reason",),
    "billing_alerts_sent_total": ("kind",),
    "billing_audit_writes_total": ("outcome",),
    "audit_write_failures_total": (),
    "billing_http_requests_total": ("method", "route", "status"),
    "billing_payment_final_failures_total": ("owner_type",),
}
HISTOGRAMS: dict[str, tuple[str, ...]] = {
    "billing_webhook_processing_seconds": ("event_type",),
    "billing_payment_amount_cents": ("owner_type",),
    "billing_refund_amount_cents": (),
    "billing_http_request_duration_seconds": ("method", "route"),
}
GAUGES: dict[str, tuple[str, ...]] = {
    "billing_active_subscriptions": ("owner_type", "plan"),
    "billing_mrr_cents": ("owner_type",),
    "billing_proxy_managed_subscriptions": (),
    "billing_paying_customers": ("owner_type",),
    "billing_arpu_cents": (),
    "billing_monthly_customer_churn_ratio": (),
    "billing_monthly_revenue_churn_ratio": (),
    "billing_daily_revenue_cents": (),
    "billwatch_webhook_events": ("status",),
    "billwatch_webhook_oldest_unprocessed_age_seconds": (),
    "billwatch_alert_oldest_pending_age_seconds": (),
    "billwatch_audit_unsealed_rows": (),
}
# Label values that come from a closed set.
CLOSED_LABEL_VALUES: dict[str, set[str]] = {
    "reason": {
        # billing_payments_failed_total
        "card_declined", "insufficient_funds", "expired_card", "incorrect_cvc",
        "processing_error", "authentication_required", "other",
        # billing_webhooks_rejected_total
        "signature", "timestamp", "malformed", "too_large",
    },
    "reason_category": {
        "requested_by_customer", "duplicate", "fraudulent", "service_issue", "billing_error",
        "other",
    },
    "cancelled_by": {"owner", "proxy", "admin", "stripe"},
    "assigned_by_type": {"patient", "admin"},
    "action_type": {"checkout", "cancel", "view"},
}
TARGET_LABELS = ("job", "instance")


def contract_series() -> dict[str, tuple[str, ...]]:
    """Every series name the service exposes, with its labels."""
    series = {**COUNTERS, **GAUGES}
    for name, labels in HISTOGRAMS.items():
        series[f"{name}_bucket"] = (*labels, "le")
        series[f"{name}_sum"] = labels
        series[f"{name}_count"] = labels
    return series


# --- a small PromQL reader: enough to find selectors and grouping labels ------------

GRAFANA_MACRO = re.compile(r"\$__(?:rate_interval|interval|range)\b")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
IDENTIFIER = re.compile(
    r"(?<![\w.:])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?(\s*\()?"
)
MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!=|!~|=)\s*"((?:[^"\\]|\\.)*)"')
KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def without_macros(expr: str) -> str:
    return GRAFANA_MACRO.sub("5m", expr)


def read_promql(expr: str) -> tuple[list[tuple[str, list[tuple[str, str, str]]]], set[str]]:
    """Selectors as (metric, [(label, op, value)]) and the labels used for grouping."""
    text = re.sub(r"\[[^\]]*\]", "", without_macros(expr))
    grouping = {
        label.strip() for match in GROUPING.finditer(text)
        for label in match.group(1).split(",") if label.strip()
    }
    text = GROUPING.sub(" ", text)
    selectors = []
    for match in IDENTIFIER.finditer(text):
        name, braces, call = match.groups()
        if call or name in KEYWORDS:
            continue  # a function, an aggregation or an operator
        selectors.append((name, MATCHER.findall(braces or "")))
    return selectors, grouping


def check_expr(expr: str, known: dict[str, tuple[str, ...]]) -> list[str]:
    """Problems with an expression: unknown metrics, labels or closed-set label values."""
    problems = []
    selectors, grouping = read_promql(expr)
    if not selectors:
        problems.append(f"no metric selector found in {expr!r}")
    available = set(TARGET_LABELS)
    for name, matchers in selectors:
        if name not in known:
            problems.append(f"unknown metric {name!r} in {expr!r}")
            continue
        labels = set(known[name]) | set(TARGET_LABELS)
        available |= labels
        for label, op, value in matchers:
            if label not in labels:
                problems.append(f"{name} has no label {label!r} in {expr!r}")
            elif op == "=" and value not in CLOSED_LABEL_VALUES.get(label, {value}):
                problems.append(f"{label}={value!r} is not a known value in {expr!r}")
    problems += [f"grouping by unknown label {label!r} in {expr!r}"
                 for label in sorted(grouping - available)]
    return problems


def test_promql_reader_finds_metrics_and_labels() -> None:
    selectors, grouping = read_promql(
        'histogram_quantile(0.99, sum by (event_type, le) (rate(x_bucket{a="b"}[$__range])))'
        " / on (job) group_left y offset 5m"
    )
    assert selectors == [("x_bucket", [("a", "=", "b")]), ("y", [])]
    assert grouping == {"event_type", "le", "job"}
    assert check_expr("sum by (owner) (billing_mrr_cents)", contract_series()) == [
        "grouping by unknown label 'owner' in 'sum by (owner) (billing_mrr_cents)'"
    ]
    assert check_expr('billing_subscriptions_cancelled_total{cancelled_by="user"}',
                      contract_series())
    assert check_expr("billing_mrr", contract_series())


# --- promtool ---------------------------------------------------------------------


def promtool_path() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH. Install it (Debian/Ubuntu: apt-get install -y "
            "prometheus) to run the alert rule checks; these tests never skip.",
            pytrace=False,
        )
    return path


def run(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} failed ({result.returncode}):\n"
        f"{result.stdout}\n{result.stderr}"
    )


def test_rules_pass_promtool_check() -> None:
    promtool = promtool_path()
    result = run(promtool, "check", "rules", RULES)
    assert_ok(result)
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_pass() -> None:
    promtool = promtool_path()
    result = run(promtool, "test", "rules", *RULE_TESTS)
    assert_ok(result)
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def deployed_copy(tmp_path: Path) -> Path:
    """``deploy/prometheus`` as an operator installs it: with the metrics token file beside it."""
    target = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_CONFIG.parent, target,
                    ignore=shutil.ignore_patterns(METRICS_TOKEN_FILE))
    (target / METRICS_TOKEN_FILE).write_text("a-metrics-token-of-32-bytes-or-more-0123\n")
    return target / PROMETHEUS_CONFIG.name


def test_prometheus_config_passes_promtool_check(tmp_path: Path) -> None:
    promtool = promtool_path()
    # Run from an unrelated directory: rule_files must resolve relative to the config.
    (tmp_path / "elsewhere").mkdir()
    result = run(promtool, "check", "config", deployed_copy(tmp_path), cwd=tmp_path / "elsewhere")
    assert_ok(result)
    assert "1 rule files found" in result.stdout
    assert str(RULES.relative_to(PROMETHEUS_CONFIG.parent)) in result.stdout


def test_prometheus_config_scrapes_billwatch() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "billwatch"]
    assert job["scrape_interval"] == "15s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert [t for sc in job["static_configs"] for t in sc["targets"]] == ["127.0.0.1:8000"]
    rule_files = [(PROMETHEUS_CONFIG.parent / path).resolve() for path in config["rule_files"]]
    assert rule_files == [RULES.resolve()]
    assert not any(Path(path).is_absolute() for path in config["rule_files"])


def test_prometheus_scrapes_with_the_metrics_bearer_token_from_a_file(tmp_path: Path) -> None:
    """/metrics refuses scrapes without BILLWATCH_METRICS_TOKEN; the token stays out of the YAML."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "billwatch"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": METRICS_TOKEN_FILE}
    assert "credentials" not in job["authorization"] and "bearer_token" not in job
    missing = run(promtool_path(), "check", "config", PROMETHEUS_CONFIG, cwd=tmp_path)
    if not (PROMETHEUS_CONFIG.parent / METRICS_TOKEN_FILE).exists():
        assert missing.returncode != 0 and METRICS_TOKEN_FILE in missing.stdout + missing.stderr


def test_dashboard_exprs_are_valid_promql(tmp_path: Path) -> None:
    """Feed every dashboard query to promtool as a recording rule to parse it."""
    promtool = promtool_path()
    rules = [
        {"record": f"dashboard:query_{index}", "expr": without_macros(expr)}
        for index, (_, _, expr) in enumerate(dashboard_exprs())
    ]
    rule_file = tmp_path / "dashboard-queries.rules.yml"
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert_ok(run(promtool, "check", "rules", rule_file))


# --- the rules file -----------------------------------------------------------------


def load_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in load_rules() if "alert" in rule]


def recorded_series() -> dict[str, tuple[str, ...]]:
    return {rule["record"]: ("job",) for rule in load_rules() if "record" in rule}


EXPECTED_ALERTS = {
    "BillwatchWebhookFailures",
    "BillwatchWebhookRejections",
    "BillwatchPaymentFailureSpike",
    "BillwatchPaymentFinalFailure",
    "BillwatchRefundsHigh",
    "BillwatchMonthlyChurnHigh",
    "BillwatchAuditWriteFailures",
    "BillwatchScrapeFailing",
    "BillwatchTargetMissing",
    "BillwatchWebhookBacklog",
}


def test_the_expected_alerts_exist() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_has_severity_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {severity.value for severity in Severity}
    assert rule["annotations"]["summary"].strip()
    assert rule["annotations"]["description"].strip()


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = [test for path in RULE_TESTS for test in yaml.safe_load(path.read_text())["tests"]]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for name in EXPECTED_ALERTS:
        mine = [case for case in cases if case["alertname"] == name]
        firing = [case for case in mine if case.get("exp_alerts")]
        quiet = [case for case in mine if not case.get("exp_alerts")]
        assert firing, f"{name} has no unit test where it fires"
        assert quiet, f"{name} has no unit test where it stays quiet"
        for case in firing:
            for alert in case["exp_alerts"]:
                assert alert.get("exp_labels", {}).get("severity"), f"{name}: no exp_labels"
                assert alert.get("exp_annotations"), f"{name}: no exp_annotations"


def test_rule_exprs_use_only_contract_metrics() -> None:
    known = {**contract_series(), **recorded_series(), "up": ()}
    problems = [problem for rule in load_rules() for problem in check_expr(rule["expr"], known)]
    assert problems == []


def test_recording_rules_follow_the_naming_convention() -> None:
    for name in recorded_series():
        level, metric, operations = name.split(":")
        assert level == "job" and metric.startswith("billing_") and operations, name


# --- Grafana ------------------------------------------------------------------------

# The backlog gauges the Webhooks dashboard shows, which the service gains in a change merged
# separately. Dashboards may query them before they join the contract above (GAUGES); once they
# have, the contract's entry is the one checked and this dict can go.
BACKLOG_GAUGES: dict[str, tuple[str, ...]] = {
    "billwatch_webhook_events": ("status",),
    "billwatch_webhook_oldest_unprocessed_age_seconds": (),
    "billwatch_alert_oldest_pending_age_seconds": (),
    "billwatch_audit_unsealed_rows": (),
}


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARDS.glob("*.json"))
    }


def dashboard_exprs() -> Iterator[tuple[str, str, str]]:
    for name, dashboard in load_dashboards().items():
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                yield name, panel["title"], target["expr"]


def test_the_six_dashboards_exist() -> None:
    titles = {dashboard["title"] for dashboard in load_dashboards().values()}
    assert titles == {
        "Billwatch / Revenue",
        "Billwatch / Subscriptions",
        "Billwatch / Payments",
        "Billwatch / Webhooks",
        "Billwatch / Refunds",
        "Billwatch / Proxy billing",
    }


def test_dashboard_uids_are_unique() -> None:
    uids = [dashboard["uid"] for dashboard in load_dashboards().values()]
    assert len(uids) == len(set(uids))
    assert all(re.fullmatch(r"[a-z0-9-]{1,40}", uid) for uid in uids)


def test_grafana_provisioning() -> None:
    [datasource] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus"
    assert datasource["jsonData"]["timeInterval"] == "15s"
    [provider] = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"]


@pytest.mark.parametrize("name", sorted(load_dashboards()))
def test_dashboard_is_well_formed(name: str) -> None:
    dashboard = load_dashboards()[name]
    assert dashboard["uid"] and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["panels"]
    panel_ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in dashboard["panels"]:
        where = f"{name}: {panel['title']!r}"
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, where
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, where
        assert isinstance(panel["billwatch"]["core"], bool), where
        assert panel["targets"], where
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["refId"], where
            assert target["datasource"]["uid"] == DATASOURCE_UID, where


def test_panels_do_not_overlap() -> None:
    for name, dashboard in load_dashboards().items():
        cells: dict[tuple[int, int], str] = {}
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"{name}: {panel['title']} overlaps {cells[x, y]}"
                    cells[x, y] = panel["title"]


def test_core_panels_are_marked() -> None:
    core = {
        dashboard["uid"]: [p["title"] for p in dashboard["panels"] if p["billwatch"]["core"]]
        for dashboard in load_dashboards().values()
    }
    # Refunds only has data once a refund was issued; every other dashboard has a core panel.
    assert all(core[uid] for uid in core if uid != "billwatch-refunds"), core


def test_dashboard_exprs_use_only_contract_metrics() -> None:
    known = {**BACKLOG_GAUGES, **contract_series(), **recorded_series()}
    problems = [
        f"{name} / {title}: {problem}"
        for name, title, expr in dashboard_exprs()
        for problem in check_expr(expr, known)
    ]
    assert problems == []


def test_the_webhooks_dashboard_shows_every_backlog_gauge() -> None:
    """Each backlog gauge has a panel, deduplicated with max, and none is core: an instance
    without the gauges (or without a backlog) must not fail the end-to-end scrape."""
    shown: dict[str, list[str]] = {name: [] for name in BACKLOG_GAUGES}
    for panel in load_dashboards()["billwatch-webhooks.json"]["panels"]:
        for target in panel["targets"]:
            names = {name for name, _ in read_promql(target["expr"])[0]}
            for name in names & set(BACKLOG_GAUGES):
                assert not panel["billwatch"]["core"], panel["title"]
                assert target["expr"].startswith("max"), target["expr"]
                shown[name].append(panel["title"])
    assert all(shown.values()), shown
    by_status = [t["expr"] for p in load_dashboards()["billwatch-webhooks.json"]["panels"]
                 for t in p["targets"] if "billwatch_webhook_events" in t["expr"]]
    assert by_status == ["max by (status) (billwatch_webhook_events)"]


def test_committed_dashboards_are_what_the_sdk_model_reads() -> None:
    """Read back through grafana-foundation-sdk's typed model, a dashboard loses nothing: no
    field Grafana's schema does not know, except the ``billwatch`` core flag."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    for name, dashboard in load_dashboards().items():
        for panel in dashboard["panels"]:
            assert set(panel.pop("billwatch")) == {"core"}, f"{name}: {panel['title']}"
        read_back = json.loads(json.dumps(Dashboard.from_json(dashboard), cls=JSONEncoder))
        assert read_back == dashboard, name


def test_core_panels_do_not_depend_on_recording_rules() -> None:
    recorded = set(recorded_series())
    for dashboard in load_dashboards().values():
        for panel in dashboard["panels"]:
            if panel["billwatch"]["core"]:
                for target in panel["targets"]:
                    names = {name for name, _ in read_promql(target["expr"])[0]}
                    assert not names & recorded, panel["title"]


def test_committed_dashboards_match_the_build_script(tmp_path: Path) -> None:
    result = run(sys.executable, BUILD_SCRIPT, "--output", tmp_path)
    assert_ok(result)
    generated = sorted(path.name for path in tmp_path.glob("*.json"))
    committed = sorted(path.name for path in DASHBOARDS.glob("*.json"))
    assert generated == committed
    for name in generated:
        assert (tmp_path / name).read_text() == (DASHBOARDS / name).read_text(), (
            f"{name} is stale: run python {BUILD_SCRIPT.relative_to(REPO)}"
        )
    assert_ok(run(sys.executable, BUILD_SCRIPT, "--check"))
