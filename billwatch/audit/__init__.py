"""The audit trail: complete, redacted, tamper-evident, encrypted, admin-only, retained.

What other domains use:

* :func:`billwatch.audit.recorder.record` — add the audit row to the caller's session;
  :func:`~billwatch.audit.recorder.subscribe` for in-transaction listeners,
  :func:`~billwatch.audit.recorder.on_write_failure` for rows that could not be written;
* :func:`billwatch.redaction.redact` / ``redact_text`` — for anything from outside (the redactor
  sits below every domain, in :mod:`billwatch.redaction`);
* :func:`billwatch.audit.sealing.checkpoint` — the hourly seal and signed checkpoint;
* :func:`billwatch.audit.verify.verify` — what ``billwatch audit verify`` runs.

The README's "Audit trail" section says what each part guarantees.
"""
