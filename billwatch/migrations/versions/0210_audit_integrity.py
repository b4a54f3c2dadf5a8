"""audit integrity: maintenance only through an owner's function, a checkpoint chain

Revision ID: 0210_audit_integrity
Revises: 0200_audit
Create Date: 2026-12-01 10:30:00

PostgreSQL: the append-only guard no longer trusts ``billwatch.maintenance`` (a setting any
session may set). A transaction opens the maintenance path by calling
``billwatch_audit_open_maintenance(purpose)``, a ``SECURITY DEFINER`` function owned by the
role that ran this migration, with EXECUTE revoked from PUBLIC; it records the transaction id
in ``audit_maintenance_windows``, which only that owner may write, and the guard looks for it.

Both backends: ``audit_checkpoints`` gains the checkpoint format version and the hash of the
previous checkpoint, which every new checkpoint signs (a checkpoint chain).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0210_audit_integrity'
down_revision: str | Sequence[str] | None = '0200_audit'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_WINDOWS = """
CREATE TABLE {schema}.audit_maintenance_windows (
    xact_id bigint NOT NULL,
    purpose varchar(40) NOT NULL,
    opened_by name NOT NULL,
    opened_at timestamptz NOT NULL,
    CONSTRAINT pk_audit_maintenance_windows PRIMARY KEY (xact_id)
)
"""

PG_WINDOW_WRITERS = """
CREATE FUNCTION {schema}.billwatch_audit_window_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- only the table's owner (through the SECURITY DEFINER functions) writes windows, even if a
    -- broad GRANT ... ON ALL TABLES gave some other role INSERT here
    IF NOT pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID),
                       'MEMBER') THEN
        RAISE EXCEPTION 'audit maintenance windows are opened by the owner only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$
"""

PG_OPEN = """
CREATE FUNCTION {schema}.billwatch_audit_open_maintenance(purpose text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO {schema}.audit_maintenance_windows (xact_id, purpose, opened_by, opened_at)
    VALUES (txid_current(), left(purpose, 40), session_user, now())
    ON CONFLICT (xact_id) DO NOTHING;
END
$$
"""

PG_CLOSE = """
CREATE FUNCTION {schema}.billwatch_audit_close_maintenance() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM {schema}.audit_maintenance_windows WHERE xact_id = txid_current();
END
$$
"""

PG_GUARD = """
CREATE OR REPLACE FUNCTION {schema}.billwatch_audit_guard() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM {schema}.audit_maintenance_windows
                   WHERE xact_id = txid_current()) THEN
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

PG_SETTING_GUARD = """
CREATE OR REPLACE FUNCTION {schema}.billwatch_audit_guard() RETURNS trigger LANGUAGE plpgsql AS $$
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
"""The guard as 0200_audit created it, restored by the downgrade."""


def _schema() -> str:
    return str(op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one())


def _upgrade_postgresql() -> None:
    schema = _schema()
    op.execute(PG_WINDOWS.format(schema=schema))
    op.execute(PG_WINDOW_WRITERS.format(schema=schema))
    op.execute(f"CREATE TRIGGER audit_maintenance_windows_owner_only BEFORE INSERT OR UPDATE OR "
               f"DELETE ON {schema}.audit_maintenance_windows FOR EACH ROW EXECUTE FUNCTION "
               f"{schema}.billwatch_audit_window_guard()")
    op.execute(f"REVOKE ALL ON {schema}.audit_maintenance_windows FROM PUBLIC")
    for function in (PG_OPEN, PG_CLOSE, PG_GUARD):
        op.execute(function.format(schema=schema))
    for signature in ("billwatch_audit_open_maintenance(text)",
                      "billwatch_audit_close_maintenance()"):
        op.execute(f"REVOKE ALL ON FUNCTION {schema}.{signature} FROM PUBLIC")


def _downgrade_postgresql() -> None:
    schema = _schema()
    op.execute(PG_SETTING_GUARD.format(schema=schema))
    op.execute(f"DROP FUNCTION {schema}.billwatch_audit_close_maintenance()")
    op.execute(f"DROP FUNCTION {schema}.billwatch_audit_open_maintenance(text)")
    op.execute(f"DROP TABLE {schema}.audit_maintenance_windows")
    op.execute(f"DROP FUNCTION {schema}.billwatch_audit_window_guard()")


def upgrade() -> None:
    # plain ADD COLUMN (no batch copy): SQLite keeps the table, and with it its triggers
    op.add_column('audit_checkpoints', sa.Column('version', sa.Integer(), nullable=False,
                                                 server_default='1'))
    op.add_column('audit_checkpoints', sa.Column('prev_hash', sa.LargeBinary(length=32),
                                                 nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        _upgrade_postgresql()


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        _downgrade_postgresql()
    for column in ('prev_hash', 'version'):  # plain DROP COLUMN, again to keep SQLite's triggers
        op.execute(f"ALTER TABLE audit_checkpoints DROP COLUMN {column}")
