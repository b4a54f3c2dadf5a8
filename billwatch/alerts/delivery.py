"""Delivering alerts: claim, let the incident decide, mail, record; at most two copies.

One delivery of alert X (one occurrence of key K):

1. *claim* X with a lease (a conditional UPDATE), so two deliverers never work on it at once
   and a crashed one's claim lapses;
2. under K's lock row, *assign* X to K's incident (:mod:`billwatch.alerts.incidents`) and ask
   the incident whether a mail is due now: then X carries it, counting every occurrence no
   mail has reported yet; otherwise X is ``suppressed`` and counted into the incident's next
   mail, which the sweep hands to the newest such occurrence when it falls due;
3. count the copy (``copies``) and mail it outside any transaction;
4. record ``sent``; or ``uncertain`` when the server got the whole message but never answered
   (one re-send after ``alert_uncertain_resend_seconds``, never a third copy); or schedule a
   retry with exponential backoff for a failure that put no message on the wire (``failed``
   after ``alert_max_attempts``).

``copies`` is raised before the send and given back only for a failure known to have come
before the message was transmitted, so even a crash between the send and step 4 cannot lead to
a third copy. The Message-ID stays the same, so mail clients fold a second copy.

Lock order, in every transaction that touches a key: the alert's own row, then the key's
``alert_cooldowns`` row (:func:`incidents.lock_key`), then its incident. Booking a mail once
updated the incident before the key, and a burst of one key on PostgreSQL deadlocked: the
aborted claim left its occurrence pending and unassigned until the sweep re-sent it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Literal

import structlog
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.alerts import incidents, mail
from billwatch.alerts.explain import load_owner
from billwatch.alerts.models import Alert, AlertCooldown, AlertStatus
from billwatch.config import Settings
from billwatch.db import Database, after_commit, utcnow
from billwatch.redaction import redact_text
from billwatch.runtime import runtime_of
from billwatch.smtp import UncertainDelivery, send, smtp_lease_seconds

log = structlog.get_logger(__name__)

Outcome = Literal["sent", "suppressed", "retry", "uncertain", "failed", "skipped"]
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


MAX_COPIES = 2


def lease(settings: Settings) -> timedelta:
    return timedelta(seconds=smtp_lease_seconds(settings))


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Pending alerts, and uncertain ones whose single re-send is due; never a third copy."""
    return and_(
        or_(Alert.status == AlertStatus.PENDING,
            and_(Alert.status == AlertStatus.UNCERTAIN, Alert.next_attempt_at.is_not(None))),
        Alert.copies < MAX_COPIES,
        or_(Alert.claimed_until.is_(None), Alert.claimed_until < now))


async def deliver_one(db: Database, settings: Settings, alert_id: uuid.UUID, *,
                      now: datetime | None = None) -> Delivery:
    """Try to deliver one alert now; never raises for an SMTP failure (it schedules a retry)."""
    now = now or utcnow()
    async with db.unit_of_work() as session:
        prepared = await _claim_and_prepare(session, settings, alert_id, now)
    if isinstance(prepared, Delivery):
        return prepared
    message, kind, now = prepared  # the clock moves no earlier than the alert's own time
    try:
        await send(settings, message)
    except UncertainDelivery as error:
        log.warning("alert_delivery_uncertain", alert_id=str(alert_id), kind=kind,
                    error=redact_text(str(error)))
        return await _record_uncertain(db, settings, alert_id, error, now)
    except Exception as error:
        log.warning("alert_send_failed", alert_id=str(alert_id), kind=kind,
                    error=redact_text(f"{type(error).__name__}: {error}"))
        return await _record_failure(db, settings, alert_id, error, now)
    async with db.unit_of_work() as session:
        await _record_sent(session, alert_id, now)  # the decision's clock, as the incident's
        metrics = runtime_of(session).metrics
        after_commit(session, lambda: metrics.alert_sent(kind))
    log.info("alert_sent", alert_id=str(alert_id), kind=kind)
    return Delivery("sent")


async def _claim_and_prepare(session: AsyncSession, settings: Settings, alert_id: uuid.UUID,
                             now: datetime) -> tuple[EmailMessage, str, datetime] | Delivery:
    if not settings.enable_billing_alerts:
        return Delivery("skipped")  # switched off: pending alerts wait, nothing is mailed
    claimed = await session.execute(
        update(Alert).where(
            Alert.id == alert_id, _claimable(now),
            or_(Alert.next_attempt_at.is_(None), Alert.next_attempt_at <= now + CLOCK_TOLERANCE))
        .values(claimed_until=now + lease(settings)))
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return Delivery("skipped")
    alert = await session.get(Alert, alert_id, populate_existing=True)
    assert alert is not None
    if not settings.billing_alert_emails:
        alert.status, alert.claimed_until = AlertStatus.FAILED, None
        alert.last_error = "no recipients: BILLWATCH_BILLING_ALERT_EMAILS is empty"
        return Delivery("failed")
    if alert.status is AlertStatus.PENDING:  # an uncertain re-send repeats its mail as it was
        decided = await _decide(session, settings, alert, now)
        if decided is not None:
            return decided
    alert.attempts += 1
    alert.copies += 1
    owner = await load_owner(session, alert.payload or {}, settings.alert_mail_owner_email)
    return mail.build_message(alert, settings, owner), alert.kind, max(now, alert.created_at)


