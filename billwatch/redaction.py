"""The one redactor: everything bound for a column, audit metadata, logs, alert mail or error text.

Every rule runs on a canonical form of the text (:func:`canonical_text`): zero-width, bidi and
other invisible format characters removed, NFKC applied (fullwidth digits and letters become
ASCII) and every Unicode decimal digit written as its ASCII digit; then again on each
percent-decoded form (``%20``, ``%2520``). What it guarantees, whatever the nesting (dicts,
lists, dict keys, ints, free text):

* card numbers — any 13-19 digit sequence passing Luhn, with up to three characters of any
  non-alphanumeric separator (space, ``-``, ``.``, ``/``, ``_``, tab, ``+``, ``,``...) between
  the digits in any grouping — keep at most their last four digits (the rest become ``*``);
* CVV/CVC/CVV2/CID fields are dropped under any key spelling (``cvv_number``, ``cvvValue``,
  ``card_cvc``), and in free text (``cvv is 123``, ``CVC code: 123``, ``"cvc": "987"``) the
  code is replaced;
* Stripe secrets (``sk_live_``/``sk_test_``/``rk_`` and ``whsec_`` anywhere in a token, even
  after ``_`` or a letter), client secrets, ``tok_`` tokens, JWTs, ``Authorization`` headers and
  bearer credentials are replaced; ``pm_`` payment-method ids are replaced where they travel
  with card data (on their own they are harmless references);
* control characters, CR/LF and bidi overrides are escaped, so one event stays one log line.

It is idempotent (redacting its own output changes nothing), which lets a column type apply it
again to values already redacted upstream. To that end the rules read the escapes it writes
(``\\x10``, ``\\u2028``) as the characters they stand for, never their hex digits as a code or
part of a card number; text that merely spells one of them is read the same way. Text in which
no rule matched comes back unchanged (control characters escaped); text in which one did comes
back in its redacted canonical form.

False positives are preferred to leaks. The exceptions are the canonical UUID form
(8-4-4-4-12) and ISO 8601 date-times with a ``T`` (``2026-12-01T10:20:58.123456+00:00``):
their digit groups joined by separators would otherwise read as one long number, both are
everywhere in billwatch's data, and nobody writes a card number that way. Anything else
with 13+ digits in a row is checked — a hex digest, a list of amounts or an identifier that
happens to hold a Luhn-valid run loses those digits too, and so does a 13-digit
epoch-millisecond timestamp that passes Luhn (billwatch writes timestamps as ISO text).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from urllib.parse import unquote

REDACTED = "[REDACTED]"

_PROTECTED = re.compile(
    r"(?<![0-9A-Za-z])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"(?![0-9A-Za-z])"
    r"|(?<![0-9])[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,9})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?"
    r"(?![0-9])")
"""UUIDs and ISO date-times: digit groups that would otherwise read as one long number."""
_SEPARATOR = r"[\W_]{0,3}"
"""Up to three of anything that is neither a letter nor a digit: ``.``, ``/``, ``_``, tab, ``+``..."""
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9](?:" + _SEPARATOR + r"[0-9])*")
_EDGE = r"(?<![A-Za-z0-9])"
"""A secret's start: no letter or digit before it, but ``_`` may be (``apikey_sk_live_...``)."""
_SECRET = re.compile(
    r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9_]+"  # anywhere, even glued to a word
    rf"|{_EDGE}(?:sk|rk)_[A-Za-z0-9_]{{6,}}"
    r"|whsec_[A-Za-z0-9+/=_]+"
    r"|tok_[A-Za-z0-9_]+"
    r"|(?:pi|seti|cs)_[A-Za-z0-9]+_secret_[A-Za-z0-9]+"
    rf"|{_EDGE}eyJ[A-Za-z0-9_-]{{4,}}\.[A-Za-z0-9_-]{{4,}}\.[A-Za-z0-9_-]*"  # JWTs (our bearer tokens)
)
_AUTH_HEADER = re.compile(
    rf"(?i){_EDGE}((?:proxy-)?authorization)([\"']?\s*[:=]\s*[\"']?)"
    r"(?:(?:bearer|basic|digest|token)\s+)?[^\s\"',;]+")
