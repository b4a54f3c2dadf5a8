"""The processes a demo needs: the local Stripe peer and billwatch itself, each its own process.

Both are started as a user would start them (``localstripe``, ``billwatch serve``) on loopback
ports, with their output in log files under the demo folder, and stopped with SIGTERM (then
SIGKILL) by process id, so nothing of the demo outlives it unless ``--keep-running`` asks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when nothing listens there, else any free loopback port."""
    if preferred and port_is_free(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def executable(name: str) -> str:
    """A console script of this environment (the venv's ``bin``), or from PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else (shutil.which(name) or name)


class Service:
    """One child process with a log file, waited on until it answers on its port."""

    def __init__(self, name: str, argv: list[str], *, cwd: Path, port: int,
                 env: dict[str, str] | None = None, log_dir: Path | None = None) -> None:
        self.name, self.port = name, port
        cwd.mkdir(parents=True, exist_ok=True)
        self.log_path = (log_dir or cwd) / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(argv, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **(env or {})}, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str = "/", *, timeout: float = 60.0) -> None:
        """Poll until an HTTP answer (any status) comes back, failing fast if the process died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            try:
                httpx.get(self.url + path, timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not answer on {self.url} within {timeout:.0f}s")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group this service leads, then SIGKILL if it lingers."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        self._log.close()


def start_localstripe(folder: Path, port: int, started: list[Service]) -> Service:
    """localstripe in its own folder, starting empty (``--from-scratch``).

    It joins ``started`` before it answers, so a stop while it starts up stops it too.
    """
    service = Service("localstripe", [executable("localstripe"), "--port", str(port), "--from-scratch"],
                      cwd=folder / "localstripe", port=port)
    started.append(service)
    service.wait_ready("/v1/customers")
    return service


def start_billwatch(folder: Path, port: int, env: dict[str, str],
                    started: list[Service]) -> Service:
    """``billwatch serve`` on the demo database (migrated beforehand by the demo), in ``started``
    before it answers."""
    argv = [executable("billwatch"), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--no-migrate"]
    service = Service("billwatch", argv, cwd=folder, port=port, env=env)
    started.append(service)
    service.wait_ready("/healthz")
    return service
