"""console: sign-in links and console sessions

Revision ID: 0500_console
Revises: 0001_foundation
Create Date: 2026-12-01 10:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billwatch.db

revision: str = '0500_console'
down_revision: str | Sequence[str] | None = '0001_foundation'
branch_labels: str | Sequence[str] | None = ('console',)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('console_sign_in_links',
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('created_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used_at', billwatch.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_console_sign_in_links_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_console_sign_in_links')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_console_sign_in_links_token_hash'))
    )
    op.create_index(op.f('ix_console_sign_in_links_user_id'), 'console_sign_in_links', ['user_id'], unique=False)
    op.create_table('console_sessions',
    sa.Column('token_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('csrf_token', sa.String(length=64), nullable=False),
    sa.Column('created_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', billwatch.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_console_sessions_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_console_sessions')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_console_sessions_token_hash'))
    )
    op.create_index(op.f('ix_console_sessions_user_id'), 'console_sessions', ['user_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_console_sessions_user_id'), table_name='console_sessions')
    op.drop_table('console_sessions')
    op.drop_index(op.f('ix_console_sign_in_links_user_id'), table_name='console_sign_in_links')
    op.drop_table('console_sign_in_links')
