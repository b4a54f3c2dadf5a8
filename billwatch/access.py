"""Owner access: who is calling, what the route acts on, whether they may, and what a failure says.

Routes depend on these ``Annotated`` dependencies instead of checking rights themselves. Each one,
in one place:

- reads the route's target: an owner named in the path or the body, a subscription (loaded, to
  find its owner), or the id of what an admin acts on;
- authorises the caller for it (:func:`~billwatch.managers.service.authorize_owner` with a
  :class:`~billwatch.managers.service.Purpose`, or the admin role);
- notes what it learned on the request's :class:`AuditContext`, which
  :func:`billwatch.http.record_failure` reads once the request's transaction rolled back.

A dependency takes every input of its route (path ids and body), so it runs only when all of
them are valid: invalid input stays a 422 whose failure row names nothing unvalidated, and is
never answered 403 or 404 first. On a phased route there is no request transaction: the
dependency reads and authorises in a short one of its own, closed before the route calls Stripe.

This module sits below the HTTP layer (:mod:`billwatch.http` imports it, never the reverse) and
above the domains' services, so every router can use it and no import runs in a circle.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Generic, Protocol, TypeVar, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from billwatch.accounts.actor import Actor, OwnerRef
from billwatch.accounts.models import OwnerType
from billwatch.accounts.tokens import authenticated_user, read_token
from billwatch.audit.recorder import Resource
from billwatch.billing.subscriptions import get_subscription
from billwatch.config import Settings
from billwatch.db import Database
from billwatch.errors import Forbidden, Unauthorized
from billwatch.managers.service import Purpose, authorize_owner

B = TypeVar("B")
T = TypeVar("T")


class NamesOwner(Protocol):
    """A request body that names the owner it acts for."""

    @property
    def owner_type(self) -> OwnerType: ...

    @property
    def owner_id(self) -> uuid.UUID: ...


OB = TypeVar("OB", bound=NamesOwner)


# --- the failure context --------------------------------------------------------------------

@dataclass(slots=True)
class AuditContext:
    """What a failure row of this request says about who acted on what, filled in as known."""

    actor: Actor | None = None
    """The caller; once authorised for an owner, a proxy carries the assignment that allows it."""
    owner: OwnerRef | None = None
    resource: Resource | None = None


def audit_context(request: Request) -> AuditContext:
    """The request's one :class:`AuditContext`, empty until a dependency learns something."""
    context: AuditContext | None = getattr(request.state, "audit_context", None)
    if context is None:
        context = AuditContext()
        request.state.audit_context = context
    return context


# --- who is calling -------------------------------------------------------------------------

@asynccontextmanager
async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's transaction, or on a phased route a short one that closes before Stripe."""
    session: AsyncSession | None = getattr(request.state, "session", None)
    if session is not None:
        yield session
        return
    db: Database = request.app.state.db
    async with db.unit_of_work() as own:
        yield own


_bearer = HTTPBearer(auto_error=False, description="A token from `billwatch token EMAIL`.")


async def current_actor(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Actor:
    """The caller of a live token (401 otherwise), named from then on by any failure row."""
    if credentials is None:
        raise Unauthorized("missing bearer token", code="missing_token")
    settings: Settings = request.app.state.settings
    claims = read_token(credentials.credentials, settings)
    async with _session(request) as session:
        user = await authenticated_user(session, claims)  # revoked, unknown, other role: 401
    actor = Actor(user.id, user.role)
    audit_context(request).actor = actor
    return actor


async def admin_actor(actor: Annotated[Actor, Depends(current_actor)]) -> Actor:
    if not actor.is_admin:
        raise Forbidden("admin role required", code="admin_required")
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]
AdminActor = Annotated[Actor, Depends(admin_actor)]


# --- what the route acts on, and whether the caller may -------------------------------------

@dataclass(frozen=True, slots=True)
class OwnerAccess(Generic[B]):
    """A caller allowed to act on an owner's billing, and the body that asked."""

    actor: Actor
    """As authorised: a proxy carries the assignment that allows it."""
    owner: OwnerRef
    body: B
    path: Mapping[str, uuid.UUID] = field(default_factory=dict)
    """Other ids the route's path names (a billing manager's ``proxy_id``)."""


@dataclass(frozen=True, slots=True)
class SubscriptionAccess(Generic[B]):
    """A caller allowed to act on a subscription, found through its owner."""

    actor: Actor
    owner: OwnerRef
    subscription_id: uuid.UUID
    body: B


@dataclass(frozen=True, slots=True)
class AdminTarget(Generic[B]):
    """An admin and the id of the row it acts on.

    Named, not read: the admin's right does not depend on the row, and the service reads it under
    the lock or conditional update that it needs anyway (and answers its 404).
    """

    actor: Actor
    id: uuid.UUID
    body: B


