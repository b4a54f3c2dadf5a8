"""audit: encrypted metadata, row hashes, seals, checkpoints, archives, append-only triggers

Revision ID: 0200_audit
Revises: 0001_foundation
Create Date: 2026-11-30 09:00:00

Rows written before this revision are encrypted and hashed here with the configured audit keys
(``BILLWATCH_AUDIT_ENCRYPTION_KEYS``, ``BILLWATCH_AUDIT_HMAC_KEY``); they are sealed by the next
``billwatch audit checkpoint`` like any other row.
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

import billwatch.db
from billwatch.audit import crypto
from billwatch.audit.chain import (
    PROTECTED_COLUMNS,
    RowHasher,
    associated_data,
    canonical_metadata,
    canonical_values,
    column_text,
    content_bytes,
)
from billwatch.config import get_settings
from billwatch.migrations import AUDIT_KEYS

revision: str = '0200_audit'
down_revision: str | Sequence[str] | None = '0001_foundation'
branch_labels: str | Sequence[str] | None = ('audit',)
depends_on: str | Sequence[str] | None = None

GUARDED = ("audit_logs", "audit_seals", "audit_checkpoints", "audit_archives")
JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')

PG_GUARD = """
CREATE OR REPLACE FUNCTION billwatch_audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('billwatch.maintenance', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'audit table % is append-only: % refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'UPDATE' THEN
        IF TG_TABLE_NAME <> 'audit_logs'
           OR (to_jsonb(NEW) - 'metadata_ciphertext' - 'metadata_key_id')
              IS DISTINCT FROM (to_jsonb(OLD) - 'metadata_ciphertext' - 'metadata_key_id') THEN
            RAISE EXCEPTION 'audit table %: maintenance may only re-encrypt metadata', TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NULL;
END
$$
"""


def _audit_logs_table() -> sa.TableClause:
    columns = [sa.Column(name, sa.Uuid() if name in ("id", "actor_user_id", "manager_assignment_id", "owner_id")
                         else billwatch.db.UTCDateTime() if name == "occurred_at" else sa.String())
               for name in PROTECTED_COLUMNS if name != "content_hash"]
    return sa.table("audit_logs", *columns, sa.column("metadata", JSON),
                    sa.column("content_hash", sa.LargeBinary()),
                    sa.column("metadata_key_id", sa.String()),
                    sa.column("metadata_ciphertext", sa.LargeBinary()))


def _keys() -> crypto.AuditKeys:
    """The keys the caller of the migrations gave, else those of the configured settings."""
    given = context.config.attributes.get(AUDIT_KEYS)
    return given if isinstance(given, crypto.AuditKeys) else crypto.keys_for(get_settings())


def _protect_existing_rows() -> None:
    """Encrypt and hash rows the foundation wrote in plaintext."""
    bind = op.get_bind()
    table = _audit_logs_table()
    rows = bind.execute(sa.select(table)).all()
    if not rows:
        return
    keys = _keys()
    hasher = RowHasher(keys.hmac_key)
    for row in rows:
        plaintext = canonical_metadata(row.metadata or {})
        kid, blob = keys.ring.encrypt(plaintext, associated_data(row.id))
        digest = hasher(content_bytes(column_text(canonical_values(row)), plaintext))  # type: ignore[arg-type]
        bind.execute(table.update().where(table.c.id == row.id).values(
            content_hash=digest, metadata_key_id=kid, metadata_ciphertext=blob))


def _restore_plaintext() -> None:
    bind = op.get_bind()
    table = _audit_logs_table()
    keys = _keys()
    for row in bind.execute(sa.select(table.c.id, table.c.metadata_key_id, table.c.metadata_ciphertext)).all():
        data = json.loads(keys.ring.decrypt(row.metadata_key_id, row.metadata_ciphertext, associated_data(row.id)))
        bind.execute(table.update().where(table.c.id == row.id).values(metadata=data))


def _create_tables() -> None:
    op.create_table('audit_seals',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('audit_log_id', sa.Uuid(), nullable=False),
    sa.Column('chain_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('sealed_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit_seals')),
    sa.UniqueConstraint('audit_log_id', name=op.f('uq_audit_seals_audit_log_id'))
    )
    op.create_table('audit_checkpoints',
    sa.Column('last_seq', sa.BigInteger(), nullable=False),
    sa.Column('last_id', sa.Uuid(), nullable=True),
    sa.Column('row_count', sa.BigInteger(), nullable=False),
    sa.Column('batch_rows', sa.BigInteger(), nullable=False),
    sa.Column('head_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('created_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('signature', sa.LargeBinary(length=32), nullable=False),
    sa.Column('file_name', sa.String(length=255), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_checkpoints'))
    )
    op.create_index('ix_audit_checkpoints_seq', 'audit_checkpoints', ['last_seq'], unique=False)
    op.create_table('audit_archives',
    sa.Column('first_seq', sa.BigInteger(), nullable=False),
    sa.Column('last_seq', sa.BigInteger(), nullable=False),
    sa.Column('row_count', sa.BigInteger(), nullable=False),
    sa.Column('prev_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('head_hash', sa.LargeBinary(length=32), nullable=False),
    sa.Column('before', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_at', billwatch.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('file_name', sa.String(length=255), nullable=False),
    sa.Column('file_sha256', sa.LargeBinary(length=32), nullable=False),
    sa.Column('signature', sa.LargeBinary(length=32), nullable=False),
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_archives'))
    )
    op.create_index('ix_audit_archives_last_seq', 'audit_archives', ['last_seq'], unique=True)
    op.create_table('audit_maintenance',
    sa.Column('purpose', sa.String(length=40), nullable=False),
    sa.PrimaryKeyConstraint('purpose', name=op.f('pk_audit_maintenance'))
    )


def _create_triggers() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(PG_GUARD)
        for table in GUARDED:
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION billwatch_audit_guard()")
            op.execute(f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                       "FOR EACH STATEMENT EXECUTE FUNCTION billwatch_audit_guard()")
        return
    closed = "NOT EXISTS (SELECT 1 FROM audit_maintenance)"
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in PROTECTED_COLUMNS)
    for table in GUARDED:
        update_when = f"{closed} OR {changed}" if table == "audit_logs" else "1"
        op.execute(f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} WHEN {update_when} "
                   f"BEGIN SELECT RAISE(ABORT, 'audit table {table} is append-only: UPDATE refused'); END")
        op.execute(f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} WHEN {closed} "
                   f"BEGIN SELECT RAISE(ABORT, 'audit table {table} is append-only: DELETE refused'); END")


def _drop_triggers() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        for table in GUARDED:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP FUNCTION IF EXISTS billwatch_audit_guard()")
        return
    for table in GUARDED:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")


def upgrade() -> None:
    with op.batch_alter_table('audit_logs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('content_hash', sa.LargeBinary(length=32), nullable=True))
        batch_op.add_column(sa.Column('metadata_key_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('metadata_ciphertext', sa.LargeBinary(), nullable=True))
    _protect_existing_rows()
    with op.batch_alter_table('audit_logs', schema=None) as batch_op:
        batch_op.alter_column('content_hash', existing_type=sa.LargeBinary(length=32), nullable=False)
        batch_op.alter_column('metadata_key_id', existing_type=sa.String(length=32), nullable=False)
        batch_op.alter_column('metadata_ciphertext', existing_type=sa.LargeBinary(), nullable=False)
        batch_op.drop_column('metadata')
        batch_op.drop_index('ix_audit_logs_time')
        batch_op.create_index('ix_audit_logs_time', ['occurred_at', 'id'], unique=False)
        batch_op.create_index('ix_audit_logs_resource_time', ['resource_type', 'resource_id', 'occurred_at'], unique=False)
    _create_tables()
    _create_triggers()


def downgrade() -> None:
    _drop_triggers()
    op.drop_table('audit_maintenance')
    op.drop_index('ix_audit_archives_last_seq', table_name='audit_archives')
    op.drop_table('audit_archives')
    op.drop_index('ix_audit_checkpoints_seq', table_name='audit_checkpoints')
    op.drop_table('audit_checkpoints')
    op.drop_table('audit_seals')
    with op.batch_alter_table('audit_logs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('metadata', JSON, nullable=True))
    _restore_plaintext()
    with op.batch_alter_table('audit_logs', schema=None) as batch_op:
        batch_op.alter_column('metadata', existing_type=JSON, nullable=False)
        batch_op.drop_index('ix_audit_logs_resource_time')
        batch_op.drop_index('ix_audit_logs_time')
        batch_op.create_index('ix_audit_logs_time', ['occurred_at'], unique=False)
        batch_op.drop_column('metadata_ciphertext')
        batch_op.drop_column('metadata_key_id')
        batch_op.drop_column('content_hash')
