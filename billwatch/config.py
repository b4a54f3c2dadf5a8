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

from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from billwatch import money
from billwatch.secret_keys import DEVELOPMENT_ENCRYPTION_KEYS, DEVELOPMENT_HMAC_KEY, check_audit_keys


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
        """The price normalised to one month, as MRR counts it (yearly / 12, half up)."""
        return money.monthly_cents(self.amount_cents,
                                   yearly=self.interval is BillingInterval.YEAR)

    @property
    def months_per_invoice(self) -> int:
        """How many months one invoice of this plan pays for (the MRR divisor)."""
        return money.MONTHS_PER_YEAR if self.interval is BillingInterval.YEAR else 1


DEFAULT_PLANS: list[Plan] = [
    Plan(code=f"{tier}_{per}ly", name=f"{tier.title()} ({per}ly)",
         stripe_price=f"billwatch_{tier}_{per}ly", interval=BillingInterval(per),
         amount_cents=amount * (10 if per == "year" else 1), currency="usd")
    for tier, amount in (("basic", 1500), ("plus", 3000), ("clinic", 9900))
    for per in ("month", "year")
]

DEVELOPMENT_TOKEN_SECRET = "billwatch-development-token-secret-change-me-0000"
DEVELOPMENT_WEBHOOK_SECRET = "whsec_billwatch_local_development_secret"
DEVELOPMENT_STRIPE_API_KEY = "sk_test_billwatch_local"


class Environment(StrEnum):
    """Production refuses development secrets at start; development keeps them, with a warning."""

    PRODUCTION = "production"
    DEVELOPMENT = "development"


