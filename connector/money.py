"""Exact money: amounts become integer minor units (cents) through Decimal, never through float arithmetic."""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator

#: Bigger than any real order and safely inside a 64-bit integer of cents.
MAX_ABS_AMOUNT = Decimal("1e13")
MAX_ABS_CENTS = int(MAX_ABS_AMOUNT * 100)


def to_cents(value: Any) -> int | None:
    """``19.99`` / ``"19.99"`` / ``19`` → 1999; None stays None; anything else raises ValueError.

    A float is read through its shortest repr (``str(19.99) == "19.99"``), which is the number the client
    wrote in its JSON, so no binary rounding error creeps in.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a number")
    text = str(value).strip()
    # Decimal() also reads "1_000" and non-ASCII digits ("١٢"); neither is a number a JSON client writes.
    if "_" in text or not text.isascii():
        raise ValueError("must be a number")
    try:
        amount = Decimal(text)
    except InvalidOperation:
        raise ValueError("must be a number") from None
    # copy_abs(), not abs(): abs() applies the context and raises decimal.Overflow for "1e999999999".
    if not amount.is_finite() or amount.copy_abs() >= MAX_ABS_AMOUNT:
        raise ValueError("out of range")
    return int((amount * 100).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def from_cents(cents: int | None) -> str | None:
    """1999 → "19.99" (a string, so JSON carries the exact value)."""
    return None if cents is None else str(Decimal(cents).scaleb(-2).quantize(Decimal("0.01")))


Cents = Annotated[int | None, BeforeValidator(to_cents)]
