"""The HTTP boundary: one unit of work per request, failure auditing, request origin, auth.

Routers built with :class:`AuditedRouter` get, for every request, a session whose transaction
commits once when the endpoint returns and rolls back when it raises. A route names the audit
event it writes in ``openapi_extra={"x-audit-event": ...}``; when the request fails (validation,
auth, a domain error, Stripe), the rollback is followed by exactly one ``outcome=failure`` row in
a fresh transaction, carrying what was known: actor, owner, resource, reason. What is known is
the request's :class:`~billwatch.access.AuditContext`, which the access dependencies of
:mod:`billwatch.access` fill in as they authenticate, load and authorise.

A route that calls Stripe is *phased* (``openapi_extra=phased(...)``): it gets no request-wide
transaction at all, only the :class:`~billwatch.db.Database`, and its service runs its own short
units of work around the external call (intent, call, settle), so no connection or row lock is
held while Stripe answers. Failure rows are written the same way for both kinds of route.

Every audited POST honours a client ``Idempotency-Key`` (see :mod:`billwatch.idempotency`);
``phased(..., idempotency_key_required=True)`` makes the header mandatory on a route.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request, Response, params
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billwatch import idempotency
from billwatch.access import admin_actor, audit_context, current_actor
from billwatch.accounts.models import Role
from billwatch.audit import anonymous, recorder
from billwatch.audit.events import AuditEvent, Outcome, for_actor
from billwatch.config import Settings
from billwatch.context import Origin, bound_origin, current_origin
from billwatch.db import Database
from billwatch.errors import BadRequest, BillwatchError, Forbidden
from billwatch.openapi_errors import error_responses
from billwatch.payments.gateway import PaymentsGateway
from billwatch.redaction import redact_text
from billwatch.request_origin import IPNetwork, client_ip, fresh_request_id, safe_request_id

log = structlog.get_logger(__name__)

AUDIT_EVENT_KEY = "x-audit-event"
PHASED_KEY = "x-billwatch-phased"
IDEMPOTENCY_REQUIRED_KEY = "x-billwatch-idempotency-key-required"


def audited(event: AuditEvent) -> dict[str, Any]:
    """``openapi_extra`` naming the audit event a route writes (read by tests and failures)."""
    return {AUDIT_EVENT_KEY: event.value}


def phased(event: AuditEvent, *, idempotency_key_required: bool = False) -> dict[str, Any]:
    """``openapi_extra`` of a route whose service opens its own transactions around Stripe."""
    extra: dict[str, Any] = {AUDIT_EVENT_KEY: event.value, PHASED_KEY: True}
    if idempotency_key_required:
        extra[IDEMPOTENCY_REQUIRED_KEY] = True
    return extra


_NOT_AN_OBJECT = frozenset({"model_attributes_type", "model_type", "dict_type"})


def malformed_body(error: RequestValidationError) -> BadRequest | None:
    """The 400 for a body that is not JSON at all, which FastAPI reports as a validation error."""
    for problem in error.errors():
        if problem.get("type") == "json_invalid":
            why = (problem.get("ctx") or {}).get("error", "invalid JSON")
            return BadRequest(f"body is not valid JSON: {why}", code="malformed_json")
        if (tuple(problem.get("loc", ())) == ("body",) and problem.get("type") in _NOT_AN_OBJECT
                and isinstance(problem.get("input"), str | bytes)):  # raw text, not parsed JSON
            return BadRequest("body must be a JSON object sent as application/json",
                              code="malformed_json")
    return None


def as_domain_error(error: Exception) -> Exception:
    """``error`` as the domain error it is answered with, when FastAPI raised it for us."""
    if isinstance(error, RequestValidationError):
        return malformed_body(error) or error
    if isinstance(error, StarletteHTTPException) and error.status_code == 400:
        return BadRequest("body is not valid JSON: it cannot be decoded as text",
                          code="malformed_json")  # FastAPI's answer to an undecodable body
    return error


def failure_reason(error: Exception) -> tuple[int, str]:
    error = as_domain_error(error)
    if isinstance(error, BillwatchError):
        return error.status_code, f"{error.code}: {error.detail}"
    if isinstance(error, RequestValidationError):
        fields = sorted({".".join(str(p) for p in e.get("loc", ())) for e in error.errors()})
        return 422, f"validation_error: {', '.join(fields)}"
    if isinstance(error, StarletteHTTPException):
        return error.status_code, f"http_error: {error.detail}"
    return 500, f"internal_error: {type(error).__name__}"


async def record_failure(request: Request, event: AuditEvent, error: Exception) -> None:
    """Write the one failure row for a request whose transaction was rolled back."""
    status, reason = failure_reason(error)
    context = audit_context(request)
    actor = context.actor
    if isinstance(error, Forbidden) and actor is not None and actor.role is Role.PROXY:
        event = for_actor(event, via_assignment=True)
    elif actor is not None:
        event = for_actor(event, via_assignment=actor.via_assignment_id is not None)
    route = request.scope.get("route")
    db: Database = request.app.state.db
    if actor is None and await anonymous.absorbed(  # no identity: aggregated, not one row each
            request.app.state, db, source="http", event=event, route=getattr(route, "path", None),
            method=request.method, status_code=status, reason=reason.partition(":")[0],
            client_ip=current_origin().client_ip):
        return
    try:
        async with db.unit_of_work() as session:
            recorder.record(
                session, event, actor=actor, outcome=Outcome.FAILURE, owner=context.owner,
                resource=context.resource, reason=reason,
                data={"status_code": status, "method": request.method,
                      "route": getattr(route, "path", None)},
            )
    except Exception:
        log.exception("audit_failure_row_not_written", audit_event=event.value)


class AuditedRoute(APIRoute):
    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        methods = {m.upper() for m in kwargs.get("methods") or ()}
        extra: dict[str, Any] | None = kwargs.get("openapi_extra")
        if "POST" in methods and extra and AUDIT_EVENT_KEY in extra:
            kwargs["dependencies"] = _with_idempotency(kwargs.get("dependencies"))
            kwargs["openapi_extra"] = _with_idempotency_parameter(extra)
        super().__init__(path, endpoint, **kwargs)

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
                    response = await handler(request)
                    if (held := idempotency.held_claim(request)) is not None:
                        async with db.unit_of_work() as own:
                            await idempotency.complete(own, held, response)
                    return response
                async with db.unit_of_work() as session:
                    request.state.session = session
                    response = await handler(request)
                    if (held := idempotency.held_claim(request)) is not None:
                        await idempotency.complete(session, held, response)
                    return response
            except idempotency.Replay as replay:
                return replay.response
            except Exception as error:
                held = idempotency.held_claim(request)
                if held is not None and not held.in_request_transaction:
                    await _release_quietly(db, held)
                event = self.failure_event(error)
                if event is not None and not getattr(error, "audited", False):
                    await record_failure(request, event, error)
                raise

        return unit_of_work_handler


def _with_idempotency(dependencies: Any) -> list[params.Depends]:
    current = list(dependencies or [])
    if not any(d.dependency is idempotency.claim_for_request for d in current):
        current.append(Depends(idempotency.claim_for_request))
    return current


def _with_idempotency_parameter(extra: dict[str, Any]) -> dict[str, Any]:
    parameters = list(extra.get("parameters", []))
    if not any(p.get("name") == idempotency.HEADER for p in parameters):
        parameters.append(idempotency.openapi_parameter(
            required=bool(extra.get(IDEMPOTENCY_REQUIRED_KEY))))
    return {**extra, "parameters": parameters}


async def _release_quietly(db: Database, held: idempotency.Claim) -> None:
    """Release a failed request's key; if even that fails, the claim goes stale and is taken over."""
    try:
        await idempotency.release(db, held)
    except Exception:
        log.exception("idempotency_release_failed")