class Settings(BaseSettings):
    """billwatch configuration; docs/reference/settings.md is generated from these docstrings."""

    model_config = SettingsConfigDict(
        env_prefix="BILLWATCH_", env_file=".env", extra="ignore", frozen=True,
        use_attribute_docstrings=True,  # the docstring under a field is its description
    )

    env: Environment = Environment.PRODUCTION
    """Only ``development`` may run on the secrets that ship in the source (with a warning)."""
    database_url: str = "sqlite+aiosqlite:///./billwatch.db"
    """SQLAlchemy async URL; PostgreSQL via ``postgresql+asyncpg://user@host/db``."""

    stripe_api_key: SecretStr = SecretStr(DEVELOPMENT_STRIPE_API_KEY)
    """Stripe secret key (never logged)."""
    stripe_api_base: str | None = None
    """Where the Stripe API lives; set to a local Stripe peer (localstripe) for tests and demo."""
    stripe_webhook_secret: SecretStr = SecretStr(DEVELOPMENT_WEBHOOK_SECRET)
    """The ``whsec_...`` signing secret of the webhook endpoint."""
    stripe_webhook_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    """How old a webhook signature may be and still be accepted."""
    stripe_webhook_secrets_previous: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Older signing secrets still accepted during a rotation (comma-separated), then removed."""
    stripe_local_standins: bool | None = None
    """Serve Checkout/portal sessions from billwatch's stand-in; defaults to on with an API base."""
    stripe_request_budget_seconds: float = Field(default=10.0, gt=0, le=120)
    """Total time one Stripe call may take, the SDK's retries included; then 504."""
    refund_sweep_grace_seconds: float = Field(default=60.0, ge=0)
    """A refund intent pending longer than this is settled by the sweeper (keep it above the budget)."""
    # --- the webhook inbox (billwatch.webhooks.inbox; docs/stripe.md "Webhooks") ---
    webhook_max_attempts: int = Field(default=8, ge=1, le=100)
    """Handling attempts of one event before it is ``failed`` (and alerted)."""
    webhook_retry_base_seconds: float = Field(default=10.0, gt=0)
    """Delay before the second attempt; it doubles with every further attempt."""
    webhook_retry_max_seconds: float = Field(default=3600.0, gt=0)
    """The longest wait between two attempts of one event."""
    webhook_retry_jitter: float = Field(default=0.5, ge=0, le=1)
    """Each delay is shortened by a random part of up to this fraction, so retries spread."""
    webhook_batch_size: int = Field(default=50, ge=1, le=1000)
    """Events one processor claims at a time."""
    webhook_lease_seconds: float = Field(default=300.0, ge=1)
    """How long a claim holds; past it a dead processor's events are claimed again."""
    webhook_poll_seconds: float = Field(default=5.0, gt=0, le=3600)
    """How often processors look for due retries and lapsed leases (embedded loop, beat)."""
    webhook_payload_retention_days: int = Field(default=90, ge=1)
    """Stored payloads older than this are pruned (row, hash and metadata stay)."""

    token_secret: SecretStr = SecretStr(DEVELOPMENT_TOKEN_SECRET)
    """HS256 key of bearer tokens, at least 32 bytes."""
    token_ttl_seconds: int = Field(default=12 * 3600, ge=60)
    """Lifetime of a minted bearer token."""
    token_max_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    """The longest lifetime a minted token may have (``billwatch token --ttl`` included)."""

    public_base_url: str = "http://127.0.0.1:8000"
    """Base of the default Checkout success/cancel and portal return URLs."""
    allowed_redirect_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Origins Checkout/portal may send a browser back to; empty = the public base URL's."""
    enable_api_docs: bool | None = None
    """Serve ``/docs`` and ``/openapi.json``; unset = on in development, off in production."""
    metrics_token: SecretStr | None = None
    """Bearer token ``/metrics`` demands; unset = open in development, refused in production."""
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(default_factory=list)
    """Proxies whose ``X-Forwarded-For`` names the client (comma-separated CIDRs); none by default."""
    checkout_session_ttl_seconds: int = Field(default=3600, ge=1800, le=86400)
    """How long a Checkout session accepts payment (Stripe allows 30 minutes to 24 hours)."""
    subscription_intent_grace_seconds: int = Field(default=300, ge=0)
    """A checkout or cancel intent pending this long is retried by the sweeper (same key)."""
    plans: Annotated[list[Plan], NoDecode] = Field(default_factory=lambda: list(DEFAULT_PLANS))
    """The catalogue, as JSON ``[{code, name, stripe_price, interval, amount_cents, currency}]``.

    All plans share one currency; ``billwatch sync-plans`` creates missing prices at Stripe.
    """

    billing_alert_emails: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Recipients of alert e-mails (comma-separated)."""
    enable_billing_metrics: bool = True
    """``false`` turns billing metrics off; callers keep working."""
    metrics_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    """How long /metrics reuses the database gauges before querying again."""
    enable_billing_alerts: bool = True
    """``false`` turns alert e-mails off."""

    # --- alerts and jobs (billwatch.alerts, billwatch.jobs; the README lists each) ---
    smtp_host: str = "127.0.0.1"
    """SMTP server billwatch sends its mails through."""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    """Port of the SMTP server."""
    smtp_starttls: bool = False
    """Upgrade the SMTP connection with STARTTLS."""
    smtp_user: str | None = None
    """SMTP login; unset = no AUTH."""
    smtp_password: SecretStr | None = None
    """SMTP password (never logged)."""
    smtp_from: str = "billwatch@localhost"
    """Sender address of billwatch's mails."""
    smtp_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    """Wait for the reply to each SMTP command (connect and DATA have their own)."""
    broker_url: str = ""
    """Celery broker (Redis in production); empty = embedded in-process delivery and schedule."""
    broker_visibility_timeout_seconds: int = Field(default=3600, ge=1)
    """Redis broker: when a message no worker acknowledged is handed out again."""
    celery_queue: str = "billwatch"
    """Queue the app publishes to and workers consume."""
    alert_cooldown_seconds: int = Field(default=3600, ge=0)
    """Repeat interval: identical repeats of one fact mail again only after this long."""
    alert_payment_failure_attempts: int = Field(default=3, ge=1)
    """The attempt at which a failed invoice payment counts as final: the audit row's
    ``final_attempt``, the final-failure metric and alert (Stripe's default retries stop near 3)."""
    alert_refunds_per_day: int = Field(default=5, ge=0)
    """Alert when more refunds than this are issued in one UTC day."""
    alert_webhook_backlog_seconds: int = Field(default=300, ge=30, le=86400)
    """Prometheus alerts when the oldest unprocessed Stripe event has waited longer than this."""
    alert_churn_rate: float = Field(default=0.05, ge=0, le=1)
    """Alert when the 30-day customer churn is above this ratio."""
    alert_payment_failure_rate_factor: float = Field(default=3.0, ge=1)
    """"Far above": an hour's failure rate at least this many times its 7-day baseline..."""
    alert_payment_failure_min_attempts: int = Field(default=10, ge=1)
    """...with at least this many payment attempts in the hour."""
    alert_payment_failure_rate_min_increase: float = Field(default=0.10, ge=0, le=1)
    """...and at least this much above the baseline..."""
    alert_retry_base_seconds: float = Field(default=30.0, gt=0)
    """First wait before an alert mail that failed is retried; it doubles each time."""
    alert_retry_max_seconds: float = Field(default=1800.0, gt=0)
    """The longest wait between two delivery attempts of one alert."""
    alert_max_attempts: int = Field(default=50, ge=1)
    """Delivery attempts before an alert is ``failed`` (it stays in the ledger)."""
    alert_poll_seconds: float = Field(default=15.0, gt=0)
    """Embedded mode: how often the app looks for alert mails that are due."""
    shutdown_grace_seconds: float = Field(default=5.0, gt=0, le=120)
    """How long stopping a background loop waits for its current step before cancelling it."""
    embedded_scheduler: bool = True
    """Without a broker, the app itself runs the daily and hourly jobs, sealing and expiry."""
    job_catch_up_days: int = Field(default=3, ge=1, le=31)
    """How many complete past days the daily job makes sure are computed."""

    # --- the admin console (billwatch.console; the README's "Console" section) ---
    console_base_url: str | None = None
    """Public base of the console's links (sign-in mails, alert mails); default PUBLIC_BASE_URL."""
    console_link_ttl_seconds: int = Field(default=900, ge=60, le=3600)
    """How long a console sign-in link can be used (once)."""
    console_session_idle_seconds: int = Field(default=1800, ge=60, le=86400)
    """A console session unused this long is signed out."""
    console_session_max_seconds: int = Field(default=12 * 3600, ge=300, le=7 * 86400)
    """A console session ends this long after sign-in, however active."""
    console_sign_in_limit: int = Field(default=5, ge=1, le=100)
    """Sign-in requests accepted per e-mail address and per client address in a window."""
    console_sign_in_window_seconds: int = Field(default=900, ge=60, le=86400)
    """The window ``console_sign_in_limit`` counts in."""
    # --- alert incidents and mail delivery (docs/alerts.md explains each) ---
    alert_group_wait_seconds: float = Field(default=30.0, ge=0, le=3600)
    """How long a new non-critical incident waits for company before its first mail."""
    alert_group_interval_critical_seconds: float = Field(default=300.0, ge=0)
    """After a mail, how long new occurrences of a critical incident wait for their summary."""
    alert_group_interval_error_seconds: float = Field(default=300.0, ge=0)
    """The same, for ``error`` incidents."""
    alert_group_interval_warning_seconds: float = Field(default=900.0, ge=0)
    """The same, for ``warning`` incidents."""
    alert_group_interval_info_seconds: float = Field(default=3600.0, ge=0)
    """The same, for ``info`` incidents."""
    alert_resolve_seconds: float = Field(default=600.0, gt=0)
    """An incident quiet this long is resolved; the key's next occurrence mails at once."""
    smtp_connect_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    """Wait for the TCP connection and the SMTP server's greeting."""
    smtp_data_timeout_seconds: float = Field(default=600.0, gt=0, le=1800)
    """The final reply to DATA: RFC 5321 (4.5.3.2.6) lets a server take ten minutes."""
    alert_uncertain_resend_seconds: float = Field(default=21600.0, gt=0)
    """A transmitted but unanswered mail is sent once more after this long, never again."""
    docs_base_url: str = Field(default="", max_length=500)
    """Where docs/ is published; mails link each alert kind's runbook under it (empty: none)."""
    alert_mail_owner_email: str = Field(default="masked", pattern="^(hidden|masked|full)$")
    """How mails show an owner's e-mail address: not at all, as ``j***@example.com``, or whole."""

    log_level: str = "INFO"
    """Level of the structured log on stdout."""
    log_json: bool = True
    """One JSON object per log line; ``false`` for readable console lines."""

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
    audit_seal_interval_seconds: int = Field(default=300, ge=10, le=86400)
    """How often new audit rows are sealed (and checkpointed): the embedded runner and beat alike."""
    audit_partitions_ahead: int = Field(default=3, ge=1, le=24)
    """PostgreSQL: months of ``audit_logs`` partitions kept ready beyond the current one."""
    audit_sealer_database_url: SecretStr | None = None
    """The sealing job's own connection (a role that may insert seals); default: database_url."""
    audit_anchor_url: str | None = Field(default=None, pattern=r"^https?://")
    """An HTTP(S) endpoint off the database host that receives a POST of every checkpoint."""
    audit_anchor_token: SecretStr | None = None
    """Bearer token sent to ``audit_anchor_url`` (and used by ``verify --anchor URL``)."""
    audit_anchor_mail: bool = False
    """Also mail every new checkpoint to ``billing_alert_emails`` through the SMTP settings."""
    audit_anchor_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    """How long sending a checkpoint to an anchor may take."""

    @field_validator("plans", mode="before")
    @classmethod
    def _parse_plans(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value)
        return value

    @field_validator("stripe_webhook_secrets_previous", "allowed_redirect_origins",
                     "trusted_proxies", "billing_alert_emails", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        """List settings are written comma-separated in the environment."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _unique_plan_codes(self) -> Settings:
        codes = [plan.code for plan in self.plans]
        if len(set(codes)) != len(codes):
            raise ValueError("plan codes must be unique")
        return self

    @model_validator(mode="after")
    def _ttl_within_maximum(self) -> Settings:
        if self.token_ttl_seconds > self.token_max_ttl_seconds:
            raise ValueError("token_ttl_seconds exceeds token_max_ttl_seconds")
        return self

    @property
    def development(self) -> bool:
        return self.env is Environment.DEVELOPMENT

    @property
    def api_docs_enabled(self) -> bool:
        return self.development if self.enable_api_docs is None else self.enable_api_docs

    @model_validator(mode="after")
    def _one_currency(self) -> Settings:
        """MRR, ARPU and revenue add plan prices together, so the catalogue has one currency."""
        currencies = sorted({plan.currency for plan in self.plans})
        if len(currencies) > 1:
            by_currency = "; ".join(
                f"{currency}: {', '.join(p.code for p in self.plans if p.currency == currency)}"
                for currency in currencies)
            raise ValueError(f"plans must share one currency, found {by_currency}")
        return self

    @property
    def use_local_standins(self) -> bool:
        if self.stripe_local_standins is not None:
            return self.stripe_local_standins
        return self.stripe_api_base is not None

    @model_validator(mode="after")
    def _audit_keys_parse(self) -> Settings:
        check_audit_keys(self.audit_encryption_keys.get_secret_value(),
                         self.audit_hmac_key.get_secret_value())
        return self

    @property
    def console_url(self) -> str:
        """Where the console is reached from outside, without a trailing slash."""
        return (self.console_base_url or self.public_base_url).rstrip("/") + "/console"

    def plan(self, code: str) -> Plan | None:
        return next((plan for plan in self.plans if plan.code == code), None)


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
