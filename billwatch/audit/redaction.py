"""The one redactor: everything bound for audit metadata, logs, alert mail or error text.

Card numbers (13-19 digits passing Luhn, with spaces or dashes) keep only their last four
digits; CVV/CVC values and Stripe secrets never survive; control characters are escaped so one
event stays one log line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_PAN_CANDIDATE = re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
_SECRET = re.compile(r"\b(?:sk|rk)_(?:test|live)_[A-Za-z0-9]+|\bwhsec_[A-Za-z0-9+/=_]+|\btok_[A-Za-z0-9]+")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
_SENSITIVE_KEYS = re.compile(r"(?i)^(cvc|cvv|cvv2|cvc2|cid|security_code|card_?number|number|pan|"
                             r"authorization|password|secret|api_key|token_secret)$")
_DROP_KEYS = re.compile(r"(?i)^(cvc|cvv|cvv2|cvc2|cid|security_code)$")
REDACTED = "[REDACTED]"


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _mask_pan(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    if 13 <= len(digits) <= 19 and luhn_valid(digits):
        return f"[PAN ****{digits[-4:]}]"
    return match.group(0)


def redact_text(text: str) -> str:
    """Mask card numbers and secrets in free text and escape control characters."""
    text = _PAN_CANDIDATE.sub(_mask_pan, text)
    text = _SECRET.sub(REDACTED, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)


def redact(value: Any) -> Any:
    """Redact a JSON-like value deeply; keys that name card secrets lose their values."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if _DROP_KEYS.match(name):
                continue
            if _SENSITIVE_KEYS.match(name) and isinstance(item, (str, int)) and item not in ("", None):
                out[redact_text(name)] = _mask_sensitive(name, item)
            else:
                out[redact_text(name)] = redact(item)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(item) for item in value]
    if isinstance(value, (bool, float, type(None))):
        return value
    if isinstance(value, int):
        text = str(value)
        return redact_text(text) if text != redact_text(text) else value
    return redact_text(str(value))


def _mask_sensitive(name: str, value: str | int) -> str:
    digits = re.sub(r"\D", "", str(value))
    if name.lower() in ("number", "card_number", "cardnumber", "pan") and len(digits) >= 4:
        return f"****{digits[-4:]}"
    return REDACTED
