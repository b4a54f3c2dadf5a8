"""Bearer tokens: HS256 JWTs carrying the user id and role."""

from __future__ import annotations

import uuid
from datetime import timedelta

import jwt

from billwatch.accounts.models import Role, User
from billwatch.config import Settings
from billwatch.db import utcnow
from billwatch.errors import Unauthorized

_ALGORITHM = "HS256"
_AUDIENCE = "billwatch"


def mint_token(user: User, settings: Settings, *, ttl_seconds: int | None = None) -> str:
    now = utcnow()
    claims = {
        "sub": str(user.id),
        "role": user.role.value,
        "aud": _AUDIENCE,
        "iat": now,
        "exp": now + timedelta(seconds=ttl_seconds or settings.token_ttl_seconds),
    }
    return jwt.encode(claims, settings.token_secret.get_secret_value(), algorithm=_ALGORITHM)


def read_token(token: str, settings: Settings) -> tuple[uuid.UUID, Role]:
    """The user id and role a valid token carries; anything else is a 401 with a reason."""
    try:
        claims = jwt.decode(token, settings.token_secret.get_secret_value(),
                            algorithms=[_ALGORITHM], audience=_AUDIENCE,
                            options={"require": ["sub", "role", "exp"]})
        return uuid.UUID(str(claims["sub"])), Role(claims["role"])
    except jwt.ExpiredSignatureError as error:
        raise Unauthorized("token expired", code="token_expired") from error
    except (jwt.InvalidTokenError, ValueError) as error:
        raise Unauthorized("invalid token", code="invalid_token") from error
