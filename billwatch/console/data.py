"""What each console page reads, in the page's one read transaction. No business rules here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.models import Organization, OwnerType, User
from billwatch.alerts.models import Alert, AlertIncident, AlertStatus
from billwatch.audit import service as audit_service
from billwatch.audit.models import AuditCheckpoint, AuditLog, AuditSeal
from billwatch.audit.service import AuditFilters, Entry
from billwatch.audit.verify_runs import VerifyRun, last_run
from billwatch.billing.models import (
    BillingOverride,
    Subscription,
    Transaction,
    TransactionKind,
)
from billwatch.db import utcnow
from billwatch.errors import NotFound
from billwatch.jobs.models import DailyBillingMetrics
from billwatch.managers.models import BillingManagerAssignment
from billwatch.webhooks.models import UNFINISHED, EventStatus, StripeEvent

CHART_DAYS = 90
RELATED_WINDOW = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class AuditState:
    last_checkpoint: AuditCheckpoint | None
    unsealed_recent: int
    """Rows written since the last checkpoint that no seal covers yet."""
    last_verify: VerifyRun | None = None
    """The newest recorded ``billwatch audit verify``: when, by whom, intact or broken."""


@dataclass(frozen=True, slots=True)
class Overview:
    today: DailyBillingMetrics | None
    days: list[DailyBillingMetrics]
    open_alerts: list[Alert]
    backlog: dict[str, int]
    oldest_unprocessed: datetime | None
    audit: AuditState


async def overview(session: AsyncSession, *, now: datetime | None = None) -> Overview:
    now = now or utcnow()
    since = (now - timedelta(days=CHART_DAYS)).date()
    days = list((await session.scalars(
        select(DailyBillingMetrics).where(DailyBillingMetrics.day >= since)
        .order_by(DailyBillingMetrics.day))).all())
    alerts = list((await session.scalars(
        select(Alert).where(Alert.acknowledged_at.is_(None), Alert.status != AlertStatus.SUPPRESSED)
        .order_by(Alert.created_at.desc()).limit(10))).all())
    backlog = {status.value: count for status, count in (await session.execute(
        select(StripeEvent.status, func.count()).group_by(StripeEvent.status))).all()}
    oldest = (await session.scalars(
        select(func.min(StripeEvent.received_at)).where(
            StripeEvent.status.in_([*UNFINISHED, EventStatus.FAILED])))).first()
    return Overview(days[-1] if days else None, days, alerts, backlog, oldest,
                    await audit_state(session, now=now))


async def audit_state(session: AsyncSession, *, now: datetime) -> AuditState:
    last = (await session.scalars(
        select(AuditCheckpoint).order_by(AuditCheckpoint.last_seq.desc()).limit(1))).first()
    # Bounded by time (an index range), never a count over the whole table.
    since = last.created_at - timedelta(minutes=5) if last else now - timedelta(days=1)
    unsealed = (await session.scalars(
        select(func.count()).select_from(AuditLog)
        .outerjoin(AuditSeal, AuditSeal.audit_log_id == AuditLog.id)
        .where(AuditLog.occurred_at >= since, AuditSeal.seq.is_(None)))).one()
    return AuditState(last, int(unsealed), await last_run(session))


async def related(session: AsyncSession, row: AuditLog, *, limit: int = 20) -> list[Entry]:
    """Rows of the same request, the same Stripe event, or the same owner within an hour.

    Three narrow queries (each on its own index) rather than one ``OR``, which the planner
    can only answer by scanning the time index across the whole window.
    """
    statements = []
    if row.request_id:
        statements.append(audit_service.query(AuditFilters(
            request_id=row.request_id, occurred_from=row.occurred_at - RELATED_WINDOW,
            occurred_to=row.occurred_at + RELATED_WINDOW)))
    if row.stripe_event_id:
        statements.append(_of_stripe_event(row.stripe_event_id))
    if row.owner_id is not None:
        statements.append(audit_service.query(AuditFilters(
            owner_type=row.owner_type, owner_id=row.owner_id,
            occurred_from=row.occurred_at - RELATED_WINDOW,
            occurred_to=row.occurred_at + RELATED_WINDOW)))
    found: dict[object, Entry] = {}
    for statement in statements:
        narrowed = statement.where(AuditLog.id != row.id).limit(limit)
        for other, seq in (await session.execute(narrowed)).all():
            found.setdefault(other.id, Entry(other, seq))
    ordered = sorted(found.values(), key=lambda e: (e.row.occurred_at, str(e.row.id)), reverse=True)
    return ordered[:limit]


@dataclass(frozen=True, slots=True)
class OwnerPage:
    owner_type: OwnerType
    owner_id: uuid.UUID
    name: str
    subscriptions: list[Subscription]
    payments: list[Transaction]
    refunds: dict[uuid.UUID, list[Transaction]]
    overrides: list[BillingOverride]
    managers: list[BillingManagerAssignment]
    users: dict[uuid.UUID, User]


async def owner(session: AsyncSession, owner_type: OwnerType, owner_id: uuid.UUID) -> OwnerPage:
    name = await _owner_name(session, owner_type, owner_id)
    subscriptions = list((await session.scalars(
        select(Subscription).where(Subscription.owner_type == owner_type,
                                   Subscription.owner_id == owner_id)
        .order_by(Subscription.created_at.desc()))).all())
    transactions = list((await session.scalars(
        select(Transaction).where(Transaction.owner_type == owner_type,
                                  Transaction.owner_id == owner_id)
        .order_by(Transaction.created_at.desc()).limit(200))).all())
    refunds: dict[uuid.UUID, list[Transaction]] = {}
    for refund in transactions:
        if refund.kind is TransactionKind.REFUND and refund.refund_of_id is not None:
            refunds.setdefault(refund.refund_of_id, []).append(refund)
    overrides = list((await session.scalars(
        select(BillingOverride).where(BillingOverride.owner_type == owner_type,
                                      BillingOverride.owner_id == owner_id)
        .order_by(BillingOverride.created_at.desc()))).all())
    managers = list((await session.scalars(
        select(BillingManagerAssignment).where(BillingManagerAssignment.patient_id == owner_id)
        .order_by(BillingManagerAssignment.assigned_at.desc()))).all()) \
        if owner_type is OwnerType.PATIENT else []
    people = {m.proxy_id for m in managers} | {m.assigned_by_user_id for m in managers} | \
        {m.removed_by_user_id for m in managers if m.removed_by_user_id} | \
        {t.created_by_user_id for t in transactions if t.created_by_user_id}
    users = {user.id: user for user in (await session.scalars(
        select(User).where(User.id.in_(people)))).all()} if people else {}
    payments = [t for t in transactions if t.kind is TransactionKind.PAYMENT]
    return OwnerPage(owner_type, owner_id, name, subscriptions, payments, refunds, overrides,
                     managers, users)


async def _owner_name(session: AsyncSession, owner_type: OwnerType, owner_id: uuid.UUID) -> str:
    if owner_type is OwnerType.ORGANIZATION:
        org = await session.get(Organization, owner_id)
        if org is None:
            raise NotFound(f"organization {owner_id} not found", code="owner_not_found")
        return org.name
    user = await session.get(User, owner_id)
    if user is None:
        raise NotFound(f"patient {owner_id} not found", code="owner_not_found")
    return user.name


async def payment(session: AsyncSession, owner_type: OwnerType, owner_id: uuid.UUID,
                  transaction_id: uuid.UUID) -> Transaction:
    found = await session.get(Transaction, transaction_id)
    if found is None or found.owner_id != owner_id or found.owner_type is not owner_type or \
            found.kind is not TransactionKind.PAYMENT:
        raise NotFound(f"payment {transaction_id} not found for this owner", code="transaction_not_found")
    return found


@dataclass(frozen=True, slots=True)
class EventsPage:
    events: list[StripeEvent]
    counts: dict[str, int]
    next_before: str | None


async def events(session: AsyncSession, *, status: EventStatus | None, event_type: str | None,
                 before: datetime | None, limit: int = 50) -> EventsPage:
    statement = select(StripeEvent)
    if status is not None:
        statement = statement.where(StripeEvent.status == status)
    if event_type:
        statement = statement.where(StripeEvent.type == event_type)
    if before is not None:
        statement = statement.where(StripeEvent.received_at < before)
    rows = list((await session.scalars(
        statement.order_by(StripeEvent.received_at.desc()).limit(limit + 1))).all())
    counts = {s.value: n for s, n in (await session.execute(
        select(StripeEvent.status, func.count()).group_by(StripeEvent.status))).all()}
    following = rows[limit - 1].received_at.isoformat() if len(rows) > limit else None
    return EventsPage(rows[:limit], counts, following)


async def event(session: AsyncSession, stripe_event_id: str) -> tuple[StripeEvent, list[Entry]]:
    found = (await session.scalars(
        select(StripeEvent).where(StripeEvent.stripe_event_id == stripe_event_id))).first()
    if found is None:
        raise NotFound(f"no stored Stripe event {stripe_event_id}", code="event_not_found")
    rows = (await session.execute(_of_stripe_event(stripe_event_id).limit(50))).all()
    return found, [Entry(row, seq) for row, seq in rows]


def series(days: list[DailyBillingMetrics], field: str, *, scale: float = 1.0) -> list[tuple[date, Any]]:
    points: list[tuple[date, Any]] = []
    for day in days:
        value = getattr(day, field)
        points.append((day.day, None if value is None else value / scale))
    return points


async def alert(session: AsyncSession, alert_id: uuid.UUID) -> tuple[Alert, AlertIncident | None]:
    found = await session.get(Alert, alert_id)
    if found is None:
        raise NotFound(f"alert {alert_id} not found", code="alert_not_found")
    incident = await session.get(AlertIncident, found.incident_id) if found.incident_id else None
    return found, incident


def _of_stripe_event(stripe_event_id: str) -> Select[AuditLog, int]:
    """The rows one Stripe event wrote, on the indexed event-id column alone."""
    return audit_service.query(AuditFilters()).where(AuditLog.stripe_event_id == stripe_event_id)
