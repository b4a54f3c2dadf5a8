"""PostgreSQL privileges that make the audit tables append-only for the application itself.

Three roles, each holding only what it needs:

* the **owner** runs ``billwatch migrate``, ``archive`` and ``rotate-key``; it alone may call
  ``billwatch_audit_open_maintenance`` (the one path through the append-only triggers);
* the **service role** (API, processors, workers) INSERTs and SELECTs audit rows and nothing
  more: it cannot change or delete a row, and cannot write ``audit_seals``,
  ``audit_checkpoints`` or ``audit_archives``, so it cannot forge a seal that would leave
  ``verify`` broken, nor a checkpoint;
* the **sealer role** (``BILLWATCH_AUDIT_SEALER_DATABASE_URL``, used by the scheduled seal,
  ``billwatch audit checkpoint`` and ``verify``) reads the audit tables and INSERTs seals and
  checkpoints only.

On PostgreSQL ``audit_logs`` is partitioned by month. Statements through the parent are
checked against the parent's privileges only, so the partitions themselves are closed to both
roles (a broad ``GRANT ... ON ALL TABLES`` would otherwise reach them, and with them rows a
direct ``DELETE`` could name); partitions made later are created by the owner with no grants.
The service role may call ``billwatch_audit_ensure_partitions``, which only ever adds
partitions, so the scheduler can make them ahead.

``billwatch audit grants --role NAME --sealer-role NAME`` prints this SQL; the README shows it
and a test applies it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

AUDIT_TABLES = ("audit_logs", "audit_seals", "audit_checkpoints", "audit_archives")
SEALER_WRITES = ("audit_seals", "audit_checkpoints")
OWNER_ONLY = ("audit_maintenance", "audit_maintenance_windows", "alembic_version")
MAINTENANCE_FUNCTIONS = ("billwatch_audit_open_maintenance(text)",
                         "billwatch_audit_close_maintenance()")
PARTITION_FUNCTION = "billwatch_audit_ensure_partitions(date, integer)"
CLOSE_PARTITIONS = """DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits
                WHERE inhparent = to_regclass('{schema}.audit_logs') LOOP
        EXECUTE format('REVOKE ALL ON %s FROM {role}', part);
    END LOOP;
END
$$"""
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _identifiers(*names: str) -> None:
    if not all(_ROLE.match(name) for name in names):
        raise ValueError("role and schema must be plain lower-case SQL identifiers")


def _qualified(schema: str, names: Iterable[str]) -> str:
    """``schema.a, schema.b``: one SQL list of the names in the schema."""
    return ", ".join(f"{schema}.{name}" for name in names)


def _closed_to(role: str, schema: str) -> list[str]:
    """What no role but the owner may hold, whatever broad grant came before."""
    owner_only = _qualified(schema, OWNER_ONLY)
    functions = _qualified(schema, MAINTENANCE_FUNCTIONS)
    return [
        f"REVOKE ALL ON {owner_only} FROM {role}",
        f"GRANT SELECT ON {schema}.alembic_version TO {role}",
        f"REVOKE ALL ON FUNCTION {functions} FROM {role}",
        CLOSE_PARTITIONS.format(schema=schema, role=role),
    ]


def app_role_grants(role: str, schema: str = "public") -> list[str]:
    """Statements giving ``role`` what the service needs, and no more on the audit tables."""
    _identifiers(role, schema)
    audit = _qualified(schema, AUDIT_TABLES)
    sealed = _qualified(schema, (*SEALER_WRITES, "audit_archives"))
    return [
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        f"REVOKE UPDATE, DELETE, TRUNCATE ON {audit} FROM {role}",
        f"REVOKE INSERT ON {sealed} FROM {role}",
        *_closed_to(role, schema),
        f"GRANT EXECUTE ON FUNCTION {schema}.{PARTITION_FUNCTION} TO {role}",
    ]


def sealer_role_grants(role: str, schema: str = "public") -> list[str]:
    """Statements giving the sealing job's ``role`` reads of the trail and seal/checkpoint inserts."""
    _identifiers(role, schema)
    audit = _qualified(schema, AUDIT_TABLES)
    writes = _qualified(schema, SEALER_WRITES)
    return [
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"REVOKE ALL ON {audit} FROM {role}",
        f"GRANT SELECT ON {audit} TO {role}",
        f"GRANT INSERT ON {writes} TO {role}",
        *_closed_to(role, schema),
    ]
