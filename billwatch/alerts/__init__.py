"""Alerts: rules over the audit trail, incidents that group them, e-mail delivery after commit.

The rules watch the trail of a runtime only: ``build_runtime`` (:mod:`billwatch.bootstrap`)
makes :class:`~billwatch.alerts.rules.AlertRules` an audit listener of every runtime it builds,
so every process that writes audit rows alerts, whatever it imported.
"""
