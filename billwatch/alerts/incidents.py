"""Incidents: which occurrences of a key belong together, and when their next mail is due.

The rules follow Alertmanager's grouping (docs/alerts.md has the timings):

- an occurrence of a key with no firing incident, or whose incident has been quiet for
  ``alert_resolve_seconds``, opens a new incident, which mails at once (critical) or after
  ``alert_group_wait_seconds`` (so a burst leaves in one mail);
- new occurrences of a firing incident are mailed as one summary ("and 23 more since ...")
  ``alert_group_interval_<severity>_seconds`` after the incident's previous mail;
- for kinds whose key names one fact (an invoice, a day: ``once`` in the kind's spec), a new
  occurrence is an identical repeat: it mails again only after the repeat interval
  (``alert_cooldown_seconds``) and only while the incident fires;
- an acknowledged incident mails nothing more; its occurrences are still counted.

Every step of a key runs under :func:`lock_key`, one UPDATE of the key's ``alert_cooldowns``
row, so two deliverers of one key take turns on PostgreSQL (row lock) and SQLite (one writer).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.alerts.models import (
    Alert,
    AlertCooldown,
    AlertIncident,
    AlertStatus,
    IncidentStatus,
    Severity,
)
from billwatch.alerts.raising import spec_for
from billwatch.config import Settings


def group_wait(settings: Settings, severity: Severity) -> timedelta:
    """Critical incidents mail at once; the others wait a little for company."""
    return timedelta(0) if severity is Severity.CRITICAL else timedelta(
        seconds=settings.alert_group_wait_seconds)


def group_interval(settings: Settings, severity: Severity) -> timedelta:
    seconds = {Severity.CRITICAL: settings.alert_group_interval_critical_seconds,
               Severity.ERROR: settings.alert_group_interval_error_seconds,
               Severity.WARNING: settings.alert_group_interval_warning_seconds,
               Severity.INFO: settings.alert_group_interval_info_seconds}[severity]
    return timedelta(seconds=seconds)


def resolve_after(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.alert_resolve_seconds)


def next_mail_due(incident: AlertIncident, settings: Settings) -> datetime | None:
    """When the incident's next mail may leave; None when nothing is left to say."""
    if incident.acknowledged_at is not None:
        return None
    if incident.mails_sent == 0:
        return incident.first_seen_at + group_wait(settings, incident.severity)
    if incident.occurrences <= incident.mailed_occurrences or incident.last_mail_at is None:
        return None
    if spec_for(incident.kind).once:  # identical repeats of one fact
        if incident.status is IncidentStatus.RESOLVED:
            return None
        return incident.last_mail_at + timedelta(seconds=settings.alert_cooldown_seconds)
    return incident.last_mail_at + group_interval(settings, incident.severity)


async def lock_key(session: AsyncSession, key: str) -> AlertCooldown:
    """Take the key's row for the rest of the transaction (created on first use)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    await session.execute(insert(AlertCooldown).values(dedup_key=key)
                          .on_conflict_do_nothing(index_elements=["dedup_key"]))
    await session.execute(update(AlertCooldown).where(AlertCooldown.dedup_key == key)
                          .values(dedup_key=AlertCooldown.dedup_key))
    row = await session.get(AlertCooldown, key, populate_existing=True)
    assert row is not None
    return row


async def incident_of(session: AsyncSession, settings: Settings, key_row: AlertCooldown,
                      alert: Alert) -> AlertIncident:
    """The incident ``alert`` belongs to: assigned once, under the key's lock."""
    if alert.incident_id is not None:
        found = await session.get(AlertIncident, alert.incident_id, populate_existing=True)
        assert found is not None
        return found
    current = (await session.get(AlertIncident, key_row.incident_id, populate_existing=True)
               if key_row.incident_id else None)
    if current is not None and current.status is IncidentStatus.FIRING \
            and alert.created_at < current.last_seen_at + resolve_after(settings):
        current.occurrences += 1
        current.last_seen_at = max(current.last_seen_at, alert.created_at)
        alert.incident_id = current.id
        return current
    if current is not None and current.status is IncidentStatus.FIRING:
        resolve(current, settings)
    opened = AlertIncident(
        id=uuid.uuid4(), dedup_key=alert.dedup_key, kind=alert.kind, severity=alert.severity,
        subject=alert.subject, status=IncidentStatus.FIRING, first_seen_at=alert.created_at,
        last_seen_at=alert.created_at, occurrences=1, mailed_occurrences=0, mails_sent=0)
    session.add(opened)
    await session.flush()  # the incident row first: the alert points at it (no ORM relationship)
    key_row.incident_id = opened.id
    alert.incident_id = opened.id
    return opened


