"""Where a committed inbox event goes: the processor this process runs, woken after commit.

The app's embedded runner (no broker) installs itself; with a broker the app installs a Celery
publisher. With nothing installed (a one-off CLI command, tests without the app's lifespan) the
hand-off is dropped on purpose: the event is durable and the next poll or sweep processes it.
"""

from __future__ import annotations

from typing import Protocol

import structlog

log = structlog.get_logger(__name__)


class InboxSink(Protocol):
    def events_received(self) -> None: ...


_sinks: list[InboxSink] = []


def install(sink: InboxSink) -> None:
    """Make ``sink`` this process's inbox processor (the newest installed wins)."""
    if sink in _sinks:
        _sinks.remove(sink)
    _sinks.append(sink)


def uninstall(sink: InboxSink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def installed() -> InboxSink | None:
    return _sinks[-1] if _sinks else None


def events_received() -> None:
    """Called after commit: wake the processor. Never raises, never blocks on I/O."""
    sink = installed()
    if sink is None:
        return
    try:
        sink.events_received()
    except Exception:
        log.exception("inbox_handoff_failed")
