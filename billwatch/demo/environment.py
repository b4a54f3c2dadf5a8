"""The demo's configuration: one folder, fresh secrets, and the same settings for every process.

billwatch (a child process) reads its settings from ``BILLWATCH_*`` variables; the demo driver
(this process) needs the very same values to mint tokens, seed the database and read the
results. Both come from :class:`DemoEnvironment`, so they cannot drift apart.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from billwatch.audit.crypto import generate_key_entry
from billwatch.config import Settings

ALERT_RECIPIENT = "billing-ops@clinic.test"


@dataclass(frozen=True, slots=True)
class Population:
    """How many of each the simulated month involves."""

    patients: int = 200
    proxies: int = 40
    organizations: int = 10
    seed: int = 7


@dataclass(frozen=True)
class DemoEnvironment:
    folder: Path
    billwatch_port: int
    stripe_port: int
    smtp_port: int
    webhook_secret: str = field(default_factory=lambda: f"whsec_demo_{secrets.token_hex(16)}")
    token_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    audit_encryption_keys: str = field(default_factory=lambda: generate_key_entry("demo"))
    audit_hmac_key: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    stripe_api_key: str = "sk_test_billwatch_demo"

    @property
    def database_path(self) -> Path:
        return self.folder / "billwatch.db"

    @property
    def mail_folder(self) -> Path:
        return self.folder / "mail"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.billwatch_port}"

    @property
    def stripe_url(self) -> str:
        return f"http://127.0.0.1:{self.stripe_port}"

    def values(self) -> dict[str, Any]:
        """Every setting the demo fixes, by field name."""
        return {
            "env": "development",  # a local Stripe key and a laptop; the secrets are fresh
            "enable_api_docs": "true",  # the summary links to /docs
            "database_url": f"sqlite+aiosqlite:///{self.database_path}",
            "stripe_api_base": self.stripe_url,
            "stripe_api_key": self.stripe_api_key,
            "stripe_webhook_secret": self.webhook_secret,
            "token_secret": self.token_secret,
            "public_base_url": self.base_url,
            "billing_alert_emails": ALERT_RECIPIENT,
            "smtp_host": "127.0.0.1",
            "smtp_port": str(self.smtp_port),
            "smtp_from": "billwatch-demo@clinic.test",
            "alert_poll_seconds": "1",
            "alert_group_wait_seconds": "0",  # the demo shows each first mail as it happens
            "job_catch_up_days": "1",
            "log_level": "WARNING",
            "audit_encryption_keys": self.audit_encryption_keys,
            "audit_hmac_key": self.audit_hmac_key,
            # relative to the folder, where billwatch and its commands run
            "audit_checkpoint_dir": "checkpoints",
            "audit_archive_dir": "archive",
        }

    def server_env(self) -> dict[str, str]:
        """The same values as ``BILLWATCH_*`` variables for the billwatch process."""
        return {f"BILLWATCH_{name.upper()}": str(value) for name, value in self.values().items()}

    def settings(self) -> Settings:
        """The settings billwatch runs with, for this process (no ``.env`` file read)."""
        return Settings(_env_file=None, **self.values())