_BEARER = re.compile(
    r"(?i)\b(bearer|basic)\s+(?=[A-Za-z0-9._~+/=-]*[0-9+/=._~-])[A-Za-z0-9._~+/=-]{12,}")
CVV_WORDS = (r"cvc2?|cvv2?|cvn2?|csc|cid|cvd|cav2|security[ _-]?code"
             r"|card[ _-]?verification[ _-]?(?:value|code|number)?")
"""The names of the card security code, as written in free text and in keys."""
_CVV_TEXT = re.compile(
    rf"(?i)(?<![a-z0-9])({CVV_WORDS})(?-i:(?![a-z]))([^0-9]{{0,16}}?)[0-9]{{3,4}}(?![0-9a-z])")
"""``cvv: 123``, ``cvv is 123``, ``CVC code: 123``, ``{"cvc": "987"}`` in a string, ``cvv_number=123``.

The word stands alone (or starts a camelCase key, ``cvvValue``) and so do the digits: inside
an identifier (``evt_...4cvVzjrImW830``, a Stripe id's random letters) neither is a security
code, and masking it would change the id."""
_PAYMENT_METHOD = re.compile(_EDGE + r"pm_[A-Za-z0-9_]+")
_WORTH_A_LOOK = re.compile(
    r"[0-9](?:" + _SEPARATOR + r"[0-9]){12}"
    r"|sk_|rk_|whsec_|tok_|pm_|_secret_|eyJ"
    r"|(?i:authorization|bearer|basic|cvc|cvv|cvn|csc|cid|cvd|cav2|security|verification)"
    "|[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""One cheap scan: text matching none of these has nothing for any rule below to change."""
_UUID_ONLY = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_SMALL = 10**12
"""Integers below this have at most 12 digits: never a card number."""
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\u0600-\u0605\u06dd\u070f"
    "\u0890\u0891\u08e2\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f\U000e0100-\U000e01ef]")
"""Zero-width, bidi, joiner, filler and other invisible format characters (all of Unicode's
``Cf`` and the invisible marks beside them): removed before matching, so they cannot split a
card number or a secret."""
_URL_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_DECODE_LEVELS = 3
"""Percent-decoding is repeated this often, so ``%2520`` (a doubly encoded space) is seen too."""

_CVV_KEY_PARTS = ("cvc", "cvv", "cvn", "csc", "cvd", "cav2", "securitycode", "cardverification")
_CVV_KEYS_EXACT = frozenset({"cid", "cardcid", "cidcode", "cidnumber", "cidvalue"})
_SECRET_KEYS = frozenset({
    "authorization", "proxyauthorization", "password", "passwd", "secret", "clientsecret",
    "apikey", "xapikey", "token", "accesstoken", "refreshtoken", "tokensecret", "secretkey",
    "privatekey", "webhooksecret", "stripesignature", "cookie", "setcookie"})
_SECRET_KEY_ENDINGS = ("secret", "password", "passwd", "apikey", "accesstoken", "refreshtoken",
                       "privatekey", "secretkey", "authorization")
_PAN_KEYS = frozenset({"cardnumber", "pan", "ccnumber", "creditcardnumber", "accountnumber"})
_CARD_SIGNALS = frozenset({"cardnumber", "pan", "ccnumber", "expmonth", "expyear"})
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def is_cvv_key(name: str) -> bool:
    """Whether a normalised key names a card security code (``cvv_number``, ``cvvValue``...).

    Stripe's ``cvc_check`` (``pass``/``fail``) is the result of a check, not the code, and stays.
    """
    if name in _CVV_KEYS_EXACT:
        return True
    return not name.endswith("check") and any(part in name for part in _CVV_KEY_PARTS)


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


_CONTROL_IN_LINES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
"""The same set without tab, line feed and carriage return, which free text may hold."""


