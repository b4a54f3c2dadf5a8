"""The redactor's former address, kept for the modules that still import it from here.

The redactor is :mod:`billwatch.redaction`, below every domain, so settings, logging and the
column types can use it without importing the audit trail; new code imports it from there.
"""

from __future__ import annotations

from billwatch.redaction import redact, redact_text

__all__ = ["redact", "redact_text"]
