"""Constrained types for whatever a request brings in: storable text, bounded times and integers.

Each type refuses, at the schema boundary (422 with a reason), a value that the database would
otherwise refuse later as a 500, or store where it does not belong: PostgreSQL cannot hold NUL
in text or JSON, no UTF-8 column can hold a lone surrogate, a datetime near year 1 or 9999 can
overflow when converted to UTC, and SQL integers stop at 2**63 - 1. JSON bodies are strict for
integers and booleans (``true`` is not 1, ``"100"`` is not 100); query and path parameters still
parse from strings, within the same bounds.

    Text            free text (reasons, notes): no NUL, no lone surrogate, no control
                    character other than tab, newline and carriage return
    Line            one-line values (codes, filters, cursors): no control character at all
    BoundedDatetime aware, between the years 1900 and 9998, returned in UTC
    UtcDatetime     the same, reading a datetime without a time zone as UTC
    Int64           a strict JSON integer within int64
    StrictBool      a JSON boolean, not ``1`` or ``"true"``
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, Field, Strict

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MIN_YEAR = 1900
MAX_YEAR = 9998
"""A local time in these years converts to UTC (at most 26 h away) without leaving 1..9999."""

_MULTILINE_ALLOWED = frozenset("\t\n\r")


def unstorable(value: str, *, multiline: bool) -> str | None:
    """Why ``value`` cannot be stored as text, or None when it can."""
    for index, char in enumerate(value):
        code = ord(char)
        if code == 0:
            return f"NUL character at position {index}"
        if 0xD800 <= code <= 0xDFFF:
            return f"lone surrogate U+{code:04X} at position {index}"
        if unicodedata.category(char) == "Cc" and not (multiline and char in _MULTILINE_ALLOWED):
            return f"control character U+{code:04X} at position {index}"
    return None


def _text(value: str) -> str:
    problem = unstorable(value, multiline=True)
    if problem:
        raise ValueError(f"text cannot be stored: {problem}")
    return value


def _line(value: str) -> str:
    problem = unstorable(value, multiline=False)
    if problem:
        raise ValueError(f"value cannot be stored: {problem}")
    return value


def bounded_instant(value: datetime) -> datetime:
    """``value`` in UTC, refused when its year could overflow a conversion."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime needs a time zone (Z or an offset)")
    return _bounded(value)


def bounded_utc(value: datetime) -> datetime:
    """Like :func:`bounded_instant`, reading a datetime without a time zone as UTC."""
    return _bounded(value.replace(tzinfo=UTC) if value.tzinfo is None else value)


def _bounded(value: datetime) -> datetime:
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"datetime must fall between the years {MIN_YEAR} and {MAX_YEAR}")
    return value.astimezone(UTC)


Text = Annotated[str, AfterValidator(_text)]
Line = Annotated[str, AfterValidator(_line)]
BoundedDatetime = Annotated[AwareDatetime, AfterValidator(bounded_instant)]
UtcDatetime = Annotated[datetime, AfterValidator(bounded_utc)]
Int64 = Annotated[int, Strict(), Field(ge=INT64_MIN, le=INT64_MAX)]
StrictBool = Annotated[bool, Strict()]
