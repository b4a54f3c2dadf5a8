"""Routes for a patient (or an admin) to name and remove billing managers."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, status
from pydantic import BaseModel, ConfigDict

from billwatch import access
from billwatch.access import OwnerAccess
from billwatch.audit.events import AuditEvent
from billwatch.http import AuditedRouter, SessionDep, audited
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


AssignAccess = Annotated[OwnerAccess[AssignRequest], Depends(access.patient_in_path(AssignRequest))]
RemoveAccess = Annotated[OwnerAccess[Any], Depends(access.patient_in_path(also=("proxy_id",)))]
ListAccess = Annotated[OwnerAccess[Any], Depends(access.patient_in_path())]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AssignmentOut,
             openapi_extra=audited(AuditEvent.MANAGER_ASSIGNED))
async def assign(patient: AssignAccess, session: SessionDep) -> AssignmentOut:
    """Name a proxy as the patient's billing manager."""
    assignment = await service.assign_manager(session, actor=patient.actor,
                                              patient_id=patient.owner.id,
                                              proxy_id=patient.body.proxy_id)
    return AssignmentOut.model_validate(assignment)


@router.delete("/{proxy_id}", response_model=AssignmentOut,
               openapi_extra=audited(AuditEvent.MANAGER_REMOVED))
async def remove(patient: RemoveAccess, session: SessionDep) -> AssignmentOut:
    """Remove a proxy's billing authority."""
    assignment = await service.remove_manager(session, actor=patient.actor,
                                              patient_id=patient.owner.id,
                                              proxy_id=patient.path["proxy_id"])
    return AssignmentOut.model_validate(assignment)


@router.get("", response_model=list[AssignmentOut],
            openapi_extra=audited(AuditEvent.MANAGERS_VIEWED))
async def list_managers(patient: ListAccess, session: SessionDep) -> list[AssignmentOut]:
    """The patient's current billing managers."""
    assignments = await service.list_managers(session, actor=patient.actor,
                                              patient_id=patient.owner.id)
    return [AssignmentOut.model_validate(a) for a in assignments]
