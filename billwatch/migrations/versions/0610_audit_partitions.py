"""audit partitions: audit_logs range-partitioned by month on PostgreSQL

Revision ID: 0610_audit_partitions
Revises: 0210_audit_integrity
Create Date: 2026-12-01 13:30:00

PostgreSQL: the existing ``audit_logs`` is renamed aside, a table of the same columns,
constraints and grants is created ``PARTITION BY RANGE (occurred_at)``, one partition is made
for every month that already has rows (and this month and the next ones), the rows are copied
unchanged (ids and content hashes are what the seals chain, so the chain is unchanged) and the
old table is dropped. The primary key becomes ``(id, occurred_at)``, as a partitioned table's
must hold its partition key. Beside the keyset B-trees, a BRIN index on ``occurred_at``.

A row whose month has no partition goes to ``audit_logs_default``; it is never refused.
Partitions are made by ``billwatch_audit_ensure_partitions(month, ahead)``, a ``SECURITY
DEFINER`` function of the owner (the service role may call it, and nothing else): it creates
each missing month as a plain table, moves that month's rows out of the default partition
through the maintenance path, attaches it, and gives it the TRUNCATE guard (row triggers are
cloned onto partitions by PostgreSQL itself). The guard now lets maintenance re-encrypt rows of
any partition of ``audit_logs``.

Both backends: ``audit_archives.month`` names the month an archive took whole (signed when set).
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = '0610_audit_partitions'
down_revision: str | Sequence[str] | None = '0210_audit_integrity'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AHEAD = 3
"""Months created ahead by the migration; ``billwatch migrate`` then applies the setting."""
ASIDE = "audit_logs_unpartitioned"
INDEXES = (
    ("ix_audit_logs_owner_time", "(owner_type, owner_id, occurred_at)"),
    ("ix_audit_logs_event_time", "(event_type, occurred_at)"),
    ("ix_audit_logs_actor_time", "(actor_user_id, occurred_at)"),
    ("ix_audit_logs_resource_time", "(resource_type, resource_id, occurred_at)"),
    ("ix_audit_logs_time", "(occurred_at, id)"),
    ("ix_audit_logs_assignment", "(manager_assignment_id)"),
    ("ix_audit_logs_stripe_event_id", "(stripe_event_id)"),
)
BRIN = "ix_audit_logs_occurred_brin"
PARTITION_LOCK = 0x6277_6175_6469_7470  # "bwauditp": partition makers take turns

PG_COPY_GRANTS = """
DO $$
DECLARE
    granted record;
BEGIN
    FOR granted IN
        SELECT a.privilege_type, a.grantee FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = '{schema}.{source}'::regclass AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON {schema}.{target} TO %s', granted.privilege_type,
                       CASE WHEN granted.grantee = 0 THEN 'PUBLIC'
                            ELSE quote_ident(granted.grantee::regrole::text) END);
    END LOOP;
END
$$
"""
"""Whatever roles could do to the old table they can do to the new one (``audit grants``)."""

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
        IF NOT EXISTS (SELECT 1 FROM pg_inherits
                       WHERE inhrelid = TG_RELID AND inhparent = '{schema}.audit_logs'::regclass)
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
"""As 0210's guard, but rows live in partitions: an UPDATE fires on the partition's trigger."""

PG_GUARD_0210 = PG_GUARD.replace(
    """IF NOT EXISTS (SELECT 1 FROM pg_inherits
                       WHERE inhrelid = TG_RELID AND inhparent = '{schema}.audit_logs'::regclass)""",
    "IF TG_TABLE_NAME <> 'audit_logs'")
"""The guard as 0210_audit_integrity left it, restored by the downgrade."""

PG_CREATE_PARTITION = """
CREATE FUNCTION {schema}.billwatch_audit_create_partition(month date) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    low timestamptz := (date_trunc('month', month)::date)::timestamp AT TIME ZONE 'UTC';
    high timestamptz := ((date_trunc('month', month) + interval '1 month')::date)::timestamp
                        AT TIME ZONE 'UTC';
    name text := 'audit_logs_' || to_char(date_trunc('month', month), 'YYYY_MM');
    opened boolean := false;
BEGIN
    IF to_regclass(format('{schema}.%I', name)) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('CREATE TABLE {schema}.%I (LIKE {schema}.audit_logs '
                   'INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    IF EXISTS (SELECT 1 FROM {schema}.audit_logs_default
               WHERE occurred_at >= low AND occurred_at < high) THEN
        -- the month's rows wait in the default partition: move them, unchanged, first
        IF NOT EXISTS (SELECT 1 FROM {schema}.audit_maintenance_windows
                       WHERE xact_id = txid_current()) THEN
            PERFORM {schema}.billwatch_audit_open_maintenance('partition');
            opened := true;
        END IF;
        EXECUTE format('WITH moved AS (DELETE FROM {schema}.audit_logs_default '
                       'WHERE occurred_at >= $1 AND occurred_at < $2 RETURNING *) '
                       'INSERT INTO {schema}.%I SELECT * FROM moved', name) USING low, high;
        IF opened THEN
            PERFORM {schema}.billwatch_audit_close_maintenance();
        END IF;
    END IF;
    EXECUTE format('ALTER TABLE {schema}.audit_logs ATTACH PARTITION {schema}.%I '
                   'FOR VALUES FROM (%L) TO (%L)', name, low, high);
    EXECUTE format('CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON {schema}.%I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION {schema}.billwatch_audit_guard()', name);
    EXECUTE format('REVOKE ALL ON {schema}.%I FROM PUBLIC', name);
    RETURN name;
