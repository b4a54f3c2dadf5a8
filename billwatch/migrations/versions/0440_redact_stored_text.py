"""redaction: free text stored before the redacted column types is redacted in place

Revision ID: 0440_redact_stored_text
Revises: 0001_foundation
Create Date: 2026-12-01 11:20:00

Reasons, notes, names and Stripe references of the foundation tables were stored as typed, so a
card number or a secret typed into an override reason sat in the database verbatim. This pass
runs the one redactor over them (it is idempotent: redacted text stays as it is). Tables of the
other branches are redacted as they are read, and the audit trail keeps the text its hash covers.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from billwatch.redacted import clean

revision: str = "0440_redact_stored_text"
down_revision: str | Sequence[str] | None = "0001_foundation"
branch_labels: str | Sequence[str] | None = ("redaction",)
depends_on: str | Sequence[str] | None = None

COLUMNS: dict[str, dict[str, int | None]] = {
    "users": {"name": 200, "email": 320},
    "organizations": {"name": 200},
    "billing_overrides": {"reason": None, "revoke_reason": None},
    "transactions": {"note": None, "reason": 40, "failure_code": 80},
}
"""Free text of the foundation branch, with each column's length."""


def upgrade() -> None:
    connection = op.get_bind()
    for table_name, columns in COLUMNS.items():
        table = sa.table(table_name, sa.column("id"), *(sa.column(name) for name in columns))
        for row in connection.execute(sa.select(table)).mappings().all():
            changed = {name: clean(row[name], length) for name, length in columns.items()
                       if isinstance(row[name], str) and clean(row[name], length) != row[name]}
            if changed:
                connection.execute(table.update().where(table.c.id == row["id"]).values(**changed))


def downgrade() -> None:
    """Nothing to restore: the raw text is gone on purpose."""
