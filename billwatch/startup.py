"""What every billwatch process checks before it starts: no development secret in production.

The source ships a token key, a webhook secret, audit keys and a Stripe key so that a laptop
runs with nothing configured. Anyone can read them, so outside ``BILLWATCH_ENV=development``
the service, the workers and the CLI refuse to start while one of them (or any secret shorter
than :data:`MIN_SECRET_BYTES`) is configured, naming the setting to fix.
"""

from __future__ import annotations

import sys

import structlog

from billwatch.config import (
    DEVELOPMENT_STRIPE_API_KEY,
    DEVELOPMENT_TOKEN_SECRET,
    DEVELOPMENT_WEBHOOK_SECRET,
    Settings,
    get_settings,
)
from billwatch.secret_keys import DEVELOPMENT_ENCRYPTION_KEYS, DEVELOPMENT_HMAC_KEY, parse_ring

log = structlog.get_logger(__name__)

MIN_SECRET_BYTES = 32
"""HS256 and HMAC-SHA256 keys shorter than the hash output are guessable sooner than needed."""

_DEV_AES_KEYS = {key for _kid, key in parse_ring(DEVELOPMENT_ENCRYPTION_KEYS)}


class InsecureSettings(ValueError):
    """Production settings still holding a development default or a short secret."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("refusing to start outside BILLWATCH_ENV=development: "
                         + "; ".join(problems))


def _secret_problem(name: str, value: str, development_value: str | None) -> str | None:
    if development_value is not None and value == development_value:
        return f"{name} is the development default"
    if len(value.encode()) < MIN_SECRET_BYTES:
        return f"{name} is shorter than {MIN_SECRET_BYTES} bytes"
    return None


def secret_problems(settings: Settings) -> list[str]:
    """Every setting that would be refused outside development, as ``NAME reason``."""
    checks: list[tuple[str, str, str | None]] = [
        ("BILLWATCH_TOKEN_SECRET", settings.token_secret.get_secret_value(),
         DEVELOPMENT_TOKEN_SECRET),
        ("BILLWATCH_STRIPE_WEBHOOK_SECRET", settings.stripe_webhook_secret.get_secret_value(),
         DEVELOPMENT_WEBHOOK_SECRET),
        *(("BILLWATCH_STRIPE_WEBHOOK_SECRETS_PREVIOUS", previous.get_secret_value(),
           DEVELOPMENT_WEBHOOK_SECRET) for previous in settings.stripe_webhook_secrets_previous),
        ("BILLWATCH_AUDIT_HMAC_KEY", settings.audit_hmac_key.get_secret_value(),
         DEVELOPMENT_HMAC_KEY),
    ]
    if settings.metrics_token is not None:
        checks.append(("BILLWATCH_METRICS_TOKEN", settings.metrics_token.get_secret_value(), None))
    problems = [problem for name, value, default in checks
                if (problem := _secret_problem(name, value, default)) is not None]
    for kid, key in parse_ring(settings.audit_encryption_keys.get_secret_value()):
        if key in _DEV_AES_KEYS:
            problems.append(f"BILLWATCH_AUDIT_ENCRYPTION_KEYS key {kid!r} is the development key")
    if settings.stripe_api_key.get_secret_value() == DEVELOPMENT_STRIPE_API_KEY:
        problems.append("BILLWATCH_STRIPE_API_KEY is the development default")
    return problems


def require_secure_settings(settings: Settings, *, log_warning: bool = True) -> list[str]:
    """Raise in production on a weak secret; in development return (and log) the problems."""
    problems = secret_problems(settings)
    if problems and not settings.development:
        raise InsecureSettings(problems)
    if problems and log_warning:
        log.warning("development_secrets_in_use", settings=problems,
                    hint="fine on a laptop; production (BILLWATCH_ENV unset) refuses them")
    return problems


_warned: list[bool] = []


def checked_settings() -> Settings:
    """The process settings for a command: refused in production, a warning on stderr in dev.

    The warning goes to a terminal's stderr only, never to stdout or the log, so
    ``TOKEN=$(billwatch token ...)`` and scripts reading the output stay clean.
    """
    settings = get_settings()
    problems = require_secure_settings(settings, log_warning=False)
    if problems and not _warned and sys.stderr.isatty():
        _warned.append(True)
        sys.stderr.write("billwatch: development mode, running on development secrets: "
                         + "; ".join(problems) + "\n")
    return settings

