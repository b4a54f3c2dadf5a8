"""Delivering alerts: claim, decide the cooldown window, mail, record; retried with backoff.

One delivery of alert X for key K:

1. *claim* X with a lease (a conditional UPDATE), so two deliverers never work on it at once
   and a crashed one's claim lapses;
2. *win K's window* with one conditional UPDATE of K's ``alert_cooldowns`` row: free when no
   other alert holds it and K has not mailed within the cooldown (``once`` kinds: ever). A
   loser is marked ``suppressed``; the winner counts every not-yet-counted suppressed alert of
   K into its own mail ("and 37 more since ...");
3. mail it outside any transaction;
4. record ``sent`` (and K's ``last_sent_at``), or schedule a retry with exponential backoff
   (``failed`` after ``alert_max_attempts``, releasing K).

A crash after the SMTP server accepted the mail and before step 4 commits re-sends it once the
lease lapses (at-least-once; the Message-ID stays the same). Suppressed alerts of a cooldown
kind whose window has ended are mailed by :func:`flush_ended_windows` even when no new alert
of their key comes along, so a count is never stranded.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Literal

import structlog
from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.alerts import mail
from billwatch.alerts.models import Alert, AlertCooldown, AlertStatus
from billwatch.alerts.raising import SPECS, spec_for
from billwatch.audit.redaction import redact_text
from billwatch.config import Settings
from billwatch.db import Database, after_commit, utcnow
from billwatch.metrics import billing as billing_metrics

log = structlog.get_logger(__name__)

Outcome = Literal["sent", "suppressed", "retry", "failed", "skipped"]
CLOCK_TOLERANCE = timedelta(seconds=1)
"""A retry scheduled by a Celery countdown may arrive a hair before ``next_attempt_at``."""


@dataclass(frozen=True, slots=True)
class Delivery:
    outcome: Outcome
    retry_in: float | None = None


def backoff_seconds(settings: Settings, attempts: int) -> float:
    """Exponential backoff: base, 2 x base, 4 x base ... capped at ``alert_retry_max_seconds``."""
    exponent = min(max(attempts - 1, 0), 30)
    return float(min(settings.alert_retry_max_seconds, settings.alert_retry_base_seconds * 2 ** exponent))


def lease(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.smtp_timeout_seconds * 3 + 30)


async def deliver_one(db: Database, settings: Settings, alert_id: uuid.UUID, *,
                      now: datetime | None = None) -> Delivery:
    """Try to deliver one alert now; never raises for an SMTP failure (it schedules a retry)."""
    now = now or utcnow()
    async with db.unit_of_work() as session:
        prepared = await _claim_and_prepare(session, settings, alert_id, now)
    if isinstance(prepared, str):
        return Delivery(prepared)
    message, kind, key = prepared
    try:
        await mail.send(settings, message)
    except Exception as error:
        log.warning("alert_send_failed", alert_id=str(alert_id), kind=kind,
                    error=redact_text(f"{type(error).__name__}: {error}"))
        return await _record_failure(db, settings, alert_id, key, error, now)
    async with db.unit_of_work() as session:
        await _record_sent(session, alert_id, key, max(now, utcnow()))
        after_commit(session, lambda: billing_metrics.alert_sent(kind))
    log.info("alert_sent", alert_id=str(alert_id), kind=kind)
    return Delivery("sent")


async def _claim_and_prepare(session: AsyncSession, settings: Settings, alert_id: uuid.UUID,
                             now: datetime) -> tuple[EmailMessage, str, str] | Outcome:
    if not settings.enable_billing_alerts:
        return "skipped"  # switched off: pending alerts wait, nothing is mailed
    claimed = await session.execute(
        update(Alert).where(
            Alert.id == alert_id, Alert.status == AlertStatus.PENDING,
            or_(Alert.claimed_until.is_(None), Alert.claimed_until < now),
            or_(Alert.next_attempt_at.is_(None), Alert.next_attempt_at <= now + CLOCK_TOLERANCE))
        .values(claimed_until=now + lease(settings)))
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return "skipped"
    alert = await session.get(Alert, alert_id, populate_existing=True)
    assert alert is not None
    if not settings.billing_alert_emails:
        alert.status, alert.claimed_until = AlertStatus.FAILED, None
        alert.last_error = "no recipients: BILLWATCH_BILLING_ALERT_EMAILS is empty"
        return "failed"
    if not await _win_window(session, settings, alert, now):
        alert.status, alert.claimed_until = AlertStatus.SUPPRESSED, None
        return "suppressed"
    await _count_suppressed(session, alert)
    alert.attempts += 1
    return mail.build_message(alert, settings), alert.kind, alert.dedup_key


async def _win_window(session: AsyncSession, settings: Settings, alert: Alert,
                      now: datetime) -> bool:
    """Atomically take ``alert``'s key for this mail, or learn that it is taken."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    await session.execute(insert(AlertCooldown).values(dedup_key=alert.dedup_key)
                          .on_conflict_do_nothing(index_elements=["dedup_key"]))
    window_free: ColumnElement[bool]
    if spec_for(alert.kind).once:
        window_free = AlertCooldown.last_sent_at.is_(None)
    else:
        cutoff = now - timedelta(seconds=settings.alert_cooldown_seconds)
        window_free = or_(AlertCooldown.last_sent_at.is_(None), AlertCooldown.last_sent_at <= cutoff)
    won = await session.execute(
        update(AlertCooldown).where(
            AlertCooldown.dedup_key == alert.dedup_key, window_free,
            or_(AlertCooldown.holder_alert_id.is_(None), AlertCooldown.holder_alert_id == alert.id))
        .values(holder_alert_id=alert.id))
    return bool(won.rowcount == 1)  # type: ignore[attr-defined]


async def _count_suppressed(session: AsyncSession, alert: Alert) -> None:
    """Count the key's suppressed alerts nobody has mailed about yet into this mail."""
    await session.execute(
        update(Alert).where(Alert.dedup_key == alert.dedup_key,
                            Alert.status == AlertStatus.SUPPRESSED,
                            Alert.counted_in_id.is_(None), Alert.id != alert.id)
        .values(counted_in_id=alert.id))
    counted, since = (await session.execute(
        select(func.count(), func.min(Alert.created_at)).where(Alert.counted_in_id == alert.id))).one()
    alert.suppressed_count = int(counted)
    alert.suppressed_since = since if counted else None


async def _record_sent(session: AsyncSession, alert_id: uuid.UUID, key: str, now: datetime) -> None:
    await session.execute(update(Alert).where(Alert.id == alert_id).values(
        status=AlertStatus.SENT, sent_at=now, claimed_until=None, last_error=None,
        next_attempt_at=None))
    await session.execute(update(AlertCooldown).where(AlertCooldown.dedup_key == key).values(
        holder_alert_id=None, last_sent_at=now, last_alert_id=alert_id))


async def _record_failure(db: Database, settings: Settings, alert_id: uuid.UUID, key: str,
                          error: Exception, now: datetime) -> Delivery:
    async with db.unit_of_work() as session:
        alert = await session.get(Alert, alert_id, populate_existing=True)
        assert alert is not None
        alert.last_error = redact_text(f"{type(error).__name__}: {error}")[:2000]
        alert.claimed_until = None
        if alert.attempts >= settings.alert_max_attempts:
            alert.status, alert.next_attempt_at = AlertStatus.FAILED, None
            await session.execute(update(AlertCooldown).where(
                AlertCooldown.dedup_key == key, AlertCooldown.holder_alert_id == alert_id)
                .values(holder_alert_id=None))
            log.error("alert_given_up", alert_id=str(alert_id), attempts=alert.attempts)
            return Delivery("failed")
        delay = backoff_seconds(settings, alert.attempts)
        alert.next_attempt_at = now + timedelta(seconds=delay)
        return Delivery("retry", retry_in=delay)


async def due_alert_ids(db: Database, *, now: datetime, older_than: datetime | None = None,
                        limit: int = 200) -> list[uuid.UUID]:
    """Pending alerts whose next attempt is due and that nobody holds, oldest first.

    ``older_than`` leaves out alerts raised (or due) after it, whose own hand-off is probably
    still on its way; the Celery sweep uses it so it re-sends only what was really dropped.
    """
    due_by = min(now, older_than) if older_than else now
    query = select(Alert.id).where(
        Alert.status == AlertStatus.PENDING,
        or_(Alert.next_attempt_at.is_(None), Alert.next_attempt_at <= due_by),
        or_(Alert.claimed_until.is_(None), Alert.claimed_until < now))
    if older_than is not None:
        query = query.where(Alert.created_at <= older_than)
    async with db.sessionmaker() as session:
        rows = await session.scalars(query.order_by(Alert.created_at).limit(limit))
        return list(rows.all())


async def flush_ended_windows(db: Database, settings: Settings, *,
                              now: datetime | None = None) -> list[uuid.UUID]:
    """Make the newest uncounted suppressed alert of each ended window pending again.

    Its mail then counts the others, so "and 37 more since ..." arrives when the cooldown
    ends even if the key never fires again.
    """
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.alert_cooldown_seconds)
    once_kinds = [kind for kind, spec in SPECS.items() if spec.once]
    async with db.unit_of_work() as session:
        keys = (await session.scalars(
            select(Alert.dedup_key).join(AlertCooldown, AlertCooldown.dedup_key == Alert.dedup_key)
            .where(Alert.status == AlertStatus.SUPPRESSED, Alert.counted_in_id.is_(None),
                   Alert.kind.not_in(once_kinds), AlertCooldown.holder_alert_id.is_(None),
                   or_(AlertCooldown.last_sent_at.is_(None), AlertCooldown.last_sent_at <= cutoff))
            .distinct())).all()
        waiting = set((await session.scalars(  # a pending alert of the key will do the counting
            select(Alert.dedup_key).where(Alert.dedup_key.in_(keys),
                                          Alert.status == AlertStatus.PENDING))).all())
        promoted: list[uuid.UUID] = []
        for key in (key for key in keys if key not in waiting):
            newest = (await session.scalars(
                select(Alert.id).where(Alert.dedup_key == key, Alert.status == AlertStatus.SUPPRESSED,
                                       Alert.counted_in_id.is_(None))
                .order_by(Alert.created_at.desc()).limit(1))).first()
            if newest is not None:
                await session.execute(update(Alert).where(Alert.id == newest).values(
                    status=AlertStatus.PENDING, next_attempt_at=None, claimed_until=None))
                promoted.append(newest)
    return promoted


async def deliver_due(db: Database, settings: Settings, *,
                      now: datetime | None = None) -> dict[str, int]:
    """One sweep: flush ended windows, then try every due alert. Returns outcome counts."""
    now = now or utcnow()
    counts: dict[str, int] = {}
    if not settings.enable_billing_alerts:
        return counts
    await flush_ended_windows(db, settings, now=now)
    for alert_id in await due_alert_ids(db, now=now):
        outcome = (await deliver_one(db, settings, alert_id, now=now)).outcome
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts
