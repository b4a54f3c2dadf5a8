"""Passwordless sign-in for admins: e-mailed single-use links, server-side sessions, CSRF tokens.

Only SHA-256 hashes of link and session tokens are stored, so a database reader cannot sign in.
Asking for a link answers the same for an admin, a non-admin and an unknown address; only an
admin's request creates a link. Requests are limited per address and per client network in a
sliding window counted from the audit trail itself, so the limit survives restarts and holds
across workers. Using a link is one conditional UPDATE: two clicks cannot both sign in.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import Actor, SystemActor
from billwatch.accounts.models import Role, User
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, Outcome
from billwatch.audit.models import AuditLog
from billwatch.audit.recorder import Resource
from billwatch.config import Settings
from billwatch.console.models import ConsoleSession, ConsoleSignInLink
from billwatch.db import utcnow
from billwatch.errors import NotFound

log = structlog.get_logger(__name__)
COOKIE = "billwatch_console"


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def masked_email(email: str) -> str:
    """``a***@clinic.test``: enough to tell requests apart in the trail, not to harvest."""
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain[:80]}" if domain else "***"


def client_network(client_ip: str | None) -> str | None:
    """The /24 (IPv4) or /64 (IPv6) a client is in: the unit the sign-in limit counts by."""
    if not client_ip:
        return None
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@dataclass(frozen=True, slots=True)
class LinkRequest:
    """What a sign-in request led to; ``token`` is set only when a link must be mailed."""

    token: str | None
    email: str
    refused: str | None


async def request_link(session: AsyncSession, settings: Settings, *, email: str,
                       client_ip: str | None, now: datetime | None = None) -> LinkRequest:
    """Create a link for an admin's address, within the limit; always audited, never revealing."""
    now = now or utcnow()
    address = email.strip().lower()
    user = (await session.scalars(select(User).where(func.lower(User.email) == address))).first()
    network = client_network(client_ip)
    if await _over_limit(session, settings, masked=masked_email(address), network=network, now=now):
        # Past the limit nothing is written: a flood must not grow the trail at request rate.
        log.warning("console_sign_in_rate_limited", network=network)
        return LinkRequest(None, address, "rate_limited")
    refused: str | None = None
    if user is None:
        refused = "unknown_address"
    elif user.role is not Role.ADMIN:
        refused = "not_an_admin"
    token: str | None = None
    if refused is None and user is not None:
        token = secrets.token_urlsafe(32)
        session.add(ConsoleSignInLink(
            token_hash=token_hash(token), user_id=user.id, created_at=now,
            expires_at=now + timedelta(seconds=settings.console_link_ttl_seconds)))
    actor = Actor(user.id, user.role) if user is not None and refused != "unknown_address" else None
    recorder.record(
        session, AuditEvent.CONSOLE_SIGN_IN_REQUESTED, actor=actor,
        outcome=Outcome.SUCCESS if refused is None else Outcome.FAILURE,
        reason=refused, data={"email": masked_email(address), "network": network})
    return LinkRequest(token, address, refused)


async def _over_limit(session: AsyncSession, settings: Settings, *, masked: str,
                      network: str | None, now: datetime) -> bool:
    """Requests in the window for this address or this network, read from the trail."""
    since = now - timedelta(seconds=settings.console_sign_in_window_seconds)
    rows = (await session.scalars(
        select(AuditLog).where(AuditLog.event_type == AuditEvent.CONSOLE_SIGN_IN_REQUESTED.value,
                               AuditLog.occurred_at >= since)
        .order_by(AuditLog.occurred_at.desc()).limit(settings.console_sign_in_limit * 50))).all()
    by_address = sum(1 for row in rows if row.data.get("email") == masked)
    by_network = sum(1 for row in rows if network is not None and row.data.get("network") == network)
    return max(by_address, by_network) >= settings.console_sign_in_limit


@dataclass(frozen=True, slots=True)
class NewSession:
    token: str
    csrf_token: str
    user: User


async def link_user(session: AsyncSession, token: str, *, now: datetime | None = None) -> User | None:
    """The admin a still-usable link belongs to (for the confirmation page), or None."""
    now = now or utcnow()
    link = (await session.scalars(select(ConsoleSignInLink).where(
        ConsoleSignInLink.token_hash == token_hash(token)))).first()
    if link is None or link.used_at is not None or link.expires_at <= now:
        return None
    user = await session.get(User, link.user_id)
    return user if user is not None and user.role is Role.ADMIN else None


