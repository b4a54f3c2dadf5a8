"""Alerts: rules over the audit trail, incidents that group them, e-mail delivery after commit.

Importing the package subscribes the alert rules to the audit recorder (the app factory, the
worker and ``billwatch.models`` import it), so every process that writes audit rows alerts.
"""

from billwatch.alerts import rules as rules
