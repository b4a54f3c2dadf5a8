"""The one redactor: everything bound for audit metadata, logs, alert mail or error text.

What it guarantees, whatever the nesting (dicts, lists, dict keys, ints, free text):

* card numbers — any 13-19 digit sequence passing Luhn, with spaces or dashes between the
  digits in any grouping — keep at most their last four digits (the rest become ``*``);
* CVV/CVC fields are dropped, and ``cvc: 123`` in free text loses its value;
* Stripe secrets (``sk_``, ``rk_``, ``whsec_``), client secrets, ``tok_`` tokens, JWTs,
  ``Authorization`` headers and bearer credentials are replaced; ``pm_`` payment-method ids are
  replaced where they travel with card data (on their own they are harmless references);
* control characters, CR/LF and bidi overrides are escaped, so one event stays one log line.

False positives are preferred to leaks. The one exception is the canonical UUID form
(8-4-4-4-12): its digit groups joined by dashes would otherwise read as one long number, UUIDs
are everywhere in billwatch's data, and nobody writes a card number as a UUID. Anything else
with 13+ digits in a row is checked — a hex digest or an identifier that happens to hold a
Luhn-valid run loses those digits too, and so does a 13-digit epoch-millisecond timestamp that
passes Luhn (billwatch writes timestamps as ISO text).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

_PROTECTED = re.compile(
    r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
"""UUIDs: dash-separated digit groups that would otherwise read as one long number."""
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9](?:[ \-\u00a0]{0,3}[0-9])*")
_SECRET = re.compile(
    r"\b(?:sk|rk)_[A-Za-z0-9_]{6,}"
    r"|\bwhsec_[A-Za-z0-9+/=_]+"
    r"|\btok_[A-Za-z0-9_]+"
    r"|\b(?:pi|seti|cs)_[A-Za-z0-9]+_secret_[A-Za-z0-9]+"
    r"|\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # JWTs (our bearer tokens)
)
_AUTH_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization)([\"']?\s*[:=]\s*[\"']?)"
    r"(?:(?:bearer|basic|digest|token)\s+)?[^\s\"',;]+")
_BEARER = re.compile(
    r"(?i)\b(bearer|basic)\s+(?=[A-Za-z0-9._~+/=-]*[0-9+/=._~-])[A-Za-z0-9._~+/=-]{12,}")
_CVV_TEXT = re.compile(r"(?i)\b(cvc2?|cvv2?|cvn|csc|cid|security[ _-]?code)\b(\W{0,3})[0-9]{3,4}\b")
_PAYMENT_METHOD = re.compile(r"\bpm_[A-Za-z0-9_]+")
_WORTH_A_LOOK = re.compile(
    r"[0-9](?:[ \-\u00a0]{0,3}[0-9]){12}"
    r"|\b(?:sk|rk|whsec|tok|pm|pi|seti|cs)_|eyJ"
    r"|(?i:authorization|bearer|basic|cvc|cvv|cvn|csc|cid|security)"
    "|[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""One cheap scan: text matching none of these has nothing for any rule below to change."""
_UUID_ONLY = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SMALL = 10**12
"""Integers below this have at most 12 digits: never a card number."""
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

_CVV_KEYS = ("cvc", "cvv", "cvc2", "cvv2", "cvn", "csc", "cid", "cvd", "securitycode",
             "cardverificationvalue", "cardverificationcode")
_SECRET_KEYS = frozenset({
    "authorization", "proxyauthorization", "password", "passwd", "secret", "clientsecret",
    "apikey", "xapikey", "token", "accesstoken", "refreshtoken", "tokensecret", "secretkey",
    "privatekey", "webhooksecret", "stripesignature", "cookie", "setcookie"})
_PAN_KEYS = frozenset({"cardnumber", "pan", "ccnumber", "creditcardnumber", "accountnumber"})
_CARD_SIGNALS = frozenset({"cardnumber", "pan", "ccnumber", "expmonth", "expyear", *_CVV_KEYS})
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        total += _DOUBLED[value] if index % 2 else value
    return total % 10 == 0


def _masked_positions(digits: list[int]) -> set[int]:
    """Indexes of digits to hide: all but the last four of every 13-19 digit Luhn window.

    Every window is tried, not only the whole run, so a card number glued to other digits by a
    space ("order 12 4111 1111 1111 1111") is still found. Prefix sums split by index parity
    make each window's checksum O(1), so a long digit string costs linear time.
    """
    size = len(digits)
    plain = ([0] * (size + 1), [0] * (size + 1))
    doubled = ([0] * (size + 1), [0] * (size + 1))
    for index, digit in enumerate(digits):
        for parity in (0, 1):
            same = index % 2 == parity
            plain[parity][index + 1] = plain[parity][index] + (digit if same else 0)
            doubled[parity][index + 1] = doubled[parity][index] + (_DOUBLED[digit] if same else 0)
    hidden: set[int] = set()
    for end in range(12, size):
        last, other = end % 2, 1 - end % 2
        for length in range(13, 20):
            start = end - length + 1
            if start < 0:
                break
            total = (plain[last][end + 1] - plain[last][start]
                     + doubled[other][end + 1] - doubled[other][start])
            if total % 10 == 0:
                hidden.update(range(start, end - 3))
    return hidden


