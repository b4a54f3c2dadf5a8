"""money-refunds: client Idempotency-Key claims and their stored answers

Revision ID: 0410_idempotency_keys
Revises: 0001_foundation
Create Date: 2026-12-01 10:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billwatch.db

revision: str = "0410_idempotency_keys"
down_revision: str | Sequence[str] | None = "0001_foundation"
branch_labels: str | Sequence[str] | None = ("money_refunds",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("actor_key", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=10), nullable=False),
        sa.Column("route", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.Enum("in_progress", "completed", name="idempotency_key_state",
                                   native_enum=False, create_constraint=True, length=40),
                  nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
        sa.Column("response_media_type", sa.String(length=100), nullable=True),
        sa.Column("created_at", billwatch.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("locked_at", billwatch.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("actor_key", "method", "route", "key", name="uq_idempotency_keys_scope"),
    )
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.create_index("ix_idempotency_keys_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_idempotency_keys_created_at")
    op.drop_table("idempotency_keys")