class AuditedRouter(APIRouter):
    def __init__(self, *, route_class: type[AuditedRoute] = AuditedRoute, **kwargs: Any) -> None:
        super().__init__(route_class=route_class, **kwargs)

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        """Every route lists the error statuses it can answer (see :func:`documented_errors`)."""
        declared: dict[int | str, dict[str, Any]] = kwargs.pop("responses", None) or {}
        derived = error_responses(documented_errors(
            self.prefix + path, endpoint, methods=kwargs.get("methods"),
            openapi_extra=kwargs.get("openapi_extra")))
        merged = {code: {**derived.get(code, {}), **declared.get(code, {})}
                  for code in {*derived, *declared}}
        super().add_api_route(path, endpoint, responses=merged, **kwargs)


# --- documented errors --------------------------------------------------------------------

def _dependency_calls(dependant: Dependant) -> set[Any]:
    calls: set[Any] = set()
    for sub in dependant.dependencies:
        calls.add(sub.call)
        calls |= _dependency_calls(sub)
    return calls


def _has_params(dependant: Dependant) -> bool:
    return bool(dependant.path_params or dependant.query_params or dependant.header_params
                or dependant.body_params) or any(_has_params(d) for d in dependant.dependencies)


def _has(dependant: Dependant, kind: Callable[[Dependant], list[Any]]) -> bool:
    """Whether the route or a dependency of it declares ``kind`` (an access rule takes the body)."""
    return bool(kind(dependant)) or any(_has(d, kind) for d in dependant.dependencies)