def _mask_run(match: re.Match[str]) -> str:
    run = match.group(0)
    positions = [i for i, char in enumerate(run) if char.isdigit()]
    if len(positions) < 13:
        return run
    hidden = _masked_positions([ord(run[i]) - 48 for i in positions])
    if not hidden:
        return run
    chars = list(run)
    for digit_index in hidden:
        chars[positions[digit_index]] = "*"
    return "".join(chars)


def mask_card_numbers(text: str) -> str:
    """Hide all but the last four digits of every card number in ``text``."""
    pieces: list[str] = []
    cursor = 0
    for protected in _PROTECTED.finditer(text):
        pieces.append(_DIGIT_RUN.sub(_mask_run, text[cursor:protected.start()]))
        pieces.append(protected.group(0))
        cursor = protected.end()
    pieces.append(_DIGIT_RUN.sub(_mask_run, text[cursor:]))
    return "".join(pieces)


def escape_control(text: str) -> str:
    """Escape control characters so one event is one line and no terminal is steered."""
    return _CONTROL.sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def redact_text(text: str, *, with_card_data: bool = False) -> str:
    """Mask card numbers, secrets and tokens in free text and escape control characters."""
    if not with_card_data and (_UUID_ONLY.fullmatch(text) or not _WORTH_A_LOOK.search(text)):
        return text
    text = _SECRET.sub(REDACTED, text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    masked = mask_card_numbers(text)
    if masked != text or with_card_data:
        masked = _PAYMENT_METHOD.sub(REDACTED, masked)
    masked = _CVV_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", masked)
    return escape_control(masked)


def redact(value: Any, *, with_card_data: bool = False) -> Any:
    """Redact a JSON-like value deeply; returns plain JSON types (dict, list, str, int...)."""
    if isinstance(value, str):
        return redact_text(value, with_card_data=with_card_data)
    if isinstance(value, Mapping):
        return _redact_mapping(value, with_card_data)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(item, with_card_data=with_card_data) for item in value]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and -_SMALL < value < _SMALL:
        return value
    if isinstance(value, (int, float)):
        text = str(value)
        cleaned = redact_text(text)
        return value if cleaned == text else cleaned
    if isinstance(value, (bytes, bytearray, memoryview)):
        return redact_text(bytes(value).decode("utf-8", "replace"), with_card_data=with_card_data)
    return redact_text(str(value), with_card_data=with_card_data)


_NON_ALNUM = re.compile(r"[^a-z0-9]")


def _normalise(key: str) -> str:
    """``Card-Number``, ``card_number`` and ``cardNumber`` all become ``cardnumber``."""
    lowered = key.lower().replace("_", "")
    return lowered if lowered.isalnum() else _NON_ALNUM.sub("", lowered)


def _redact_mapping(value: Mapping[Any, Any], with_card_data: bool) -> dict[str, Any]:
    items = [(str(key), _normalise(str(key)), item) for key, item in value.items()]
    card_here = with_card_data or _carries_card_data(items)
    out: dict[str, Any] = {}
    for key, name, item in items:
        if name.endswith(_CVV_KEYS):
            continue
        clean_key = redact_text(key)
        if name in _SECRET_KEYS and item not in (None, ""):
            out[clean_key] = REDACTED
        elif _is_card_number(name, item):
            out[clean_key] = _last_four(item)
        else:
            out[clean_key] = redact(item, with_card_data=card_here)
    return out


def _carries_card_data(items: list[tuple[str, str, Any]]) -> bool:
    """Whether a mapping holds card data, so payment-method ids beside it are hidden too."""
    for _key, name, item in items:
        if name in _CARD_SIGNALS or (name == "card" and isinstance(item, Mapping)):
            return True
        if name == "number" and isinstance(item, (str, int)) and _looks_like_card(item):
            return True
    return False


def _is_card_number(name: str, item: Any) -> bool:
    """A value under a card-number key: ``card_number``/``pan``, or ``number`` holding digits."""
    if not isinstance(item, (str, int)) or isinstance(item, bool) or item == "":
        return False
    return name in _PAN_KEYS or (name == "number" and _looks_like_card(item))


def _looks_like_card(value: str | int) -> bool:
    text = str(value)
    digits = re.sub(r"[ \-]", "", text)
    return digits.isdigit() and len(digits) >= 12


def _last_four(value: str | int) -> str:
    digits = re.sub(r"\D", "", str(value))
    return f"****{digits[-4:]}" if len(digits) >= 8 else REDACTED