async def _decide(session: AsyncSession, settings: Settings, alert: Alert,
                  now: datetime) -> Delivery | None:
    """Under the key's lock: None if ``alert`` carries a mail now, else it is only counted.

    A counted occurrence waits as ``suppressed``; when its incident's next mail falls due the
    sweep (:func:`promote_due`) makes the newest of them pending again to carry it.
    """
    key_row = await incidents.lock_key(session, alert.dedup_key)
    incident = await incidents.incident_of(session, settings, key_row, alert)
    due = incidents.next_mail_due(incident, settings)
    now = max(now, alert.created_at)  # a raiser whose clock runs ahead must not hold it back
    if due is None or due > now + CLOCK_TOLERANCE \
            or await incidents.another_pending(session, incident.id, alert.id):
        alert.status, alert.claimed_until, alert.next_attempt_at = (
            AlertStatus.SUPPRESSED, None, None)
        return Delivery("suppressed")
    await incidents.count_into(session, alert)
    return None


async def _record_sent(session: AsyncSession, alert_id: uuid.UUID, now: datetime) -> None:
    alert = await session.get(Alert, alert_id, populate_existing=True)
    assert alert is not None
    first_copy = alert.uncertain_at is None  # a re-send was booked when it went uncertain
    alert.status, alert.sent_at, alert.claimed_until = AlertStatus.SENT, now, None
    alert.last_error, alert.next_attempt_at = None, None
    if first_copy:
        await _book(session, alert, now)


async def _book(session: AsyncSession, alert: Alert, now: datetime) -> None:
    """Record the mail on the key and its incident, the key's lock first (see the lock order)."""
    await incidents.lock_key(session, alert.dedup_key)
    await incidents.mailed(session, alert, now)
    await session.execute(update(AlertCooldown).where(AlertCooldown.dedup_key == alert.dedup_key)
                          .values(last_sent_at=now, last_alert_id=alert.id))


async def _record_uncertain(db: Database, settings: Settings, alert_id: uuid.UUID,
                            error: Exception, now: datetime) -> Delivery:
    async with db.unit_of_work() as session:
        alert = await session.get(Alert, alert_id, populate_existing=True)
        assert alert is not None
        first_time = alert.uncertain_at is None
        alert.status, alert.claimed_until = AlertStatus.UNCERTAIN, None
        alert.uncertain_at = alert.uncertain_at or now
        alert.last_error = redact_text(str(error))[:2000]
        if first_time:
            await _book(session, alert, now)  # probably delivered: the incident moves on
        if alert.copies < MAX_COPIES:
            delay = settings.alert_uncertain_resend_seconds
            alert.next_attempt_at = now + timedelta(seconds=delay)
            return Delivery("uncertain", retry_in=delay)
        alert.next_attempt_at = None
        log.warning("alert_left_uncertain", alert_id=str(alert_id), copies=alert.copies)
        return Delivery("uncertain")


async def _record_failure(db: Database, settings: Settings, alert_id: uuid.UUID,
                          error: Exception, now: datetime) -> Delivery:
    """Nothing reached the server (or it refused the message): the copy is given back."""
    async with db.unit_of_work() as session:
        alert = await session.get(Alert, alert_id, populate_existing=True)
        assert alert is not None
        alert.copies = max(alert.copies - 1, 0)
        alert.last_error = redact_text(f"{type(error).__name__}: {error}")[:2000]
        alert.claimed_until = None
        if alert.attempts >= settings.alert_max_attempts:
            alert.next_attempt_at = None
            if alert.uncertain_at is None:
                alert.status = AlertStatus.FAILED
                await session.execute(update(Alert).where(Alert.counted_in_id == alert_id)
                                      .values(counted_in_id=None))  # a later mail counts them
            log.error("alert_given_up", alert_id=str(alert_id), attempts=alert.attempts)
            return Delivery("failed")
        delay = backoff_seconds(settings, alert.attempts)
        alert.next_attempt_at = now + timedelta(seconds=delay)
        return Delivery("retry", retry_in=delay)


async def due_alert_ids(db: Database, *, now: datetime, older_than: datetime | None = None,
                        limit: int = 200) -> list[uuid.UUID]:
    """Claimable alerts whose next attempt is due, oldest first.

    ``older_than`` leaves out alerts raised (or due) after it, whose own hand-off is probably
    still on its way; the Celery sweep uses it so it re-sends only what was really dropped.
    """
    due_by = min(now, older_than) if older_than else now
    query = select(Alert.id).where(
        _claimable(now), or_(Alert.next_attempt_at.is_(None), Alert.next_attempt_at <= due_by))
    if older_than is not None:
        query = query.where(Alert.created_at <= older_than)
    async with db.sessionmaker() as session:
        rows = await session.scalars(query.order_by(Alert.created_at).limit(limit))
        return list(rows.all())


async def promote_due(db: Database, settings: Settings, *,
                      now: datetime | None = None) -> list[uuid.UUID]:
    """The sweep's bookkeeping: resolve quiet incidents, end copies that can go no further,
    and make one occurrence of each incident whose summary is due pending again."""
    now = now or utcnow()
    async with db.unit_of_work() as session:
        await incidents.resolve_quiet(session, settings, now)
        await session.execute(update(Alert).where(  # two copies are out and the deliverer died
            Alert.status == AlertStatus.PENDING, Alert.copies >= MAX_COPIES,
            Alert.claimed_until < now).values(
                status=AlertStatus.UNCERTAIN, claimed_until=None, next_attempt_at=None,
                uncertain_at=now))
        return await incidents.due_carriers(session, settings, now)


async def deliver_due(db: Database, settings: Settings, *,
                      now: datetime | None = None) -> dict[str, int]:
    """One sweep: promote due summaries, then try every due alert. Returns outcome counts."""
    now = now or utcnow()
    counts: dict[str, int] = {}
    if not settings.enable_billing_alerts:
        return counts
    await promote_due(db, settings, now=now)
    for alert_id in await due_alert_ids(db, now=now):
        outcome = (await deliver_one(db, settings, alert_id, now=now)).outcome
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts
