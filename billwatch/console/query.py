"""The audit explorer's query line: ``event:billing.refund.* outcome:failure actor:ada@clinic.test``.

Each ``name:value`` term narrows the trail like the matching form field; the form and the line
are one filter (the form fields win where both say something). Unknown names and malformed
values are refused with a message rather than ignored, so a typo never silently widens a search.
"""

from __future__ import annotations

import shlex
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.models import OwnerType, User
from billwatch.audit.events import Outcome
from billwatch.audit.service import AuditFilters

DEFAULT_DAYS = 7
TERMS = ("event", "outcome", "actor", "owner", "resource", "stripe", "request", "from", "to")


class QueryError(ValueError):
    """A query line or form value that cannot be a filter; the message says which and why."""


@dataclass
class Criteria:
    """The explorer's filter as the admin wrote it (text), before it becomes an AuditFilters."""

    event: str = ""
    outcome: str = ""
    actor: str = ""
    owner: str = ""
    resource: str = ""
    stripe: str = ""
    request: str = ""
    since: str = ""
    until: str = ""

    @classmethod
    def parse(cls, line: str) -> Criteria:
        criteria = cls()
        try:
            terms = shlex.split(line)
        except ValueError as error:
            raise QueryError(f"query line: {error}") from error
        for term in terms:
            name, sep, value = term.partition(":")
            if not sep or name not in TERMS or not value:
                raise QueryError(f"query term {term!r}: use one of {', '.join(TERMS)} as name:value")
            attribute = {"from": "since", "to": "until"}.get(name, name)
            setattr(criteria, attribute, value)
        return criteria

    def merged(self, form: Criteria) -> Criteria:
        """These criteria with every non-empty field of ``form`` laid over them."""
        values = {name: getattr(form, name) for name in
                  ("event", "outcome", "actor", "owner", "resource", "stripe", "request",
                   "since", "until") if getattr(form, name)}
        return replace(self, **values)

    def line(self) -> str:
        """The criteria written back as one query line (what the page shows and links carry)."""
        pairs = (("event", self.event), ("outcome", self.outcome), ("actor", self.actor),
                 ("owner", self.owner), ("resource", self.resource), ("stripe", self.stripe),
                 ("request", self.request), ("from", self.since), ("to", self.until))
        return " ".join(f"{name}:{shlex.quote(value)}" for name, value in pairs if value)


async def to_filters(session: AsyncSession, criteria: Criteria, *,
                     now: datetime | None = None) -> AuditFilters:
    """Resolve names (an actor's e-mail) and parse values; the time defaults to the last 7 days."""
    now = now or datetime.now(UTC)
    event = criteria.event.rstrip("*") if criteria.event.endswith(".*") else criteria.event
    outcome = _outcome(criteria.outcome)
    actor_id, actor_name = await _actor(session, criteria.actor)
    owner_type, owner_id = _owner(criteria.owner)
    resource_type, _, resource_id = criteria.resource.partition(":")
    since = _moment(criteria.since, "from") if criteria.since else now - timedelta(days=DEFAULT_DAYS)
    until = _moment(criteria.until, "to") if criteria.until else None
    return AuditFilters(
        event_type=event or None, outcome=outcome, actor_user_id=actor_id, actor_name=actor_name,
        owner_type=owner_type, owner_id=owner_id, resource_type=resource_type or None,
        resource_id=resource_id or None, stripe_id=criteria.stripe or None,
        request_id=criteria.request or None, occurred_from=since, occurred_to=until)


def _outcome(value: str) -> Outcome | None:
    if not value:
        return None
    try:
        return Outcome(value)
    except ValueError as error:
        raise QueryError("outcome: success or failure") from error


async def _actor(session: AsyncSession, value: str) -> tuple[uuid.UUID | None, str | None]:
    """An e-mail or user id names a user; anything else is a system actor (``stripe``, ``cli``)."""
    if not value:
        return None, None
    if "@" in value:
        user_id = (await session.scalars(
            select(User.id).where(func.lower(User.email) == value.lower()))).first()
        if user_id is None:
            raise QueryError(f"actor: no user has the address {value}")
        return user_id, None
    try:
        return uuid.UUID(value), None
    except ValueError:
        return None, value[:80]


def _owner(value: str) -> tuple[OwnerType | None, uuid.UUID | None]:
    """``patient:<id>``, ``organization:<id>`` or a bare id."""
    if not value:
        return None, None
    kind, sep, raw = value.rpartition(":")
    try:
        owner_type = OwnerType(kind) if sep else None
        return owner_type, uuid.UUID(raw)
    except ValueError as error:
        raise QueryError("owner: patient:<id>, organization:<id> or an id") from error


def _moment(value: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as error:
        raise QueryError(f"{name}: a date or time such as 2026-11-30 or 2026-11-30T08:00") from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if not datetime(1970, 1, 2, tzinfo=UTC) <= moment <= datetime(9999, 1, 1, tzinfo=UTC):
        raise QueryError(f"{name}: out of range")
    return moment
