"""The one-command demo: billwatch, a local Stripe and an SMTP sink through a simulated month.

Run it with ``billwatch demo`` (or ``make demo``). It is a development tool: it needs the
development extras (the local Stripe peer and the SMTP sink).
"""
