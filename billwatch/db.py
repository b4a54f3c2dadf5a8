"""The database: engine, sessions and the one transaction boundary.

Nothing outside :func:`unit_of_work` commits. Work that must only happen once the change is
durable (metrics, alert hand-offs) is registered with :func:`after_commit` and is dropped when
the transaction rolls back.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog
from sqlalchemy import JSON, DateTime, Enum, MetaData, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from billwatch.runtime import SESSION_KEY, NoRuntime, Runtime

log = structlog.get_logger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def enum_column(enum: type[StrEnum], name: str) -> Enum:
    """A portable enum column storing the values (not the names), checked by a constraint."""
    return Enum(enum, name=name, native_enum=False, create_constraint=True, length=40,
                values_callable=lambda members: [m.value for m in members])


JSONType = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType}


class UUIDPrimaryKey:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


AfterCommit = Callable[[], Any]


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run ``callback`` once the session's transaction has committed; never on rollback."""
    session.info.setdefault("after_commit", []).append(callback)


@event.listens_for(Session, "after_begin")
def _connection_knows_its_runtime(session: Session, _transaction: Any, connection: Any) -> None:
    """The connection a session's transaction runs on carries the session's runtime.

    An engine-level listener (a refused audit INSERT) sees the connection, not the session;
    this is how it finds the runtime the failing operation belongs to. Set on every begin, so a
    pooled connection never keeps the runtime of its previous session's transaction.
    """
    connection.info[SESSION_KEY] = session.info.get(SESSION_KEY)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    # The driver's own deferred BEGIN is switched off; _sqlite_begin_immediate emits ours.
    dbapi_connection.isolation_level = None


SQLITE_IMMEDIATE = "billwatch_sqlite_immediate"
"""Execution option of the sessions' engine: their transactions begin IMMEDIATE on SQLite."""


def _sqlite_begin(connection: Any) -> None:
    """Session transactions take SQLite's write lock when they start, not at their first write.

    A deferred transaction that reads, then writes, fails or interleaves with another writer
    (SQLite has no ``SELECT ... FOR UPDATE``); beginning IMMEDIATE serialises read-modify-write
    transactions as PostgreSQL's row locks do, waiting up to the busy timeout for the lock.
    Plain engine connections (streaming readers beside a unit of work) stay deferred, so a
    reader never waits for the writer it serves.
    """
    immediate = connection.get_execution_options().get(SQLITE_IMMEDIATE, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


POOL_RECYCLE_SECONDS = 1800
"""Pooled server connections are replaced after this long, before idle timeouts cut them."""


def _discard_closed(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection the server has closed; the pool then opens a fresh one.

    This replaces ``pool_pre_ping``, which on asyncpg costs three round trips per checkout
    (BEGIN, a ping, ROLLBACK), as many as a small request's own work. A server that restarts
    or terminates a backend closes the socket, and the driver notices while the connection is
    idle, so asking it costs nothing. A connection that dies silently (a network cut) fails its
    first statement instead: SQLAlchemy then invalidates the whole pool, and idempotent callers
    (webhook processing) retry once. Pass ``pool_pre_ping=True`` to :class:`Database` where a
    proxy hides closed server connections.
    """
    is_closed = getattr(record.driver_connection, "is_closed", None)
    if callable(is_closed) and is_closed():
        raise DisconnectionError("server closed the connection while it was pooled")


class Database:
    """An engine and its session factory; one per process (or per test).

    ``runtime`` (:mod:`billwatch.runtime`) rides in every session's ``info``: it is what the
    audit recorder, the alert rules and the after-commit counters of an operation use. A
    database without one can read and migrate, but refuses to record an audit row.
    """

    def __init__(self, url: str, *, runtime: Runtime | None = None, echo: bool = False,
                 **engine_kwargs: Any) -> None:
        if url.startswith("sqlite"):
            engine_kwargs.setdefault("connect_args", {"timeout": 30})
        else:
            engine_kwargs.setdefault("pool_size", 10)
            engine_kwargs.setdefault("max_overflow", 20)
            engine_kwargs.setdefault("pool_recycle", POOL_RECYCLE_SECONDS)
        engine_kwargs.setdefault("hide_parameters", True)  # errors and echo never log values
        self.engine: AsyncEngine = create_async_engine(url, **engine_kwargs)
        if echo:  # SQL through the redacting log handlers, not SQLAlchemy's own stdout one
            logging.getLogger("sqlalchemy.engine.Engine").setLevel(logging.INFO)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        else:
            event.listen(self.engine.sync_engine, "checkout", _discard_closed)
        self._bind(runtime)

    def _bind(self, runtime: Runtime | None) -> None:
        self.runtime = runtime
        info: dict[str, Any] = {}
        if runtime is not None:
            info[SESSION_KEY] = runtime
            runtime.watch(self.engine.sync_engine)
        bind = (self.engine.execution_options(**{SQLITE_IMMEDIATE: True})
                if self.engine.dialect.name == "sqlite" else self.engine)
        self.sessionmaker = async_sessionmaker(bind, expire_on_commit=False, info=info)

    def required_runtime(self) -> Runtime:
        """The runtime, for work that records or alerts outside a session (a deliverer)."""
        if self.runtime is None:
            raise NoRuntime("this Database was built without a runtime: pass "
                            "runtime=build_runtime(settings) (billwatch.bootstrap)")
        return self.runtime

    def with_runtime(self, runtime: Runtime) -> Database:
        """This database's engine and pool, with sessions that carry ``runtime``.

        Two apps (or a test and the app it serves) on one database each keep their own runtime;
        disposing either disposes the shared engine.
        """
        sibling = object.__new__(Database)
        sibling.engine = self.engine
        sibling._bind(runtime)
        return sibling

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """One transaction: commits on success, rolls back on any error, then runs hooks."""
        session = self.sessionmaker()
        try:
            yield session
            await session.commit()
        except BaseException:
            session.info.pop("after_commit", None)
            await session.rollback()
            raise
        finally:
            callbacks: list[AfterCommit] = session.info.pop("after_commit", [])
            await session.close()
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a metric or hand-off must never fail a committed operation
                log.exception("after_commit_callback_failed", callback=repr(callback))

    async def ping(self) -> None:
        async with self.engine.connect() as connection:
            await connection.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        await self.engine.dispose()