def resolve(incident: AlertIncident, settings: Settings) -> None:
    incident.status = IncidentStatus.RESOLVED
    incident.resolved_at = incident.last_seen_at + resolve_after(settings)


async def another_pending(session: AsyncSession, incident_id: uuid.UUID,
                          alert_id: uuid.UUID | None = None) -> bool:
    """Whether another occurrence already carries the incident's next mail (waiting for it,
    being mailed right now, or retrying it): then this one is only counted."""
    query = select(func.count()).select_from(Alert).where(
        Alert.incident_id == incident_id, Alert.status == AlertStatus.PENDING)
    if alert_id is not None:
        query = query.where(Alert.id != alert_id)
    return bool(await session.scalar(query))


async def count_into(session: AsyncSession, alert: Alert) -> None:
    """Count the incident's occurrences no mail has reported yet into ``alert``'s mail."""
    await session.execute(
        update(Alert).where(Alert.incident_id == alert.incident_id,
                            Alert.status == AlertStatus.SUPPRESSED,
                            Alert.counted_in_id.is_(None), Alert.id != alert.id)
        .values(counted_in_id=alert.id))
    counted, since = (await session.execute(
        select(func.count(), func.min(Alert.created_at)).where(Alert.counted_in_id == alert.id))).one()
    alert.suppressed_count = int(counted)
    alert.suppressed_since = since if counted else None


async def mailed(session: AsyncSession, alert: Alert, now: datetime) -> None:
    """Book ``alert``'s mail (delivered, or probably delivered) on its incident."""
    if alert.incident_id is None:
        return
    incident = await session.get(AlertIncident, alert.incident_id, populate_existing=True)
    assert incident is not None
    incident.mails_sent += 1
    incident.last_mail_at = now
    incident.mailed_occurrences += 1 + alert.suppressed_count


async def resolve_quiet(session: AsyncSession, settings: Settings, now: datetime) -> int:
    """Mark incidents quiet for their resolve time as resolved (for the ledger).

    A key with occurrences not yet assigned is left alone: they may still belong to it, and
    assigning them resolves it just as well.
    """
    unassigned = select(Alert.id).where(Alert.dedup_key == AlertIncident.dedup_key,
                                        Alert.incident_id.is_(None),
                                        Alert.status == AlertStatus.PENDING)
    quiet = (await session.scalars(select(AlertIncident).where(
        AlertIncident.status == IncidentStatus.FIRING,
        AlertIncident.last_seen_at <= now - resolve_after(settings),
        ~unassigned.exists()))).all()
    for incident in quiet:
        resolve(incident, settings)
    return len(quiet)


async def due_carriers(session: AsyncSession, settings: Settings, now: datetime) -> list[uuid.UUID]:
    """Make the newest unreported occurrence of each incident whose mail is due pending again.

    Its mail then counts the others, so a summary leaves at the group interval even if the
    key never fires again.
    """
    incidents = (await session.scalars(
        select(AlertIncident).where(
            AlertIncident.acknowledged_at.is_(None),
            AlertIncident.id.in_(select(Alert.incident_id).where(
                Alert.status == AlertStatus.SUPPRESSED, Alert.counted_in_id.is_(None)))))).all()
    promoted: list[uuid.UUID] = []
    for incident in incidents:
        due = next_mail_due(incident, settings)
        if due is None or due > now:
            continue
        if await another_pending(session, incident.id):
            continue  # an occurrence already carries it
        newest = (await session.scalars(
            select(Alert.id).where(Alert.incident_id == incident.id,
                                   Alert.status == AlertStatus.SUPPRESSED,
                                   Alert.counted_in_id.is_(None))
            .order_by(Alert.created_at.desc()).limit(1))).first()
        if newest is not None:
            await session.execute(update(Alert).where(Alert.id == newest).values(
                status=AlertStatus.PENDING, next_attempt_at=None, claimed_until=None))
            promoted.append(newest)
    return promoted
