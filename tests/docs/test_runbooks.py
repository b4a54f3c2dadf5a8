"""Every alert has a runbook where its mail links, and every runbook names commands that exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from billwatch.alerts.explain import runbook_path
from billwatch.alerts.models import AlertKind
from billwatch.alerts.raising import spec_for
from tests.docs.markdown import (
    DOCS,
    ROOT,
    CommandLine,
    broken_links,
    cli_commands,
    command_lines,
    command_problem,
)

RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
OPERATIONS = [DOCS / "operations.md", *sorted((DOCS / "operations").rglob("*.md"))]


def alerting_rules() -> list[dict[str, Any]]:
    rules = []
    for path in RULES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            rules += [rule for rule in group["rules"] if "alert" in rule]
    return rules


class TestEveryAlertHasItsRunbook:
    @pytest.mark.parametrize("kind", list(AlertKind))
    def test_the_mail_links_a_runbook_that_exists_and_names_the_alert(self, kind: AlertKind) -> None:
        path = runbook_path(kind)
        assert path is not None, f"{kind} has no entry in billwatch/alerts/explain.py RUNBOOKS"
        page = DOCS / path
        assert page.is_file(), f"the mail of {kind} links docs/{path}, which does not exist"
        text = page.read_text(encoding="utf-8")
        assert text.startswith(f"# Runbook: `{kind.value}`\n")
        spec = spec_for(kind)
        assert spec.title in text, f"docs/{path} should show the subject's title {spec.title!r}"
        assert f"**Severity** {spec.severity.value}" in text

    def test_there_are_prometheus_rules_to_check(self) -> None:
        assert len(alerting_rules()) >= 5

    @pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
    def test_every_prometheus_rule_has_a_runbook(self, rule: dict[str, Any]) -> None:
        page = DOCS / "operations" / "prometheus" / f"{rule['alert']}.md"
        assert page.is_file(), f"no runbook for the rule {rule['alert']}: docs/operations/prometheus/"
        text = page.read_text(encoding="utf-8")
        assert text.startswith(f"# Runbook: Prometheus `{rule['alert']}`\n")
        assert f"**Severity** {rule['labels']['severity']}" in text
        url = rule.get("annotations", {}).get("runbook_url")
        if url is not None:
            _, found, rest = url.partition("/docs/")
            target = DOCS / rest if found else None
            assert target is not None and target.is_file(), (
                f"{rule['alert']}'s runbook_url {url} names no file under docs/")

    def test_the_index_links_every_runbook_and_procedure(self) -> None:
        index = (DOCS / "operations.md").read_text(encoding="utf-8")
        for page in OPERATIONS[1:]:
            assert f"({page.relative_to(DOCS).as_posix()})" in index, (
                f"docs/operations.md does not link {page.relative_to(DOCS)}")


class TestRunbooksNameWhatExists:
    PAGES = [*OPERATIONS, DOCS / "architecture.md", DOCS / "alerts.md", DOCS / "jobs.md",
             ROOT / "README.md"]

    @pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
    def test_links_resolve(self, page: Path) -> None:
        assert broken_links(page) == []

    def test_every_billwatch_command_named_exists_with_its_options(self) -> None:
        commands = cli_commands()
        lines = [line for page in self.PAGES for line in command_lines(page)]
        assert len(lines) > 30  # the pages do name commands: the check has something to check
        problems = [problem for line in lines if (problem := command_problem(line, commands))]
        assert problems == []

    def test_a_misspelt_command_or_option_is_caught(self) -> None:
        commands = cli_commands()
        assert command_problem(CommandLine(("billwatch", "webhooks", "replay", "--failed"), "x"),
                               commands) is None
        assert command_problem(CommandLine(("billwatch", "webhooks", "replay", "--all"), "x"),
                               commands) == "x: billwatch webhooks replay has no --all"
        assert command_problem(CommandLine(("billwatch", "audit", "repair"), "x"),
                               commands) == "x: no such command"


def test_a_broken_link_or_anchor_is_caught(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A heading, with words\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("[ok](there.md#a-heading-with-words) [gone](missing.md) "
                    "[no anchor](there.md#elsewhere) [web](https://example.test/x.md)\n",
                    encoding="utf-8")
    assert broken_links(page) == ["missing.md", "there.md#elsewhere"]