def _taking(dependency: Callable[..., Awaitable[T]], *, ids: Sequence[str] = (),
            body: Any = None, body_default: Any = inspect.Parameter.empty,
            ) -> Callable[..., Awaitable[T]]:
    """``dependency`` as FastAPI reads it: its own parameters, then the route's ids and body.

    One rule serves routes whose path names and body models differ; it takes all of the route's
    inputs so that FastAPI calls it only once they are valid.
    """
    own = [p for p in inspect.signature(dependency, eval_str=True).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=uuid.UUID)
             for name in ids]
    if body is not None:
        added.append(inspect.Parameter("body", inspect.Parameter.KEYWORD_ONLY, annotation=body,
                                       default=body_default))
    cast(Any, dependency).__signature__ = inspect.Signature([*own, *added])
    return dependency


async def _authorise(request: Request, session: AsyncSession, actor: Actor, owner: OwnerRef,
                     purpose: Purpose) -> Actor:
    """``actor`` as allowed on ``owner`` (404 unknown owner, 403 refused); both noted first."""
    context = audit_context(request)
    context.owner = owner
    allowed = await authorize_owner(session, actor, owner, purpose=purpose)
    context.actor = allowed
    return allowed


def owner_in_body(model: type[OB], purpose: Purpose) -> Callable[..., Awaitable[OwnerAccess[OB]]]:
    """The owner the body names, with the caller authorised on it for ``purpose``."""
    async def owner_named_in_body(request: Request, actor: CurrentActor,
                                  **inputs: Any) -> OwnerAccess[OB]:
        body: OB = inputs["body"]
        owner = OwnerRef(body.owner_type, body.owner_id)
        async with _session(request) as session:
            allowed = await _authorise(request, session, actor, owner, purpose)
        return OwnerAccess(allowed, owner, body)

    return _taking(owner_named_in_body, body=model)


def owner_in_path(purpose: Purpose) -> Callable[..., Awaitable[OwnerAccess[None]]]:
    """The owner of ``/{owner_type}/{owner_id}``, with the caller authorised on it."""
    async def owner_named_in_path(request: Request, actor: CurrentActor, owner_type: OwnerType,
                                  owner_id: uuid.UUID) -> OwnerAccess[None]:
        owner = OwnerRef(owner_type, owner_id)
        async with _session(request) as session:
            allowed = await _authorise(request, session, actor, owner, purpose)
        return OwnerAccess(allowed, owner, None)

    return owner_named_in_path


def subscription_in_path(model: type[B], purpose: Purpose,
                         ) -> Callable[..., Awaitable[SubscriptionAccess[B]]]:
    """The subscription of ``{subscription_id}`` (404), with the caller authorised on its owner."""
    async def subscription_named_in_path(request: Request, actor: CurrentActor,
                                         **inputs: Any) -> SubscriptionAccess[B]:
        subscription_id: uuid.UUID = inputs["subscription_id"]
        audit_context(request).resource = Resource("subscription", subscription_id)
        async with _session(request) as session:
            subscription = await get_subscription(session, subscription_id)
            owner = OwnerRef(subscription.owner_type, subscription.owner_id)
            allowed = await _authorise(request, session, actor, owner, purpose)
        return SubscriptionAccess(allowed, owner, subscription_id, inputs["body"])

    return _taking(subscription_named_in_path, ids=("subscription_id",), body=model)


def admin_for_owner(model: type[OB]) -> Callable[..., Awaitable[OwnerAccess[OB]]]:
    """An admin acting on the owner the body names; the service checks the owner exists."""
    async def admin_for_owner_in_body(request: Request, actor: AdminActor,
                                      **inputs: Any) -> OwnerAccess[OB]:
        body: OB = inputs["body"]
        owner = OwnerRef(body.owner_type, body.owner_id)
        audit_context(request).owner = owner
        return OwnerAccess(actor, owner, body)

    return _taking(admin_for_owner_in_body, body=model)


def admin_on(resource_type: str, id_name: str, model: Any = None, *,
             body_default: Any = inspect.Parameter.empty) -> Callable[..., Awaitable[AdminTarget[Any]]]:
    """An admin acting on the ``resource_type`` row whose id is the path's ``id_name``."""
    async def admin_on_row(request: Request, actor: AdminActor,
                           **inputs: Any) -> AdminTarget[Any]:
        row_id: uuid.UUID = inputs[id_name]
        audit_context(request).resource = Resource(resource_type, row_id)
        return AdminTarget(actor, row_id, inputs.get("body"))

    return _taking(admin_on_row, ids=(id_name,), body=model, body_default=body_default)


def patient_in_path(model: Any = None, *, also: Sequence[str] = ()
                    ) -> Callable[..., Awaitable[OwnerAccess[Any]]]:
    """The patient of ``/patients/{patient_id}`` as the owner.

    Who may change or read a patient's billing managers depends on the operation, so the
    managers' service decides it (the patient or an admin; readers as for the account).
    """
    async def patient_named_in_path(request: Request, actor: CurrentActor,
                                    **inputs: Any) -> OwnerAccess[Any]:
        owner = OwnerRef(OwnerType.PATIENT, inputs["patient_id"])
        audit_context(request).owner = owner
        return OwnerAccess(actor, owner, inputs.get("body"),
                           path={name: inputs[name] for name in also})

    return _taking(patient_named_in_path, ids=("patient_id", *also), body=model)