async def use_link(session: AsyncSession, settings: Settings, token: str, *,
                   now: datetime | None = None) -> NewSession | None:
    """Spend the link (once) and open a session for its admin; None if it cannot be used."""
    now = now or utcnow()
    used = await session.execute(
        update(ConsoleSignInLink)
        .where(ConsoleSignInLink.token_hash == token_hash(token),
               ConsoleSignInLink.used_at.is_(None), ConsoleSignInLink.expires_at > now)
        .values(used_at=now).returning(ConsoleSignInLink.user_id))
    user_id = used.scalar_one_or_none()
    user = await session.get(User, user_id) if user_id is not None else None
    if user is None or user.role is not Role.ADMIN:
        recorder.record(session, AuditEvent.CONSOLE_SIGNED_IN, actor=None, outcome=Outcome.FAILURE,
                        reason="link_unusable: unknown, used or expired")
        return None
    opened = NewSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user)
    row = ConsoleSession(
        id=uuid.uuid4(), token_hash=token_hash(opened.token), user_id=user.id,
        csrf_token=opened.csrf_token, created_at=now, last_seen_at=now,
        expires_at=now + timedelta(seconds=settings.console_session_max_seconds))
    session.add(row)
    recorder.record(session, AuditEvent.CONSOLE_SIGNED_IN, actor=Actor(user.id, user.role),
                    resource=Resource("console_session", row.id))
    return opened


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The admin behind a valid console cookie."""

    session_id: uuid.UUID
    user: User
    csrf_token: str

    @property
    def actor(self) -> Actor:
        return Actor(self.user.id, self.user.role)

    def csrf_ok(self, supplied: str | None) -> bool:
        return supplied is not None and hmac.compare_digest(supplied.encode(), self.csrf_token.encode())


async def signed_in(session: AsyncSession, settings: Settings, token: str | None, *,
                    now: datetime | None = None) -> SignedIn | None:
    """The session behind ``token`` if it is live (not revoked, idle or past its age); touches it."""
    if not token:
        return None
    now = now or utcnow()
    idle_since = now - timedelta(seconds=settings.console_session_idle_seconds)
    touched = await session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.token_hash == token_hash(token), ConsoleSession.revoked_at.is_(None),
               ConsoleSession.expires_at > now, ConsoleSession.last_seen_at > idle_since)
        .values(last_seen_at=now)
        .returning(ConsoleSession.id, ConsoleSession.user_id, ConsoleSession.csrf_token))
    found = touched.first()
    if found is None:
        return None
    user = await session.get(User, found.user_id)
    if user is None or user.role is not Role.ADMIN:
        return None
    return SignedIn(found.id, user, found.csrf_token)


async def sign_out(session: AsyncSession, who: SignedIn, *, now: datetime | None = None) -> None:
    await revoke(session, who.session_id, now=now)
    recorder.record(session, AuditEvent.CONSOLE_SIGNED_OUT, actor=who.actor,
                    resource=Resource("console_session", who.session_id))


async def revoke(session: AsyncSession, session_id: uuid.UUID, *, now: datetime | None = None) -> bool:
    """End a session now (sign-out, or an operator revoking it); True if it was live."""
    ended = await session.execute(
        update(ConsoleSession)
        .where(ConsoleSession.id == session_id, ConsoleSession.revoked_at.is_(None))
        .values(revoked_at=now or utcnow()))
    return bool(getattr(ended, "rowcount", 0))


async def operator_link(session: AsyncSession, settings: Settings, *, email: str,
                        now: datetime | None = None) -> str:
    """A link for an operator to hand over (``billwatch console link``): admins only, audited."""
    now = now or utcnow()
    user = (await session.scalars(
        select(User).where(func.lower(User.email) == email.strip().lower()))).first()
    if user is None or user.role is not Role.ADMIN:
        raise NotFound(f"no admin has the address {email}", code="admin_not_found")
    token = secrets.token_urlsafe(32)
    session.add(ConsoleSignInLink(
        token_hash=token_hash(token), user_id=user.id, created_at=now,
        expires_at=now + timedelta(seconds=settings.console_link_ttl_seconds)))
    recorder.record(session, AuditEvent.CONSOLE_SIGN_IN_REQUESTED, actor=SystemActor("cli"),
                    data={"email": masked_email(user.email), "for_user_id": str(user.id)})
    return token
