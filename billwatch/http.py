"""The HTTP boundary: one unit of work per request, failure auditing, request origin, auth.

Routers built with :class:`AuditedRouter` get, for every request, a session whose transaction
commits once when the endpoint returns and rolls back when it raises. A route names the audit
event it writes in ``openapi_extra={"x-audit-event": ...}``; when the request fails (validation,
auth, a domain error, Stripe), the rollback is followed by exactly one ``outcome=failure`` row in
a fresh transaction, carrying what was known: actor, owner, reason.

A route that calls Stripe is *phased* (``openapi_extra=phased(...)``): it gets no request-wide
transaction at all, only the :class:`~billwatch.db.Database`, and its service runs its own short
units of work around the external call (intent, call, settle), so no connection or row lock is
held while Stripe answers. Failure rows are written the same way for both kinds of route.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.accounts.models import Role, User
from billwatch.accounts.tokens import read_token
from billwatch.audit import recorder
from billwatch.audit.events import AuditEvent, Outcome, for_actor
from billwatch.audit.redaction import redact_text
from billwatch.config import Settings
from billwatch.context import Origin, bound_origin
from billwatch.db import Database
from billwatch.errors import BillwatchError, Forbidden, Unauthorized
from billwatch.payments.gateway import PaymentsGateway

log = structlog.get_logger(__name__)

AUDIT_EVENT_KEY = "x-audit-event"
PHASED_KEY = "x-billwatch-phased"


def audited(event: AuditEvent) -> dict[str, Any]:
    """``openapi_extra`` naming the audit event a route writes (read by tests and failures)."""
    return {AUDIT_EVENT_KEY: event.value}


def phased(event: AuditEvent) -> dict[str, Any]:
    """``openapi_extra`` of a route whose service opens its own transactions around Stripe."""
    return {AUDIT_EVENT_KEY: event.value, PHASED_KEY: True}


def failure_reason(error: Exception) -> tuple[int, str]:
    if isinstance(error, BillwatchError):
        return error.status_code, f"{error.code}: {error.detail}"
    if isinstance(error, RequestValidationError):
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in error.errors()})
        return 422, f"validation_error: {', '.join(fields)}"
    return 500, f"internal_error: {type(error).__name__}"


async def record_failure(request: Request, event: AuditEvent, error: Exception) -> None:
    """Write the one failure row for a request whose transaction was rolled back."""
    status, reason = failure_reason(error)
    actor: Actor | None = getattr(request.state, "actor", None)
    owner: OwnerRef | None = getattr(request.state, "audit_owner", None)
    if isinstance(error, Forbidden) and actor is not None and actor.role is Role.PROXY:
        event = for_actor(event, via_assignment=True)
    elif actor is not None:
        event = for_actor(event, via_assignment=actor.via_assignment_id is not None)
    route = request.scope.get("route")
    db: Database = request.app.state.db
    try:
        async with db.unit_of_work() as session:
            recorder.record(
                session, event, actor=actor, outcome=Outcome.FAILURE, owner=owner,
                resource=getattr(request.state, "audit_resource", None), reason=reason,
                data={"status_code": status, "method": request.method,
                      "route": getattr(route, "path", None)},
            )
    except Exception:
        log.exception("audit_failure_row_not_written", audit_event=event.value)


class AuditedRoute(APIRoute):
    def failure_event(self, error: Exception) -> AuditEvent | None:
        """The event of the failure row for ``error``: the route's own, by default."""
        name = (self.openapi_extra or {}).get(AUDIT_EVENT_KEY)
        return AuditEvent(name) if name else None

    @property
    def is_phased(self) -> bool:
        return bool((self.openapi_extra or {}).get(PHASED_KEY))

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        is_phased = self.is_phased

        async def unit_of_work_handler(request: Request) -> Response:
            db: Database = request.app.state.db
            try:
                if is_phased:
                    request.state.session = None
                    return await handler(request)
                async with db.unit_of_work() as session:
                    request.state.session = session
                    return await handler(request)
            except Exception as error:
                event = self.failure_event(error)
                if event is not None and not getattr(error, "audited", False):
                    await record_failure(request, event, error)
                raise

        return unit_of_work_handler


class AuditedRouter(APIRouter):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(route_class=AuditedRoute, **kwargs)


# --- dependencies -------------------------------------------------------------------------

def get_session(request: Request) -> AsyncSession:
    session: AsyncSession | None = getattr(request.state, "session", None)
    if session is None:
        raise RuntimeError("a phased route has no request transaction: use DatabaseDep")
    return session


def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_gateway(request: Request) -> PaymentsGateway:
    gateway: PaymentsGateway = request.app.state.gateway
    return gateway


_bearer = HTTPBearer(auto_error=False, description="A token from `billwatch token EMAIL`.")


async def current_actor(
    request: Request,
    settings: Annotated[Settings, Depends(get_settings_dep)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    if credentials is None:
        raise Unauthorized("missing bearer token", code="missing_token")
    user_id, role = read_token(credentials.credentials, settings)
    session: AsyncSession | None = getattr(request.state, "session", None)
    if session is not None:
        user = await session.get(User, user_id)
    else:  # a phased route: read the user in a transaction of its own, closed at once
        async with get_database(request).unit_of_work() as own:
            user = await own.get(User, user_id)
    if user is None or user.role is not role:
        raise Unauthorized("token does not match a current user", code="unknown_user")
    actor = Actor(user.id, user.role)
    request.state.actor = actor
    return actor


async def admin_actor(actor: Annotated[Actor, Depends(current_actor)]) -> Actor:
    if not actor.is_admin:
        raise Forbidden("admin role required", code="admin_required")
    return actor


SessionDep = Annotated[AsyncSession, Depends(get_session)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
GatewayDep = Annotated[PaymentsGateway, Depends(get_gateway)]
CurrentActor = Annotated[Actor, Depends(current_actor)]
AdminActor = Annotated[Actor, Depends(admin_actor)]


# --- request origin -----------------------------------------------------------------------

class RequestContextMiddleware:
    """Binds request id and client IP for the request and logs one line when it ends."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        supplied = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _valid_request_id(supplied) else uuid.uuid4().hex
        client = scope.get("client")
        origin = Origin(request_id=request_id, client_ip=client[0] if client else None)
        status_holder: dict[str, int] = {}
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        with bound_origin(origin):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                route = scope.get("route")
                log.info("request", method=scope["method"],
                         path=redact_text(scope.get("path", "")),
                         route=getattr(route, "path", None),
                         status=status_holder.get("status", 500),
                         duration_ms=round((time.perf_counter() - started) * 1000, 2))


def _valid_request_id(value: str) -> bool:
    return 0 < len(value) <= 64 and all(c.isalnum() or c in "-_." for c in value)
