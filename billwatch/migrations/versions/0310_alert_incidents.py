"""alert incidents, uncertain mails, the installation's first day

Incidents group a key's occurrences; ``alerts.copies`` and the ``uncertain`` status bound the
copies of a mail to two; ``installation`` keeps the day before which no report is due.

Revision ID: 0310_alert_incidents
Revises: 0300_alerts_jobs
Create Date: 2026-12-01 10:26:13.735960
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy import text

import billwatch.db

revision: str = '0310_alert_incidents'
down_revision: str | Sequence[str] | None = '0300_alerts_jobs'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = ('pending', 'sent', 'failed', 'suppressed')
NEW_STATUSES = (*OLD_STATUSES, 'uncertain')


def _status(values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name='alert_status', native_enum=False, create_constraint=True,
                   length=40)


def _set_statuses(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name == 'sqlite':  # a CHECK changes only by rebuilding the table
        with op.batch_alter_table('alerts', recreate='always') as batch_op:
            batch_op.alter_column('status', existing_type=_status(old), type_=_status(new),
                                  existing_nullable=False)
        return
    op.drop_constraint(op.f('ck_alerts_alert_status'), 'alerts', type_='check')
    listed = ", ".join(f"'{value}'" for value in new)
    op.create_check_constraint(op.f('ck_alerts_alert_status'), 'alerts', f"status IN ({listed})")


def _record_installation() -> None:
    """The first day is the earliest evidence: a stored daily figure, a job run, or now."""
    bind = op.get_bind()
    earliest = [bind.execute(text("SELECT MIN(started_at) FROM job_runs")).scalar(),
                bind.execute(text("SELECT MIN(computed_at) FROM daily_billing_metrics")).scalar()]
    known = [moment for moment in earliest if moment is not None]
    installed = min([billwatch.db.utcnow(), *[_aware(moment) for moment in known]])
    op.bulk_insert(sa.table('installation', sa.column('id', sa.Integer()),
                            sa.column('installed_at', billwatch.db.UTCDateTime(timezone=True))),
                   [{'id': 1, 'installed_at': installed}])


def _aware(moment: object) -> datetime:
    value = moment if isinstance(moment, datetime) else datetime.fromisoformat(str(moment))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def upgrade() -> None:
    op.create_table('installation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('installed_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_installation'))
    )
    op.create_table('alert_incidents',
    sa.Column('dedup_key', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('severity', sa.Enum('info', 'warning', 'error', 'critical', name='incident_severity', native_enum=False, create_constraint=True, length=40), nullable=False),
    sa.Column('subject', sa.String(length=200), nullable=False),
    sa.Column('status', sa.Enum('firing', 'resolved', name='incident_status', native_enum=False, create_constraint=True, length=40), nullable=False),
    sa.Column('first_seen_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('resolved_at', billwatch.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('occurrences', sa.Integer(), nullable=False),
    sa.Column('mailed_occurrences', sa.Integer(), nullable=False),
    sa.Column('mails_sent', sa.Integer(), nullable=False),
    sa.Column('last_mail_at', billwatch.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_at', billwatch.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('acknowledged_by_user_id', sa.Uuid(), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.ForeignKeyConstraint(['acknowledged_by_user_id'], ['users.id'], name=op.f('fk_alert_incidents_acknowledged_by_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_incidents'))
    )
    with op.batch_alter_table('alert_incidents', schema=None) as batch_op:
        batch_op.create_index('ix_alert_incidents_key', ['dedup_key', 'first_seen_at'], unique=False)
        batch_op.create_index('ix_alert_incidents_last_seen', ['last_seen_at'], unique=False)

    with op.batch_alter_table('alert_cooldowns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('incident_id', sa.Uuid(), nullable=True))

    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('incident_id', sa.Uuid(), nullable=True))
        batch_op.add_column(sa.Column('copies', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('uncertain_at', billwatch.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_alerts_incident', ['incident_id', 'status'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_alerts_incident_id_alert_incidents'), 'alert_incidents', ['incident_id'], ['id'])
    _set_statuses(OLD_STATUSES, NEW_STATUSES)
    _record_installation()



def downgrade() -> None:
    op.execute("UPDATE alerts SET status = 'sent' WHERE status = 'uncertain'")  # probably delivered
    _set_statuses(NEW_STATUSES, OLD_STATUSES)
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_alerts_incident_id_alert_incidents'), type_='foreignkey')
        batch_op.drop_index('ix_alerts_incident')
        batch_op.drop_column('uncertain_at')
        batch_op.drop_column('copies')
        batch_op.drop_column('incident_id')

    with op.batch_alter_table('alert_cooldowns', schema=None) as batch_op:
        batch_op.drop_column('incident_id')

    with op.batch_alter_table('alert_incidents', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_incidents_last_seen')
        batch_op.drop_index('ix_alert_incidents_key')

    op.drop_table('alert_incidents')
    op.drop_table('installation')
