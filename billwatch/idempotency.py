"""Client ``Idempotency-Key`` on audited POSTs, with Stripe's contract.

A POST carrying ``Idempotency-Key`` claims the key in ``idempotency_keys``, scoped by actor,
method and route, with a hash of the request (path, query and canonical JSON body):

- the same key and the same request within 24 h answer the stored status and body again,
  marked ``Idempotent-Replayed: true``, without running the endpoint a second time;
- the same key with a different request is 422 ``idempotency_key_reused``;
- a second request while the first still runs: on an ordinary route the claim rides in the
  request's own transaction, so the second waits for the first to commit and then replays it;
  on a *phased* route (one that calls Stripe between its transactions) the claim commits at
  once and the second is refused with 409 ``idempotency_key_in_use``;
- only answers below 500 that the endpoint returned are stored; when the request fails, the
  claim is released so a retry runs again (services that move money derive their Stripe key
  from the client key, so running again resumes instead of repeating);
- a phased claim whose process died is taken over after :data:`STALE_CLAIM`.

:class:`~billwatch.http.AuditedRoute` wires this into every audited POST; a money-moving
endpoint reads the client key through :data:`RequiredIdempotencyKey`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Request, Response
from sqlalchemy import Index, String, UniqueConstraint, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from billwatch.accounts.tokens import read_token
from billwatch.config import Settings
from billwatch.db import Base, Database, enum_column, utcnow
from billwatch.errors import BadRequest, Conflict, Unprocessable
from billwatch.redacted import RedactedText

HEADER = "Idempotency-Key"
KEY_TTL = timedelta(hours=24)
"""How long a stored answer is replayed, as Stripe keeps its keys."""
STALE_CLAIM = timedelta(minutes=2)
"""A phased claim still running after this long belongs to a process that died: take it over."""
MAX_KEY_LENGTH = 255
STORED_BODY_LIMIT = 1_000_000
"""Answers larger than this are not stored (the claim is released instead)."""


class KeyState(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


class IdempotencyKey(Base):
    """One client key of one actor on one route, and the answer it got."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("actor_key", "method", "route", "key", name="uq_idempotency_keys_scope"),
        Index("ix_idempotency_keys_created_at", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    actor_key: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(10))
    route: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    """SHA-256 (hex) of the client's key: a key is the client's free text, so it is not kept."""
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[KeyState] = mapped_column(enum_column(KeyState, "idempotency_key_state"))
    response_status: Mapped[int | None]
    response_body: Mapped[str | None] = mapped_column(RedactedText())
    response_media_type: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    locked_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True, slots=True)
class Claim:
    """A key this request holds until its answer is stored or it fails."""

    id: uuid.UUID
    key: str
    in_request_transaction: bool


class Replay(Exception):
    """The stored answer of an earlier request with this key; the route returns it as is."""

    def __init__(self, response: Response) -> None:
        super().__init__("idempotent replay")
        self.response = response


def client_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, checked; None when it has none."""
    value = request.headers.get(HEADER)
    if value is None:
        return None
    if not 0 < len(value) <= MAX_KEY_LENGTH or not all(" " <= c <= "~" for c in value):
        raise BadRequest(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
                         code="idempotency_key_invalid")
    return value


async def request_hash(request: Request) -> str:
    """What makes two requests "the same": method, path, query and the JSON body's content."""
    body = await request.body()
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError):
        canonical = body
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.url.path.encode(),
                 str(sorted(request.query_params.multi_items())).encode(), canonical):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def _actor_key(request: Request, settings: Settings) -> str | None:
    """Keys belong to the bearer's user (read from the signed token, no database needed)."""
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None  # the route's own authentication answers 401
    return str(read_token(token.strip(), settings).user_id)


