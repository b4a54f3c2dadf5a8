"""Several worker processes: a scrape sums every worker, dead workers' counters still count."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import OwnerType, Role
from billwatch.metrics import multiproc
from tests.metrics.helpers import Sub, add_subscriptions, parse, value
from tests.metrics.processes import Served, billwatch_served, wait_until
from tests.support import LocalStripe

CHECKOUTS = "billing_checkouts_created_total"
PLAN = {"owner_type": "patient", "plan": "basic_monthly"}


class TestFilesOfDeadProcesses:
    """Real metric files written by a real process that has exited."""

    @pytest.fixture
    def left_behind(self, tmp_path: Path) -> int:
        script = ("from prometheus_client import Counter, Gauge\n"
                  "Counter('dead_work_total', 'w').inc(3)\n"
                  "Gauge('dead_busy', 'b', multiprocess_mode='livesum').set(2)\n")
        env = {**os.environ, multiproc.MULTIPROC_ENV: str(tmp_path)}
        finished = subprocess.run([sys.executable, "-c", script], env=env, timeout=60, check=True)
        assert finished.returncode == 0
        pids = {multiproc.file_pid(f) for f in tmp_path.glob("*.db")}
        assert len(pids) == 1
        pid = pids.pop()
        assert pid is not None
        return pid

    def totals(self, path: Path) -> dict[str, float]:
        return {s.name: s.value for m in MultiProcessCollector(None, str(path)).collect()  # type: ignore[no-untyped-call]
                for s in m.samples}

    def test_live_gauges_go_counters_stay(self, tmp_path: Path, left_behind: int) -> None:
        assert self.totals(tmp_path) == {"dead_work_total": 3, "dead_busy": 2}
        assert multiproc.mark_dead_workers(tmp_path) == {left_behind}
        assert self.totals(tmp_path) == {"dead_work_total": 3}

    def test_a_new_server_run_starts_from_live_processes_only(
            self, tmp_path: Path, left_behind: int, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(multiproc.MULTIPROC_ENV, str(tmp_path))
        mine = tmp_path / f"counter_{os.getpid()}.db"
        mine.write_bytes(b"")
        with multiproc.prepared_for_workers(2) as path:
            assert path == tmp_path
            assert [f.name for f in tmp_path.glob("*.db")] == [mine.name]

    def test_several_workers_without_a_directory_get_a_private_one(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.delenv(multiproc.MULTIPROC_ENV, raising=False)
        with multiproc.prepared_for_workers(2) as path:
            assert path is not None and path.is_dir()
            assert os.environ[multiproc.MULTIPROC_ENV] == str(path)
        assert not path.exists()
        assert multiproc.MULTIPROC_ENV not in os.environ
        with multiproc.prepared_for_workers(1) as single:
            assert single is None


def checkouts_by_pid(served: Served) -> dict[int, float]:
    """Each worker's own count, read from its own file."""
    counts = {}
    for file in served.metrics_dir.glob("counter_*.db"):
        pid = multiproc.file_pid(file)
        samples = [s for m in MultiProcessCollector.merge([str(file)]) for s in m.samples
                   if s.name == CHECKOUTS and s.labels == PLAN]
        if pid is not None:
            counts[pid] = sum(s.value for s in samples)
    return counts


@pytest.fixture
async def served(tmp_path: Path, localstripe: LocalStripe,
                 catalogue_synced: None) -> AsyncIterator[Served]:
    async with billwatch_served(tmp_path, localstripe.url, workers=2) as running:
        yield running


