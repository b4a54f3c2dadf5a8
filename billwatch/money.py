"""Money arithmetic in one place: integer minor units, one rounding rule, no floats.

Every figure billwatch derives from a price (a yearly plan's month, a percent discount, MRR,
ARPU) is a quotient of integers rounded **half up** (0.5 goes away from zero), here and only
here. The same rule exists twice, as Python for values and as SQL for the aggregates that must
not pull rows into Python (:func:`sql_divide_half_up`); the tests hold the two to each other.
Python's ``round`` is banker's rounding (``round(2.5) == 2``) and is never used for money.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, ColumnElement, case, cast, literal

MONTHS_PER_YEAR = 12
PERCENT = 100


def divide_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded half up, on integers (the one rounding rule)."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    if isinstance(numerator, bool) or not isinstance(numerator, int):
        raise TypeError("money is integer minor units")
    if numerator < 0:
        return -divide_half_up(-numerator, denominator)
    return (2 * numerator + denominator) // (2 * denominator)


def monthly_cents(amount_cents: int, *, yearly: bool) -> int:
    """A price normalised to one month, as MRR counts it (a year is 12 months)."""
    return divide_half_up(amount_cents, MONTHS_PER_YEAR) if yearly else amount_cents


def average_cents(total_cents: int, count: int) -> int | None:
    """``total / count`` rounded half up (ARPU); None when there is nothing to divide by."""
    return divide_half_up(total_cents, count) if count else None


# --- the same rule for SQL aggregates ---------------------------------------------------------

def sql_divide_half_up(numerator: Any, denominator: Any) -> ColumnElement[int]:
    """SQL for :func:`divide_half_up` of non-negative integers (integer division on every
    backend: ``//`` renders an integer quotient on PostgreSQL and SQLite alike)."""
    n = cast(numerator, BigInteger)
    d = cast(denominator, BigInteger)
    return cast((2 * n + d) // (2 * d), BigInteger)


def sql_discount_cents(amount_cents: Any, percent_off: Any,
                       amount_off_cents: Any) -> ColumnElement[int]:
    """SQL for what a coupon takes off an invoice: ``percent_off`` % of it rounded half up, or
    ``amount_off_cents`` but never more than the invoice (null coupon columns take nothing off)."""
    amount = cast(amount_cents, BigInteger)
    return case(
        (percent_off.is_not(None), sql_divide_half_up(amount * percent_off, PERCENT)),
        (amount_off_cents.is_not(None),
         case((amount_off_cents < amount, cast(amount_off_cents, BigInteger)), else_=amount)),
        else_=literal(0, BigInteger))
