"""Outside development, nothing starts on a secret that ships in the source or is too short."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from billwatch.app import create_app
from billwatch.audit.crypto import generate_key_entry
from billwatch.config import (
    DEVELOPMENT_STRIPE_API_KEY,
    DEVELOPMENT_TOKEN_SECRET,
    DEVELOPMENT_WEBHOOK_SECRET,
    Settings,
)
from billwatch.secret_keys import DEVELOPMENT_ENCRYPTION_KEYS, DEVELOPMENT_HMAC_KEY
from billwatch.startup import InsecureSettings, require_secure_settings, secret_problems

BIN = Path(sys.executable).parent


def strong() -> dict[str, Any]:
    """Production settings with nothing to refuse: fresh secrets of 32 bytes or more."""
    return {
        "database_url": "sqlite+aiosqlite://",  # in memory: nothing left behind
        "token_secret": secrets.token_urlsafe(40),
        "stripe_api_key": f"sk_live_{secrets.token_hex(24)}",
        "stripe_webhook_secret": f"whsec_{secrets.token_hex(24)}",
        "audit_hmac_key": secrets.token_urlsafe(40),
        "audit_encryption_keys": generate_key_entry("k1"),
        "log_level": "WARNING",
    }


def production(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **{**strong(), **overrides})  # type: ignore[call-arg]


WEAK: dict[str, tuple[str, Any]] = {
    "default token secret": ("BILLWATCH_TOKEN_SECRET", {"token_secret": DEVELOPMENT_TOKEN_SECRET}),
    "1-byte token secret": ("BILLWATCH_TOKEN_SECRET", {"token_secret": "x"}),
    "31-byte token secret": ("BILLWATCH_TOKEN_SECRET", {"token_secret": "y" * 31}),
    "default webhook secret": ("BILLWATCH_STRIPE_WEBHOOK_SECRET",
                               {"stripe_webhook_secret": DEVELOPMENT_WEBHOOK_SECRET}),
    "short webhook secret": ("BILLWATCH_STRIPE_WEBHOOK_SECRET", {"stripe_webhook_secret": "whsec_1"}),
    "default previous webhook secret": ("BILLWATCH_STRIPE_WEBHOOK_SECRETS_PREVIOUS", {
        "stripe_webhook_secrets_previous": DEVELOPMENT_WEBHOOK_SECRET}),
    "short previous webhook secret": ("BILLWATCH_STRIPE_WEBHOOK_SECRETS_PREVIOUS", {
        "stripe_webhook_secrets_previous": "whsec_old"}),
    "default audit HMAC key": ("BILLWATCH_AUDIT_HMAC_KEY", {"audit_hmac_key": DEVELOPMENT_HMAC_KEY}),
    "default audit encryption key": ("BILLWATCH_AUDIT_ENCRYPTION_KEYS",
                                     {"audit_encryption_keys": DEVELOPMENT_ENCRYPTION_KEYS}),
    "default key kept in the ring": ("BILLWATCH_AUDIT_ENCRYPTION_KEYS", {
        "audit_encryption_keys": f"{generate_key_entry('k2')},{DEVELOPMENT_ENCRYPTION_KEYS}"}),
    "default Stripe key": ("BILLWATCH_STRIPE_API_KEY", {"stripe_api_key": DEVELOPMENT_STRIPE_API_KEY}),
    "short metrics token": ("BILLWATCH_METRICS_TOKEN", {"metrics_token": "scrape-me"}),
}


class TestTheService:
    def test_strong_production_settings_start(self) -> None:
        assert secret_problems(production()) == []
        app = create_app(production(metrics_token=secrets.token_urlsafe(32)))
        assert app.state.settings.env == "production"

    @pytest.mark.parametrize("case", list(WEAK), ids=list(WEAK))
    def test_each_weak_secret_is_refused_by_name(self, case: str) -> None:
        name, overrides = WEAK[case]
        with pytest.raises(InsecureSettings) as refused:
            create_app(production(**overrides))
        assert name in str(refused.value)
        assert [p for p in refused.value.problems if not p.startswith(name)] == []

    def test_only_database_url_set_names_every_default(self) -> None:
        with pytest.raises(InsecureSettings) as refused:
            create_app(Settings(_env_file=None, database_url="sqlite+aiosqlite://"))  # type: ignore[call-arg]
        named = " ".join(refused.value.problems)
        for setting in ("BILLWATCH_TOKEN_SECRET", "BILLWATCH_STRIPE_WEBHOOK_SECRET",
                        "BILLWATCH_AUDIT_HMAC_KEY", "BILLWATCH_AUDIT_ENCRYPTION_KEYS",
                        "BILLWATCH_STRIPE_API_KEY"):
            assert setting in named

    def test_development_keeps_the_defaults_with_a_warning(self) -> None:
        development = Settings(_env_file=None, env="development",  # type: ignore[call-arg]
                               database_url="sqlite+aiosqlite://")
        assert create_app(development).state.settings.development
        with capture_logs() as logs:  # the check itself, without the app's log configuration
            problems = require_secure_settings(development)
        assert any("BILLWATCH_TOKEN_SECRET" in problem for problem in problems)
        [warning] = [e for e in logs if e["event"] == "development_secrets_in_use"]
        assert warning["log_level"] == "warning" and warning["settings"] == problems

    def test_the_environment_variable_selects_the_mode(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("BILLWATCH_ENV", "development")
        assert Settings(_env_file=None).development  # type: ignore[call-arg]
        monkeypatch.setenv("BILLWATCH_ENV", "staging")
        with pytest.raises(ValueError, match="env"):
            Settings(_env_file=None)  # type: ignore[call-arg]
        monkeypatch.delenv("BILLWATCH_ENV")
        assert not Settings(_env_file=None).development  # type: ignore[call-arg]


def production_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """A process environment with no BILLWATCH_ENV (production) and the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BILLWATCH_")}
    env.update({f"BILLWATCH_{k.upper()}": v for k, v in settings.items()})
    env.setdefault("BILLWATCH_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'prod.db'}")
    return env


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=90,
                          check=False)


