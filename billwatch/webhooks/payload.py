"""Redacting a stored event without a deep walk when there is nothing to redact.

The redactor walks every string and key of a payload through its rules, which costs more per
event than the rest of the webhook path together. Nearly all Stripe events hold nothing it would
change, and that can be seen on the raw body cheaply:

* text rules (card numbers, secrets, tokens, credentials, CVV words, control characters) are
  flagged by byte scans that match a superset of what they rewrite: a run of 13 digits once
  every separator is removed, the prefixes and words those rules look for, any JSON escape,
  any ``%`` (the redactor percent-decodes), any non-ASCII byte (it normalises Unicode);
* key rules (CVV keys dropped, secret keys replaced, card-number keys masked, keys that mark a
  mapping as card data) are asked of the redactor itself: each distinct key is probed once with
  sample values and the answer cached, so new key rules in the redactor apply here unchanged.

When nothing is flagged the parsed event is stored as it is; otherwise the full redactor runs.
Either way the stored payload is what :func:`billwatch.redaction.redact` returns (a
property test holds the two equal). A new *text* rule in the redactor needs its trigger added to
``_FLAGS`` below; the test's samples cover the rules known today.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

from billwatch.redaction import CVV_WORDS, redact

_DIGITS_TO_ZERO = bytes(48 if 48 <= b <= 57 else 120 for b in range(256))
"""Every digit becomes ``0``, every letter ``x``; everything else is deleted first."""
_NOT_ALNUM = bytes(b for b in range(256) if not (48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122))
"""The redactor joins digit groups across separators, so the scan ignores every separator."""
_CARD_RUN = b"0" * 13
_FLAGS = (b"whsec_", b"tok_", b"_secret_", b"eyj", b"\\", b"\x7f", b"%")
"""Triggers of the text rules, searched in the lower-cased body (``%``: percent-decoding)."""
_TEXT_RULES = (
    ((b"sk_", b"rk_"), re.compile(rb"(?<![a-z0-9])[sr]k_[a-z0-9_]{6,}|[sr]k_(?:live|test)_")),
    ((b"authorization",), re.compile(rb"authorization[\"']?\s*[:=]")),
    ((b"bearer", b"basic"), re.compile(rb"(?:bearer|basic)\s+[a-z0-9._~+/=-]{12,}")),
    ((b"cvc", b"cvv", b"cvn", b"csc", b"cid", b"cvd", b"cav2", b"security", b"verification"),
     re.compile(rb"(?<![a-z])(?:" + CVV_WORDS.encode() + rb")[^0-9]{0,16}?[0-9]{3,4}(?![0-9])")),
)
"""(cheap substrings, the redactor's own rule) pairs, also on the lower-cased body."""
_KEY = re.compile(rb'"([^"\\]*)"\s*:')
_PROBES: tuple[Any, ...] = ("x", "123456789012", 123456789012, True, {"k": "v"}, ["v"])
_PAYMENT_METHOD = "pm_probe0probe"
_ALWAYS, _VALUED, _CARD = 1, 2, 4


@lru_cache(maxsize=4096)
def _key_rule(key: bytes) -> int:
    """What the redactor does with a key, learnt once by asking it with sample values.

    ``_ALWAYS``: the key or its value changes whatever the value (CVV keys are dropped);
    ``_VALUED``: a non-empty value changes (secret keys, card-number keys); ``_CARD``: the key
    marks its mapping as card data, which hides payment-method ids beside it.
    """
    name = key.decode("ascii")
    rule = _ALWAYS if redact({name: None}) != {name: None} else 0
    if any(redact({name: value}) != {name: value} for value in _PROBES):
        rule |= _VALUED
    for value in _PROBES:
        sample = {name: value, "probe_sibling": _PAYMENT_METHOD}
        if redact(sample).get("probe_sibling") != _PAYMENT_METHOD:
            rule |= _CARD
    return rule


def _values_change(body: bytes, key: bytes) -> bool:
    """Whether the redactor would change a value-dependent key as it stands in this body.

    Asked with the actual values (alone, and beside a payment-method id), so an invoice's
    ``"number": "BW-0042"`` passes while a ``"number"`` holding a card number does not. A nested
    object or list under such a key is left to the full redactor.
    """
    pattern = b'"' + re.escape(key) + rb'"\s*:\s*("[^"]*"|-?[0-9][0-9.eE+-]*|true|false|null|.)'
    return any(_value_changes(key, raw) for raw in re.findall(pattern, body))


@lru_cache(maxsize=4096)
def _value_changes(key: bytes, raw: bytes) -> bool:
    try:
        value = json.loads(raw)
    except ValueError:  # "{", "[": a container
        return True
    name = key.decode("ascii")
    if redact({name: value}) != {name: value}:
        return True
    return bool(redact({name: value, "probe_sibling": _PAYMENT_METHOD}).get("probe_sibling")
                != _PAYMENT_METHOD)


def may_need_redaction(body: bytes) -> bool:
    """False only when :func:`redact` would return the parsed body unchanged."""
    if not body.isascii():  # Unicode spaces, case folding, controls: leave them to the redactor
        return True
    if _CARD_RUN in body.translate(_DIGITS_TO_ZERO, _NOT_ALNUM):
        return True
    lower = body.lower()
    if any(flag in lower for flag in _FLAGS):
        return True
    if any(any(c in lower for c in cheap) and rule.search(lower) for cheap, rule in _TEXT_RULES):
        return True
    for key in set(_KEY.findall(body)):
        rule = _key_rule(key)
        if rule & _ALWAYS or (rule & _CARD and not rule & _VALUED and b"pm_" in lower):
            return True
        if rule & _VALUED and _values_change(body, key):
            return True
    return False


def redacted_payload(body: bytes, event: dict[str, Any]) -> dict[str, Any]:
    """``event`` (parsed from ``body``) fit to be stored: redacted, or untouched when clean."""
    if not may_need_redaction(body):
        return event
    cleaned: dict[str, Any] = redact(event)
    return cleaned
