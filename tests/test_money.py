"""Money arithmetic: one half-up rule on integers, identical in Python and in SQL."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import BigInteger, literal, select

from billwatch import money
from billwatch.config import BillingInterval, Plan, Settings
from billwatch.db import Database

cents = st.integers(min_value=0, max_value=10**12)
divisors = st.integers(min_value=1, max_value=10**6)


def reference_half_up(numerator: int, denominator: int) -> int:
    """Decimal's ROUND_HALF_UP of the exact quotient: the definition the rule must meet."""
    exact = Decimal(numerator) / Decimal(denominator)
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


class TestDivideHalfUp:
    @given(st.integers(min_value=-(10**12), max_value=10**12), divisors)
    def test_matches_the_exact_half_up_quotient(self, numerator: int, denominator: int) -> None:
        result = money.divide_half_up(numerator, denominator)
        exact = Fraction(numerator, denominator)
        assert abs(exact - result) <= Fraction(1, 2)
        if numerator >= 0:
            assert result == int(exact + Fraction(1, 2)) or exact + Fraction(1, 2) == result
        with_decimal = Decimal(numerator) / Decimal(denominator)
        if abs(with_decimal) < Decimal(10) ** 20:  # within Decimal's default precision
            assert result == reference_half_up(numerator, denominator)

    @given(st.integers(min_value=0, max_value=10**9))
    def test_halves_go_up_unlike_bankers_rounding(self, whole: int) -> None:
        assert money.divide_half_up(2 * whole + 1, 2) == whole + 1

    def test_refuses_what_is_not_money(self) -> None:
        with pytest.raises(TypeError):
            money.divide_half_up(1.5, 2)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            money.divide_half_up(True, 2)
        with pytest.raises(ValueError):
            money.divide_half_up(1, 0)


class TestPrices:
    @given(cents)
    def test_yearly_to_monthly_is_one_twelfth_half_up(self, amount: int) -> None:
        assert money.monthly_cents(amount, yearly=True) == reference_half_up(amount, 12)
        assert money.monthly_cents(amount, yearly=False) == amount

    @given(cents, st.integers(min_value=0, max_value=10**6))
    def test_average_is_half_up_or_none(self, total: int, count: int) -> None:
        average = money.average_cents(total, count)
        assert average == (reference_half_up(total, count) if count else None)

    def test_plan_monthly_price_rounds_half_up(self) -> None:
        plan = Plan(code="odd_yearly", name="Odd", stripe_price="odd", amount_cents=18006,
                    interval=BillingInterval.YEAR)
        assert plan.monthly_cents == 1501  # 1500.5; Python's round() would say 1500
        assert plan.months_per_invoice == 12


SQL_CASES = [(0, 1), (1, 2), (3, 2), (5, 2), (7, 12), (6, 12), (18006, 12), (149999, 100),
             (10**12 + 1, 2), (99, 100), (50, 100), (149, 100), (150, 100), (151, 100)]


class TestSqlRule:
    async def test_sql_and_python_agree(self, db: Database) -> None:
        columns = [money.sql_divide_half_up(literal(n), literal(d)) for n, d in SQL_CASES]
        offs = [money.sql_discount_cents(literal(1999), literal(p), literal(None, BigInteger()))
                for p in (1, 15, 25, 33, 50, 99, 100)]
        fixed = [money.sql_discount_cents(literal(1999), literal(None, BigInteger()), literal(a))
                 for a in (1, 1999, 5000)]
        async with db.engine.connect() as conn:
            row = (await conn.execute(select(*columns, *offs, *fixed))).one()
        assert list(row[:len(SQL_CASES)]) == [money.divide_half_up(n, d) for n, d in SQL_CASES]
        assert list(row[len(SQL_CASES):len(SQL_CASES) + 7]) == [
            reference_half_up(1999 * p, 100) for p in (1, 15, 25, 33, 50, 99, 100)]
        assert list(row[len(SQL_CASES) + 7:]) == [1, 1999, 1999]


class TestCatalogue:
    def test_mixed_currencies_are_refused_naming_the_plans(self) -> None:
        plans = [{"code": "basic_monthly", "name": "Basic", "stripe_price": "p1",
                  "interval": "month", "amount_cents": 1500, "currency": "usd"},
                 {"code": "euro_monthly", "name": "Euro", "stripe_price": "p2",
                  "interval": "month", "amount_cents": 1400, "currency": "eur"}]
        with pytest.raises(ValidationError) as raised:
            Settings(_env_file=None, plans=plans)  # type: ignore[call-arg]
        message = str(raised.value)
        assert "one currency" in message
        assert "eur: euro_monthly" in message and "usd: basic_monthly" in message

    def test_one_currency_is_accepted(self) -> None:
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert {plan.currency for plan in settings.plans} == {"usd"}
