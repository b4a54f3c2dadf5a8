"""The benchmarks still run: every suite at smoke sizes, through ``python -m bench``.

Only that they run and report is checked here; speed targets are the benchmarks' business,
never a test's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_bench(results: Path, suites: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--only", suites,
                           "--results", str(results)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, object] = json.loads(next(results.glob("bench-*.json")).read_text())
    return report


@pytest.mark.parametrize(("suites", "reported"), [
    ("webhooks,overhead", {"webhook ingestion", "audit overhead"}),
    ("daily,audit", {"daily metrics", "audit verify", "audit query", "console pages"}),
])
def test_suites_run_and_report_each_figure_with_its_baseline(tmp_path: Path, suites: str,
                                                             reported: set[str]) -> None:
    report = run_bench(tmp_path, suites)
    figures = report["figures"]
    assert isinstance(figures, list) and figures
    assert {f["suite"] for f in figures} == reported
    for figure in figures:
        assert figure["value"] > 0, figure
    machine = report["machine"]
    assert isinstance(machine, dict) and machine["postgresql"] and machine["cores"]
