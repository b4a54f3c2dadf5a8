"""What an e-mail address and a display name may contain, wherever they enter (CLI or API).

A newline in an e-mail splits a mail header or a log line; a control, format or bidi character
in a name rewrites how a terminal, a page or an audit export shows the row. Both are refused
with a reason rather than stored and escaped later.
"""

from __future__ import annotations

import re
import unicodedata

from billwatch.errors import Unprocessable

MAX_EMAIL = 320
MAX_NAME = 200
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")


def _invisible(value: str) -> bool:
    """Control (Cc), format (Cf: zero-width, bidi), private, surrogate or unassigned characters."""
    return any(unicodedata.category(char).startswith("C") for char in value)


def checked_email(value: str) -> str:
    """``value`` lower-cased if it is a plain ``local@domain.tld`` address; else a 422."""
    if len(value) > MAX_EMAIL or not _EMAIL.fullmatch(value):
        shown = "contains a control character" if _invisible(value) else "is not local@domain.tld"
        raise Unprocessable(f"e-mail {shown} (letters, digits and .!#$%&'*+/=?^_`{{|}}~- before "
                            f"the @, up to {MAX_EMAIL} characters)", code="invalid_email")
    return value.lower()


def checked_name(value: str) -> str:
    """``value`` without surrounding spaces if it is 1-200 visible characters; else a 422."""
    name = value.strip()
    if _invisible(name):
        raise Unprocessable("name contains a control, zero-width or bidi character",
                            code="invalid_name")
    if not 0 < len(name) <= MAX_NAME:
        raise Unprocessable(f"name must be 1 to {MAX_NAME} characters", code="invalid_name")
    return name
