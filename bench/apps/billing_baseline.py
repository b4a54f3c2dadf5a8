"""The audit-overhead baseline: billwatch's override route minus the audit row and the metrics.

Same framework, same router class (one unit of work per request), same authentication, same
owner check and the same business row as ``POST /admin/overrides`` in billwatch; what it leaves
out is exactly what the benchmark prices: the audit recorder (redaction, encryption, hashing, the
row itself, its listeners) and every metric (HTTP middleware, counters after commit).
Served with ``uvicorn --factory bench.apps.billing_baseline:create_app``; settings from the
usual ``BILLWATCH_*`` variables.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, status

from billwatch.accounts import service as accounts
from billwatch.accounts.actor import OwnerRef
from billwatch.billing.models import BillingOverride, OverrideKind
from billwatch.billing.schemas import OverrideOut, OverrideRequest
from billwatch.config import get_settings
from billwatch.db import Database, utcnow
from billwatch.errors import Unprocessable
from billwatch.http import AdminActor, AuditedRouter, RequestContextMiddleware, SessionDep
from billwatch.logging import configure_logging

router = AuditedRouter(prefix="/admin")


@router.post("/overrides", status_code=status.HTTP_201_CREATED, response_model=OverrideOut)
async def create_override(body: OverrideRequest, session: SessionDep, actor: AdminActor) -> OverrideOut:
    """A discount override: the business writes of billwatch's route, nothing else."""
    owner = OwnerRef(body.owner_type, body.owner_id)
    await accounts.owner_display(session, owner)
    if body.kind is not OverrideKind.DISCOUNT or body.percent_off is None:
        raise Unprocessable("the baseline only creates discounts", code="baseline_discount_only")
    override = BillingOverride(
        id=uuid.uuid4(), owner_type=owner.type, owner_id=owner.id, kind=body.kind,
        plan_code=body.plan_code, percent_off=body.percent_off, starts_at=utcnow(),
        ends_at=body.ends_at, reason=body.reason, created_by_user_id=actor.user_id)
    session.add(override)
    await session.flush()
    return OverrideOut.model_validate(override)


def create_app() -> FastAPI:
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)  # as billwatch's app does
    db = Database(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await db.dispose()

    app = FastAPI(lifespan=lifespan)
    app.state.settings, app.state.db = settings, db
    app.add_middleware(RequestContextMiddleware)
    app.include_router(router)
    return app
