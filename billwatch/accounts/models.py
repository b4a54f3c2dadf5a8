"""Users, organizations (clinics) and their members."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from billwatch.db import Base, Timestamped, UUIDPrimaryKey, enum_column
from billwatch.redacted import RedactedString


class Role(StrEnum):
    ADMIN = "admin"
    PATIENT = "patient"
    PROXY = "proxy"


class OrgRole(StrEnum):
    BILLING_ADMIN = "billing_admin"
    """May check out, cancel and open the portal for the organization."""
    MEMBER = "member"
    """May read the organization's billing."""


class User(UUIDPrimaryKey, Timestamped, Base):
    __tablename__ = "users"

    email: Mapped[str] = mapped_column(RedactedString(320), unique=True)
    name: Mapped[str] = mapped_column(RedactedString(200))
    role: Mapped[Role] = mapped_column(enum_column(Role, "user_role"))


class Organization(UUIDPrimaryKey, Timestamped, Base):
    __tablename__ = "organizations"

    name: Mapped[str] = mapped_column(RedactedString(200))


class OrganizationMember(UUIDPrimaryKey, Timestamped, Base):
    __tablename__ = "organization_members"
    __table_args__ = (UniqueConstraint("organization_id", "user_id", name="organization_user"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), index=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    role: Mapped[OrgRole] = mapped_column(enum_column(OrgRole, "org_role"))


class OwnerType(StrEnum):
    """Who a subscription belongs to."""

    PATIENT = "patient"
    ORGANIZATION = "organization"


class RevokedToken(Base):
    """One bearer token refused before it expires (``billwatch token revoke JTI``)."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime]
    """Revocation time plus the maximum token lifetime: past it the row may be pruned."""
    revoked_at: Mapped[datetime]


class UserTokenCutoff(Base):
    """Every token of a user issued before ``not_before`` is refused (``token revoke --user``)."""

    __tablename__ = "user_token_cutoffs"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    not_before: Mapped[datetime]
