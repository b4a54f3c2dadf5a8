"""Prometheus multiprocess mode: one directory of per-process metric files, summed at scrape time.

With several worker processes each worker counts into its own files under
``PROMETHEUS_MULTIPROC_DIR`` and the worker that answers a scrape sums all of them, so a counter
reads the same total whichever worker is asked. The variable must be set before
``prometheus_client`` is imported in a worker; ``billwatch serve --workers N`` does that (creating
a private directory when none is configured) before it spawns the workers.

Files of dead workers: their counters and histograms keep counting (the files stay until the
next ``serve`` start), while their live gauges are dropped with ``mark_process_dead`` by the
next worker that starts or answers a scrape.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import structlog
from prometheus_client import values
from prometheus_client.multiprocess import mark_process_dead

log = structlog.get_logger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_active() -> bool:
    """True when this process's metric values live in the shared files."""
    return values.ValueClass is not values.MutexValue


def directory() -> Path | None:
    configured = os.environ.get(MULTIPROC_ENV)
    return Path(configured) if configured else None


def file_pid(path: Path) -> int | None:
    """The process id a metric file belongs to (``counter_123.db``, ``gauge_livesum_123.db``)."""
    tail = path.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dead_pids(path: Path) -> set[int]:
    pids = {file_pid(file) for file in path.glob("*.db")}
    return {pid for pid in pids if pid is not None and not pid_alive(pid)}


def mark_dead_workers(path: Path | None = None) -> set[int]:
    """Drop the live gauges of workers that are gone; their counters keep counting."""
    path = path or directory()
    if path is None or not path.is_dir():
        return set()
    dead = dead_pids(path)
    for pid in dead:
        mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
    return dead


def remove_files_of_dead_processes(path: Path) -> int:
    """Start of a server run: forget every file left by a process that no longer exists.

    Counters then restart from zero, which Prometheus treats as a counter reset. Files of live
    processes (this one, or a job worker sharing the directory) are kept.
    """
    removed = 0
    dead = dead_pids(path)
    for file in path.glob("*.db"):
        if file_pid(file) in dead:
            file.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def prepared_for_workers(workers: int) -> Iterator[Path | None]:
    """Set up multiprocess mode for a server run with ``workers`` processes.

    A configured directory is created if missing and cleared of dead processes' files. Without
    one, several workers get a fresh private directory, removed again when the server stops;
    a single worker runs in ordinary single-process mode.
    """
    configured = directory()
    if configured is not None:
        configured.mkdir(parents=True, exist_ok=True)
        removed = remove_files_of_dead_processes(configured)
        log.info("metrics_multiprocess_directory", files_removed=removed)
        yield configured
        return
    if workers <= 1:
        yield None
        return
    private = Path(tempfile.mkdtemp(prefix="billwatch-metrics-"))
    os.environ[MULTIPROC_ENV] = str(private)
    try:
        yield private
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(private, ignore_errors=True)
