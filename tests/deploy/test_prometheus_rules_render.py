"""The rules file is rendered from the app's own thresholds and severities: one fact, one place.

The committed ``deploy/prometheus/rules/billwatch.rules.yml`` must be exactly what
``billwatch monitoring render-rules --defaults`` writes; other settings render other numbers,
and every rendering passes ``promtool check rules``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from billwatch.alerts.models import AlertKind
from billwatch.alerts.raising import spec_for
from billwatch.config import Settings
from billwatch.monitoring import prometheus_rules

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / prometheus_rules.RULES_PATH
MONITORING_DOC = REPO / "docs" / "monitoring.md"

APP_KINDS = {
    "BillwatchWebhookFailures": AlertKind.WEBHOOK_FAILURE,
    "BillwatchWebhookRejections": AlertKind.WEBHOOK_FAILURE,
    "BillwatchPaymentFailureSpike": AlertKind.PAYMENT_FAILURE_RATE,
    "BillwatchPaymentFinalFailure": AlertKind.PAYMENT_FINAL_FAILURE,
    "BillwatchRefundsHigh": AlertKind.REFUNDS_HIGH,
    "BillwatchMonthlyChurnHigh": AlertKind.CHURN_HIGH,
    "BillwatchAuditWriteFailures": AlertKind.AUDIT_WRITE_FAILURE,
}
"""Each Prometheus alert that the app raises too, with the app's alert kind."""


def alerts(text: str) -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(text)["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def cli(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "billwatch.cli", "monitoring", "render-rules",
               *(str(arg) for arg in args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120,
                          check=False)


class TestCommittedFile:
    def test_is_the_rendering_of_the_shipped_defaults(self) -> None:
        rendered = prometheus_rules.render(prometheus_rules.shipped_settings())
        assert RULES.read_text(encoding="utf-8") == rendered, (
            "deploy/prometheus/rules/billwatch.rules.yml is stale: run "
            "billwatch monitoring render-rules --defaults")

    def test_the_command_checks_and_writes(self, tmp_path: Path) -> None:
        current = cli("--defaults", "--check")
        assert current.returncode == 0, current.stderr
        stale = tmp_path / "rules.yml"
        stale.write_text(RULES.read_text(encoding="utf-8").replace("> 0.05", "> 0.07"))
        refused = cli("--defaults", "--check", "--output", stale)
        assert refused.returncode == 1 and "stale" in refused.stderr
        written = cli("--defaults", "--output", stale)
        assert written.returncode == 0, written.stderr
        assert stale.read_text(encoding="utf-8") == RULES.read_text(encoding="utf-8")

    def test_the_command_renders_this_installation_s_settings(self, tmp_path: Path) -> None:
        env = {"BILLWATCH_ALERT_CHURN_RATE": "0.2", "BILLWATCH_ENV": "development"}
        result = subprocess.run(
            [sys.executable, "-m", "billwatch.cli", "monitoring", "render-rules", "--output", "-"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
            env={**_plain_environment(), **env})
        assert result.returncode == 0, result.stderr
        assert alerts(result.stdout)["BillwatchMonthlyChurnHigh"]["expr"] == (
            "billing_monthly_customer_churn_ratio > 0.2")

    def test_every_alert_is_documented_with_its_fact(self) -> None:
        doc = MONITORING_DOC.read_text(encoding="utf-8")
        for name in alerts(RULES.read_text(encoding="utf-8")):
            assert f"`{name}`" in doc, f"{name} is not in docs/monitoring.md"


def _plain_environment() -> dict[str, str]:
    """The environment without BILLWATCH_* settings, so only the test's own apply."""
    return {key: value for key, value in os.environ.items() if not key.startswith("BILLWATCH_")}


class TestOneFact:
    def test_app_alerts_carry_the_app_s_severity(self) -> None:
        rendered = alerts(prometheus_rules.render(prometheus_rules.shipped_settings()))
        for name, kind in APP_KINDS.items():
            assert rendered[name]["labels"]["severity"] == spec_for(kind).severity.value, name

    def test_thresholds_follow_the_settings(self, tmp_path: Path) -> None:
        settings = prometheus_rules.shipped_settings().model_copy(update={
            "alert_payment_failure_attempts": 4, "alert_refunds_per_day": 9,
            "alert_churn_rate": 0.125, "alert_payment_failure_rate_factor": 2.5,
            "alert_payment_failure_min_attempts": 40,
            "alert_payment_failure_rate_min_increase": 0.2,
            "alert_webhook_backlog_seconds": 900})
        text = prometheus_rules.render(settings)
        rendered = alerts(text)
        assert rendered["BillwatchMonthlyChurnHigh"]["expr"].endswith("> 0.125")
        assert "12.5%" in rendered["BillwatchMonthlyChurnHigh"]["annotations"]["summary"]
        assert rendered["BillwatchRefundsHigh"]["expr"].endswith(">= 10")
        assert "More than 9 refunds" in rendered["BillwatchRefundsHigh"]["annotations"]["summary"]
        assert "(4)" in rendered["BillwatchPaymentFinalFailure"]["annotations"]["summary"]
        spike = rendered["BillwatchPaymentFailureSpike"]["expr"]
        assert ">= 2.5 *" in spike and ">= 0.2\n" in spike and spike.endswith(">= 40")
        assert rendered["BillwatchWebhookBacklog"]["expr"].endswith("> 900")
        path = tmp_path / "rules.yml"
        path.write_text(text)
        check = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True,
                               text=True, timeout=120, check=False)
        assert check.returncode == 0, check.stdout + check.stderr

    def test_descriptions_survive_the_folding(self) -> None:
        rendered = alerts(prometheus_rules.render(prometheus_rules.shipped_settings()))
        settings = prometheus_rules.shipped_settings()
        written = {rule.name: rule for rule in (*prometheus_rules.app_alerts(settings),
                                                *prometheus_rules.outside_alerts(settings))}
        assert set(written) == set(rendered)
        for name, rule in written.items():
            annotations = rendered[name]["annotations"]
            assert annotations == {"summary": rule.summary, "description": rule.description}
            assert rendered[name]["expr"] == rule.expr

    def test_shipped_settings_ignore_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("BILLWATCH_ALERT_REFUNDS_PER_DAY", "42")
        assert Settings().alert_refunds_per_day == 42
        assert prometheus_rules.shipped_settings().alert_refunds_per_day == 5


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH (Debian: apt-get install prometheus); "
                    "these tests never skip.", pytrace=False)
    return path