async def checkouts(served: Served, n: int, *, headers: dict[str, str] | None = None,
                    body: dict[str, str] | None = None) -> None:
    """``n`` checkouts at once, each on its own connection, so both workers take some.

    Each is for a new patient, opened by an admin (an owner has one open checkout at a time:
    asking again returns it); with ``headers`` and ``body``, one checkout for that owner.
    """
    limits = httpx.Limits(max_keepalive_connections=0)
    calls: list[tuple[dict[str, str], dict[str, str]]] = []
    if headers is not None and body is not None:
        calls = [(headers, body)]
    else:
        admin = served.factory.headers(await served.factory.user(Role.ADMIN))
        for _ in range(n):
            patient = await served.factory.user(Role.PATIENT)
            calls.append((admin, {"owner_type": "patient", "owner_id": str(patient.id),
                                  "plan_code": "basic_monthly"}))
    async with httpx.AsyncClient(base_url=served.url, limits=limits, timeout=60) as http:
        responses = await asyncio.gather(*(
            http.post("/billing/checkout", headers=h, json=b) for h, b in calls))
    assert [r.status_code for r in responses] == [201] * len(calls), [r.text for r in responses][:3]


async def scrapes(served: Served, times: int) -> list[dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=served.url, limits=limits, timeout=60) as http:
        refused = await http.get("/metrics")  # no token, no figures
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "invalid_metrics_token"
        bodies = [await http.get("/metrics", headers=served.scrape_headers) for _ in range(times)]
    assert all(b.status_code == 200 for b in bodies)
    return [parse(b.text) for b in bodies]


async def promtool_accepts(served: Served) -> None:
    """The summed multiprocess exposition is as clean as the single-process one."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: `make test` installs Debian's prometheus package"
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as http:
        body = (await http.get("/metrics", headers=served.scrape_headers)).content
    checked = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics", stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(checked.communicate(body), timeout=60)
    assert (checked.returncode, output.decode()) == (0, "")


class TestTwoWorkers:
    async def test_every_scrape_reads_the_total_of_all_workers(self, served: Served) -> None:
        patient = await served.factory.user(Role.PATIENT)
        headers = served.factory.headers(patient)
        body = {"owner_type": "patient", "owner_id": str(patient.id), "plan_code": "basic_monthly"}
        await checkouts(served, 1, headers=headers, body=body)
        sent = 1
        deadline = time.monotonic() + 60
        while sum(1 for v in checkouts_by_pid(served).values() if v) < 2:
            assert time.monotonic() < deadline, checkouts_by_pid(served)
            await checkouts(served, 8)
            sent += 8

        await add_subscriptions(served.db, [Sub(OwnerRef(OwnerType.PATIENT, patient.id),
                                                "basic_monthly")])
        await promtool_accepts(served)
        for samples in await scrapes(served, 8):
            assert value(samples, CHECKOUTS, **PLAN) == sent
            assert value(samples, "billing_http_requests_total", method="POST",
                         route="/billing/checkout", status="201") == sent
            # from the database, by the scraping worker alone: never summed over workers
            assert value(samples, "billing_active_subscriptions", **PLAN) == 1
            assert value(samples, "billing_mrr_cents", owner_type="patient") == 1500

    async def test_a_dead_workers_counts_survive_and_its_live_gauge_goes(
            self, served: Served) -> None:
        patient = await served.factory.user(Role.PATIENT)
        headers = served.factory.headers(patient)
        owner = OwnerRef(OwnerType.PATIENT, patient.id)
        body = {"owner_type": owner.type.value, "owner_id": str(owner.id), "plan_code": "basic_monthly"}
        await checkouts(served, 1, headers=headers, body=body)
        deadline = time.monotonic() + 60
        sent = 1
        while sum(1 for v in checkouts_by_pid(served).values() if v) < 2:
            assert time.monotonic() < deadline
            await checkouts(served, 8)
            sent += 8
        victim = max(served.worker_pids(), key=lambda p: checkouts_by_pid(served).get(p, 0))
        live_gauge = served.metrics_dir / f"gauge_livesum_{victim}.db"
        assert live_gauge.exists()

        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: not live_gauge.exists() and len(served.worker_pids()) == 2,
                   what="the replacement worker to start and tidy up")
        await checkouts(served, 5)
        for samples in await scrapes(served, 6):
            assert value(samples, CHECKOUTS, **PLAN) == sent + 5
            assert value(samples, "billing_http_requests_in_progress") == 1
