"""token revocation: revoked token ids and per-user "not before" cutoffs

Revision ID: 0450_token_revocation
Revises: 0001_foundation
Create Date: 2026-12-01 10:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import billwatch.db

revision: str = '0450_token_revocation'
down_revision: str | Sequence[str] | None = '0001_foundation'
branch_labels: str | Sequence[str] | None = ('token_revocation',)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('revoked_tokens',
    sa.Column('jti', sa.String(length=64), nullable=False),
    sa.Column('expires_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('jti', name=op.f('pk_revoked_tokens'))
    )
    op.create_table('user_token_cutoffs',
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('not_before', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_token_cutoffs_user_id_users')),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_user_token_cutoffs'))
    )


def downgrade() -> None:
    op.drop_table('user_token_cutoffs')
    op.drop_table('revoked_tokens')
