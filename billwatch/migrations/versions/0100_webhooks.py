"""webhooks: the Stripe event store

Revision ID: 0100_webhooks
Revises: 0001_foundation
Create Date: 2026-11-29 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import billwatch.db

revision: str = "0100_webhooks"
down_revision: str | Sequence[str] | None = "0001_foundation"
branch_labels: str | Sequence[str] | None = ("webhooks",)
depends_on: str | Sequence[str] | None = None

STATUSES = ("received", "processed", "failed", "ignored")
SOURCES = ("webhook", "reconcile")


def upgrade() -> None:
    op.create_table(
        "stripe_events",
        sa.Column("stripe_event_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=120), nullable=False),
        sa.Column("stripe_created", billwatch.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("object_id", sa.String(length=255), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("payload", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                  nullable=False),
        sa.Column("status", sa.Enum(*STATUSES, name="stripe_event_status", native_enum=False,
                                    create_constraint=True, length=40), nullable=False),
        sa.Column("source", sa.Enum(*SOURCES, name="stripe_event_source", native_enum=False,
                                    create_constraint=True, length=40), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("received_at", billwatch.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("processed_at", billwatch.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("processing_ms", sa.Double(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
        sa.UniqueConstraint("stripe_event_id", name=op.f("uq_stripe_events_stripe_event_id")),
    )
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.create_index("ix_stripe_events_status_received", ["status", "received_at"], unique=False)
        batch_op.create_index("ix_stripe_events_type_created", ["type", "stripe_created"], unique=False)
        batch_op.create_index("ix_stripe_events_object", ["object_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_index("ix_stripe_events_object")
        batch_op.drop_index("ix_stripe_events_type_created")
        batch_op.drop_index("ix_stripe_events_status_received")
    op.drop_table("stripe_events")
