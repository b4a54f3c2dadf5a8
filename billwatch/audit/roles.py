"""PostgreSQL privileges that make the audit tables append-only for the application itself.

The triggers refuse UPDATE/DELETE/TRUNCATE to everyone outside the maintenance path; privileges
go further for the role the service runs as: it holds only INSERT and SELECT on the audit
tables, so even the maintenance path is closed to it. Archiving and key rotation run as the
owner (the role that ran ``billwatch migrate``). ``billwatch audit grants --role NAME`` prints
this SQL; the README shows it and a test applies it.
"""

from __future__ import annotations

import re

AUDIT_TABLES = ("audit_logs", "audit_seals", "audit_checkpoints", "audit_archives")
_ROLE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def app_role_grants(role: str, schema: str = "public") -> list[str]:
    """Statements giving ``role`` what the service needs, and no more on the audit tables."""
    if not _ROLE.match(role) or not _ROLE.match(schema):
        raise ValueError("role and schema must be plain lower-case SQL identifiers")
    audit = ", ".join(f"{schema}.{table}" for table in AUDIT_TABLES)
    return [
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        f"REVOKE UPDATE, DELETE, TRUNCATE ON {audit} FROM {role}",
        f"REVOKE ALL ON {schema}.audit_maintenance, {schema}.alembic_version FROM {role}",
        f"GRANT SELECT ON {schema}.alembic_version TO {role}",
    ]
