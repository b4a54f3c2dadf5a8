"""Real Celery workers (``billwatch worker`` subprocesses) on the Redis at 127.0.0.1:6379.

Every worker gets its own queue name, so concurrent test runs sharing the Redis database never
take each other's tasks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from celery import Celery

from billwatch.config import Settings
from billwatch.jobs.celery_app import make_celery
from tests.alerts.helpers import alert_test_settings

REDIS_URL = os.environ.get("BILLWATCH_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")
BIN = Path(sys.executable).parent


def worker_settings(database_url: str, smtp_port: int, queue: str) -> Settings:
    return alert_test_settings(database_url, smtp_port, broker_url=REDIS_URL, celery_queue=queue,
                               alert_retry_base_seconds=0.3, alert_retry_max_seconds=1.0)


def environment(settings: Settings) -> dict[str, str]:
    """The worker's environment: the same settings, as ``BILLWATCH_*`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLWATCH_")}
    values: dict[str, Any] = {
        "DATABASE_URL": settings.database_url, "BROKER_URL": settings.broker_url,
        "CELERY_QUEUE": settings.celery_queue, "SMTP_HOST": settings.smtp_host,
        "SMTP_PORT": settings.smtp_port, "SMTP_FROM": settings.smtp_from,
        "BILLING_ALERT_EMAILS": ",".join(settings.billing_alert_emails),
        "ALERT_RETRY_BASE_SECONDS": settings.alert_retry_base_seconds,
        "ALERT_RETRY_MAX_SECONDS": settings.alert_retry_max_seconds,
        "ALERT_COOLDOWN_SECONDS": settings.alert_cooldown_seconds,
        "ALERT_GROUP_WAIT_SECONDS": settings.alert_group_wait_seconds,
        "ENABLE_BILLING_METRICS": "false", "LOG_LEVEL": "WARNING", "ENV": "development",
    }
    env.update({f"BILLWATCH_{key}": str(value) for key, value in values.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Worker:
    """``billwatch worker`` in its own folder; ``stop()`` shuts it down (warm, then hard)."""

    def __init__(self, settings: Settings, workdir: Path, *, concurrency: int = 1,
                 extra_env: dict[str, str] | None = None) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"worker-{uuid.uuid4().hex[:6]}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [str(BIN / "billwatch"), "worker", f"--concurrency={concurrency}", "--pool=prefork",
             "--loglevel=INFO"], cwd=workdir, env={**environment(settings), **(extra_env or {})},
            stdout=self.log,
            stderr=subprocess.STDOUT)
        self.wait_ready()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while " ready." not in self.output():
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker not ready:\n{self.output()}")
            time.sleep(0.05)

    def pool_processes(self) -> list[int]:
        """The worker's pool processes (children of any of its threads)."""
        tasks = Path(f"/proc/{self.process.pid}/task")
        return sorted({int(pid) for task in tasks.iterdir()
                       for pid in (task / "children").read_text().split()})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                for pid in self._children():
                    os.kill(pid, signal.SIGKILL)
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()

    def _children(self) -> list[int]:
        try:
            return self.pool_processes()
        except OSError:
            return []


def publisher(settings: Settings) -> Celery:
    """The test's own Celery app: publishes to the worker's queue, reads its results."""
    return make_celery(settings)


def new_queue() -> str:
    return f"billwatch-test-{uuid.uuid4().hex[:10]}"
