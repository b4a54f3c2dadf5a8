"""Embedded mode (no broker): one background asyncio task in the app delivers and schedules.

Started and stopped by the app's lifespan. It wakes on every committed alert or requested
check (a hand-off from :mod:`billwatch.alerts.handoff`) and at least every
``alert_poll_seconds`` for retries, so pending alerts left by a crash or a restart are picked
up by the first tick. A second loop processes the webhook inbox: it wakes on every committed
event (:mod:`billwatch.webhooks.handoff`) and every ``webhook_poll_seconds`` for due retries
and lapsed leases, and is kept apart so a slow mail never delays an event. Its work runs on the
app's event loop but never inside a request: a request only sets an event after its commit.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import structlog

from billwatch.alerts import handoff
from billwatch.alerts.delivery import deliver_due
from billwatch.alerts.raising import raise_audit_write_failure
from billwatch.background import stop_task, wait_until_set
from billwatch.billing import expiry
from billwatch.billing.intent_sweeper import sweep_subscription_intents
from billwatch.billing.refund_sweeper import sweep_pending_refunds
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.jobs import service
from billwatch.payments.gateway import PaymentsGateway
from billwatch.webhooks.inbox import drain, processor_id

log = structlog.get_logger(__name__)
MAX_HELD = 100
"""Audit-failure alerts held in memory while the database refuses them (the newest are kept)."""


class EmbeddedRunner:
    """The in-process deliverer and scheduler of one app process."""

    def __init__(self, db: Database, settings: Settings, *, schedule: bool | None = None,
                 gateway: PaymentsGateway | None = None) -> None:
        self.db = db
        self.settings = settings
        self.gateway = gateway or PaymentsGateway(settings)
        self.worker = processor_id("embedded")
        self._inbox_wake = asyncio.Event()
        self._inbox_task: asyncio.Task[None] | None = None
        self.schedule = settings.embedded_scheduler if schedule is None else schedule
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._checks: set[str] = set()
        self._audit_failures: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ticks = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="billwatch-embedded-runner")
        self._inbox_task = asyncio.create_task(self._run_inbox(), name="billwatch-inbox")
        self.db.required_runtime().attach(alerts=self, inbox=self)

    async def stop(self) -> None:
        """Signal the loop, let its current tick finish within the grace, else cancel or abandon it."""
        self.db.required_runtime().detach(self)
        self._stopping.set()
        self._wake.set()
        self._inbox_wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            await stop_task(task, grace_seconds=self.settings.shutdown_grace_seconds,
                            name="embedded-runner")
        if self._inbox_task is not None:
            inbox, self._inbox_task = self._inbox_task, None
            await stop_task(inbox, grace_seconds=self.settings.shutdown_grace_seconds,
                            name="embedded-inbox")

    # --- the AlertSink protocol (called after commits, maybe from another thread) ---

    def alert_raised(self, alert_id: uuid.UUID) -> None:
        self._poke()

    def check_requested(self, check: str) -> None:
        self._checks.add(check)
        self._poke()

    def audit_write_failed(self, details: dict[str, Any]) -> None:
        self._audit_failures = [*self._audit_failures[-(MAX_HELD - 1):], details]
        self._poke()

    def _poke(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake.set)

    # --- the InboxSink protocol (called after an event's commit) ---

    def events_received(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._inbox_wake.set)

    # --- the loop ---

    async def _run(self) -> None:
        # The stop signal is checked around every step: a cancellation alone is not trusted to
        # end the loop (see billwatch.background).
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self.tick()
            except Exception:  # a bad tick must not end delivery for the life of the process
                log.exception("embedded_tick_failed")
            if self._stopping.is_set():
                break
            await wait_until_set(self._wake, self.settings.alert_poll_seconds)

    async def _run_inbox(self) -> None:
        while not self._stopping.is_set():
            self._inbox_wake.clear()
            try:
                await self.process_inbox()
            except Exception:  # the database may be gone for a while; the next wake retries
                log.exception("embedded_inbox_failed")
            if self._stopping.is_set():
                break
            await wait_until_set(self._inbox_wake, self.settings.webhook_poll_seconds)

    async def process_inbox(self, *, now: datetime | None = None) -> int:
        """Every due inbox event (received, retry due, lease lapsed); returns how many ran."""
        return len(await drain(self.db, self.gateway, self.settings, worker=self.worker, now=now,
                               stopping=self._stopping.is_set))

    async def tick(self, *, now: datetime | None = None) -> None:
        """Requested checks, due scheduled jobs, pending refund intents, then every due alert."""
        checks, self._checks = self._checks, set()
        await self._raise_audit_failures()
        if handoff.Check.REFUNDS_TODAY in checks:
            await service.refunds_check(self.db, self.settings, now=now)
        if self.schedule:
            await service.run_due_schedule(self.db, self.settings, now=now)
            await service.audit_seal_due(self.db, self.settings, now=now)
            await service.audit_partitions_due(self.db, self.settings, now=now)
            await expiry.expire_due_overrides(self.db, self.settings, now=now)
            await service.webhooks_prune_job(self.db, self.settings, now=now)
        await sweep_pending_refunds(self.db, self.settings, now=now)
        await sweep_subscription_intents(self.db, self.settings, now=now)
        await deliver_due(self.db, self.settings, now=now)
        if self.schedule:  # last: housekeeping never holds up the tick's deliveries
            await service.idempotency_prune_job(self.db, self.settings, now=now)
        self.ticks += 1

    async def _raise_audit_failures(self) -> None:
        """Write held audit-failure alerts; if the database still refuses, keep them for later."""
        while self._audit_failures:
            await raise_audit_write_failure(self.db, self._audit_failures[0])
            self._audit_failures.pop(0)
