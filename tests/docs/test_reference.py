"""docs/reference/ is what the generator writes from the code today, and reads as a reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI

from billwatch import docs_reference
from billwatch.audit.events import AuditEvent
from billwatch.config import (
    DEVELOPMENT_STRIPE_API_KEY,
    DEVELOPMENT_TOKEN_SECRET,
    DEVELOPMENT_WEBHOOK_SECRET,
    Settings,
)
from tests.docs.markdown import cli_commands

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference"
REGENERATE = "run `python -m billwatch.docs_reference` and commit docs/reference/"


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return docs_reference.reference_app()


class TestCommittedPagesAreCurrent:
    def test_regenerating_into_a_fresh_folder_gives_the_committed_pages(
            self, app: FastAPI, tmp_path: Path) -> None:
        written = docs_reference.write(tmp_path, app)
        assert {path.name for path in written} == {
            "settings.md", "metrics.md", "audit-events.md", "api.md", "cli.md"}
        for path in written:
            committed = REFERENCE / path.name
            assert committed.exists(), f"docs/reference/{path.name} is missing: {REGENERATE}"
            assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
                f"docs/reference/{path.name} differs from the code: {REGENERATE}")

    def test_a_page_that_differs_or_is_missing_is_reported(
            self, app: FastAPI, tmp_path: Path) -> None:
        docs_reference.write(tmp_path, app)
        assert docs_reference.stale(tmp_path, app) == []
        settings = tmp_path / "settings.md"
        settings.write_text(settings.read_text(encoding="utf-8").replace(
            "`BILLWATCH_AUDIT_RETENTION_DAYS`", "`BILLWATCH_AUDIT_KEEP_DAYS`"), encoding="utf-8")
        (tmp_path / "cli.md").unlink()
        assert docs_reference.stale(tmp_path, app) == ["settings.md", "cli.md"]


    def test_the_command_writes_the_pages_and_check_names_the_stale_ones(
            self, tmp_path: Path) -> None:
        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "billwatch.docs_reference",
                                   "--out", str(tmp_path), *args],
                                  capture_output=True, text=True, timeout=90, check=False)

        missing = run("--check")
        assert missing.returncode == 1 and "stale: settings.md" in missing.stdout
        assert not (tmp_path / "settings.md").exists()  # --check writes nothing
        written = run()
        assert written.returncode == 0 and "wrote cli.md" in written.stdout, written.stderr
        assert run("--check").returncode == 0
        assert (tmp_path / "api.md").read_text(encoding="utf-8") == (
            REFERENCE / "api.md").read_text(encoding="utf-8")


class TestPagesSayWhatEachThingIs:
    def test_every_setting_has_a_description(self) -> None:
        missing = [name for name, field in Settings.model_fields.items() if not field.description]
        assert not missing, f"settings without a docstring in billwatch/config.py: {missing}"

    def test_every_setting_is_listed_under_its_variable(self, app: FastAPI) -> None:
        page = docs_reference.render_all(app)["settings.md"]
        for name in Settings.model_fields:
            assert f"| `BILLWATCH_{name.upper()}` |" in page

    def test_no_secret_value_is_shown(self, app: FastAPI) -> None:
        page = docs_reference.render_all(app)["settings.md"]
        defaults = Settings()
        for secret in (DEVELOPMENT_STRIPE_API_KEY, DEVELOPMENT_TOKEN_SECRET, DEVELOPMENT_WEBHOOK_SECRET,
                       defaults.audit_hmac_key.get_secret_value(),
                       *defaults.audit_encryption_keys.get_secret_value().split(",")):
            assert secret not in page
        assert "| `BILLWATCH_TOKEN_SECRET` | secret | not shown (a development value) |" in page

    def test_every_audit_event_says_what_it_means_and_its_outcome(self) -> None:
        documented = {event: (meaning, outcome)
                      for event, meaning, outcome in docs_reference.event_docs()}
        assert set(documented) == set(AuditEvent)
        bad = [event.value for event, (meaning, outcome) in documented.items()
               if not meaning or ("`success`" not in outcome and "`failure`" not in outcome)]
        assert not bad, (f"AuditEvent members need a docstring ending in "
                         f"'{docs_reference.OUTCOME_MARK} ...': {bad}")

    def test_every_route_names_its_summary_and_every_metric_its_help(self, app: FastAPI) -> None:
        schema = app.openapi()
        undocumented = [f"{method.upper()} {path}" for path, operations in schema["paths"].items()
                        for method, operation in operations.items()
                        if not operation.get("description")]
        assert not undocumented, f"routes without a docstring: {undocumented}"
        metrics = docs_reference.app_metrics(app)
        assert {"billing_refunds_issued_total", "billing_mrr_cents",
                "billing_http_requests_total"} <= {metric.name for metric in metrics}
        assert all(metric.help for metric in metrics)

    def test_the_refund_route_shows_its_event_and_required_key(self, app: FastAPI) -> None:
        page = docs_reference.render_all(app)["api.md"]
        [row] = [line for line in page.splitlines()
                 if line.startswith("| `POST /admin/transactions/{transaction_id}/refund` |")]
        assert "| bearer token | `billing.refund.issued` | required |" in row
        assert "502, 504" in row

    def test_every_command_has_help(self) -> None:
        page = docs_reference.cli_page()
        commands = cli_commands()
        assert "--anchor" in commands["billwatch audit verify"]
        assert "--no-migrate" in commands["billwatch serve"]
        for command in commands:
            section = page.split(f"## `{command}`\n\n", 1)[1]
            assert section.split("\n", 1)[0].strip(), f"`{command}` has no help text"
