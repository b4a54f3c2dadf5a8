"""Waiting for the asynchronous tail of the month before reading its results.

The Stripe peer delivers its own webhooks a second or so after the change, and alert e-mails
go out in the background after commit. The summary waits on those conditions (polling with a
deadline), never on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from rich.progress import Progress
from sqlalchemy import func, select

from billwatch.alerts.models import Alert, AlertStatus
from billwatch.db import Database
from billwatch.webhooks.models import StripeEvent


async def _poll(check: Callable[[], Awaitable[bool]], *, within: float,
                interval: float = 0.25) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return True
        await asyncio.sleep(interval)
    return False


async def wait_for_peer_events(db: Database, expected: Counter[str], progress: Progress, *,
                               within: float = 30.0) -> Counter[str]:
    """Until billwatch has stored ``expected[type]`` events of each type; returns what arrived."""
    task = progress.add_task("Stripe peer's own deliveries arriving", total=sum(expected.values()))
    counts: Counter[str] = Counter()

    async def arrived() -> bool:
        async with db.sessionmaker() as session:
            rows = (await session.execute(
                select(StripeEvent.type, func.count()).where(StripeEvent.type.in_(list(expected)))
                .group_by(StripeEvent.type))).tuples().all()
        counts.clear()
        counts.update({event_type: int(n) for event_type, n in rows})
        progress.update(task, completed=sum(min(counts[t], n) for t, n in expected.items()))
        return all(counts[t] >= n for t, n in expected.items())

    await _poll(arrived, within=within)
    return counts


async def wait_for_alerts(db: Database, progress: Progress, *, within: float = 20.0) -> bool:
    """Until no alert is waiting for its e-mail (sent, suppressed into another, or given up)."""
    task = progress.add_task("Alert e-mails delivered", total=None)

    async def settled() -> bool:
        async with db.sessionmaker() as session:
            total = int(await session.scalar(select(func.count()).select_from(Alert)) or 0)
            pending = int(await session.scalar(select(func.count()).where(
                Alert.status == AlertStatus.PENDING)) or 0)
        progress.update(task, total=total, completed=total - pending)
        return pending == 0

    return await _poll(settled, within=within)