async def claim(session: AsyncSession, *, actor_key: str, method: str, route: str, key: str,
                request_hash: str, in_request_transaction: bool) -> Claim:
    """Take ``key`` for this request, or raise :class:`Replay` / 409 / 422 as the contract says."""
    now = utcnow()
    stored = hashlib.sha256(key.encode()).hexdigest()
    scope = (IdempotencyKey.actor_key == actor_key, IdempotencyKey.method == method,
             IdempotencyKey.route == route, IdempotencyKey.key == stored)
    await session.execute(delete(IdempotencyKey).where(*scope,
                                                       IdempotencyKey.created_at < now - KEY_TTL))
    values = {"id": uuid.uuid4(), "actor_key": actor_key, "method": method, "route": route,
              "key": stored, "request_hash": request_hash, "state": KeyState.IN_PROGRESS,
              "created_at": now, "locked_at": now}
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    claimed = await session.scalar(
        insert(IdempotencyKey).values(**values)
        .on_conflict_do_nothing(index_elements=["actor_key", "method", "route", "key"])
        .returning(IdempotencyKey.id))
    if claimed is not None:
        return Claim(claimed, key, in_request_transaction)
    held = (await session.scalars(select(IdempotencyKey).where(*scope)
                                  .execution_options(populate_existing=True))).first()
    if held is None:  # released between our insert and our read: the other request failed
        raise Conflict(f"{HEADER} {key!r} is being used by another request; retry",
                       code="idempotency_key_in_use")
    if held.request_hash != request_hash:
        raise Unprocessable(f"{HEADER} {key!r} was already used with a different request; "
                            "use a new key for a new request", code="idempotency_key_reused")
    if held.state is KeyState.COMPLETED:
        raise Replay(Response(content=held.response_body or "", status_code=held.response_status or 200,
                              media_type=held.response_media_type,
                              headers={"Idempotent-Replayed": "true"}))
    taken = await session.execute(
        update(IdempotencyKey).where(IdempotencyKey.id == held.id,
                                     IdempotencyKey.state == KeyState.IN_PROGRESS,
                                     IdempotencyKey.locked_at == held.locked_at,
                                     IdempotencyKey.locked_at < now - STALE_CLAIM)
        .values(locked_at=now))
    if getattr(taken, "rowcount", 0) == 1:
        return Claim(held.id, key, in_request_transaction)
    raise Conflict(f"a request with {HEADER} {key!r} is still running; retry when it has answered",
                   code="idempotency_key_in_use")


async def complete(session: AsyncSession, held: Claim, response: Response) -> None:
    """Store the answer (below 500, not streamed, not huge) or release the key."""
    body = getattr(response, "body", None)
    if response.status_code >= 500 or not isinstance(body, bytes) or len(body) > STORED_BODY_LIMIT:
        await session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == held.id))
        return
    await session.execute(update(IdempotencyKey).where(IdempotencyKey.id == held.id).values(
        state=KeyState.COMPLETED, response_status=response.status_code,
        response_body=body.decode("utf-8", "replace"), response_media_type=response.media_type))


async def release(db: Database, held: Claim) -> None:
    """Forget a claim whose request failed, so the client's retry runs again."""
    async with db.unit_of_work() as session:
        await session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == held.id))


async def prune(db: Database, *, now: datetime | None = None) -> int:
    """Delete keys older than the replay window."""
    async with db.unit_of_work() as session:
        result = await session.execute(delete(IdempotencyKey).where(
            IdempotencyKey.created_at < (now or utcnow()) - KEY_TTL))
        return int(getattr(result, "rowcount", 0) or 0)


async def claim_for_request(request: Request) -> None:
    """Route dependency: claim the request's key (if it sent one) before the endpoint runs."""
    key = client_key(request)
    actor_key = _actor_key(request, request.app.state.settings) if key is not None else None
    if key is None or actor_key is None:
        return
    route = request.scope.get("route")
    arguments: dict[str, Any] = {
        "actor_key": actor_key, "method": request.method,
        "route": getattr(route, "path", request.url.path), "key": key,
        "request_hash": await request_hash(request)}
    session: AsyncSession | None = getattr(request.state, "session", None)
    if session is not None:
        request.state.idempotency = await claim(session, in_request_transaction=True, **arguments)
        return
    db: Database = request.app.state.db
    async with db.unit_of_work() as own:
        held = await claim(own, in_request_transaction=False, **arguments)
    request.state.idempotency = held


def held_claim(request: Request) -> Claim | None:
    held: Claim | None = getattr(request.state, "idempotency", None)
    return held


def _required_key_dependency(request: Request) -> str:
    key = client_key(request)
    if key is None:
        raise BadRequest(f"this request moves money: send an {HEADER} header (a unique value per "
                         "operation, reused only to retry it) so a retry cannot repeat it",
                         code="idempotency_key_required")
    return key


RequiredIdempotencyKey = Annotated[str, Depends(_required_key_dependency)]


def openapi_parameter(*, required: bool) -> dict[str, Any]:
    """The header as the OpenAPI document lists it on every audited POST."""
    return {
        "name": HEADER, "in": "header", "required": required,
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
        "description": (
            "A unique value per operation (a UUID). The same key and request within 24 h "
            "answer the stored result again without a second effect; the same key with a "
            "different request is 422 `idempotency_key_reused`; while the first request runs, "
            "a second waits for it (409 `idempotency_key_in_use` on routes that call Stripe)."
            + (" Required here: 400 `idempotency_key_required` without it." if required else "")),
    }
