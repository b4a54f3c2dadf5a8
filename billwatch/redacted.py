"""Column types that pass every stored string through the redactor.

Redaction lives on the column, not in each service: every writer (ORM objects, Core inserts,
upserts, bulk updates, a service written next year) binds its values through the column type,
so no code path can store a card number, a CVV or a secret by forgetting a call. WHERE clauses
bind through the same type, so a lookup by a value finds the row stored for it. Assigning to
such a column's attribute redacts too (an ORM ``set`` listener), so the object a service just
wrote and returns in a response holds exactly what was stored. Rows written
before this type existed are redacted again as they are read, so they never reach a response.

Audit rows are the exception on read: their content hash covers the stored text, so the
recorder redacts with :func:`clean` before hashing and the column only re-applies the same
(idempotent) function; reads return what was hashed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import String, Text, event
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapper
from sqlalchemy.types import TypeDecorator

from billwatch.redaction import redact_text

_TRUNCATION_ROUNDS = 3


def clean(value: str, length: int | None = None) -> str:
    """``value`` redacted and cut to ``length``; a cut is redacted again, as a cut may expose."""
    cleaned = redact_text(value, multiline=True)
    for _round in range(_TRUNCATION_ROUNDS):
        if length is None or len(cleaned) <= length:
            return cleaned
        cleaned = redact_text(cleaned[:length], multiline=True)
    return cleaned[:length] if length is not None else cleaned


class RedactedString(TypeDecorator[str]):
    """A ``VARCHAR(length)`` (or ``TEXT``) whose values are redacted on the way in and out."""

    impl = String
    cache_ok = True

    def __init__(self, length: int | None = None, *, on_read: bool = True, **kwargs: Any) -> None:
        super().__init__(length, **kwargs)
        self.length = length
        self.on_read = on_read

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else clean(str(value), self.length)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or not self.on_read:
            return value
        return clean(value, self.length)


class RedactedText(RedactedString):
    """Unbounded free text (reasons, notes, errors), redacted on the way in and out."""

    impl = Text
    cache_ok = True

    def __init__(self, *, on_read: bool = True) -> None:
        super().__init__(None, on_read=on_read)


def _cleaner(length: int | None) -> Callable[..., Any]:
    def on_set(_target: Any, value: Any, _old: Any, _initiator: Any) -> Any:
        return clean(value, length) if isinstance(value, str) else value
    return on_set


@event.listens_for(Mapper, "mapper_configured")
def _redact_on_assignment(mapper: Mapper[Any], class_: type[Any]) -> None:
    """Every mapped attribute of a redacted column holds the redacted value once assigned."""
    for prop in mapper.column_attrs:
        for column in prop.columns:
            if isinstance(column.type, RedactedString):
                event.listen(getattr(class_, prop.key), "set", _cleaner(column.type.length),
                             retval=True)
