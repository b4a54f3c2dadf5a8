"""Bearer tokens: HS256 JWTs carrying the user id, role and a ``jti``; revocable before expiry.

Every token has a lifetime of at most ``BILLWATCH_TOKEN_MAX_TTL_SECONDS`` and an id (``jti``).
One token is revoked by its id (a ``revoked_tokens`` row, kept until it would have expired
anyway); all of a user's tokens at once by a "not before" cutoff. Both are read on every request
in the request's own transaction, so a revocation takes effect on the next request.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.models import RevokedToken, Role, User, UserTokenCutoff
from billwatch.config import Settings
from billwatch.db import utcnow
from billwatch.errors import Unauthorized, Unprocessable

_ALGORITHM = "HS256"
_AUDIENCE = "billwatch"
JTI_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says; revocation is checked separately, against the database."""

    user_id: uuid.UUID
    role: Role
    jti: str
    issued_at: datetime
    expires_at: datetime


def mint_token(user: User, settings: Settings, *, ttl_seconds: int | None = None) -> str:
    """A token for ``user``; a lifetime above the configured maximum is refused (422)."""
    ttl = settings.token_ttl_seconds if ttl_seconds is None else ttl_seconds
    if not 0 < ttl <= settings.token_max_ttl_seconds:
        raise Unprocessable(f"token lifetime must be 1 to {settings.token_max_ttl_seconds} s "
                            f"(BILLWATCH_TOKEN_MAX_TTL_SECONDS), not {ttl}",
                            code="token_ttl_too_long")
    now = utcnow()
    claims = {
        "sub": str(user.id),
        "role": user.role.value,
        "aud": _AUDIENCE,
        "jti": uuid.uuid4().hex,
        # fractional, so a cutoff set in the same second as a later mint does not refuse it
        "iat": now.timestamp(),
        "exp": now + timedelta(seconds=ttl),
    }
    return jwt.encode(claims, settings.token_secret.get_secret_value(), algorithm=_ALGORITHM)


def read_token(token: str, settings: Settings) -> TokenClaims:
    """The claims of a validly signed, unexpired token; anything else is a 401 with a reason."""
    try:
        claims = jwt.decode(token, settings.token_secret.get_secret_value(),
                            algorithms=[_ALGORITHM], audience=_AUDIENCE,
                            options={"require": ["sub", "role", "exp", "iat", "jti"]})
        jti = claims["jti"]
        if not isinstance(jti, str) or not JTI_PATTERN.fullmatch(jti):
            raise ValueError("bad jti")
        return TokenClaims(uuid.UUID(str(claims["sub"])), Role(claims["role"]), jti,
                           datetime.fromtimestamp(float(claims["iat"]), UTC),
                           datetime.fromtimestamp(float(claims["exp"]), UTC))
    except jwt.ExpiredSignatureError as error:
        raise Unauthorized("token expired", code="token_expired") from error
    except (jwt.InvalidTokenError, ValueError, TypeError, OverflowError) as error:
        raise Unauthorized("invalid token", code="invalid_token") from error


async def authenticated_user(session: AsyncSession, claims: TokenClaims) -> User:
    """The current user behind ``claims``; 401 when revoked, unknown or of another role."""
    revoked = await session.scalar(select(RevokedToken.jti).where(RevokedToken.jti == claims.jti))
    cutoff = await session.scalar(select(UserTokenCutoff.not_before)
                                  .where(UserTokenCutoff.user_id == claims.user_id))
    if revoked is not None or (cutoff is not None and claims.issued_at < cutoff):
        raise Unauthorized("token revoked", code="token_revoked")
    user = await session.get(User, claims.user_id)
    if user is None or user.role is not claims.role:
        raise Unauthorized("token does not match a current user", code="unknown_user")
    return user


async def revoke_token(session: AsyncSession, jti: str, settings: Settings) -> None:
    """Refuse the token ``jti`` from now on; the row outlives any token that could carry it."""
    if not JTI_PATTERN.fullmatch(jti):
        raise Unprocessable("a jti is 1-64 letters, digits, '-' or '_'", code="invalid_jti")
    now = utcnow()
    await session.execute(delete(RevokedToken).where(RevokedToken.expires_at < now))
    if await session.get(RevokedToken, jti) is None:
        session.add(RevokedToken(jti=jti, revoked_at=now, expires_at=now + timedelta(
            seconds=settings.token_max_ttl_seconds)))
    await session.flush()


async def revoke_user_tokens(session: AsyncSession, user: User) -> datetime:
    """Refuse every token ``user`` holds now; tokens minted afterwards work. Returns the cutoff."""
    now = utcnow()
    cutoff = await session.get(UserTokenCutoff, user.id)
    if cutoff is None:
        session.add(UserTokenCutoff(user_id=user.id, not_before=now))
    else:
        cutoff.not_before = now
    await session.flush()
    return now

