"""The HTTP servers under test, each a real ``uvicorn`` (uvloop, httptools) in its own processes.

billwatch runs as an operator runs it (``billwatch serve --workers N``); the baselines run as
plain ASGI apps from :mod:`bench.apps` under the same server with the same worker count, so
the only difference measured is the application's own work.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from billwatch.demo.stack import Service, executable, free_port

REPO = Path(__file__).resolve().parent.parent


@contextmanager
def serve_billwatch(env: dict[str, str], *, workers: int, log_dir: Path,
                    name: str = "billwatch") -> Iterator[Service]:
    argv = [executable("billwatch"), "serve", "--host", "127.0.0.1", "--port", "{port}",
            "--workers", str(workers), "--no-migrate"]
    with _serving(name, argv, env, log_dir, "/healthz") as service:
        yield service


@contextmanager
def serve_app(target: str, env: dict[str, str], *, workers: int, log_dir: Path,
              factory: bool = False) -> Iterator[Service]:
    """``uvicorn bench.apps.<module>:<app>`` with ``workers`` processes."""
    argv = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", "{port}",
            "--workers", str(workers), "--log-level", "warning", "--no-access-log",
            *(["--factory"] if factory else [])]
    with _serving(target.rsplit(".", 1)[-1].replace(":", "-"), argv, env, log_dir, "/") as service:
        yield service


@contextmanager
def _serving(name: str, argv: list[str], env: dict[str, str], log_dir: Path,
             ready_path: str) -> Iterator[Service]:
    port = free_port()
    argv = [part.replace("{port}", str(port)) for part in argv]
    service = Service(name, argv, cwd=REPO, port=port, log_dir=log_dir,
                      env={**env, "PYTHONPATH": str(REPO)})
    try:
        service.wait_ready(ready_path)
        yield service
    finally:
        service.stop()


def cpu_seconds(service: Service) -> float:
    """User + system CPU used so far by the server's processes (its process group, workers
    included); read from ``/proc``, so 0.0 where there is none."""
    group, total = service.process.pid, 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir() if Path("/proc/self/stat").exists() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        # after the command name: state, ppid, pgrp, ..., utime (12th), stime (13th)
        if int(fields[2]) == group:
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total