END
$$
"""

PG_ENSURE_PARTITIONS = """
CREATE FUNCTION {schema}.billwatch_audit_ensure_partitions(first_month date, ahead integer)
RETURNS text[]
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    created text[] := '{{}}';
    made text;
BEGIN
    IF ahead < 0 OR ahead > 120 THEN
        RAISE EXCEPTION 'audit partitions: ahead must be 0..120 months, not %', ahead;
    END IF;
    PERFORM pg_advisory_xact_lock({lock});
    FOR step IN 0..ahead LOOP
        made := {schema}.billwatch_audit_create_partition(
            (date_trunc('month', first_month) + make_interval(months => step))::date);
        IF made IS NOT NULL THEN
            created := created || made;
        END IF;
    END LOOP;
    RETURN created;
END
$$
"""


def _schema() -> str:
    return str(op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one())


def _this_month() -> str:
    return datetime.now(UTC).strftime("%Y-%m-01")


def _upgrade_postgresql() -> None:
    schema = _schema()
    op.execute(f"ALTER TABLE {schema}.audit_logs RENAME TO {ASIDE}")
    op.execute(f"ALTER TABLE {schema}.{ASIDE} RENAME CONSTRAINT pk_audit_logs TO pk_{ASIDE}")
    for name, _ in INDEXES:
        op.execute(f"DROP INDEX {schema}.{name}")
    op.execute(f"CREATE TABLE {schema}.audit_logs (LIKE {schema}.{ASIDE} INCLUDING DEFAULTS "
               "INCLUDING CONSTRAINTS) PARTITION BY RANGE (occurred_at)")
    op.execute(PG_COPY_GRANTS.format(schema=schema, source=ASIDE, target="audit_logs"))
    op.execute(f"ALTER TABLE {schema}.audit_logs ADD CONSTRAINT pk_audit_logs "
               "PRIMARY KEY (id, occurred_at)")
    for name, columns in INDEXES:
        op.execute(f"CREATE INDEX {name} ON {schema}.audit_logs {columns}")
    op.execute(f"CREATE INDEX {BRIN} ON {schema}.audit_logs USING brin (occurred_at)")
    op.execute(f"CREATE TABLE {schema}.audit_logs_default PARTITION OF {schema}.audit_logs DEFAULT")
    op.execute(PG_GUARD.format(schema=schema))
    op.execute(f"CREATE TRIGGER audit_logs_append_only BEFORE UPDATE OR DELETE ON "
               f"{schema}.audit_logs FOR EACH ROW EXECUTE FUNCTION {schema}.billwatch_audit_guard()")
    for table in ("audit_logs", "audit_logs_default"):
        op.execute(f"CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON {schema}.{table} "
                   f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.billwatch_audit_guard()")
    op.execute(f"REVOKE ALL ON {schema}.audit_logs_default FROM PUBLIC")
    op.execute(PG_CREATE_PARTITION.format(schema=schema))
    op.execute(PG_ENSURE_PARTITIONS.format(schema=schema, lock=PARTITION_LOCK))
    op.execute(f"REVOKE ALL ON FUNCTION {schema}.billwatch_audit_create_partition(date), "
               f"{schema}.billwatch_audit_ensure_partitions(date, integer) FROM PUBLIC")
    op.execute(f"SELECT {schema}.billwatch_audit_create_partition(month) FROM (SELECT DISTINCT "
               f"date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS month "
               f"FROM {schema}.{ASIDE}) AS months ORDER BY month")
    op.execute(f"SELECT {schema}.billwatch_audit_ensure_partitions('{_this_month()}', {AHEAD})")
    op.execute(f"INSERT INTO {schema}.audit_logs SELECT * FROM {schema}.{ASIDE}")
    op.execute(f"DROP TABLE {schema}.{ASIDE}")


def _downgrade_postgresql() -> None:
    schema = _schema()
    op.execute(f"CREATE TABLE {schema}.{ASIDE} (LIKE {schema}.audit_logs INCLUDING DEFAULTS "
               "INCLUDING CONSTRAINTS)")
    op.execute(PG_COPY_GRANTS.format(schema=schema, source="audit_logs", target=ASIDE))
    op.execute(f"INSERT INTO {schema}.{ASIDE} SELECT * FROM {schema}.audit_logs")
    op.execute(f"DROP TABLE {schema}.audit_logs CASCADE")
    op.execute(f"DROP FUNCTION {schema}.billwatch_audit_ensure_partitions(date, integer)")
    op.execute(f"DROP FUNCTION {schema}.billwatch_audit_create_partition(date)")
    op.execute(f"ALTER TABLE {schema}.{ASIDE} RENAME TO audit_logs")
    op.execute(f"ALTER TABLE {schema}.audit_logs ADD CONSTRAINT pk_audit_logs PRIMARY KEY (id)")
    for name, columns in INDEXES:
        op.execute(f"CREATE INDEX {name} ON {schema}.audit_logs {columns}")
    op.execute(PG_GUARD_0210.format(schema=schema))
    op.execute(f"CREATE TRIGGER audit_logs_append_only BEFORE UPDATE OR DELETE ON "
               f"{schema}.audit_logs FOR EACH ROW EXECUTE FUNCTION {schema}.billwatch_audit_guard()")
    op.execute(f"CREATE TRIGGER audit_logs_no_truncate BEFORE TRUNCATE ON {schema}.audit_logs "
               f"FOR EACH STATEMENT EXECUTE FUNCTION {schema}.billwatch_audit_guard()")


def upgrade() -> None:
    # plain ADD COLUMN (no batch copy): SQLite keeps the table, and with it its triggers
    op.add_column('audit_archives', sa.Column('month', sa.String(length=7), nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        _upgrade_postgresql()


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        _downgrade_postgresql()
    op.execute("ALTER TABLE audit_archives DROP COLUMN month")
