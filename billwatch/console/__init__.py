"""The admin console: server-rendered pages over the same services the API uses.

Admins sign in with a single-use link sent by e-mail; a server-side session row stands behind an
HttpOnly, SameSite=Strict cookie, and every form carries the session's CSRF token. Pages hold no
business rules of their own: they read through the audit, alerts, webhooks and billing services,
and every view and action writes its audit row as the API's reads and writes do.
"""
