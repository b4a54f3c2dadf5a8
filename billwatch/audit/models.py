"""The audit tables: who did what to whose money, when, from where, and did it work.

``audit_logs`` holds the rows (metadata encrypted, each with its keyed content hash);
``audit_seals`` gives sealed rows their place in the hash chain; ``audit_checkpoints`` keeps a
copy of every signed checkpoint (the authoritative copy lives outside the database);
``audit_archives`` records signed manifests of rows moved to archive files. All four are
append-only on PostgreSQL (triggers, see the ``0200_audit`` migration) except through the one
maintenance path in :mod:`billwatch.audit.maintenance`.

On PostgreSQL ``audit_logs`` is partitioned by month on ``occurred_at`` (migration
``0610_audit_partitions``, :mod:`billwatch.audit.partitions`): its primary key there is
``(id, occurred_at)`` and it has a BRIN index on ``occurred_at`` as well; the ORM still
identifies a row by its id.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, LargeBinary, String, event
from sqlalchemy.orm import Mapped, QueryContext, mapped_column

from billwatch.accounts.models import OwnerType, Role
from billwatch.audit.events import Outcome
from billwatch.db import Base, UUIDPrimaryKey, enum_column, utcnow
from billwatch.redacted import RedactedString, RedactedText
from billwatch.runtime import SESSION_KEY, NoRuntime


class AuditLog(UUIDPrimaryKey, Base):
    __tablename__ = "audit_logs"
    __table_args__ = (
        Index("ix_audit_logs_owner_time", "owner_type", "owner_id", "occurred_at"),
        Index("ix_audit_logs_event_time", "event_type", "occurred_at"),
        Index("ix_audit_logs_actor_time", "actor_user_id", "occurred_at"),
        Index("ix_audit_logs_resource_time", "resource_type", "resource_id", "occurred_at"),
        Index("ix_audit_logs_time", "occurred_at", "id"),
        Index("ix_audit_logs_assignment", "manager_assignment_id"),
    )

    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    event_type: Mapped[str] = mapped_column(String(80))
    outcome: Mapped[Outcome] = mapped_column(enum_column(Outcome, "audit_outcome"))
    action: Mapped[str] = mapped_column(String(80))
    """The verb of the event ("created", "cancelled"...), for filters that ignore the domain."""
    reason: Mapped[str | None] = mapped_column(RedactedText(on_read=False))
    """Why a failure failed (redacted); null on success."""

    actor_user_id: Mapped[uuid.UUID | None]
    actor_role: Mapped[Role | None] = mapped_column(enum_column(Role, "audit_actor_role"))
    actor_name: Mapped[str | None] = mapped_column(RedactedString(80, on_read=False))
    """For non-user actors: ``stripe``, ``job:daily-metrics``, ``cli``."""
    manager_assignment_id: Mapped[uuid.UUID | None]
    """The billing-manager assignment that authorised a proxy's action."""

    resource_type: Mapped[str | None] = mapped_column(RedactedString(40, on_read=False))
    resource_id: Mapped[str | None] = mapped_column(RedactedString(80, on_read=False))
    owner_type: Mapped[OwnerType | None] = mapped_column(enum_column(OwnerType, "audit_owner_type"))
    owner_id: Mapped[uuid.UUID | None]

    request_id: Mapped[str | None] = mapped_column(RedactedString(64, on_read=False))
    client_ip: Mapped[str | None] = mapped_column(RedactedString(64, on_read=False))
    job_id: Mapped[str | None] = mapped_column(RedactedString(128, on_read=False))

    stripe_event_id: Mapped[str | None] = mapped_column(RedactedString(255, on_read=False), index=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(RedactedString(255, on_read=False))
    stripe_subscription_id: Mapped[str | None] = mapped_column(RedactedString(255, on_read=False))
    stripe_invoice_id: Mapped[str | None] = mapped_column(RedactedString(255, on_read=False))
    idempotency_key: Mapped[str | None] = mapped_column(RedactedString(255, on_read=False))

    content_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    """HMAC-SHA256 of the canonical content (see :mod:`billwatch.audit.chain`)."""
    metadata_key_id: Mapped[str] = mapped_column(String(32))
    """Which key of the ring sealed the metadata."""
    metadata_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    """AES-GCM nonce + ciphertext + tag of the canonical metadata JSON; the row id (text) is
    the associated data, so a ciphertext copied onto another row does not decrypt."""

    @property
    def data(self) -> dict[str, Any]:
        """Event details (redacted before they were stored), decrypted on first access.

        Read-only: a recorded row never changes, and its hash covers this plaintext. The keys
        are those of the runtime of the session that loaded the row (:func:`_keep_keys`).
        """
        cached: dict[str, Any] | None = self.__dict__.get("_plaintext")
        if cached is None:
            keys = self.__dict__.get("_keys")
            if keys is None:
                raise NoRuntime("this audit row was loaded by a session without a runtime, "
                                "so there are no keys to decrypt its metadata")
            plaintext = keys.ring.decrypt(
                self.metadata_key_id, self.metadata_ciphertext, str(self.id).encode())
            cached = json.loads(plaintext)
            self.__dict__["_plaintext"] = cached
        return cached

    def remember_plaintext(self, plaintext: bytes) -> None:
        """Keep the just-encrypted metadata so in-transaction listeners read it for free."""
        self.__dict__["_plaintext"] = json.loads(plaintext)


@event.listens_for(AuditLog, "load")
def _keep_keys(row: AuditLog, context: QueryContext) -> None:
    """A loaded row remembers its session's audit keys, to decrypt ``data`` when it is read."""
    runtime = context.session.info.get(SESSION_KEY)
    if runtime is not None:
        row.__dict__["_keys"] = runtime.keys


class AuditSeal(Base):
    """A sealed row's place in the chain.

    No foreign key to ``audit_logs`` on purpose: when a sealed row is deleted behind the
    triggers' back, its seal survives and the verifier can name exactly which row went missing.
    """

    __tablename__ = "audit_seals"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    audit_log_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    chain_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    sealed_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditCheckpoint(UUIDPrimaryKey, Base):
    """The database copy of a signed checkpoint (the file store outside the database rules)."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (Index("ix_audit_checkpoints_seq", "last_seq"),)

    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_id: Mapped[uuid.UUID | None]
    row_count: Mapped[int] = mapped_column(BigInteger)
    batch_rows: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime]
    signature: Mapped[bytes] = mapped_column(LargeBinary(32))
    file_name: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(default=1, server_default="1")
    prev_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    """The previous checkpoint's digest, signed by this one (version 2: the checkpoint chain)."""


class AuditArchive(UUIDPrimaryKey, Base):
    """A signed manifest of rows moved to an archive file; the online chain resumes after it."""

    __tablename__ = "audit_archives"
    __table_args__ = (Index("ix_audit_archives_last_seq", "last_seq", unique=True),)

    first_seq: Mapped[int] = mapped_column(BigInteger)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    row_count: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    head_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    before: Mapped[datetime]
    created_at: Mapped[datetime]
    file_name: Mapped[str] = mapped_column(String(255))
    file_sha256: Mapped[bytes] = mapped_column(LargeBinary(32))
    signature: Mapped[bytes] = mapped_column(LargeBinary(32))
    month: Mapped[str | None] = mapped_column(String(7))
    """``YYYY-MM`` when the archive took one whole month (``archive --month``); signed when set."""


class AuditMaintenance(Base):
    """SQLite's maintenance switch: a row here, inside one transaction, opens the one path.

    PostgreSQL uses the transaction-local setting ``billwatch.maintenance`` instead; see
    :mod:`billwatch.audit.maintenance`. The row never outlives its transaction.
    """

    __tablename__ = "audit_maintenance"

    purpose: Mapped[str] = mapped_column(String(40), primary_key=True)
