"""Starting and stopping alert delivery in the app process.

No broker (the embedded default): an :class:`~billwatch.jobs.embedded.EmbeddedRunner` on the
app's event loop delivers alerts and runs the schedule. With ``BILLWATCH_BROKER_URL``: a Celery
publisher hands every committed alert and inbox event to the workers, and ``billwatch beat``
schedules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from billwatch.background import settle
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.payments.gateway import PaymentsGateway

log = structlog.get_logger(__name__)
Stop = Callable[[], Awaitable[None]]
CLOSE_WAIT_SECONDS = 10.0
"""How long shutdown waits for queued hand-offs; unsent ones stay pending for the sweep."""


async def start_delivery(db: Database, settings: Settings, *,
                         gateway: PaymentsGateway | None = None) -> Stop:
    """Start the deliverer of ``db``'s runtime; returns the coroutine that stops it."""
    runtime = db.required_runtime()
    if settings.broker_url:
        from billwatch.jobs.celery_app import make_celery
        from billwatch.jobs.tasks import CelerySink

        celery = make_celery(settings)
        sink = CelerySink(celery, background=True)
        runtime.attach(alerts=sink, inbox=sink)

        async def stop_publisher() -> None:
            runtime.detach(sink)
            closing = asyncio.ensure_future(asyncio.to_thread(sink.close))
            if not await settle(closing, CLOSE_WAIT_SECONDS):  # a stuck broker must not block shutdown
                log.warning("alert_publisher_close_abandoned", seconds=CLOSE_WAIT_SECONDS)
            celery.close()

        return stop_publisher

    from billwatch.jobs.embedded import EmbeddedRunner

    runner = EmbeddedRunner(db, settings, gateway=gateway)  # attaches itself to the runtime
    await runner.start()
    return runner.stop
