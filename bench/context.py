"""What every suite gets: the console, the scale, a folder for server logs, and the size record."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from bench.report import Figure

WEBHOOK_SECRET = f"whsec_bench_{secrets.token_hex(8)}"
TOKEN_SECRET = secrets.token_urlsafe(48)


@dataclass
class BenchContext:
    console: Console
    scale: float
    log_dir: Path
    keep_databases: bool = False
    smoke: bool = False
    """Tiny sizes that only prove the code runs (the test suite uses it); figures mean nothing."""
    sizes: dict[str, int] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)

    def size(self, name: str, full: int, minimum: int) -> int:
        """``full`` scaled, never below ``minimum``; recorded for the JSON report."""
        value = max(20, full // 5000) if self.smoke else max(minimum, round(full * self.scale))
        self.sizes[name] = value
        return value

    def billwatch_env(self, database_url: str, **extra: str) -> dict[str, str]:
        """billwatch's settings for a benchmark server: PostgreSQL, no scheduler, quiet logs."""
        return {"BILLWATCH_ENV": "development",  # the development audit keys, on purpose
                "BILLWATCH_DATABASE_URL": database_url,
                "BILLWATCH_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "BILLWATCH_TOKEN_SECRET": TOKEN_SECRET,
                "BILLWATCH_STRIPE_API_KEY": "sk_test_billwatch_bench",
                # nothing listens here: a benchmark request that reached Stripe would fail loudly
                "BILLWATCH_STRIPE_API_BASE": "http://127.0.0.1:9",
                "BILLWATCH_EMBEDDED_SCHEDULER": "false",
                "BILLWATCH_LOG_LEVEL": "WARNING", **extra}
