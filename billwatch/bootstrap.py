"""Building a process's runtime: the one place where what an operation sets off is wired.

Read this function to know everything a recorded audit row can set off in billwatch: the keys
that seal it, the alert rules told of it in its transaction, the alert hand-off when it cannot be
written, the engine watch that spots a refused INSERT, and the metrics it moves. The app factory,
each Celery worker process and each CLI command call it once; tests call it per test.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from billwatch.alerts.rules import AlertRules
from billwatch.audit import recorder
from billwatch.audit.crypto import AuditKeys, keys_for
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.metrics.billing import BillingMetrics
from billwatch.runtime import Runtime


def build_runtime(settings: Settings, *, keys: AuditKeys | None = None,
                  registry: CollectorRegistry | None = None) -> Runtime:
    """The runtime of ``settings``: its audit keys (or ``keys``), alert rules and metrics.

    ``registry`` defaults to a fresh one, so two runtimes never count into each other.
    """
    rules = AlertRules()
    return Runtime(
        settings=settings,
        keys=keys if keys is not None else keys_for(settings),
        metrics=BillingMetrics(settings, registry),
        audit_listeners=(rules.on_audit_row,),
        write_failure_hooks=(rules.on_audit_write_failure,),
        engine_watchers=(recorder.watch_engine,),
    )


def open_database(settings: Settings, runtime: Runtime | None = None) -> Database:
    """The database of ``settings`` with ``runtime`` (one is built when none is given)."""
    return Database(settings.database_url, runtime=runtime or build_runtime(settings))
