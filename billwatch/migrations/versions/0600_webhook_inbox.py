"""webhook inbox: claim leases, retry schedule, attempts, payload hash and pruning

Revision ID: 0600_webhook_inbox
Revises: 0100_webhooks
Create Date: 2026-12-01 13:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import billwatch.db

revision: str = "0600_webhook_inbox"
down_revision: str | Sequence[str] | None = "0100_webhooks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = ("received", "processed", "failed", "ignored")
NEW_STATUSES = ("received", "processing", "retrying", "processed", "failed", "ignored")
UNFINISHED = "status IN ('received', 'processing', 'retrying')"
OUTCOMES = ("processed", "ignored", "failed", "abandoned", "superseded")
PAYLOAD = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
NEW_COLUMNS = ("payload_sha256", "payload_pruned_at", "next_attempt_at", "claimed_by",
               "claimed_at", "claimed_until")


def _status(values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name="stripe_event_status", native_enum=False, create_constraint=True,
                   length=40)


def _columns() -> list[sa.Column[object]]:
    when = billwatch.db.UTCDateTime(timezone=True)
    return [sa.Column("payload_sha256", sa.String(length=64), nullable=True),
            sa.Column("payload_pruned_at", when, nullable=True),
            sa.Column("next_attempt_at", when, nullable=True),
            sa.Column("claimed_by", sa.String(length=128), nullable=True),
            sa.Column("claimed_at", when, nullable=True),
            sa.Column("claimed_until", when, nullable=True)]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":  # a CHECK changes only by rebuilding the table
        with op.batch_alter_table("stripe_events", recreate="always") as batch_op:
            batch_op.alter_column("status", existing_type=_status(OLD_STATUSES),
                                  type_=_status(NEW_STATUSES), existing_nullable=False)
            batch_op.alter_column("payload", existing_type=PAYLOAD, nullable=True)
            for column in _columns():
                batch_op.add_column(column)
    else:
        op.drop_constraint(op.f("ck_stripe_events_stripe_event_status"), "stripe_events",
                           type_="check")
        listed = ", ".join(f"'{value}'" for value in NEW_STATUSES)
        op.create_check_constraint(op.f("ck_stripe_events_stripe_event_status"), "stripe_events",
                                   f"status IN ({listed})")
        op.alter_column("stripe_events", "payload", existing_type=PAYLOAD, nullable=True)
        for column in _columns():
            op.add_column("stripe_events", column)
    op.create_index("ix_stripe_events_unfinished", "stripe_events", ["received_at"], unique=False,
                    postgresql_where=sa.text(UNFINISHED), sqlite_where=sa.text(UNFINISHED))
    op.create_table(
        "stripe_event_attempts",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("delivery", sa.String(length=16), nullable=False),
        sa.Column("started_at", billwatch.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", billwatch.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.Enum(*OUTCOMES, name="stripe_event_attempt_outcome",
                                     native_enum=False, create_constraint=True, length=40),
                  nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Double(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["stripe_events.id"], ondelete="CASCADE",
                                name=op.f("fk_stripe_event_attempts_event_id_stripe_events")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_event_attempts")),
    )
    op.create_index("ix_stripe_event_attempts_event", "stripe_event_attempts",
                    ["event_id", "attempt"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_stripe_event_attempts_event", table_name="stripe_event_attempts")
    op.drop_table("stripe_event_attempts")
    op.drop_index("ix_stripe_events_unfinished", table_name="stripe_events")
    # the old statuses: an unfinished event is received again, a pruned payload an empty one
    op.execute("UPDATE stripe_events SET status = 'received' "
               "WHERE status IN ('processing', 'retrying')")
    op.execute("UPDATE stripe_events SET payload = '{}' WHERE payload IS NULL")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("stripe_events", recreate="always") as batch_op:
            for name in NEW_COLUMNS:
                batch_op.drop_column(name)
            batch_op.alter_column("payload", existing_type=PAYLOAD, nullable=False)
            batch_op.alter_column("status", existing_type=_status(NEW_STATUSES),
                                  type_=_status(OLD_STATUSES), existing_nullable=False)
        return
    for name in NEW_COLUMNS:
        op.drop_column("stripe_events", name)
    op.alter_column("stripe_events", "payload", existing_type=PAYLOAD, nullable=False)
    op.drop_constraint(op.f("ck_stripe_events_stripe_event_status"), "stripe_events", type_="check")
    listed = ", ".join(f"'{value}'" for value in OLD_STATUSES)
    op.create_check_constraint(op.f("ck_stripe_events_stripe_event_status"), "stripe_events",
                               f"status IN ({listed})")
