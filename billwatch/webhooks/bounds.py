"""Bounds on a verified event's fields, checked before anything of it is stored.

A valid signature proves the body came from whoever holds the webhook secret, not that every
field fits our columns. Fields that would make the database refuse the event later (and so
answer 500, store nothing and audit nothing) are refused here instead, as a 400 with the field's
path, one failure row and nothing stored:

* anywhere in the event: text with NUL or a lone surrogate (the payload is stored as JSON, which
  PostgreSQL cannot hold them in), integers outside int64, non-finite numbers (``1e400``);
* the event's ``id`` and ``type``: short ASCII tokens, as Stripe's are; ``created`` a Unix time
  a datetime can hold;
* ids (``id``, ``customer``, ``*_id``...): one line, at most 255 characters (their columns);
  codes (``code``, ``decline_code``, ``failure_code``, ``reason``): one line, at most 80;
  an invoice's ``currency``: three letters; Unix times (``created``, ``*_at``, ``*_start``,
  ``*_end``...): 0 to year 9998; amounts booked as money (``amount_paid``, ``amount_due``,
  ``amount_refunded``, a charge's or refund's ``amount``): non-negative; ``attempt_count``: a
  32-bit count.

The detail names the path only, never the value (which could be anything a sender typed).
"""

from __future__ import annotations

import math
import re
from typing import Any

from billwatch.schema_types import INT64_MAX, INT64_MIN, unstorable

MAX_TIMESTAMP = 253_370_764_799
"""9998-12-31T23:59:59Z: any later Unix time could overflow a conversion."""
INT32_MAX = 2**31 - 1
MAX_ID_CHARS = 255
MAX_CODE_CHARS = 80

_EVENT_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
_EVENT_TYPE = re.compile(r"[a-z0-9_]+(?:\.[a-z0-9_]+)*")
_CURRENCY = re.compile(r"[A-Za-z]{3}")
_SHOWN_KEY = re.compile(r"[A-Za-z0-9_]{1,40}")
_ID_KEYS = frozenset({"id", "object", "customer", "subscription", "invoice", "charge",
                      "payment_intent", "price", "plan", "product", "refund", "latest_invoice",
                      "payment_method", "subscription_item", "balance_transaction"})
_CODE_KEYS = frozenset({"code", "decline_code", "failure_code", "reason"})
_AMOUNT_KEYS = frozenset({"amount_paid", "amount_due", "amount_refunded"})
_AMOUNT_OBJECTS = frozenset({"charge", "refund"})
"""Objects whose ``amount`` is money billwatch books (balance transactions may be negative)."""
_TIME_KEYS = frozenset({"created", "date", "cancel_at", "trial_end", "next_payment_attempt",
                        "billing_cycle_anchor"})
_TIME_SUFFIXES = ("_at", "_start", "_end", "_date")


class OutOfBounds(ValueError):
    """A field of a verified event that no column could hold; ``str()`` is path and rule."""


def _path(parts: tuple[str, ...]) -> str:
    return ".".join(part if _SHOWN_KEY.fullmatch(part) or part.startswith("[") else "<key>"
                    for part in parts) or "event"


def _is_time_key(key: str) -> bool:
    return key in _TIME_KEYS or key.endswith(_TIME_SUFFIXES)


def _check_int(key: str, value: int, kind: Any) -> str | None:
    if _is_time_key(key) and not 0 <= value <= MAX_TIMESTAMP:
        return f"Unix time outside 0..{MAX_TIMESTAMP}"
    if not INT64_MIN <= value <= INT64_MAX:
        return "integer outside int64"
    if (key in _AMOUNT_KEYS or (key == "amount" and kind in _AMOUNT_OBJECTS)) and value < 0:
        return "negative amount"
    if key == "attempt_count" and not 0 <= value <= INT32_MAX:
        return "attempt count outside 0..2**31-1"
    return None


def _check_str(key: str, value: str, kind: Any) -> str | None:
    problem = unstorable(value, multiline=True)
    if problem:
        return f"text cannot be stored: {problem}"
    if key in _ID_KEYS or key.endswith("_id"):
        limit = MAX_ID_CHARS
    elif key in _CODE_KEYS:
        limit = MAX_CODE_CHARS
    elif key == "currency" and kind == "invoice":  # booked into a three-letter column
        return None if _CURRENCY.fullmatch(value) else "currency is not three letters"
    else:
        return None
    if len(value) > limit:
        return f"longer than {limit} characters"
    problem = unstorable(value, multiline=False)
    return f"not a one-line value: {problem}" if problem else None


def _check_value(key: str, value: Any, kind: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return _check_int(key, value, kind)
    if isinstance(value, float):
        return None if math.isfinite(value) else "number is not finite"
    if isinstance(value, str):
        return _check_str(key, value, kind)
    return None


def check_bounds(event: dict[str, Any]) -> None:
    """Raise :class:`OutOfBounds` for the first field of ``event`` that cannot be stored."""
    if not _EVENT_ID.fullmatch(event["id"]):
        raise OutOfBounds("id: not a Stripe event id (letters, digits, _ and -, at most 255)")
    if len(event["type"]) > 120 or not _EVENT_TYPE.fullmatch(event["type"]):
        raise OutOfBounds("type: not a Stripe event type (lower-case words joined by dots)")
    stack: list[tuple[tuple[str, ...], Any]] = [((), event)]
    while stack:  # iterative: nesting depth is bounded by the parser, not by our stack
        path, node = stack.pop()
        items = node.items() if isinstance(node, dict) else \
            ((f"[{index}]", item) for index, item in enumerate(node))
        kind = node.get("object") if isinstance(node, dict) else None
        for key, value in items:
            name = key if isinstance(node, dict) else (path[-1] if path else "")
            if isinstance(node, dict) and (problem := unstorable(key, multiline=False)):
                raise OutOfBounds(f"{_path((*path, key))}: key cannot be stored: {problem}")
            if isinstance(value, dict | list):
                stack.append(((*path, key), value))
            elif (problem := _check_value(name, value, kind)) is not None:
                raise OutOfBounds(f"{_path((*path, key))}: {problem}")
