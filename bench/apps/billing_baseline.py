"""The audit-overhead baseline: billwatch's free-grant route minus the audit row and the metrics.

Same framework, same router class (one unit of work per request), same authentication, same
owner check, plan lookup, live-subscription check and the same business rows as
``POST /admin/free-grants`` in billwatch; what it leaves out is exactly what the benchmark
prices: the audit recorder (redaction, encryption, hashing, the row itself, its listeners) and
every metric (HTTP middleware, counters after commit).
Served with ``uvicorn --factory bench.apps.billing_baseline:create_app``; settings from the
usual ``BILLWATCH_*`` variables.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status

from billwatch.access import AdminActor
from billwatch.accounts.actor import OwnerRef
from billwatch.billing.overrides import free_grant_rows
from billwatch.billing.schemas import FreeGrantRequest, OverrideOut
from billwatch.config import Settings, get_settings
from billwatch.db import Database
from billwatch.http import AuditedRouter, RequestContextMiddleware, SessionDep
from billwatch.logging import configure_logging

router = AuditedRouter(prefix="/admin")


@router.post("/free-grants", status_code=status.HTTP_201_CREATED, response_model=OverrideOut)
async def grant_free(body: FreeGrantRequest, request: Request, session: SessionDep,
                     actor: AdminActor) -> OverrideOut:
    """A free grant: the business writes of billwatch's route, nothing else."""
    settings: Settings = request.app.state.settings
    subscription, override = await free_grant_rows(
        session, settings, actor=actor, owner=OwnerRef(body.owner_type, body.owner_id),
        plan_code=body.plan_code, months=body.months, reason=body.reason)
    session.add(subscription)
    await session.flush()
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
