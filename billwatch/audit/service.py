"""Reading the trail for admins: filters, newest-first keyset pages, one row, streamed export.

Pages are keyed on ``(occurred_at, id)`` rather than offsets, so page 500 costs what page 1
costs and rows written meanwhile neither repeat nor vanish between pages. An event-type prefix
(``billing.proxy.``) becomes the closed list of registered events it names, an index-friendly
``IN`` on every backend. Metadata is decrypted on the way out; the reader never sees
ciphertext, and a row whose key has left the ring says so instead of failing the page.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, false, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.models import OwnerType, Role
from billwatch.audit.events import Outcome, matching
from billwatch.audit.models import AuditLog, AuditSeal
from billwatch.db import Database
from billwatch.errors import NotFound, Unprocessable
from billwatch.schema_types import bounded_instant
from billwatch.secret_keys import KeyRingError

EXPORT_BATCH = 500


@dataclass(frozen=True, slots=True)
class AuditFilters:
    """What an admin narrows the trail to; every field optional."""

    event_type: str | None = None
    """An exact event name, or a prefix ending in ``.`` (``billing.proxy.``)."""
    actor_user_id: uuid.UUID | None = None
    actor_role: Role | None = None
    actor_name: str | None = None
    manager_assignment_id: uuid.UUID | None = None
    owner_type: OwnerType | None = None
    owner_id: uuid.UUID | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    outcome: Outcome | None = None
    stripe_id: str | None = None
    """Any Stripe id the row names: event, customer, subscription or invoice."""
    request_id: str | None = None
    occurred_from: datetime | None = None
    occurred_to: datetime | None = None

    def applied(self) -> dict[str, str]:
        """The filters in use, as text (recorded in the ``audit.read`` row)."""
        return {name: str(getattr(self, name)) for name in self.__slots__
                if getattr(self, name) is not None}


@dataclass(frozen=True, slots=True)
class Entry:
    row: AuditLog
    seq: int | None


@dataclass(frozen=True, slots=True)
class Page:
    entries: list[Entry]
    next_cursor: str | None


def query(filters: AuditFilters) -> Select[AuditLog, int]:
    """Matching rows with their seal position, newest first."""
    statement = select(AuditLog, AuditSeal.seq).outerjoin(
        AuditSeal, AuditSeal.audit_log_id == AuditLog.id)
    if filters.event_type:
        if filters.event_type.endswith("."):
            names = [event.value for event in matching(filters.event_type)]
            statement = statement.where(AuditLog.event_type.in_(names) if names else false())
        else:
            statement = statement.where(AuditLog.event_type == filters.event_type)
    for column, value in (
            (AuditLog.actor_user_id, filters.actor_user_id),
            (AuditLog.actor_role, filters.actor_role),
            (AuditLog.actor_name, filters.actor_name),
            (AuditLog.manager_assignment_id, filters.manager_assignment_id),
            (AuditLog.owner_type, filters.owner_type), (AuditLog.owner_id, filters.owner_id),
            (AuditLog.resource_type, filters.resource_type),
            (AuditLog.resource_id, filters.resource_id), (AuditLog.outcome, filters.outcome)):
        if value is not None:
            statement = statement.where(column == value)
    if filters.stripe_id is not None:
        statement = statement.where(or_(
            AuditLog.stripe_event_id == filters.stripe_id,
            AuditLog.stripe_customer_id == filters.stripe_id,
            AuditLog.stripe_subscription_id == filters.stripe_id,
            AuditLog.stripe_invoice_id == filters.stripe_id))
    if filters.request_id is not None:
        statement = statement.where(AuditLog.request_id == filters.request_id)
    if filters.occurred_from is not None:
        statement = statement.where(AuditLog.occurred_at >= filters.occurred_from)
    if filters.occurred_to is not None:
        statement = statement.where(AuditLog.occurred_at < filters.occurred_to)
    return statement.order_by(AuditLog.occurred_at.desc(), AuditLog.id.desc())


def encode_cursor(row: AuditLog) -> str:
    raw = f"{row.occurred_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, row_id = raw.partition("|")
        when = bounded_instant(datetime.fromisoformat(moment))  # refuses a naive time too
        return when, uuid.UUID(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as error:
        raise Unprocessable("cursor is not one this API returned", code="bad_cursor") from error


async def page(session: AsyncSession, filters: AuditFilters, *, limit: int,
               cursor: str | None = None) -> Page:
    """One page of matching rows, newest first, and the cursor of the next page."""
    statement = query(filters)
    if cursor:
        when, row_id = decode_cursor(cursor)
        statement = statement.where(or_(
            AuditLog.occurred_at < when,
            and_(AuditLog.occurred_at == when, AuditLog.id < row_id)))
    rows = (await session.execute(statement.limit(limit + 1))).all()
    entries = [Entry(row, seq) for row, seq in rows[:limit]]
    following = encode_cursor(entries[-1].row) if len(rows) > limit else None
    return Page(entries, following)


async def get(session: AsyncSession, row_id: uuid.UUID) -> Entry:
    found = (await session.execute(
        select(AuditLog, AuditSeal.seq).outerjoin(AuditSeal, AuditSeal.audit_log_id == AuditLog.id)
        .where(AuditLog.id == row_id))).first()
    if found is None:
        raise NotFound(f"audit log {row_id} not found", code="audit_log_not_found")
    return Entry(found[0], found[1])


async def stream(db: Database, filters: AuditFilters) -> AsyncIterator[Entry]:
    """Every matching row, newest first, read in batches on a connection of its own.

    The export response outlives the request's unit of work, so it cannot borrow its session;
    the server-side cursor keeps memory flat however large the export.
    """
    async with db.sessionmaker() as session:
        result = await session.stream(query(filters).execution_options(yield_per=EXPORT_BATCH))
        async for row, seq in result:
            yield Entry(row, seq)


def metadata_of(row: AuditLog) -> tuple[dict[str, Any] | None, str | None]:
    """Decrypted metadata, or why it cannot be read (a key retired from the ring)."""
    try:
        return row.data, None
    except KeyRingError as error:
        return None, str(error)
