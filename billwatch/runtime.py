"""The runtime: what one process's operations set off, built once and passed explicitly.

An operation writes rows in a session; what else it sets off (the audit keys that seal its row,
the alert rules that watch the trail, what happens when an audit row cannot be written, the
counters moved after commit, the deliverer woken after commit) belongs to the process that runs
it, not to whatever modules happen to be imported. :func:`billwatch.bootstrap.build_runtime`
builds one :class:`Runtime` for the app factory, each Celery worker process and each CLI command;
a :class:`~billwatch.db.Database` given a runtime puts it in the ``info`` of every session it
makes, and :func:`runtime_of` reads it from there. Two apps in one process share nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from billwatch.alerts.handoff import AlertSink
    from billwatch.audit.crypto import AuditKeys
    from billwatch.audit.models import AuditLog
    from billwatch.audit.recorder import AuditWriteFailure
    from billwatch.config import Settings
    from billwatch.metrics.billing import BillingMetrics
    from billwatch.webhooks.handoff import InboxSink

SESSION_KEY = "billwatch_runtime"
"""The key of a session's ``info`` under which its database's runtime rides."""

AuditListener = Callable[[AsyncSession, "AuditLog"], None]
"""Told of every recorded audit row inside its transaction; may only add to the session."""
WriteFailureHook = Callable[["Runtime", "AuditWriteFailure"], None]
"""Told when an audit row could not be written; must hand off and return at once."""
EngineWatcher = Callable[[Engine], None]
"""Attaches a listener to each engine a runtime's sessions use (the refused-audit-row watch);
it must be idempotent, and find the runtime with :func:`runtime_of_connection`."""


class NoRuntime(RuntimeError):
    """A session whose database was built without a runtime tried to record or alert."""


@dataclass(eq=False)
class Runtime:
    """Settings, audit keys, audit listeners and failure hooks, metrics, and the deliverers.

    The two sinks start empty and are set by whatever starts delivery in this process (the
    embedded runner, a Celery publisher or worker); with none set, hand-offs are dropped on
    purpose: the rows are durable and the next deliverer to run picks them up.
    """

    settings: Settings
    keys: AuditKeys
    metrics: BillingMetrics
    audit_listeners: tuple[AuditListener, ...] = ()
    write_failure_hooks: tuple[WriteFailureHook, ...] = ()
    engine_watchers: tuple[EngineWatcher, ...] = ()
    alert_sink: AlertSink | None = None
    inbox_sink: InboxSink | None = None

    def watch(self, engine: Engine) -> None:
        """Attach this runtime's engine listeners to ``engine`` (a Database calls this)."""
        for watcher in self.engine_watchers:
            watcher(engine)

    def attach(self, *, alerts: AlertSink | None = None, inbox: InboxSink | None = None) -> None:
        """Make ``alerts`` / ``inbox`` this process's deliverers (the newest attached wins)."""
        if alerts is not None:
            self.alert_sink = alerts
        if inbox is not None:
            self.inbox_sink = inbox

    def detach(self, sink: object) -> None:
        """Forget ``sink`` wherever it is attached; another process's sink is left alone."""
        if self.alert_sink is sink:
            self.alert_sink = None
        if self.inbox_sink is sink:
            self.inbox_sink = None


def runtime_of_connection(connection: Connection | None) -> Runtime | None:
    """The runtime of the session whose transaction last began on ``connection``, if any."""
    if connection is None:
        return None
    runtime: Runtime | None = connection.info.get(SESSION_KEY)
    return runtime


def runtime_of(session: AsyncSession) -> Runtime:
    """The runtime of the database that made ``session``; refuses a session without one."""
    runtime: Runtime | None = session.info.get(SESSION_KEY)
    if runtime is None:
        raise NoRuntime("this session's Database was built without a runtime: pass "
                        "runtime=build_runtime(settings) (billwatch.bootstrap) to Database")
    return runtime
