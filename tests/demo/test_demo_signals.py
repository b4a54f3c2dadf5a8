"""SIGTERM and SIGHUP stop a running demo the way Ctrl-C does: no child process survives it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from billwatch.demo.stack import port_is_free
from tests.support import free_port


def _children_by_parent() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        found.setdefault(parent, []).append(int(entry.name))
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children...), from ``/proc``."""
    tree, found, todo = _children_by_parent(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie no longer runs anything; it only waits for its parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_for_health(port: int, demo: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert demo.poll() is None, log.read_text(errors="replace")[-2000:]
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"the demo's billwatch never answered:\n{log.read_text()[-2000:]}")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_mid_run_stops_every_child(tmp_path: Path, signum: signal.Signals) -> None:
    port, log = free_port(), tmp_path / "demo.log"
    billwatch = str(Path(sys.executable).parent / "billwatch")
    with open(log, "wb") as out:
        demo = subprocess.Popen(
            [billwatch, "demo", "--patients", "14", "--proxies", "3", "--organizations", "2",
             "--folder", str(tmp_path / "demo"), "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env={"COLUMNS": "120", "PATH": ""})
    children: list[int] = []
    try:
        wait_for_health(port, demo, log)
        children = descendants(demo.pid)
        assert len(children) >= 2, children  # the Stripe peer and billwatch serve, at least
        demo.send_signal(signum)
        assert demo.wait(timeout=60) == 128 + signum, log.read_text(errors="replace")[-2000:]
        survivors = [pid for pid in children if alive(pid)]
        assert survivors == [], survivors
        assert port_is_free(port)
        assert f"stopped by {signum.name}" in log.read_text(errors="replace")
    finally:  # a failed run must not leave its processes behind for the next test
        for pid in [*children, *descendants(demo.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=10)
