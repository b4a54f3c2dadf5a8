"""A private PostgreSQL server for tests that stop and start the server itself.

The shared server is never restarted (other runs use it): :func:`private_server` runs
``initdb`` into a fresh temporary folder and ``pg_ctl`` on a free loopback port, and stops and
removes it at the end. Every command is bounded by a timeout, so a server that will not stop
cannot hang a run. When the process runs as root, the server runs as the ``postgres`` user
(PostgreSQL refuses root), which is given the folder.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.support import free_port

BINARY_GLOB = "/usr/lib/postgresql/*/bin"
"""Where Debian installs the server binaries, one folder per major version."""
COMMAND_TIMEOUT = 60.0
"""The bound on any one ``initdb`` or ``pg_ctl`` call (``pg_ctl -t`` waits less than this)."""
SERVER_OPTIONS = ("-c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=32MB"
                  " -c max_connections=100")
"""fsync is off because the host never crashes in a test: a stopped server loses only what
was never committed, with or without it."""


def server_binaries() -> Path | None:
    """The newest installed version's bin folder with ``initdb`` and ``pg_ctl``; None if absent."""
    found = [folder for folder in Path("/").glob(BINARY_GLOB.lstrip("/"))
             if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file()]

    def major(folder: Path) -> int:
        version = folder.parent.name
        return int(version) if version.isdigit() else 0

    return max(found, key=major) if found else None


@dataclass
class PgServer:
    """One running private server: its folder, port, and stop/start by ``pg_ctl``."""

    bindir: Path
    root: Path
    port: int
    run_as: list[str]

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def dsn(self, database: str = "postgres") -> str:
        """A libpq/asyncpg DSN (trust authentication as ``postgres``)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def url(self, database: str) -> str:
        """The SQLAlchemy URL billwatch takes."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> None:
        command = [*self.run_as, str(self.bindir / argv[0]), *argv[1:]]
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                                check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} {argv[1:]} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}\n{self.log_tail()}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        options = f"-p {self.port} -k {self.root} {SERVER_OPTIONS}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-o", options,
                  "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` ends every session (what a restart does), ``immediate`` kills."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def create_database(self, name: str) -> str:
        """A new database on this server; returns its SQLAlchemy URL."""
        connection = await asyncpg.connect(self.dsn(), timeout=10)
        try:
            await connection.execute(f'CREATE DATABASE "{name}"')
        finally:
            await connection.close()
        return self.url(name)

    def shut_down(self) -> None:
        """Stop for good: immediately, else kill the postmaster we started (by its pid)."""
        if not self.running():
            return
        try:
            self.stop("immediate")
        except (RuntimeError, subprocess.TimeoutExpired):
            pid = self.postmaster_pid()
            if pid is not None:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _server_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """How to run the server's commands: as ourselves, or (as root) as ``postgres``."""
    if os.geteuid() != 0:
        return [], None
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no postgres user to run a private server as")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root and runuser is missing: cannot run a private server")
    return [runuser, "-u", "postgres", "--"], account


@contextmanager
def private_server() -> Iterator[PgServer]:
    """A fresh PostgreSQL server on a free port, stopped and removed at the end.

    Skips (with the reason) when the server binaries are not installed.
    """
    bindir = server_binaries()
    if bindir is None:
        pytest.skip(f"no PostgreSQL server binaries under {BINARY_GLOB} for a private server")
    run_as, account = _server_user()
    root = Path(tempfile.mkdtemp(prefix="billwatch-pg-"))
    if account is not None:
        os.chown(root, account.pw_uid, account.pw_gid)
    server = PgServer(bindir, root, free_port(), run_as)
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.shut_down()
        shutil.rmtree(root, ignore_errors=True)
