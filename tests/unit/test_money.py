"""Exact money: amounts become integer cents through Decimal, and anything that is not an amount is refused."""

from __future__ import annotations

from typing import Any

import pytest

from connector.money import from_cents, to_cents


@pytest.mark.parametrize(
    ("value", "cents"),
    [
        (19.99, 1999),
        (0.29, 29),  # 0.29 * 100 == 28.999999999999996 in float arithmetic
        (1.15, 115),  # 1.15 * 100 == 114.99999999999999
        (0.1 + 0.2, 30),  # 0.30000000000000004: read via str, the float noise is far below a cent
        (1.0, 100),
        (-4.5, -450),
    ],
)
def test_floats_are_read_through_their_repr_not_float_arithmetic(value: float, cents: int) -> None:
    assert to_cents(value) == cents


@pytest.mark.parametrize(
    ("value", "cents"),
    [("19.99", 1999), (" 19.99 ", 1999), ("0", 0), ("-0.50", -50), ("1e2", 10_000), ("12.5", 1250)],
)
def test_numeric_strings_are_accepted(value: str, cents: int) -> None:
    assert to_cents(value) == cents


@pytest.mark.parametrize(("value", "cents"), [(0, 0), (19, 1900), (-3, -300), (10**12, 10**14)])
def test_integers_are_whole_units(value: int, cents: int) -> None:
    assert to_cents(value) == cents


def test_none_stays_none() -> None:
    assert to_cents(None) is None


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_refused_although_they_are_ints(value: bool) -> None:
    with pytest.raises(ValueError, match="must be a number"):
        to_cents(value)


@pytest.mark.parametrize(
    "value", ["", "abc", "19,99", "1_000", "\u0661\u0662", "$5", "0x10", [19.99], {"amount": 1}, b"19.99"]
)
def test_values_that_are_not_amounts_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="must be a number"):
        to_cents(value)


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        float("-inf"),
        "NaN",
        "sNaN",
        "Infinity",
        "-inf",
        1e13,
        "1e13",
        -(10**13),
        10**30,
        1e300,
        "1e999999999",  # beyond Decimal's context: must still be a ValueError, not decimal.Overflow
        "-1E+1000000",
    ],
)
def test_non_finite_and_huge_amounts_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="out of range"):
        to_cents(value)


def test_largest_accepted_amount_fits_a_64_bit_integer() -> None:
    cents = to_cents("9999999999999.99")
    assert cents == 999_999_999_999_999
    assert cents < 2**63


@pytest.mark.parametrize(
    ("value", "cents"),
    [
        ("0.125", 12),  # half → even
        ("0.135", 14),  # half → even
        ("0.145", 14),
        ("0.1251", 13),  # above half → up
        ("0.124", 12),
        ("-0.125", -12),
        ("-0.135", -14),
        (0.125, 12),
        (1.005, 100),  # the float 1.005 is written "1.005": half-even on the written value
        ("2.675", 268),
    ],
)
def test_sub_cent_amounts_round_half_even(value: Any, cents: int) -> None:
    assert to_cents(value) == cents


@pytest.mark.parametrize(
    ("cents", "text"),
    [
        (1999, "19.99"),
        (5, "0.05"),
        (-5, "-0.05"),
        (0, "0.00"),
        (100, "1.00"),
        (999_999_999_999_999, "9999999999999.99"),
    ],
)
def test_from_cents_gives_exact_two_decimal_strings(cents: int, text: str) -> None:
    assert from_cents(cents) == text


def test_from_cents_keeps_none() -> None:
    assert from_cents(None) is None


@pytest.mark.parametrize("cents", [0, 1, 99, 1999, -1234, 10**14])
def test_from_cents_and_to_cents_round_trip(cents: int) -> None:
    assert to_cents(from_cents(cents)) == cents
