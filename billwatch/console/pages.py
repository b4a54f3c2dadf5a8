"""The console's routes: sign-in, overview, audit explorer, owners, webhooks, alerts, one refund.

Each page is one read transaction that checks the session, reads through the services and writes
its audit row; each action re-checks the session and its CSRF token, then calls the same service
the API calls. Errors render as pages with the status the API would answer.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import structlog
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.access import audit_context
from billwatch.accounts.models import OwnerType
from billwatch.alerts import ledger
from billwatch.alerts.ledger import AlertFilter
from billwatch.alerts.models import AlertStatus, Severity
from billwatch.audit import recorder
from billwatch.audit import service as audit_service
from billwatch.audit.endpoints import ExportFormat, export_response
from billwatch.audit.events import AuditEvent
from billwatch.audit.recorder import Resource
from billwatch.billing.refunds import RefundReason, issue_refund
from billwatch.config import Settings
from billwatch.console import auth, data, integrity, mail, views
from billwatch.console.auth import COOKIE, SignedIn
from billwatch.console.query import Criteria, QueryError, to_filters
from billwatch.console.web import (
    FormError,
    form,
    redirect,
    render,
    require_csrf,
    set_session_cookie,
    to_sign_in,
)
from billwatch.db import Database
from billwatch.errors import BillwatchError, Unprocessable
from billwatch.http import AuditedRoute, audited, record_failure
from billwatch.redaction import redact_text
from billwatch.runtime import runtime_of
from billwatch.smtp import send as send_mail
from billwatch.webhooks import store as webhook_store
from billwatch.webhooks.models import EventStatus
from billwatch.webhooks.service import replay

log = structlog.get_logger(__name__)
PAGE_SIZE = 50


class ConsoleRoute(AuditedRoute):
    """Domain errors become error pages (with the API's status), never JSON or a stack.

    An action names its audit event as API routes do, so a refused or failed action writes the
    same one failure row (actor, reason, client address, request id) after its rollback.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = APIRoute.get_route_handler(self)

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired:
                return to_sign_in(request)
            except BillwatchError as error:
                event = self.failure_event(error)
                if event is not None:
                    await record_failure(request, event, error)
                return render(request, "error.html.j2", status_code=error.status_code, code=error.code,
                              detail=redact_text(error.detail))

        return guarded


router = APIRouter(prefix="/console", include_in_schema=False, route_class=ConsoleRoute)


def _db(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


class SignInRequired(Exception):
    """No live console session: the page answers with a redirect to sign-in (and writes nothing)."""


async def _who(request: Request, session: AsyncSession) -> SignedIn:
    """The signed-in admin, or :class:`SignInRequired` (a redirect, by :class:`ConsoleRoute`)."""
    who = await auth.signed_in(session, _settings(request), request.cookies.get(COOKIE))
    if who is None:
        raise SignInRequired
    audit_context(request).actor = who.actor  # for the failure row, should the action fail
    return who


def _viewed(session: AsyncSession, who: SignedIn, page: str, **details: Any) -> None:
    recorder.record(session, AuditEvent.CONSOLE_VIEWED, actor=who.actor,
                    data={"page": page, **details})


# --- sign-in -------------------------------------------------------------------------------

@router.get("/sign-in")
async def sign_in_page(request: Request, expired: int = 0) -> Response:
    return render(request, "sign_in.html.j2", expired=bool(expired), sent=False)


@router.post("/sign-in")
async def ask_for_link(request: Request) -> Response:
    """Same answer whoever asks; only an admin's address gets a mail."""
    fields = await form(request)
    email = fields.get("email", "").strip()
    if not email or len(email) > 320 or "@" not in email or any(c.isspace() for c in email):
        raise FormError("enter the e-mail address of your admin account", code="bad_email")
    settings = _settings(request)
    client = request.client.host if request.client else None
    async with _db(request).unit_of_work() as session:
        asked = await auth.request_link(session, settings, email=email, client_ip=client)
    if asked.token is not None:  # after the commit: no mail for a link that was not stored
        try:
            await send_mail(settings, mail.sign_in_message(settings, asked.email, asked.token),
                            [asked.email])
        except Exception as error:  # the same answer either way; the operator sees the log
            log.warning("console_sign_in_mail_failed", error=type(error).__name__)
    return render(request, "sign_in.html.j2", expired=False, sent=True)


@router.get("/sign-in/{token}")
async def confirm_link(request: Request, token: str) -> Response:
    """A page with one button, so a mail scanner fetching the link does not spend it."""
    async with _db(request).unit_of_work() as session:
        user = await auth.link_user(session, token)
    if user is None:
        return render(request, "link_unusable.html.j2", status_code=400)
    return render(request, "confirm_link.html.j2", name=user.name, token=token)


@router.post("/sign-in/{token}")
async def use_link(request: Request, token: str) -> Response:
    settings = _settings(request)
    async with _db(request).unit_of_work() as session:
        opened = await auth.use_link(session, settings, token)
    if opened is None:
        return render(request, "link_unusable.html.j2", status_code=400)
    response = redirect("/console")
    set_session_cookie(response, opened.token, settings, request)
    return response


@router.post("/sign-out", openapi_extra=audited(AuditEvent.CONSOLE_SIGNED_OUT))
async def sign_out(request: Request) -> Response:
    fields = await form(request)
    async with _db(request).unit_of_work() as session:
        who = await _who(request, session)
        require_csrf(who, fields)
        await auth.sign_out(session, who)
    response = redirect("/console/sign-in")
    response.delete_cookie(COOKIE, path="/console")
    return response


# --- overview ------------------------------------------------------------------------------

@router.get("")
async def overview(request: Request) -> Response:
    async with _db(request).unit_of_work() as session:
        who = await _who(request, session)
        figures = await data.overview(session)
        _viewed(session, who, "overview")
    charts = {
        "MRR": views.line_chart(data.series(figures.days, "mrr_cents", scale=100), label="MRR"),
        "Active subscriptions": views.line_chart(data.series(figures.days, "active_subscriptions"),
                                                 label="Active subscriptions"),
        "Paying customers": views.line_chart(data.series(figures.days, "paying_customers"),
                                             label="Paying customers"),
        "ARPU": views.line_chart(data.series(figures.days, "arpu_cents", scale=100), label="ARPU"),
        "Customer churn (30 d)": views.line_chart(data.series(figures.days, "customer_churn_rate"),
                                                  label="Customer churn"),
        "Payment success rate": views.line_chart(data.series(figures.days, "payment_success_rate"),
                                                 label="Payment success rate"),
    }
    return render(request, "overview.html.j2", who=who, figures=figures, charts=charts)


# --- audit explorer ------------------------------------------------------------------------

def _criteria(request: Request) -> tuple[Criteria, str | None]:
    params = request.query_params
    form_fields = Criteria(**{name: params.get(name, "").strip()[:200] for name in
                              ("event", "outcome", "actor", "owner", "resource", "stripe", "request")},
                           since=params.get("from", "").strip()[:40],
                           until=params.get("to", "").strip()[:40])
    try:
        return Criteria.parse(params.get("q", "")[:1000]).merged(form_fields), None
    except QueryError as error:
        return form_fields, str(error)


@router.get("/audit")
async def audit_list(request: Request, cursor: str | None = None) -> Response:
    criteria, problem = _criteria(request)
    async with _db(request).unit_of_work() as session:
        who = await _who(request, session)
        entries: list[audit_service.Entry] = []
        following = None
        names = views.Names({}, {})
        if problem is None:
            try:
                filters = await to_filters(session, criteria)
                found = await audit_service.page(session, filters, limit=PAGE_SIZE, cursor=cursor)
                entries, following = found.entries, found.next_cursor
                names = await views.names_for(session, [entry.row for entry in entries])
            except QueryError as error:
                problem = str(error)
        recorder.record(session, AuditEvent.AUDIT_READ, actor=who.actor,
                        resource=Resource("audit_log", "list"),
                        data={"via": "console", "query": criteria.line(), "returned": len(entries),
                              "cursor": bool(cursor)})
    rows = [(entry, views.sentence(entry.row, audit_service.metadata_of(entry.row)[0], names))
            for entry in entries]
    return render(request, "audit_list.html.j2", who=who, criteria=criteria, query=criteria.line(),
                  problem=problem, rows=rows, next_cursor=following)


@router.get("/audit/export")
async def audit_export(request: Request, format: str = "csv") -> Response:
    """The explorer's current filter as CSV or JSON lines, through the API's export."""
    try:
        chosen = ExportFormat(format)
    except ValueError as error:
        raise Unprocessable("format: csv or jsonl", code="bad_format") from error
    criteria, problem = _criteria(request)
    if problem is not None:
        raise Unprocessable(problem, code="bad_query")
    async with _db(request).unit_of_work() as session:
        who = await _who(request, session)
        try:
            filters = await to_filters(session, criteria)
        except QueryError as error:
            raise Unprocessable(str(error), code="bad_query") from error
        recorder.record(session, AuditEvent.AUDIT_READ, actor=who.actor,
                        resource=Resource("audit_log", "export"),
                        data={"via": "console", "view": "export", "format": chosen.value,
                              "query": criteria.line()})
    return export_response(request, filters, chosen)


@router.get("/audit/{row_id}")
async def audit_row(request: Request, row_id: uuid.UUID) -> Response:
    async with _db(request).unit_of_work() as session:
        who = await _who(request, session)
        entry = await audit_service.get(session, row_id)
        proof = await integrity.check_row(session, entry.row, runtime_of(session).keys)
        nearby = await data.related(session, entry.row)
        names = await views.names_for(session, [entry.row, *(e.row for e in nearby)])
        recorder.record(session, AuditEvent.AUDIT_READ, actor=who.actor,
                        resource=Resource("audit_log", entry.row.id),
                        data={"via": "console", "intact": proof.intact})
    metadata, metadata_error = audit_service.metadata_of(entry.row)
    return render(
        request, "audit_row.html.j2", who=who, entry=entry, row=entry.row, metadata=metadata or {},
        metadata_error=metadata_error, proof=proof,
        sentence=views.sentence(entry.row, metadata, names),
        related=[(e, views.sentence(e.row, audit_service.metadata_of(e.row)[0], names)) for e in nearby])


# --- owners and the one money action -------------------------------------------------------

@router.get("/owners/{owner_type}/{owner_id}")
async def owner_page(request: Request, owner_type: OwnerType, owner_id: uuid.UUID,
                     cursor: str | None = None) -> Response:
    async with _db(request).unit_of_work() as session:
        who = await _who(request, session)
        page = await data.owner(session, owner_type, owner_id)
        trail = await audit_service.page(
            session, audit_service.AuditFilters(owner_type=owner_type, owner_id=owner_id),
            limit=PAGE_SIZE, cursor=cursor)
        names = await views.names_for(session, [e.row for e in trail.entries])
        _viewed(session, who, "owner", owner_type=owner_type.value, owner_id=str(owner_id))
    rows = [(e, views.sentence(e.row, audit_service.metadata_of(e.row)[0], names))
            for e in trail.entries]
    return render(request, "owner.html.j2", who=who, owner=page, rows=rows,
                  next_cursor=trail.next_cursor, reasons=list(RefundReason))


@router.post("/owners/{owner_type}/{owner_id}/payments/{transaction_id}/refund",
             openapi_extra=audited(AuditEvent.REFUND_ISSUED))
async def refund(request: Request, owner_type: OwnerType, owner_id: uuid.UUID,
                 transaction_id: uuid.UUID) -> Response:
    """Step one shows what will happen; step two (``confirm=yes``) refunds through the service.

    The confirmation page carries a fresh idempotency key, so a confirmation sent twice (a
    double click, a reload) refunds once, under the API's Idempotency-Key rules.
    """
    fields = await form(request)
    db = _db(request)
    async with db.unit_of_work() as session:
        who = await _who(request, session)
        require_csrf(who, fields)
        payment = await data.payment(session, owner_type, owner_id, transaction_id)
        amount = _amount(fields.get("amount", ""), payment.refundable_cents)
        reason = _reason(fields.get("reason", ""))
        note = fields.get("note", "").strip()[:500] or None
        if fields.get("confirm") != "yes":
            return render(request, "refund_confirm.html.j2", who=who, payment=payment,
                          amount=amount, reason=reason, note=note or "",
                          owner_type=owner_type.value, owner_id=owner_id,
                          key=secrets.token_urlsafe(24))
    client_key = fields.get("key", "")
    if not 16 <= len(client_key) <= 64 or not client_key.replace("-", "").replace("_", "").isalnum():
        raise FormError("the confirmation form lost its key: start the refund again",
                        code="idempotency_key_invalid")
    # No transaction is open here: the service runs intent, Stripe call and settlement itself.
    await issue_refund(db, request.app.state.gateway, actor=who.actor, transaction_id=payment.id,
                       amount_cents=amount, reason=reason, note=note, client_key=client_key)
    return redirect(f"/console/owners/{owner_type.value}/{owner_id}?refunded={transaction_id}")


def _amount(text: str, refundable: int) -> int:
    """``15.00`` → 1500; empty means everything still refundable."""
    if not text.strip():
        return refundable
    whole, _, part = text.strip().partition(".")
    if not whole.isdigit() or (part and (not part.isdigit() or len(part) > 2)) or len(whole) > 12:
        raise Unprocessable("amount: a sum such as 15.00", code="bad_amount")
    return int(whole) * 100 + int(part.ljust(2, "0") or 0)


def _reason(text: str) -> RefundReason:
    try:
        return RefundReason(text)
    except ValueError as error:
        raise Unprocessable("reason: one of the listed reasons", code="bad_reason") from error


# --- webhooks ------------------------------------------------------------------------------

@router.get("/webhooks")
async def webhooks(request: Request, status: str = "", type: str = "", before: str = "") -> Response:
    try:
        chosen = EventStatus(status) if status else None
        older = datetime.fromisoformat(before) if before else None
    except ValueError as error:
        raise Unprocessable("status or before is not valid", code="bad_filter") from error
    async with _db(request).unit_of_work() as session:
        who = await _who(request, session)
        page = await data.events(session, status=chosen, event_type=type[:120] or None, before=older)
        _viewed(session, who, "webhooks", status=status, type=type[:120])
    return render(request, "webhooks.html.j2", who=who, page=page, status=status, type=type,
                  statuses=[s.value for s in EventStatus])


@router.get("/webhooks/{event_id}")
async def webhook(request: Request, event_id: str, confirm: int = 0) -> Response:
    async with _db(request).unit_of_work() as session:
        who = await _who(request, session)
        stored, rows = await data.event(session, event_id[:255])
        attempts = await webhook_store.attempts_of(session, stored.id)
        names = await views.names_for(session, [e.row for e in rows])
        _viewed(session, who, "webhook", stripe_event_id=stored.stripe_event_id)
    written = [(e, views.sentence(e.row, audit_service.metadata_of(e.row)[0], names)) for e in rows]
    return render(request, "webhook.html.j2", who=who, event=stored, rows=written,
                  attempts=attempts, confirm=bool(confirm))


@router.post("/webhooks/{event_id}/replay",
             openapi_extra=audited(AuditEvent.WEBHOOK_REPLAY_REQUESTED))
async def replay_event(request: Request, event_id: str) -> Response:
    fields = await form(request)
    db = _db(request)
    async with db.unit_of_work() as session:
        who = await _who(request, session)
        require_csrf(who, fields)
        stored, _ = await data.event(session, event_id[:255])
        recorder.record(session, AuditEvent.WEBHOOK_REPLAY_REQUESTED, actor=who.actor,
                        resource=Resource("stripe_event", stored.id),
                        data={"stripe_event_id": stored.stripe_event_id, "via": "console",
                              "status_before": stored.status.value})
    result = await replay(db, request.app.state.gateway, _settings(request), stored.stripe_event_id)
    return redirect(f"/console/webhooks/{stored.stripe_event_id}?replayed={result.outcome.value}")


# --- alerts --------------------------------------------------------------------------------

@router.get("/alerts")
async def alerts(request: Request, status: str = "", severity: str = "", open: int = 0,
                 offset: int = 0) -> Response:
    try:
        filters = AlertFilter(status=AlertStatus(status) if status else None,
                              severity=Severity(severity) if severity else None,
                              acknowledged=False if open else None)
    except ValueError as error:
        raise Unprocessable("status or severity is not valid", code="bad_filter") from error
    offset = max(0, min(offset, 1_000_000))
    async with _db(request).unit_of_work() as session:
        who = await _who(request, session)
        found = await ledger.list_alerts(session, actor=who.actor, filters=filters,
                                         limit=PAGE_SIZE, offset=offset)
    return render(request, "alerts.html.j2", who=who, alerts=found, status=status,
                  severity=severity, open=bool(open), offset=offset, page_size=PAGE_SIZE,
                  statuses=[s.value for s in AlertStatus], severities=[s.value for s in Severity])


@router.get("/alerts/{alert_id}")
async def alert_page(request: Request, alert_id: uuid.UUID) -> Response:
    """One alert with its incident: what alert mails link to."""
    async with _db(request).unit_of_work() as session:
        who = await _who(request, session)
        alert, incident = await data.alert(session, alert_id)
        _viewed(session, who, "alert", alert_id=str(alert.id))
    return render(request, "alert.html.j2", who=who, alert=alert, incident=incident)


@router.post("/alerts/{alert_id}/acknowledge", openapi_extra=audited(AuditEvent.ALERT_ACKNOWLEDGED))
async def acknowledge(request: Request, alert_id: uuid.UUID) -> Response:
    fields = await form(request)
    async with _db(request).unit_of_work() as session:
        who = await _who(request, session)
        require_csrf(who, fields)
        await ledger.acknowledge(session, actor=who.actor, alert_id=alert_id,
                                 note=fields.get("note", "").strip()[:500] or None)
    return redirect("/console/alerts?acknowledged=1")

