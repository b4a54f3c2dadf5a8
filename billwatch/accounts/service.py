"""Users and organizations: lookups and creation."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import (
    Organization,
    OrganizationMember,
    OrgRole,
    OwnerType,
    Role,
    User,
)
from billwatch.accounts.validation import checked_email, checked_name
from billwatch.errors import NotFound


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} not found", code="user_not_found")
    return user


async def find_user_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.scalars(select(User).where(User.email == email.lower()))
    return result.first()


async def create_user(session: AsyncSession, *, email: str, name: str, role: Role) -> User:
    """A new user; an e-mail or name that cannot be shown safely is refused (422)."""
    user = User(id=uuid.uuid4(), email=checked_email(email), name=checked_name(name), role=role)
    session.add(user)
    await session.flush()
    return user


async def create_organization(session: AsyncSession, *, name: str,
                              billing_admins: list[User] = (),  # type: ignore[assignment]
                              members: list[User] = ()) -> Organization:  # type: ignore[assignment]
    org = Organization(id=uuid.uuid4(), name=checked_name(name))
    session.add(org)
    await session.flush()
    for user, role in [*((u, OrgRole.BILLING_ADMIN) for u in billing_admins),
                       *((u, OrgRole.MEMBER) for u in members)]:
        session.add(OrganizationMember(id=uuid.uuid4(), organization_id=org.id, user_id=user.id,
                                       role=role))
    await session.flush()
    return org


async def owner_display(session: AsyncSession, owner: OwnerRef) -> tuple[str, str | None]:
    """The name and e-mail Stripe should show for an owner; 404 when it does not exist."""
    if owner.type is OwnerType.PATIENT:
        user = await session.get(User, owner.id)
        if user is None or user.role is not Role.PATIENT:
            raise NotFound(f"patient {owner.id} not found", code="owner_not_found")
        return user.name, user.email
    org = await session.get(Organization, owner.id)
    if org is None:
        raise NotFound(f"organization {owner.id} not found", code="owner_not_found")
    return org.name, None


async def org_role(session: AsyncSession, org_id: uuid.UUID, user_id: uuid.UUID) -> OrgRole | None:
    result = await session.scalars(
        select(OrganizationMember.role).where(OrganizationMember.organization_id == org_id,
                                              OrganizationMember.user_id == user_id))
    return result.first()
