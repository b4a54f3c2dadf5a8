"""Is this body really from Stripe, and recent? The check that runs before anything is stored.

The HMAC comparison is the SDK's (``stripe.WebhookSignature.verify_header``), over the raw body
exactly as received. On top of it, billwatch refuses timestamps from the future (the SDK only
bounds the past) and accepts any of the configured secrets, so a secret can be rotated without
dropping deliveries. The body is parsed with ``json.loads`` afterwards: building the SDK's event
objects costs far more than the check itself and we only need plain dicts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import stripe

from billwatch.config import Settings
from billwatch.errors import BadRequest, PayloadTooLarge
from billwatch.webhooks.bounds import OutOfBounds, check_bounds

MAX_BODY_BYTES = 1024 * 1024
"""Stripe events are a few kilobytes; anything over 1 MiB is not one."""
MAX_FUTURE_SKEW_SECONDS = 60
"""How far ahead of our clock a signature timestamp may be before it counts as forged."""


class RejectReason(StrEnum):
    """Why a delivery was refused: the metric label (closed set) and the audit row's reason."""

    MISSING_SIGNATURE = "missing_signature"
    SIGNATURE = "signature"
    TIMESTAMP = "timestamp"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"


class WebhookRejected(BadRequest):
    """A delivery we refuse before storing anything: 400 (or 413), one audit row, one metric."""

    def __init__(self, reason: RejectReason, code: str, detail: str) -> None:
        super().__init__(detail, code=code)
        self.reason = reason


class BodyTooLarge(PayloadTooLarge):
    reason = RejectReason.TOO_LARGE

    def __init__(self, size: int | None) -> None:
        shown = f"{size} bytes" if size is not None else "the streamed body"
        super().__init__(f"webhook body of {shown} exceeds {MAX_BODY_BYTES} bytes",
                         code="payload_too_large")


@dataclass(frozen=True, slots=True)
class SignatureHeader:
    timestamp: int
    signatures: tuple[str, ...]


def parse_header(header: str | None) -> SignatureHeader:
    """``t=...,v1=...[,v1=...]``, split exactly as the SDK splits it; other schemes are ignored.

    The SDK takes the *first* ``t`` and we bound that same timestamp from the future, so the
    two must read one header the same way: a header with more than one ``t`` is refused
    outright (``t=<future>,v1=...,t=<now>`` would otherwise be signed with one and checked
    against the other), as is any ``t`` or ``v1`` the SDK would fail to read.
    """
    if not header:
        raise WebhookRejected(RejectReason.MISSING_SIGNATURE, "missing_signature",
                              "no Stripe-Signature header")
    items = [item.split("=", 2) for item in header.split(",")]
    timestamps = [item for item in items if item[0] == "t"]
    signatures = [item for item in items if item[0] == "v1"]
    if len(timestamps) > 1:
        raise WebhookRejected(RejectReason.MALFORMED, "malformed_signature_header",
                              "Stripe-Signature carries more than one t= timestamp")
    try:
        if len(timestamps) != 1 or not signatures or any(len(i) < 2 for i in signatures):
            raise ValueError("incomplete")
        value = timestamps[0][1]
        if not (value.isascii() and value.isdigit()):
            raise ValueError("not a plain number")
        timestamp = int(value)
    except (IndexError, ValueError) as error:
        raise WebhookRejected(RejectReason.MALFORMED, "malformed_signature_header",
                              "Stripe-Signature needs one t= timestamp and at least one v1= "
                              "signature") from error
    return SignatureHeader(timestamp, tuple(item[1] for item in signatures))


def webhook_secrets(settings: Settings) -> list[str]:
    """The current secret first, then any previous ones still honoured during a rotation."""
    secrets = [settings.stripe_webhook_secret.get_secret_value()]
    secrets += [s.get_secret_value() for s in settings.stripe_webhook_secrets_previous]
    return [s for s in secrets if s]


def verify(body: bytes, header: str | None, *, secrets: Sequence[str], tolerance: int,
           now: float | None = None) -> str:
    """Check the signature over the raw body; return the body as text for parsing."""
    parsed = parse_header(header)
    now = time.time() if now is None else now
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise WebhookRejected(RejectReason.MALFORMED, "malformed_body",
                              "webhook body is not UTF-8") from error
    stale = False
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance)
        except stripe.SignatureVerificationError as error:
            stale = stale or str(error).startswith("Timestamp outside")
            continue
        if parsed.timestamp > now + MAX_FUTURE_SKEW_SECONDS:
            raise WebhookRejected(RejectReason.TIMESTAMP, "timestamp_in_future",
                                  f"signature timestamp is {parsed.timestamp - int(now)} s "
                                  "in the future")
        return text
    if stale:  # the SDK checks the HMAC first: a stale complaint means the signature matched
        raise WebhookRejected(RejectReason.TIMESTAMP, "timestamp_too_old",
                              f"signature timestamp is older than {tolerance} s")
    raise WebhookRejected(RejectReason.SIGNATURE, "invalid_signature",
                          "no v1 signature matches a configured webhook secret")


def parse_event(text: str) -> dict[str, Any]:
    """The event as a plain dict, with the fields every later step relies on checked."""
    try:
        event = json.loads(text, parse_constant=_no_constants)
    except (ValueError, RecursionError) as error:  # deep nesting exhausts the parser's stack
        raise WebhookRejected(RejectReason.MALFORMED, "malformed_json",
                              f"webhook body is not JSON: {error}") from error
    return checked_event(event)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def checked_event(event: Any) -> dict[str, Any]:
    """``event`` if it has an id, a type, a ``created`` time and a ``data.object``, all storable."""
    if not isinstance(event, dict):
        raise WebhookRejected(RejectReason.MALFORMED, "malformed_event", "event is not an object")
    problems = [name for name, ok in (
        ("id", isinstance(event.get("id"), str) and 0 < len(event["id"]) <= 255),
        ("type", isinstance(event.get("type"), str) and 0 < len(event["type"]) <= 120),
        ("created", isinstance(event.get("created"), int) and not isinstance(event["created"], bool)),
        ("data.object", isinstance(event.get("data"), dict)
         and isinstance(event["data"].get("object"), dict)),
    ) if not ok]
    if problems:
        raise WebhookRejected(RejectReason.MALFORMED, "malformed_event",
                              f"event lacks valid {', '.join(problems)}")
    try:
        check_bounds(event)
    except OutOfBounds as error:  # signed, but holding what no column can store
        raise WebhookRejected(RejectReason.MALFORMED, "invalid_event_field", str(error)) from error
    return event