def documented_errors(path: str, endpoint: Callable[..., Any], *, methods: Any,
                      openapi_extra: dict[str, Any] | None) -> set[int]:
    """The error statuses a route can answer, read from what it depends on.

    Every route can fail (500); parameters can be invalid (422); a body can be malformed (400);
    a token can be missing (401); an audited operation checks the caller's rights (403) and a
    route naming a resource, in its path or body, can find none (404); a write can meet a
    state that refuses it (409); a route holding the gateway can meet Stripe failing (502) or
    not answering (504).
    """
    dependant = get_dependant(path=path, call=endpoint)
    calls = _dependency_calls(dependant)
    has_body = _has(dependant, lambda d: d.body_params)
    statuses = {500}
    if _has_params(dependant):
        statuses.add(422)
    if has_body:
        statuses.add(400)
    if current_actor in calls or admin_actor in calls:
        statuses.add(401)
        if admin_actor in calls or AUDIT_EVENT_KEY in (openapi_extra or {}):
            statuses.add(403)
    if _has(dependant, lambda d: d.path_params) or has_body:
        statuses.add(404)
    if {m.upper() for m in methods or ("GET",)} - {"GET", "HEAD"}:
        statuses.add(409)
    if get_gateway in calls:
        statuses |= {502, 504}
    return statuses


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


SessionDep = Annotated[AsyncSession, Depends(get_session)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
GatewayDep = Annotated[PaymentsGateway, Depends(get_gateway)]


# --- request origin -----------------------------------------------------------------------

class RequestContextMiddleware:
    """Binds request id and client IP for the request and logs one line when it ends.

    Both are checked first (:mod:`billwatch.request_origin`): the IP is parsed, forwarded
    addresses count only from ``trusted_proxies``, and an unsafe request id is replaced.
    """

    def __init__(self, app: ASGIApp, *, trusted_proxies: Sequence[IPNetwork] = ()) -> None:
        self.app = app
        self.trusted_proxies = tuple(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
        supplied = next((v for k, v in raw_headers if k == b"x-request-id"), b"")
        request_id = safe_request_id(supplied.decode("latin-1")) or fresh_request_id()
        client = scope.get("client")
        forwarded = [v.decode("latin-1") for k, v in raw_headers if k == b"x-forwarded-for"]
        origin = Origin(request_id=request_id,
                        client_ip=client_ip(client[0] if client else None, forwarded,
                                            self.trusted_proxies))
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


class PlainServerErrors:
    """Answers an unhandled error with the 500 envelope and keeps the keep-alive connection.

    Starlette's own last-resort handler re-raises after answering, and the server then closes
    the connection, so the client's next request on it gets no answer. Here the error ends with
    the answer. Once a response has started (a stream failing midway) there is nothing honest
    left to send: the error goes on and the server cuts the stream, visibly unfinished.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as error:
            if started:
                raise
            log.error("unhandled_error", error_type=type(error).__name__,
                      error=redact_text(str(error)))
            response = JSONResponse({"error": "internal_error", "detail": "internal error"},
                                    status_code=500)
            await response(scope, receive, send)
