"""What the figures were measured on: they mean little without the machine next to them."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import asyncpg


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


async def describe(dsn: str) -> dict[str, Any]:
    """CPU, cores, memory, Python and PostgreSQL versions (and the settings that matter most)."""
    conn = await asyncpg.connect(dsn)
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = {name: await conn.fetchval(f"SHOW {name}") for name in
                    ("shared_buffers", "synchronous_commit", "max_connections")}
    finally:
        await conn.close()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_gib": memory_gib(),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "os": f"{platform.system()} {platform.release()}", "postgresql": version,
            "postgresql_settings": settings}
