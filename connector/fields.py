"""Field types shared by the pydantic models that read event properties.

Length limits sit on the inner ``str`` (``StringConstraints``), so they apply only once a value is a string:
put beside a before-validator they would meet ``None`` or ``True`` first and fail with a TypeError instead of
a validation error.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, StringConstraints


def as_str(value: Any) -> Any:
    """Ids arrive as strings or numbers depending on the storefront; both mean the same id."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def as_str_or_empty(value: Any) -> Any:
    return "" if value is None else as_str(value)


#: A required external reference (product_id, order_id, …).
Ref = Annotated[Annotated[str, StringConstraints(min_length=1, max_length=200)], BeforeValidator(as_str)]
#: An optional reference; "" when absent or null (variant ids), so it can sit in a unique key.
OptionalRef = Annotated[Annotated[str, StringConstraints(max_length=200)], BeforeValidator(as_str_or_empty)]
OptionalText = Annotated[Annotated[str, StringConstraints(max_length=500)] | None, BeforeValidator(as_str)]
#: Optional short text (variants, SKUs, categories, coupons): no longer than the 200 characters their columns hold,
#: so an over-long value is a validation error of its event, never a database error.
OptionalShortText = Annotated[Annotated[str, StringConstraints(max_length=200)] | None, BeforeValidator(as_str)]
