"""Routes for a patient (or an admin) to name and remove billing managers."""

from __future__ import annotations

import uuid
from datetime import datetime

from fastapi import Request, status
from pydantic import BaseModel, ConfigDict

from billwatch.accounts.actor import OwnerRef
from billwatch.accounts.models import OwnerType
from billwatch.audit.events import AuditEvent
from billwatch.http import AuditedRouter, CurrentActor, SessionDep, audited
from billwatch.managers import service

router = AuditedRouter(prefix="/patients/{patient_id}/billing-managers", tags=["billing managers"])


class AssignRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    proxy_id: uuid.UUID


class AssignmentOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    patient_id: uuid.UUID
    proxy_id: uuid.UUID
    assigned_by_user_id: uuid.UUID
    assigned_at: datetime
    removed_at: datetime | None


def _remember_owner(request: Request, patient_id: uuid.UUID) -> None:
    request.state.audit_owner = OwnerRef(OwnerType.PATIENT, patient_id)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AssignmentOut,
             openapi_extra=audited(AuditEvent.MANAGER_ASSIGNED))
async def assign(patient_id: uuid.UUID, body: AssignRequest, request: Request,
                 session: SessionDep, actor: CurrentActor) -> AssignmentOut:
    """Name a proxy as the patient's billing manager."""
    _remember_owner(request, patient_id)
    assignment = await service.assign_manager(session, actor=actor, patient_id=patient_id,
                                              proxy_id=body.proxy_id)
    return AssignmentOut.model_validate(assignment)


@router.delete("/{proxy_id}", response_model=AssignmentOut,
               openapi_extra=audited(AuditEvent.MANAGER_REMOVED))
async def remove(patient_id: uuid.UUID, proxy_id: uuid.UUID, request: Request,
                 session: SessionDep, actor: CurrentActor) -> AssignmentOut:
    """Remove a proxy's billing authority."""
    _remember_owner(request, patient_id)
    assignment = await service.remove_manager(session, actor=actor, patient_id=patient_id,
                                              proxy_id=proxy_id)
    return AssignmentOut.model_validate(assignment)


@router.get("", response_model=list[AssignmentOut],
            openapi_extra=audited(AuditEvent.MANAGERS_VIEWED))
async def list_managers(patient_id: uuid.UUID, request: Request, session: SessionDep,
                        actor: CurrentActor) -> list[AssignmentOut]:
    """The patient's current billing managers."""
    _remember_owner(request, patient_id)
    assignments = await service.list_managers(session, actor=actor, patient_id=patient_id)
    return [AssignmentOut.model_validate(a) for a in assignments]
