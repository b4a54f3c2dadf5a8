"""money-refunds: find pending refund intents (the sweeper) without scanning every transaction

Revision ID: 0411_pending_refunds_index
Revises: 0410_idempotency_keys
Create Date: 2026-12-01 10:51:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0411_pending_refunds_index"
down_revision: str | Sequence[str] | None = "0410_idempotency_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.create_index("ix_transactions_kind_status_time", ["kind", "status", "created_at"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("transactions", schema=None) as batch_op:
        batch_op.drop_index("ix_transactions_kind_status_time")
