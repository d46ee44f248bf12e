"""Field types shared by the pydantic models that read event properties."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field


def as_str(value: Any) -> Any:
    """Ids arrive as strings or numbers depending on the storefront; both mean the same id."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


#: A required external reference (product_id, order_id, …).
Ref = Annotated[str, BeforeValidator(as_str), Field(min_length=1, max_length=200)]
#: An optional reference; "" when absent (variant ids), so it can sit in a unique key.
OptionalRef = Annotated[str, BeforeValidator(as_str), Field(max_length=200)]
OptionalText = Annotated[str | None, BeforeValidator(as_str), Field(max_length=500)]
#: Optional short text (variants, SKUs, categories, coupons): no longer than the 200 characters their columns hold,
#: so an over-long value is a validation error of its event, never a database error.
OptionalShortText = Annotated[str | None, BeforeValidator(as_str), Field(max_length=200)]
