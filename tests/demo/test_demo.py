"""The demo still runs end to end: a tiny population through the real CLI, processes and all."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from billwatch.demo.stack import port_is_free
from tests.support import free_port


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path, int]:
    folder = tmp_path_factory.mktemp("demo")
    port = free_port()
    billwatch = str(Path(sys.executable).parent / "billwatch")
    done = subprocess.run(
        [billwatch, "demo", "--patients", "14", "--proxies", "3", "--organizations", "2",
         "--folder", str(folder), "--port", str(port)],
        capture_output=True, text=True, timeout=120, check=False, env={"COLUMNS": "120", "PATH": ""})
    return done, folder, port


class TestDemo:
    def test_runs_to_its_summary_and_verifies_the_audit_chain(
            self, demo_run: tuple[subprocess.CompletedProcess[str], Path, int]) -> None:
        done, _, _ = demo_run
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        for heading in ("Audit rows by event type", "billwatch audit verify", "Key metrics",
                        "Alerts raised", "/admin/audit-logs", "Admin token"):
            assert heading in done.stdout

    def test_drives_every_kind_of_operation_through_the_api_and_webhooks(
            self, demo_run: tuple[subprocess.CompletedProcess[str], Path, int]) -> None:
        _, folder, _ = demo_run
        with sqlite3.connect(folder / "billwatch.db") as conn:
            events = {row[0] for row in conn.execute("SELECT DISTINCT event_type FROM audit_logs")}
            statuses = dict(conn.execute("SELECT status, count(*) FROM stripe_events GROUP BY status"))
        assert {"billing.proxy.checkout.created", "billing.checkout.created",
                "billing.payment.succeeded", "billing.payment.failed", "billing.refund.issued",
                "billing.free_subscription.granted", "billing.override.created",
                "billing.override.revoked", "billing.subscription.cancelled",
                "billing.manager.assigned"} <= events
        assert statuses.get("failed", 0) == 0 and statuses["processed"] > 0

    def test_alert_mails_land_in_the_named_folder_and_nothing_keeps_running(
            self, demo_run: tuple[subprocess.CompletedProcess[str], Path, int]) -> None:
        _, folder, port = demo_run
        mails = list((folder / "mail").glob("*.eml"))
        assert any("final-payment-failure" in mail.name for mail in mails), [m.name for m in mails]
        assert "4242424242424242" not in "".join(m.read_text() for m in mails)
        assert port_is_free(port)

    def test_ends_with_a_console_sign_in_link_that_is_stored_and_unused(
            self, demo_run: tuple[subprocess.CompletedProcess[str], Path, int]) -> None:
        done, folder, port = demo_run
        found = re.search(rf"http://127\.0\.0\.1:{port}/console/sign-in/([A-Za-z0-9_\-]+)",
                          done.stdout.replace("\n", ""))
        assert found is not None, done.stdout[-1500:]
        with sqlite3.connect(folder / "billwatch.db") as conn:
            rows = conn.execute("SELECT token_hash, used_at FROM console_sign_in_links").fetchall()
        assert rows == [(hashlib.sha256(found.group(1).encode()).digest(), None)]
