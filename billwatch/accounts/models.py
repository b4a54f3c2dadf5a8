"""Users, organizations (clinics) and their members."""

from __future__ import annotations

import uuid
from enum import StrEnum

from sqlalchemy import ForeignKey, UniqueConstraint
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