class TestProcesses:
    """The entry points refuse in one line naming the setting, not with a traceback."""

    @pytest.mark.parametrize("command", [
        ["users", "create", "ada@example.test", "--name", "Ada", "--role", "admin"],
        ["serve", "--port", "9"],
        ["webhooks", "list"],
        ["audit", "verify"],
        ["jobs", "deliver-alerts"],
    ], ids=lambda c: c[0] if c[0] != "audit" else "audit-verify")
    def test_cli_commands_refuse_only_a_database_url(self, command: list[str],
                                                     tmp_path: Path) -> None:
        done = run([str(BIN / "billwatch"), *command], production_env(tmp_path), tmp_path)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "BILLWATCH_TOKEN_SECRET is the development default" in done.stderr
        assert "Traceback" not in done.stderr + done.stdout
        assert not (tmp_path / "prod.db").exists()  # refused before touching the database

    def test_a_short_token_secret_alone_is_named(self, tmp_path: Path) -> None:
        values = {k: str(v) for k, v in strong().items() if k != "database_url"}
        env = production_env(tmp_path, **{**values, "token_secret": "short"})
        done = run([str(BIN / "billwatch"), "token", "ada@example.test"], env, tmp_path)
        assert done.returncode == 2
        assert done.stderr.strip().endswith(
            "BILLWATCH_TOKEN_SECRET is shorter than 32 bytes"), done.stderr

    def test_workers_refuse(self, tmp_path: Path) -> None:
        env = production_env(tmp_path, broker_url="redis://127.0.0.1:6379/9")
        worker = run([str(BIN / "billwatch"), "worker", "--pool=solo"], env, tmp_path)
        assert worker.returncode == 2 and "BILLWATCH_AUDIT_HMAC_KEY" in worker.stderr
        celery = run([str(BIN / "celery"), "-A", "billwatch.jobs.celery_app", "worker",
                      "--pool=solo"], env, tmp_path)
        assert celery.returncode != 0 and "BILLWATCH_AUDIT_HMAC_KEY" in celery.stderr
        assert "ready." not in celery.stdout + celery.stderr

    def test_strong_settings_pass_and_keygen_needs_none(self, tmp_path: Path) -> None:
        values = {k: str(v) for k, v in strong().items() if k != "database_url"}
        migrated = run([str(BIN / "billwatch"), "migrate"], production_env(tmp_path, **values),
                       tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        keygen = run([str(BIN / "billwatch"), "audit", "keygen"], production_env(tmp_path),
                     tmp_path)
        assert keygen.returncode == 0 and keygen.stdout.startswith("k"), keygen.stderr
