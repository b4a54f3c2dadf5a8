"""Real processes for the metrics tests: ``billwatch serve`` and the ``prometheus`` server."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from billwatch.db import Database
from billwatch.metrics import multiproc
from tests.support import TEST_TOKEN_SECRET, TEST_WEBHOOK_SECRET, Factory, free_port, stop_process
from tests.support import test_settings as make_settings

Condition = Callable[[], bool] | Callable[[], Awaitable[bool]]
METRICS_TOKEN = "billwatch-test-metrics-token-0123456789abcdef"


async def wait_until(condition: Condition, *, what: str, within: float = 60.0) -> None:
    """Poll ``condition`` (plain or async) until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {within}s for {what}")
        await asyncio.sleep(0.05)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Served:
    """A running ``billwatch serve`` and a handle on its database."""

    parent_pid: int
    port: int
    metrics_dir: Path
    db: Database
    factory: Factory

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def scrape_headers(self) -> dict[str, str]:
        """What Prometheus sends: ``/metrics`` answers only to the configured bearer token."""
        return {"Authorization": f"Bearer {METRICS_TOKEN}"}

    def worker_pids(self) -> set[int]:
        """Live pids with metric files, other than the supervising parent."""
        pids = {multiproc.file_pid(f) for f in self.metrics_dir.glob("*.db")}
        return {p for p in pids
                if p is not None and p != self.parent_pid and multiproc.pid_alive(p)}


@asynccontextmanager
async def billwatch_served(workdir: Path, stripe_url: str, *, workers: int = 2,
                           **env_overrides: str) -> AsyncIterator[Served]:
    """``billwatch serve --workers N`` on a free port, a SQLite file and multiprocess metrics."""
    _ensure_dir(workdir)
    url = f"sqlite+aiosqlite:///{workdir / 'billwatch.db'}"
    metrics_dir = workdir / "prometheus-multiproc"
    port = free_port()
    env = {**os.environ, multiproc.MULTIPROC_ENV: str(metrics_dir),
           "BILLWATCH_ENV": "development",
           "BILLWATCH_DATABASE_URL": url, "BILLWATCH_STRIPE_API_BASE": stripe_url,
           "BILLWATCH_STRIPE_API_KEY": "sk_test_billwatch_tests",
           "BILLWATCH_TOKEN_SECRET": TEST_TOKEN_SECRET,
           "BILLWATCH_STRIPE_WEBHOOK_SECRET": TEST_WEBHOOK_SECRET,
           "BILLWATCH_LOG_LEVEL": "WARNING", "BILLWATCH_METRICS_CACHE_SECONDS": "0",
           "BILLWATCH_METRICS_TOKEN": METRICS_TOKEN,
           **env_overrides}
    exe = Path(sys.executable).parent / "billwatch"
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            str(exe), "serve", "--workers", str(workers), "--port", str(port), cwd=workdir,
            env=env, stdout=log, stderr=asyncio.subprocess.STDOUT)
        db = Database(url)
        try:
            await wait_until(lambda: port_open(port) or process.returncode is not None,
                             what="billwatch to listen", within=90)
            assert process.returncode is None, log_path.read_text()
            served = Served(process.pid, port, metrics_dir, db,
                            Factory(db, make_settings(url, stripe_url)))
            await wait_until(lambda: len(served.worker_pids()) == workers,
                             what=f"{workers} workers")
            yield served
        finally:
            await stop_process(process)
            await db.dispose()


@dataclass
class Prometheus:
    url: str
    http: httpx.AsyncClient

    async def query(self, expr: str) -> dict[str, Any]:
        """``/api/v1/query`` at the current time; the whole answer (status, data or error)."""
        response = await self.http.get(f"{self.url}/api/v1/query", params={"query": expr})
        answer: dict[str, Any] = response.json()
        return answer

    async def vector(self, expr: str) -> list[dict[str, Any]]:
        answer = await self.query(expr)
        assert answer["status"] == "success", (expr, answer)
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_config(workdir: Path, config: str) -> Path:
    _ensure_dir(workdir)
    path = workdir / "prometheus.yml"
    path.write_text(config)
    return path


@asynccontextmanager
async def prometheus_running(workdir: Path, config: str) -> AsyncIterator[Prometheus]:
    """The real ``prometheus`` server on a free loopback port with ``config``."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus missing: `make test` installs Debian's prometheus package"
    config_path = _write_config(workdir, config)
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary, f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn", cwd=workdir, stdout=log, stderr=asyncio.subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(timeout=30) as http:
                async def ready() -> bool:
                    if process.returncode is not None:
                        raise RuntimeError(log_path.read_text())
                    try:
                        return (await http.get(f"{url}/-/ready")).status_code == 200
                    except httpx.TransportError:
                        return False

                await wait_until(ready, what="prometheus to be ready", within=60)
                yield Prometheus(url, http)
        finally:
            await stop_process(process)
