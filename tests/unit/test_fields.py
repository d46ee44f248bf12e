"""Property field types: any JSON value is either read or a validation error, never a TypeError."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from connector import catalog, commerce, waitlists
from connector.fields import OptionalRef, OptionalShortText, OptionalText, Ref

JSON_VALUES: list[Any] = [None, True, False, 0, -1.5, 10**30, "", "x" * 1000, [], [1], {}, {"a": 1}]


class Fields(BaseModel):
    ref: Ref = "r"
    optional_ref: OptionalRef = ""
    optional_text: OptionalText = None
    optional_short_text: OptionalShortText = None


@pytest.mark.parametrize("field", list(Fields.model_fields))
@pytest.mark.parametrize("value", JSON_VALUES, ids=repr)
def test_any_json_value_is_read_or_refused_with_a_validation_error(field: str, value: Any) -> None:
    try:
        Fields.model_validate({field: value})
    except ValidationError as exc:
        assert exc.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize(
    "model",
    [
        commerce.CartLineProperties,
        commerce.CartProperties,
        commerce.OrderProperties,
        commerce.OrderRefProperties,
        waitlists.WaitlistProperties,
        catalog.InventoryProperties,
    ],
)
@pytest.mark.parametrize("value", JSON_VALUES, ids=repr)
def test_every_property_of_every_event_model_refuses_bad_values_cleanly(model: type[BaseModel], value: Any) -> None:
    for name in model.model_fields:
        with contextlib.suppress(ValidationError):
            model.model_validate({"product_id": "p1", "order_id": "o1", name: value})


def test_numbers_are_ids_and_null_is_no_variant() -> None:
    assert Fields.model_validate({"ref": 42, "optional_ref": None}).model_dump() == {
        "ref": "42",
        "optional_ref": "",
        "optional_text": None,
        "optional_short_text": None,
    }
    with pytest.raises(ValidationError, match="at most 200 characters"):
        Fields.model_validate({"ref": "x" * 201})
