"""Helpers that audit tests and their neighbours share."""

from __future__ import annotations

DEFAULT_PARTITION = "audit_logs_default"
"""Where PostgreSQL puts a row whose month has no partition (made by migration 0610)."""


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies, written apart from the redactor's
    own so the tests that make card numbers do not lean on the code they test."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0
