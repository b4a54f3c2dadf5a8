"""The audit trail: complete, redacted, tamper-evident, encrypted, admin-only, retained.

What other domains use:

* :func:`billwatch.audit.recorder.record` — add the audit row to the caller's session; what
  else a row sets off (its keys, the listeners told of it, the hooks told when it cannot be
  written) is the session's runtime (:mod:`billwatch.runtime`);
* :func:`billwatch.redaction.redact` / ``redact_text`` — for anything from outside (the redactor
  sits below every domain, in :mod:`billwatch.redaction`);
* :func:`billwatch.audit.sealing.checkpoint` — the hourly seal and signed checkpoint;
* :func:`billwatch.audit.verify.verify` — what ``billwatch audit verify`` runs.

The README's "Audit trail" section says what each part guarantees.
"""
