"""Billing managers: who may act for a patient, and the checks that say so."""

from __future__ import annotations

import uuid
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts import service as accounts
from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.accounts.models import OrgRole, OwnerType, Role, User
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent
from billwatch.audit.recorder import Resource
from billwatch.db import after_commit, utcnow
from billwatch.errors import Conflict, Forbidden, NotFound, Unprocessable
from billwatch.managers.models import BillingManagerAssignment
from billwatch.runtime import runtime_of


class Purpose(StrEnum):
    READ = "read"
    CHECKOUT = "checkout"
    CANCEL = "cancel"
    PORTAL = "portal"


PROXY_PURPOSES = frozenset({Purpose.READ, Purpose.CHECKOUT, Purpose.CANCEL})
"""What an assigned proxy may do for its patient, and nothing else."""


async def active_assignment(session: AsyncSession, *, patient_id: uuid.UUID,
                            proxy_id: uuid.UUID) -> BillingManagerAssignment | None:
    result = await session.scalars(select(BillingManagerAssignment).where(
        BillingManagerAssignment.patient_id == patient_id,
        BillingManagerAssignment.proxy_id == proxy_id,
        BillingManagerAssignment.removed_at.is_(None)))
    return result.first()


async def authorize_owner(session: AsyncSession, actor: Actor, owner: OwnerRef, *,
                          purpose: Purpose) -> Actor:
    """The actor allowed to act on ``owner`` (a proxy gains its assignment), or 404/403."""
    await accounts.owner_display(session, owner)  # 404 for an unknown owner
    if actor.is_admin:
        return actor
    if owner.type is OwnerType.PATIENT:
        if actor.role is Role.PATIENT and actor.user_id == owner.id:
            return actor
        if actor.role is Role.PROXY and purpose in PROXY_PURPOSES:
            assignment = await active_assignment(session, patient_id=owner.id,
                                                 proxy_id=actor.user_id)
            if assignment is not None:
                return actor.acting_through(assignment.id)
        raise Forbidden("not allowed to manage this patient's billing", code="not_billing_manager")
    role = await accounts.org_role(session, owner.id, actor.user_id)
    if role is OrgRole.BILLING_ADMIN or (role is OrgRole.MEMBER and purpose is Purpose.READ):
        return actor
    raise Forbidden("not allowed to manage this organization's billing", code="not_org_billing_admin")


def _may_manage_patient(actor: Actor, patient_id: uuid.UUID) -> None:
    if not (actor.is_admin or (actor.role is Role.PATIENT and actor.user_id == patient_id)):
        raise Forbidden("only the patient or an admin may change billing managers",
                        code="not_patient_or_admin")


async def _patient_and_proxy(session: AsyncSession, patient_id: uuid.UUID,
                             proxy_id: uuid.UUID) -> tuple[User, User]:
    patient = await session.get(User, patient_id)
    if patient is None or patient.role is not Role.PATIENT:
        raise NotFound(f"patient {patient_id} not found", code="patient_not_found")
    proxy = await session.get(User, proxy_id)
    if proxy is None:
        raise NotFound(f"user {proxy_id} not found", code="proxy_not_found")
    if proxy.role is not Role.PROXY:
        raise Unprocessable("only a user with the proxy role can be a billing manager",
                            code="not_a_proxy")
    return patient, proxy


async def assign_manager(session: AsyncSession, *, actor: Actor, patient_id: uuid.UUID,
                         proxy_id: uuid.UUID) -> BillingManagerAssignment:
    """Let ``proxy_id`` check out, cancel and read billing for the patient."""
    _may_manage_patient(actor, patient_id)
    await _patient_and_proxy(session, patient_id, proxy_id)
    if await active_assignment(session, patient_id=patient_id, proxy_id=proxy_id):
        raise Conflict("this proxy already manages the patient's billing", code="already_assigned")
    assignment = BillingManagerAssignment(id=uuid.uuid4(), patient_id=patient_id,
                                          proxy_id=proxy_id, assigned_by_user_id=actor.user_id)
    session.add(assignment)
    await session.flush()
    recorder.record(session, AuditEvent.MANAGER_ASSIGNED, actor=actor,
                    owner=OwnerRef(OwnerType.PATIENT, patient_id),
                    resource=Resource("billing_manager_assignment", assignment.id),
                    data={"proxy_id": str(proxy_id), "assignment_id": str(assignment.id)})
    assigned_by = "admin" if actor.is_admin else "patient"
    metrics = runtime_of(session).metrics
    after_commit(session, lambda: metrics.manager_assigned(assigned_by))
    return assignment


async def remove_manager(session: AsyncSession, *, actor: Actor, patient_id: uuid.UUID,
                         proxy_id: uuid.UUID) -> BillingManagerAssignment:
    """End a proxy's authority; what it did before stays attributed to the old assignment."""
    _may_manage_patient(actor, patient_id)
    assignment = await active_assignment(session, patient_id=patient_id, proxy_id=proxy_id)
    if assignment is None:
        raise NotFound("this proxy does not manage the patient's billing", code="not_assigned")
    assignment.removed_at = utcnow()
    assignment.removed_by_user_id = actor.user_id
    recorder.record(session, AuditEvent.MANAGER_REMOVED, actor=actor,
                    owner=OwnerRef(OwnerType.PATIENT, patient_id),
                    resource=Resource("billing_manager_assignment", assignment.id),
                    data={"proxy_id": str(proxy_id), "assignment_id": str(assignment.id)})
    return assignment


async def list_managers(session: AsyncSession, *, actor: Actor,
                        patient_id: uuid.UUID) -> list[BillingManagerAssignment]:
    owner = OwnerRef(OwnerType.PATIENT, patient_id)
    actor = await authorize_owner(session, actor, owner, purpose=Purpose.READ)
    result = await session.scalars(select(BillingManagerAssignment).where(
        BillingManagerAssignment.patient_id == patient_id,
        BillingManagerAssignment.removed_at.is_(None)).order_by(
        BillingManagerAssignment.assigned_at))
    recorder.record(session, AuditEvent.MANAGERS_VIEWED, actor=actor, owner=owner,
                    resource=Resource("patient", patient_id))
    return list(result)
