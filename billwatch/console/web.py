"""Rendering and request plumbing shared by the console pages: templates, headers, forms, cookie."""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from billwatch.config import Settings
from billwatch.console import views
from billwatch.console.auth import COOKIE, SignedIn
from billwatch.errors import BadRequest, Forbidden

MAX_FORM_BYTES = 16 * 1024

SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                "form-action 'self'; base-uri 'none'; object-src 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
"""Every console answer: no inline script or style can run, nothing is cached or framed."""


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=PackageLoader("billwatch.console", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["money"] = lambda cents, currency: views.money(cents, currency)
    env.filters["percent"] = views.percent
    env.filters["when"] = lambda moment: moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"
    return env


def render(request: Request, template: str, *, who: SignedIn | None = None, status_code: int = 200,
           **context: Any) -> HTMLResponse:
    body = environment().get_template(template).render(
        who=who, csrf=who.csrf_token if who else "", path=request.url.path, **context)
    return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def to_sign_in(request: Request) -> RedirectResponse:
    """Back to sign-in, dropping a cookie that no longer opens a session."""
    response = redirect("/console/sign-in?expired=1")
    response.delete_cookie(COOKIE, path="/console")
    return response


def set_session_cookie(response: RedirectResponse, token: str, settings: Settings,
                       request: Request) -> None:
    secure = request.url.scheme == "https" or settings.console_url.startswith("https://")
    response.set_cookie(COOKIE, token, max_age=settings.console_session_max_seconds,
                        path="/console", httponly=True, samesite="strict", secure=secure)


class FormError(BadRequest):
    code = "bad_form"


class CsrfRefused(Forbidden):
    code = "csrf_token_invalid"


async def form(request: Request) -> dict[str, str]:
    """A url-encoded form body, each field once; bounded in size."""
    if request.headers.get("content-type", "").split(";")[0].strip() != \
            "application/x-www-form-urlencoded":
        raise FormError("forms are sent url-encoded", code="bad_form")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise FormError("form too large", code="form_too_large")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as error:
        raise FormError("form is not UTF-8", code="bad_form") from error
    return {name: values[0] for name, values in fields.items() if "\x00" not in values[0]}


def require_csrf(who: SignedIn, fields: dict[str, str]) -> None:
    if not who.csrf_ok(fields.get("csrf")):
        raise CsrfRefused("the form's CSRF token is missing or not this session's")
