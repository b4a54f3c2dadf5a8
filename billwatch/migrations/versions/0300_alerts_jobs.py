"""alerts and jobs: the alert ledger, cooldown windows, job runs, daily billing metrics

Revision ID: 0300_alerts_jobs
Revises: 0001_foundation
Create Date: 2026-11-29 23:14:31.159612
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import billwatch.db

revision: str = '0300_alerts_jobs'
down_revision: str | Sequence[str] | None = '0001_foundation'
branch_labels: str | Sequence[str] | None = ('alerts_jobs',)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('alert_cooldowns',
    sa.Column('dedup_key', sa.String(length=200), nullable=False),
    sa.Column('holder_alert_id', sa.Uuid(), nullable=True),
    sa.Column('last_sent_at', billwatch.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_alert_id', sa.Uuid(), nullable=True),
    sa.PrimaryKeyConstraint('dedup_key', name=op.f('pk_alert_cooldowns'))
    )
    op.create_table('daily_billing_metrics',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('definition_version', sa.Integer(), nullable=False),
    sa.Column('computed_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('active_subscriptions', sa.Integer(), nullable=False),
    sa.Column('active_by_owner_plan', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('new_subscriptions', sa.Integer(), nullable=False),
    sa.Column('cancelled_subscriptions', sa.Integer(), nullable=False),
    sa.Column('mrr_cents', sa.BigInteger(), nullable=False),
    sa.Column('paying_customers', sa.Integer(), nullable=False),
    sa.Column('arpu_cents', sa.Integer(), nullable=True),
    sa.Column('gross_revenue_cents', sa.BigInteger(), nullable=False),
    sa.Column('refunds_count', sa.Integer(), nullable=False),
    sa.Column('refunds_cents', sa.BigInteger(), nullable=False),
    sa.Column('payments_succeeded', sa.Integer(), nullable=False),
    sa.Column('payments_failed', sa.Integer(), nullable=False),
    sa.Column('payment_success_rate', sa.Float(), nullable=True),
    sa.Column('churn_window_days', sa.Integer(), nullable=False),
    sa.Column('churn_customers_start', sa.Integer(), nullable=False),
    sa.Column('churn_customers_lost', sa.Integer(), nullable=False),
    sa.Column('customer_churn_rate', sa.Float(), nullable=True),
    sa.Column('churn_mrr_start_cents', sa.BigInteger(), nullable=False),
    sa.Column('churn_mrr_lost_cents', sa.BigInteger(), nullable=False),
    sa.Column('revenue_churn_rate', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('day', name=op.f('pk_daily_billing_metrics'))
    )
    op.create_table('job_runs',
    sa.Column('job', sa.String(length=60), nullable=False),
    sa.Column('period', sa.String(length=40), nullable=False),
    sa.Column('status', sa.Enum('running', 'succeeded', 'failed', name='job_run_status', native_enum=False, create_constraint=True, length=40), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('started_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', billwatch.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('task_id', sa.String(length=255), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_runs')),
    sa.UniqueConstraint('job', 'period', name='job_period')
    )
    op.create_table('alerts',
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('severity', sa.Enum('info', 'warning', 'error', 'critical', name='alert_severity', native_enum=False, create_constraint=True, length=40), nullable=False),
    sa.Column('dedup_key', sa.String(length=200), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.Enum('pending', 'sent', 'failed', 'suppressed', name='alert_status', native_enum=False, create_constraint=True, length=40), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', billwatch.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('claimed_until', billwatch.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('sent_at', billwatch.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('suppressed_count', sa.Integer(), nullable=False),
    sa.Column('suppressed_since', billwatch.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('counted_in_id', sa.Uuid(), nullable=True),
    sa.Column('acknowledged_at', billwatch.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_by_user_id', sa.Uuid(), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['acknowledged_by_user_id'], ['users.id'], name=op.f('fk_alerts_acknowledged_by_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.create_index('ix_alerts_counted_in', ['counted_in_id'], unique=False)
        batch_op.create_index('ix_alerts_due', ['status', 'next_attempt_at'], unique=False)
        batch_op.create_index('ix_alerts_key_status', ['dedup_key', 'status'], unique=False)
        batch_op.create_index('ix_alerts_kind_time', ['kind', 'created_at'], unique=False)
        batch_op.create_index('ix_alerts_time', ['created_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_index('ix_alerts_time')
        batch_op.drop_index('ix_alerts_kind_time')
        batch_op.drop_index('ix_alerts_key_status')
        batch_op.drop_index('ix_alerts_due')
        batch_op.drop_index('ix_alerts_counted_in')

    op.drop_table('alerts')
    op.drop_table('job_runs')
    op.drop_table('daily_billing_metrics')
    op.drop_table('alert_cooldowns')
