"""Structured JSON logs to stdout, every event passed through the redactor.

Rotation and shipping are the platform's job (journald, the container runtime); billwatch only
writes one JSON object per line to stdout. Records from the standard library's ``logging``
(uvicorn, SQLAlchemy, Celery, third-party clients) are rendered by the same processors, so the
redactor sees every line, not only billwatch's own.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from billwatch.redaction import redact


def redact_event(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: no card number, CVV or secret reaches a log line."""
    return redact(dict(event_dict))


_STDLIB_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "sqlalchemy", "sqlalchemy.engine",
                   "sqlalchemy.pool", "celery", "stripe", "httpx", "httpcore", "aiosmtplib",
                   "asyncio")
"""Libraries that may log request bodies, headers or SQL at DEBUG: their lines go through ours."""
_PARAMETER_LOGGERS = ("aiosqlite",)
"""Drivers whose DEBUG lines are every statement with all its parameters: kept at INFO or above,
as ``hide_parameters`` keeps SQLAlchemy's own lines, since a value need not look like card data
to be private."""


class _RedactingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one stdlib handler billwatch installs (replaced, never stacked, on re-configuration)."""


def configure_logging(level: str = "INFO", *, json: bool = True) -> None:
    renderer: Any = (structlog.processors.JSONRenderer() if json
                     else structlog.dev.ConsoleRenderer(colors=False))
    _route_stdlib(level, renderer)
    _silence_stripe_console()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stdout),
        # Not cached: a logger bound once would ignore a later configure_logging() and
        # structlog.testing.capture_logs(), so what a log line says would depend on import order.
        cache_logger_on_first_use=False,
    )


def _silence_stripe_console() -> None:
    """The Stripe SDK prints to stderr itself when ``STRIPE_LOG`` is set, past every handler.

    Its ``stripe`` logger still emits the same lines, so they reach stdout through the redactor.
    """
    import stripe

    stripe.log = None
    util = sys.modules.get("stripe._util")
    if util is not None:
        vars(util)["STRIPE_LOG"] = None


def _route_stdlib(level: str, renderer: Any) -> None:
    handler = _RedactingHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, structlog.processors.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, redact_event, renderer]))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _RedactingHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _STDLIB_LOGGERS:  # e.g. uvicorn installs its own plain handlers; use ours
        named = logging.getLogger(name)
        named.handlers = [h for h in named.handlers if not isinstance(h, logging.StreamHandler)]
        named.propagate = True
    for name in _PARAMETER_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLevelName(level.upper())))
