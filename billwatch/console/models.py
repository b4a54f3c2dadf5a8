"""Sign-in links and console sessions. Only hashes of the secrets are stored."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from billwatch.db import Base, UUIDPrimaryKey, utcnow


class ConsoleSignInLink(UUIDPrimaryKey, Base):
    """A single-use sign-in link: used once (a conditional UPDATE), or never after it expires."""

    __tablename__ = "console_sign_in_links"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class ConsoleSession(UUIDPrimaryKey, Base):
    """A signed-in admin: idle and absolute expiry, revocable, with its own CSRF token."""

    __tablename__ = "console_sessions"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    """Not a credential on its own: it proves a form came from a page this session was shown."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
