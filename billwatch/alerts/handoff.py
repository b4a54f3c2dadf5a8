"""Where committed alerts and requested checks go: the deliverer attached to the runtime.

The app (embedded mode) attaches an in-process runner; with a broker, the app and the worker
attach a Celery publisher (:meth:`billwatch.runtime.Runtime.attach`). With nothing attached
(tests that never start the app's lifespan, a one-off CLI command) hand-offs are dropped on
purpose: the alert row is already durable and the next deliverer to start picks every pending
row up.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, Protocol

import structlog

if TYPE_CHECKING:
    from billwatch.runtime import Runtime

log = structlog.get_logger(__name__)


class Check:
    """Names of the checks that audit rules may request after a commit."""

    REFUNDS_TODAY = "refunds_today"


class AlertSink(Protocol):
    def alert_raised(self, alert_id: uuid.UUID) -> None: ...

    def check_requested(self, check: str) -> None: ...

    def audit_write_failed(self, details: dict[str, Any]) -> None: ...


def alert_raised(runtime: Runtime, alert_id: uuid.UUID) -> None:
    """Called after commit: wake the deliverer. Never raises, never blocks on I/O."""
    sink = runtime.alert_sink
    if sink is None:
        return
    try:
        sink.alert_raised(alert_id)
    except Exception:
        log.exception("alert_handoff_failed", alert_id=str(alert_id))


def check_requested(runtime: Runtime, check: str) -> None:
    """Called after commit: ask the deliverer to run ``check`` off the request path."""
    sink = runtime.alert_sink
    if sink is None:
        return
    try:
        sink.check_requested(check)
    except Exception:
        log.exception("check_handoff_failed", check=check)


def audit_write_failed(runtime: Runtime, details: dict[str, Any]) -> None:
    """Called where an audit write failed (its transaction is lost): raise the alert elsewhere."""
    sink = runtime.alert_sink
    if sink is None:
        log.warning("audit_write_failure_not_alerted", reason="no deliverer in this process")
        return
    try:
        sink.audit_write_failed(details)
    except Exception:
        log.exception("audit_failure_handoff_failed")
