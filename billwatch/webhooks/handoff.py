"""Where a committed inbox event goes: the processor attached to the runtime, woken after commit.

The app's embedded runner (no broker) attaches itself; with a broker the app attaches a Celery
publisher (:meth:`billwatch.runtime.Runtime.attach`). With nothing attached (a one-off CLI
command, tests without the app's lifespan) the hand-off is dropped on purpose: the event is
durable and the next poll or sweep processes it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import structlog

if TYPE_CHECKING:
    from billwatch.runtime import Runtime

log = structlog.get_logger(__name__)


class InboxSink(Protocol):
    def events_received(self) -> None: ...


def events_received(runtime: Runtime) -> None:
    """Called after commit: wake the processor. Never raises, never blocks on I/O."""
    sink = runtime.inbox_sink
    if sink is None:
        return
    try:
        sink.events_received()
    except Exception:
        log.exception("inbox_handoff_failed")
