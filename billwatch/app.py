"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from billwatch.accounts.endpoints import router as accounts_router
from billwatch.alerts.endpoints import router as alerts_router
from billwatch.audit.anonymous import refusals_of
from billwatch.audit.endpoints import router as audit_router
from billwatch.billing.endpoints import admin_router as billing_admin_router
from billwatch.billing.endpoints import router as billing_router
from billwatch.bootstrap import build_runtime, open_database
from billwatch.config import Settings, get_settings
from billwatch.console.pages import router as console_router
from billwatch.db import Database
from billwatch.errors import BillwatchError
from billwatch.hardening import SecurityHeadersMiddleware
from billwatch.http import (
    PlainServerErrors,
    RequestContextMiddleware,
    as_domain_error,
    malformed_body,
)
from billwatch.jobs.lifecycle import start_delivery
from billwatch.logging import configure_logging
from billwatch.managers.endpoints import router as managers_router
from billwatch.monitoring.exposition import install_metrics
from billwatch.payments.gateway import PaymentsGateway
from billwatch.redaction import redact, redact_text
from billwatch.runtime import Runtime
from billwatch.startup import require_secure_settings
from billwatch.webhooks.endpoints import router as webhooks_router

log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None, *, database: Database | None = None,
               runtime: Runtime | None = None,
               gateway: PaymentsGateway | None = None) -> FastAPI:
    """Build the app; tests pass their own database and settings, production reads the env.

    The app has a runtime of its own (keys, alert rules, metrics, deliverers:
    :mod:`billwatch.runtime`), built from ``settings`` unless ``runtime`` is given; a given
    database lends its engine, and the app's sessions carry the app's runtime.
    """
    settings = settings or get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    require_secure_settings(settings)  # production refuses development secrets
    runtime = runtime or build_runtime(settings)
    owns_database = database is None
    db = database.with_runtime(runtime) if database is not None else open_database(settings,
                                                                                   runtime)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # alerts and inbox events leave after commit
        stop_delivery = await start_delivery(db, settings, gateway=_app.state.gateway)
        yield
        await refusals_of(_app.state).flush(db, everything=True)  # the last minute's counts
        await stop_delivery()
        if owns_database:
            await db.dispose()

    docs = settings.api_docs_enabled
    app = FastAPI(title="billwatch", version="0.1.0", lifespan=lifespan,
                  description="Audited, measured and alerted billing on Stripe.",
                  docs_url="/docs" if docs else None, redoc_url="/redoc" if docs else None,
                  openapi_url="/openapi.json" if docs else None)
    app.state.settings = settings
    app.state.db = db
    app.state.runtime = runtime
    app.state.gateway = gateway or PaymentsGateway(settings)

    app.add_middleware(PlainServerErrors)  # innermost: the 500 still gets the request's id
    app.add_middleware(RequestContextMiddleware, trusted_proxies=settings.trusted_proxies)
    app.add_middleware(SecurityHeadersMiddleware)
    install_metrics(app, settings, db, runtime.metrics)
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
                   alerts_router, webhooks_router, audit_router, console_router):
        app.include_router(router)
    app.mount("/console/static", StaticFiles(packages=[("billwatch.console", "static")]),
              name="console-static")
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BillwatchError)
    async def domain_error(_request: Request, error: BillwatchError) -> JSONResponse:
        return JSONResponse({"error": error.code, "detail": redact_text(error.detail)},
                            status_code=error.status_code)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        answered = as_domain_error(error)  # an undecodable body is malformed_json
        if isinstance(answered, BillwatchError):
            return await domain_error(request, answered)
        return await http_exception_handler(request, error)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        malformed = malformed_body(error)
        if malformed is not None:
            return await domain_error(request, malformed)
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                   for e in error.errors()]
        return JSONResponse({"error": "validation_error", "detail": redact(details)},
                            status_code=422)