def escape_control(text: str, *, multiline: bool = False) -> str:
    """Escape control characters so one event is one line and no terminal is steered.

    ``multiline`` keeps tabs and line breaks: stored free text (a reason over two lines) keeps
    its shape, while every other control character is still escaped."""
    return (_CONTROL_IN_LINES if multiline else _CONTROL).sub(_escape_char, text)


def _escape_char(match: re.Match[str]) -> str:
    return _escape(match.group(0))


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


_ESCAPE_SHAPE = re.compile(r"\\(?:x[0-9a-f]{2}|u[0-9a-f]{4})")
"""Every form :func:`_escape` can write; :func:`_unescape` keeps only those it does write."""
_ESCAPE_LEVELS = 3
"""How often an escape completed by the canonical form is read again (one level is already rare)."""


def _unescape(text: str, multiline: bool) -> str:
    """Exactly the inverse of :func:`escape_control` in the same mode.

    ``\\x42`` and ``\\u0001`` are not escapes it writes, nor, with ``multiline``, ``\\x0a``:
    they stay text, so what a second pass reads is what the first one read."""
    if "\\" not in text:
        return text
    control = _CONTROL_IN_LINES if multiline else _CONTROL

    def character(match: re.Match[str]) -> str:
        escape = match.group(0)
        char = chr(int(escape[2:], 16))
        return char if control.fullmatch(char) and _escape(char) == escape else escape
    return _ESCAPE_SHAPE.sub(character, text)


def _reading(text: str, multiline: bool) -> str:
    """What the rules match: the escapes the redactor writes read as their characters, canonical.

    An escape's hex digits (``\\u2028``, ``\\x10``) are not text: read as digits they make, on a
    second pass, a security code or a card number the first pass never saw. The canonical form
    can complete an escape (a zero-width space inside one), which is then read too."""
    read = canonical_text(_unescape(text, multiline))
    for _level in range(_ESCAPE_LEVELS):
        again = _unescape(read, multiline)
        if again == read:
            break
        read = canonical_text(again)
    return read


def canonical_text(text: str) -> str:
    """What the rules match: invisible characters gone, NFKC, every Unicode digit as ASCII.

    Fullwidth and Arabic-Indic digits and a number split by zero-width spaces all read as
    ASCII digits. Plain ASCII (nearly all text) is returned as it is, at no cost.
    """
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKC", _INVISIBLE.sub("", text))
    return text if text.isascii() else "".join(_ascii_digit(char) for char in text)


def _ascii_digit(char: str) -> str:
    if char.isascii() or not char.isdecimal():
        return char
    return str(unicodedata.decimal(char))


def redact_text(text: str, *, with_card_data: bool = False, multiline: bool = False) -> str:
    """Mask card numbers, secrets and tokens in free text and escape control characters.

    The rules run on the text's reading (:func:`_reading`: its canonical form, the redactor's own
    escapes read as the characters they stand for), then again on each percent-decoded form (so
    ``4242%204242...`` is caught, while decoding can never hide what the raw text shows). When
    nothing matched, the text comes back as it was (control characters escaped); when something
    did, the redacted canonical form comes back.
    """
    reading = _reading(text, multiline)
    if not with_card_data and (_UUID_ONLY.fullmatch(reading)
                               or not (_WORTH_A_LOOK.search(reading) or "%" in reading)):
        return text
    cleaned = _apply_rules(reading, with_card_data)
    if _URL_ESCAPE.search(reading):
        cleaned = _decoded_rules(reading, cleaned, with_card_data, multiline)
    out = escape_control(text if cleaned == reading else cleaned, multiline=multiline)
    # What is shown is checked for card numbers once more, escapes' digits counting as digits:
    # text that spells an escape ("\x1" typed before "4242...") must not keep a whole card
    # number readable. Masking only removes digits, so a second pass finds nothing more.
    return mask_card_numbers(out) if "\\" in out else out


