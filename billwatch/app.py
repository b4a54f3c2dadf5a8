"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from billwatch.accounts.endpoints import router as accounts_router
from billwatch.alerts.endpoints import router as alerts_router
from billwatch.alerts.raising import configure as configure_alerts
from billwatch.audit import crypto as audit_crypto
from billwatch.audit.anonymous import refusals_of
from billwatch.audit.endpoints import router as audit_router
from billwatch.audit.redaction import redact, redact_text
from billwatch.billing.endpoints import admin_router as billing_admin_router
from billwatch.billing.endpoints import router as billing_router
from billwatch.config import Settings, get_settings
from billwatch.db import Database
from billwatch.errors import BillwatchError
from billwatch.http import RequestContextMiddleware
from billwatch.jobs.lifecycle import start_delivery
from billwatch.logging import configure_logging
from billwatch.managers.endpoints import router as managers_router
from billwatch.metrics.exposition import install_metrics
from billwatch.payments.gateway import PaymentsGateway
from billwatch.webhooks.endpoints import router as webhooks_router

log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None, *, database: Database | None = None,
               gateway: PaymentsGateway | None = None) -> FastAPI:
    """Build the app; tests pass their own database and settings, production reads the env."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    if settings.uses_development_token_secret:
        log.warning("development_token_secret_in_use",
                    hint="set BILLWATCH_TOKEN_SECRET before exposing billwatch")
    owns_database = database is None
    db = database or Database(settings.database_url)
    configure_alerts(settings)
    if audit_crypto.install(audit_crypto.keys_for(settings)).development:
        log.warning("development_audit_keys_in_use",
                    hint="set BILLWATCH_AUDIT_ENCRYPTION_KEYS and BILLWATCH_AUDIT_HMAC_KEY")

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop_delivery = await start_delivery(db, settings)  # alerts leave after commit
        yield
        await refusals_of(_app.state).flush(db, everything=True)  # the last minute's counts
        await stop_delivery()
        if owns_database:
            await db.dispose()

    app = FastAPI(title="billwatch", version="0.1.0", lifespan=lifespan,
                  description="Audited, measured and alerted billing on Stripe.")
    app.state.settings = settings
    app.state.db = db
    app.state.gateway = gateway or PaymentsGateway(settings)

    app.add_middleware(RequestContextMiddleware)
    install_metrics(app, settings, db)
    _add_error_handlers(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        """Liveness with the database: 200 when it answers, 503 when it does not."""
        try:
            await db.ping()
        except Exception as error:
            log.warning("healthz_database_down", error=type(error).__name__)
            return JSONResponse({"status": "unavailable", "database": "unreachable"}, 503)
        return JSONResponse({"status": "ok", "database": "ok"})

    for router in (accounts_router, billing_router, billing_admin_router, managers_router,
                   alerts_router, webhooks_router, audit_router):
        app.include_router(router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BillwatchError)
    async def domain_error(_request: Request, error: BillwatchError) -> JSONResponse:
        return JSONResponse({"error": error.code, "detail": redact_text(error.detail)},
                            status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                   for e in error.errors()]
        return JSONResponse({"error": "validation_error", "detail": redact(details)},
                            status_code=422)

    @app.exception_handler(Exception)
    async def unexpected_error(_request: Request, error: Exception) -> JSONResponse:
        log.error("unhandled_error", error_type=type(error).__name__,
                  error=redact_text(str(error)))
        return JSONResponse({"error": "internal_error", "detail": "internal error"},
                            status_code=500)
