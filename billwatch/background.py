"""Waiting and stopping for the app's background loops, without ever swallowing a cancellation.

Python 3.11's ``asyncio.wait_for`` returns the inner result and drops a cancellation that lands
in the same loop iteration as the inner future completing; a loop written around it can outlive
its own ``cancel()``. These helpers use ``asyncio.wait`` instead, stop loops by an explicit
signal first, and bound every stop by a deadline after which the task is abandoned with a log.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

log = structlog.get_logger(__name__)


async def wait_until_set(event: asyncio.Event, seconds: float) -> bool:
    """Sleep until ``event`` is set or ``seconds`` pass; True if it was set. Cancels cleanly."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
    return event.is_set()


async def settle(task: asyncio.Future[Any], seconds: float) -> bool:
    """Wait at most ``seconds`` for ``task`` to finish, without cancelling it; True if it did."""
    if task.done():
        return True
    done, _ = await asyncio.wait({task}, timeout=seconds)
    return task in done


async def stop_task(task: asyncio.Task[Any], *, grace_seconds: float, name: str) -> None:
    """Let ``task`` end on its own within the grace, then cancel it; abandon it if it still runs.

    The caller has already given the task its stop signal. Returns within about twice the grace
    whatever the task does, so a shutdown can never hang on a stuck loop.
    """
    if not await settle(task, grace_seconds):
        log.warning("background_task_cancelled", task=name, grace_seconds=grace_seconds)
        task.cancel()
        if not await settle(task, grace_seconds):
            log.error("background_task_abandoned", task=name, grace_seconds=grace_seconds)
            return
    if not task.cancelled() and task.exception() is not None:
        log.error("background_task_failed", task=name, error=type(task.exception()).__name__)
