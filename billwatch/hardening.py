"""Browser-facing hardening: security headers, redirect origins, the ``/metrics`` bearer token.

Billing and audit answers carry names, amounts and reasons, so no response may be cached, framed,
sniffed as another type or leak its URL in a Referer; HSTS is sent only when the request really
arrived over TLS. Checkout and portal URLs send a browser away from us, so only configured origins
are accepted (an open redirect on a billing domain is a phishing kit). ``/metrics`` shows MRR and
revenue, so it answers only to the scraper's token.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from billwatch.config import Settings
from billwatch.errors import Unauthorized, Unprocessable

HSTS = b"max-age=31536000; includeSubDomains"
_ALWAYS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
_API_ONLY: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
)
_DOCS_PATHS = ("/docs", "/redoc")
"""Swagger UI loads its script and styles from elsewhere; a strict CSP would blank it."""


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        extra = list(_ALWAYS)
        if not path.startswith(_DOCS_PATHS):
            extra += _API_ONLY
        if scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", HSTS))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in extra if name not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL, lower-cased; None for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    shown = f":{port}" if port is not None and port != default else ""
    return f"{parts.scheme}://{parts.hostname.lower()}{shown}"


def allowed_redirect_origins(settings: Settings) -> frozenset[str]:
    """The configured redirect origins, or the public base URL's when none are configured."""
    configured = settings.allowed_redirect_origins or [settings.public_base_url]
    return frozenset(origin for value in configured if (origin := origin_of(value)) is not None)


def check_redirect(url: str | None, settings: Settings, *, field: str) -> str | None:
    """``url`` when it points at an allowed origin (or is unset); otherwise a 422 naming ``field``."""
    if url is None:
        return None
    origin = origin_of(url)
    if origin is None:
        raise Unprocessable(f"{field} must be an absolute http(s) URL without credentials",
                            code="redirect_not_allowed")
    if origin not in allowed_redirect_origins(settings):
        raise Unprocessable(f"{field} points at {origin}, which is not an allowed redirect origin "
                            "(BILLWATCH_ALLOWED_REDIRECT_ORIGINS)", code="redirect_not_allowed")
    return url


def require_metrics_token(request: Request) -> None:
    """Let a scrape through with the configured bearer token (or in development without one)."""
    settings: Settings = request.app.state.settings
    expected = settings.metrics_token
    if expected is None:
        if settings.development:
            return
        raise Unauthorized("metrics need a bearer token: set BILLWATCH_METRICS_TOKEN",
                           code="metrics_token_not_configured")
    scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            supplied.strip().encode(), expected.get_secret_value().encode()):
        raise Unauthorized("missing or wrong metrics bearer token", code="invalid_metrics_token")
