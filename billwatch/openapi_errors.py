"""The error envelope as the OpenAPI document shows it, and what each error status means.

Every refusal billwatch answers is ``{"error": code, "detail": reason}``; :class:`ErrorOut` is
that shape, and :func:`error_responses` the ``responses`` entry a route lists for the statuses
it can answer. :class:`~billwatch.http.AuditedRoute` works out which statuses apply from the
route itself, so no route has to remember to list them.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ValidationProblem(BaseModel):
    loc: list[str | int] = Field(description="Where: body, query, path or header, then the field.")
    msg: str
    type: str


class ErrorOut(BaseModel):
    """The error envelope of every 4xx and 5xx answer."""

    error: str = Field(description="A stable code: validation_error, malformed_json, "
                                   "missing_token, admin_required, not_found, ...")
    detail: str | list[ValidationProblem] = Field(
        description="Why, in words; for validation_error, each field's problem.")


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body is not JSON (`malformed_json`), or a required header is missing or invalid.",
    401: "No bearer token, or one that is invalid, expired or names no current user.",
    403: "The caller may not do this: admin role, owner, or billing-manager rights needed.",
    404: "A user, organization, subscription, transaction, override, alert or row named by the "
         "request does not exist.",
    409: "The current state refuses it (already cancelled, revoked, acknowledged, refunded...).",
    422: "A field is missing, has the wrong type, cannot be stored (NUL, control characters), is "
         "out of bounds (datetimes, int64), or the fields contradict each other.",
    500: "An unexpected error: nothing was committed, and the failure is audited.",
    502: "Stripe refused or failed the call.",
    504: "Stripe did not answer within the time budget.",
}


def error_responses(statuses: set[int]) -> dict[int | str, dict[str, Any]]:
    """``responses`` for ``statuses``, each with the envelope's schema and its meaning."""
    return {status: {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[status]}
            for status in sorted(statuses)}
