"""overrides: state, Stripe ids and amounts of discounts and exemptions; one live per kind

Revision ID: 0430_override_effects
Revises: 0001_foundation
Create Date: 2026-12-01 10:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billwatch.db

revision: str = '0430_override_effects'
down_revision: str | Sequence[str] | None = '0001_foundation'
branch_labels: str | Sequence[str] | None = ('overrides',)
depends_on: str | Sequence[str] | None = None

STATES = ('pending', 'active', 'failed', 'revoking', 'revoked', 'expired')
LIVE_ADJUSTMENT = ("kind IN ('discount', 'payment_exemption') "
                   "AND state IN ('pending', 'active', 'revoking')")


def upgrade() -> None:
    with op.batch_alter_table('billing_overrides', schema=None) as batch_op:
        batch_op.add_column(sa.Column('state', sa.String(length=40), nullable=False,
                                      server_default='active'))
        batch_op.add_column(sa.Column('amount_off_cents', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('currency', sa.String(length=3), nullable=True))
        batch_op.add_column(sa.Column('stripe_subscription_id', sa.String(length=255),
                                      nullable=True))
        batch_op.add_column(sa.Column('stripe_coupon_id', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('stripe_discount_id', sa.String(length=255),
                                      nullable=True))
        batch_op.add_column(sa.Column('applied_at', billwatch.db.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('expired_at', billwatch.db.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('state_changed_at', billwatch.db.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column('failure_code', sa.String(length=80), nullable=True))
        batch_op.create_check_constraint(
            'override_state', sa.column('state').in_(STATES))
        batch_op.create_index('ix_billing_overrides_subscription', ['subscription_id'],
                              unique=False)
    # Discounts and exemptions written before this revision never reached Stripe, so they are
    # marked as never applied (MRR must not count them); free grants did take effect.
    op.execute("UPDATE billing_overrides SET state = 'revoked' WHERE revoked_at IS NOT NULL")
    op.execute("UPDATE billing_overrides SET state = 'failed', "
               "failure_code = 'not_applied_at_stripe' "
               "WHERE revoked_at IS NULL AND kind IN ('discount', 'payment_exemption')")
    op.execute("UPDATE billing_overrides SET applied_at = starts_at "
               "WHERE kind = 'free_subscription'")
    op.create_index('uq_billing_overrides_live_adjustment', 'billing_overrides',
                    ['owner_type', 'owner_id', 'kind'], unique=True,
                    postgresql_where=sa.text(LIVE_ADJUSTMENT),
                    sqlite_where=sa.text(LIVE_ADJUSTMENT))


def downgrade() -> None:
    op.drop_index('uq_billing_overrides_live_adjustment', table_name='billing_overrides')
    with op.batch_alter_table('billing_overrides', schema=None) as batch_op:
        batch_op.drop_index('ix_billing_overrides_subscription')
        batch_op.drop_constraint('override_state', type_='check')
        for column in ('failure_code', 'state_changed_at', 'expired_at', 'applied_at', 'stripe_discount_id',
                       'stripe_coupon_id', 'stripe_subscription_id', 'currency',
                       'amount_off_cents', 'state'):
            batch_op.drop_column(column)
