"""Settings: the one place configuration enters billwatch.

Every field is read from the environment with the ``BILLWATCH_`` prefix (or a ``.env`` file),
so the same code runs the embedded laptop default and a production deployment.
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from billwatch.audit.crypto import DEVELOPMENT_ENCRYPTION_KEYS, DEVELOPMENT_HMAC_KEY, keys_from


class BillingInterval(StrEnum):
    MONTH = "month"
    YEAR = "year"


class Plan(BaseModel):
    """A sellable plan: our code, the Stripe price (or legacy plan) id and its amount."""

    code: str = Field(pattern=r"^[a-z][a-z0-9_]{1,39}$")
    name: str
    stripe_price: str
    interval: BillingInterval
    amount_cents: int = Field(gt=0)
    currency: str = Field(default="usd", pattern=r"^[a-z]{3}$")

    @property
    def monthly_cents(self) -> int:
        """The price normalised to one month, as MRR counts it (yearly / 12, rounded)."""
        if self.interval is BillingInterval.YEAR:
            return round(self.amount_cents / 12)
        return self.amount_cents


DEFAULT_PLANS: list[Plan] = [
    Plan(code=f"{tier}_{per}ly", name=f"{tier.title()} ({per}ly)",
         stripe_price=f"billwatch_{tier}_{per}ly", interval=BillingInterval(per),
         amount_cents=amount * (10 if per == "year" else 1), currency="usd")
    for tier, amount in (("basic", 1500), ("plus", 3000), ("clinic", 9900))
    for per in ("month", "year")
]

_DEV_TOKEN_SECRET = "billwatch-development-token-secret-change-me-0000"


class Settings(BaseSettings):
    """billwatch configuration; the README documents each field."""

    model_config = SettingsConfigDict(
        env_prefix="BILLWATCH_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str = "sqlite+aiosqlite:///./billwatch.db"
    """SQLAlchemy async URL; PostgreSQL via ``postgresql+asyncpg://user@host/db``."""

    stripe_api_key: SecretStr = SecretStr("sk_test_billwatch_local")
    stripe_api_base: str | None = None
    """Where the Stripe API lives; set to a local Stripe peer (localstripe) for tests and demo."""
    stripe_webhook_secret: SecretStr = SecretStr("whsec_billwatch_local_development_secret")
    stripe_webhook_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    stripe_webhook_secrets_previous: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Older signing secrets still accepted during a rotation (comma-separated), then removed."""
    stripe_local_standins: bool | None = None
    """Serve Checkout/portal sessions from billwatch's stand-in; defaults to on with an API base."""

    token_secret: SecretStr = SecretStr(_DEV_TOKEN_SECRET)
    token_ttl_seconds: int = Field(default=12 * 3600, ge=60)

    public_base_url: str = "http://127.0.0.1:8000"
    checkout_session_ttl_seconds: int = Field(default=3600, ge=1800, le=86400)
    """How long a Checkout session accepts payment (Stripe allows 30 minutes to 24 hours)."""
    subscription_intent_grace_seconds: int = Field(default=300, ge=0)
    """A checkout or cancel intent pending this long is retried by the sweeper (same key)."""
    plans: Annotated[list[Plan], NoDecode] = Field(default_factory=lambda: list(DEFAULT_PLANS))

    billing_alert_emails: Annotated[list[str], NoDecode] = Field(default_factory=list)
    enable_billing_metrics: bool = True
    metrics_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    """How long /metrics reuses the database gauges before querying again."""
    enable_billing_alerts: bool = True

    # --- alerts and jobs (billwatch.alerts, billwatch.jobs; the README lists each) ---
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "billwatch@localhost"
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    broker_url: str = ""
    """Celery broker (Redis in production); empty = embedded in-process delivery and schedule."""
    broker_visibility_timeout_seconds: int = Field(default=3600, ge=1)
    celery_queue: str = "billwatch"
    alert_cooldown_seconds: int = Field(default=3600, ge=0)
    alert_payment_failure_attempts: int = Field(default=3, ge=1)
    alert_refunds_per_day: int = Field(default=5, ge=0)
    alert_churn_rate: float = Field(default=0.05, ge=0, le=1)
    alert_payment_failure_rate_factor: float = Field(default=3.0, ge=1)
    alert_payment_failure_min_attempts: int = Field(default=10, ge=1)
    alert_payment_failure_rate_min_increase: float = Field(default=0.10, ge=0, le=1)
    alert_retry_base_seconds: float = Field(default=30.0, gt=0)
    alert_retry_max_seconds: float = Field(default=1800.0, gt=0)
    alert_max_attempts: int = Field(default=50, ge=1)
    alert_poll_seconds: float = Field(default=15.0, gt=0)
    shutdown_grace_seconds: float = Field(default=5.0, gt=0, le=120)
    """How long stopping a background loop waits for its current step before cancelling it."""
    embedded_scheduler: bool = True
    job_catch_up_days: int = Field(default=3, ge=1, le=31)

    log_level: str = "INFO"
    log_json: bool = True

    # --- the audit trail (billwatch.audit; the README's "Audit trail" section) ---
    audit_encryption_keys: SecretStr = SecretStr(DEVELOPMENT_ENCRYPTION_KEYS)
    """Metadata key ring ``kid:base64key,...`` (32-byte AES keys); the first encrypts."""
    audit_hmac_key: SecretStr = SecretStr(DEVELOPMENT_HMAC_KEY)
    """Keys row hashes and signs checkpoints; keep it outside the database (>= 32 bytes)."""
    audit_checkpoint_dir: Path = Path("audit-checkpoints")
    """Append-only store of signed checkpoints, outside the database (one file each)."""
    audit_archive_dir: Path = Path("audit-archive")
    """Where ``billwatch audit archive`` writes compressed, verifiable JSONL archives."""
    audit_retention_days: int = Field(default=365, ge=90)
    """Days of audit rows kept online; never fewer than 90."""

    @field_validator("plans", mode="before")
    @classmethod
    def _parse_plans(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value)
        return value

    @field_validator("stripe_webhook_secrets_previous", mode="before")
    @classmethod
    def _split_secrets(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("billing_alert_emails", mode="before")
    @classmethod
    def _split_emails(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _unique_plan_codes(self) -> Settings:
        codes = [plan.code for plan in self.plans]
        if len(set(codes)) != len(codes):
            raise ValueError("plan codes must be unique")
        return self

    @property
    def use_local_standins(self) -> bool:
        if self.stripe_local_standins is not None:
            return self.stripe_local_standins
        return self.stripe_api_base is not None

    @model_validator(mode="after")
    def _audit_keys_parse(self) -> Settings:
        keys_from(self.audit_encryption_keys.get_secret_value(),
                  self.audit_hmac_key.get_secret_value())
        return self

    @property
    def uses_development_token_secret(self) -> bool:
        return self.token_secret.get_secret_value() == _DEV_TOKEN_SECRET

    def plan(self, code: str) -> Plan | None:
        return next((plan for plan in self.plans if plan.code == code), None)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