def _decoded_rules(canonical: str, raw_cleaned: str, with_card_data: bool,
                   multiline: bool) -> str:
    """The rules on percent-decoded text, so neither reading (raw or decoded) shows a match.

    When the fully decoded text holds a match, its redacted form is the answer (masking the raw
    form would count an escape's own digits, ``%20``, as part of the number). When only the raw
    form does (``%42`` decodes to a letter inside a number), the raw redaction is decoded and
    checked again.
    """
    decoded = canonical
    for _level in range(_DECODE_LEVELS):
        if not _URL_ESCAPE.search(decoded):
            break
        decoded = _reading(unquote(decoded), multiline)
    redacted = _apply_rules(decoded, with_card_data)
    if redacted != decoded:
        return redacted
    if raw_cleaned == canonical:
        return canonical
    current = raw_cleaned
    for _level in range(_DECODE_LEVELS):
        if not _URL_ESCAPE.search(current):
            break
        current = _apply_rules(_reading(unquote(current), multiline), with_card_data)
    return current


def _apply_rules(text: str, with_card_data: bool) -> str:
    text = _SECRET.sub(REDACTED, text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    masked = mask_card_numbers(text)
    if masked != text or with_card_data:
        masked = _PAYMENT_METHOD.sub(REDACTED, masked)
    return _redact_codes(masked)


def _redact_codes(text: str) -> str:
    """The CVV rule to its fixed point: once ``cvv 000`` is replaced, ``4242`` after it is in reach.

    Each round removes digits, so it ends; with the marker's 10 characters in its way, a word
    reaches at most one more code, so two or three rounds in practice."""
    while True:
        again = _CVV_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
        if again == text:
            return text
        text = again


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
    if isinstance(value, (datetime, date)):  # ISO text, never str()'s "2026-12-01 10:20:58..."
        return redact_text(value.isoformat(), with_card_data=with_card_data)
    return redact_text(str(value), with_card_data=with_card_data)


_NON_ALNUM = re.compile(r"[^a-z0-9]")


def _normalise(key: str) -> str:
    """``Card-Number``, ``card_number`` and ``cardNumber`` all become ``cardnumber``."""
    lowered = canonical_text(key).lower().replace("_", "")
    return lowered if lowered.isalnum() and lowered.isascii() else _NON_ALNUM.sub("", lowered)


def _redact_mapping(value: Mapping[Any, Any], with_card_data: bool) -> dict[str, Any]:
    items = [(str(key), _normalise(str(key)), item) for key, item in value.items()]
    card_here = with_card_data or _carries_card_data(items)
    out: dict[str, Any] = {}
    for key, name, item in items:
        if is_cvv_key(name):
            continue
        clean_key = redact_text(key)
        if _is_secret_key(name) and item not in (None, ""):
            out[clean_key] = REDACTED
        elif _is_card_number(name, item):
            out[clean_key] = _last_four(item)
        else:
            out[clean_key] = redact(item, with_card_data=card_here)
    return out


def _is_secret_key(name: str) -> bool:
    return name in _SECRET_KEYS or name.endswith(_SECRET_KEY_ENDINGS)


def _carries_card_data(items: list[tuple[str, str, Any]]) -> bool:
    """Whether a mapping holds card data, so payment-method ids beside it are hidden too."""
    for _key, name, item in items:
        if name in _CARD_SIGNALS or is_cvv_key(name) or (name == "card" and isinstance(item, Mapping)):
            return True
        if name == "number" and isinstance(item, (str, int)) and _looks_like_card(item):
            return True
    return False


def _is_card_number(name: str, item: Any) -> bool:
    """A value under a card-number key: ``card_number``/``pan``, or ``number`` holding digits."""
    if not isinstance(item, (str, int)) or isinstance(item, bool) or item == "":
        return False
    return name in _PAN_KEYS or (name == "number" and _looks_like_card(item))


_SEPARATORS = re.compile(r"[\W_]")


def _looks_like_card(value: str | int) -> bool:
    digits = _SEPARATORS.sub("", canonical_text(str(value)))
    return digits.isascii() and digits.isdigit() and len(digits) >= 12


def _last_four(value: str | int) -> str:
    digits = re.sub(r"[^0-9]", "", canonical_text(str(value)))
    return f"****{digits[-4:]}" if len(digits) >= 8 else REDACTED
