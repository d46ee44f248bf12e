"""Generated input: whatever a client sends is a 200 or a precise 4xx, and whatever is stored projects or is refused.

The generator aims at the places where a value reaches a column or a calculation: our reserved event names
with their property names, filled with JSON values of every type and size. Bounded (a fixed number of
examples, derandomized) so the suite stays deterministic and quick.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.ingest.messages import MESSAGE_TYPES
from connector.ingest.projection import TRACK_HANDLERS
from connector.store import Database, Event
from connector.tenancy import NewStore
from tests.conftest import basic_auth, project_all, unprojected

PROPERTY_NAMES = [
    "product_id",
    "variant_id",
    "variant",
    "sku",
    "name",
    "category",
    "price",
    "quantity",
    "products",
    "cart_id",
    "checkout_id",
    "order_id",
    "revenue",
    "total",
    "subtotal",
    "discount",
    "shipping",
    "tax",
    "coupon",
    "currency",
    "channel",
    "status",
    "purposes",
    "source",
    "email",
    "phone",
    "url",
    "image_url",
    "title",
]
TRAIT_NAMES = ["email", "phone", "firstName", "lastName", "first_name", "name", "timezone", "address", "locale"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["", "0", "1.5", "-3", "1e308", "email", "opted_in", "subscribed", "x" * 400, "a@b.co"]),
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(PROPERTY_NAMES), children, max_size=4)
    ),
    max_leaves=12,
)
ids = st.one_of(st.sampled_from(["u1", "u2", "anon-1", "a@b.co"]), st.integers(-5, 5), st.text(max_size=8), st.none())


#: Values that pass validation often enough for the generated events to reach the store's columns and sums.
PLAUSIBLE = {
    "product_id": st.sampled_from(["p1", "p2", 3]),
    "variant_id": st.sampled_from(["v1", "v2"]),
    "order_id": st.sampled_from(["o1", "o2", 7]),
    "cart_id": st.sampled_from(["c1", "c2"]),
    "price": st.one_of(st.integers(-100, 10**9), st.floats(0, 1e11), st.sampled_from(["19.99", "0.001"])),
    "quantity": st.integers(-3, 10**6),
    "revenue": st.floats(0, 1e12),
    "currency": st.sampled_from(["EUR", "usd", "XXXX"]),
    "channel": st.sampled_from(["email", "sms", "push", "fax"]),
    "status": st.sampled_from(["opted_in", "opted_out", "subscribed", "unsubscribed", "pending"]),
    "email": st.sampled_from(["a@b.co", "A@B.CO ", "not-an-email", "x" * 330 + "@b.co"]),
}


LINE = {"product_id": "p1", "variant_id": "v1", "sku": "SKU-1", "price": 19.99, "quantity": 2}
#: A valid example of each reserved event's properties; the generator perturbs a few of their keys.
VALID: dict[str, dict[str, Any]] = {
    "Product Added": {**LINE, "cart_id": "c1"},
    "Product Removed": {**LINE, "cart_id": "c1"},
    "Cart Viewed": {"cart_id": "c1", "products": [LINE]},
    "Checkout Started": {"checkout_id": "c1", "products": [LINE], "currency": "EUR"},
    "Order Completed": {"order_id": "o1", "revenue": 39.98, "currency": "EUR", "products": [LINE]},
    "Order Refunded": {"order_id": "o1", "total": 19.99},
    "Order Cancelled": {"order_id": "o1"},
    "Consent Updated": {"channel": "email", "status": "subscribed", "source": "checkout"},
    "Waitlist Joined": {"product_id": "p1", "variant_id": "v1"},
    "Waitlist Left": {"product_id": "p1"},
    "Inventory Updated": {"product_id": "p1", "variant_id": "v1", "quantity": 0, "price": 19.99},
}


@st.composite
def properties(draw: st.DrawFn, event: str) -> dict[str, Any]:
    result = dict(VALID.get(event, {}))
    for name in draw(st.lists(st.sampled_from(PROPERTY_NAMES), max_size=3, unique=True)):
        plausible = PLAUSIBLE.get(name)
        if name == "products":
            result[name] = draw(st.lists(st.fixed_dictionaries({}, optional=PLAUSIBLE) | json_values, max_size=3))
        elif plausible is not None and draw(st.booleans()):
            result[name] = draw(plausible)
        else:
            result[name] = draw(json_values)
    return result


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["track"] * 6 + [*MESSAGE_TYPES, "purchase", 7]))
    message: dict[str, Any] = {"type": kind, "userId": draw(ids)}
    for field in ("anonymousId", "previousId", "groupId"):
        if draw(st.booleans()):
            message[field] = draw(ids)
    event = draw(st.sampled_from([*TRACK_HANDLERS, "Product Viewed", ""]))
    if kind == "track" or draw(st.integers(0, 9)) == 0:
        message["event"] = event
    if draw(st.integers(0, 4)) > 0:
        message["properties"] = draw(properties(event))
    if kind == "identify" or draw(st.integers(0, 9)) == 0:
        message["traits"] = draw(st.dictionaries(st.sampled_from(TRAIT_NAMES), json_values | PLAUSIBLE["email"]))
    if draw(st.integers(0, 4)) == 0:
        message["timestamp"] = draw(st.sampled_from(["2026-11-21T10:00:00Z", "yesterday", 0, None, "2026-02-30"]))
    if draw(st.booleans()):
        message["messageId"] = draw(st.text(min_size=1, max_size=6))
    return message


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(messages(), max_size=6))
def test_any_batch_is_a_200_or_a_4xx_and_everything_stored_is_projected(
    client: FlaskClient, db: Database, store: NewStore, batch: list[dict[str, Any]]
) -> None:
    response = client.post("/v1/batch", json={"batch": batch}, headers=basic_auth(store.write_key))
    assert response.status_code in (200, 400), response.get_data()[:500]
    assert response.get_json()["success"] is (response.status_code == 200)
    # Every stored event is projected or carries the reason it could not be: nothing blocks the store's queue.
    project_all(db, store.id)
    assert unprojected(db, store.id) == 0
    with db.reader() as session:
        internal = session.scalars(
            sa.select(Event.projection_error).where(
                Event.store_id == store.id, Event.projection_error.startswith("internal error")
            )
        ).all()
    # A refusal names a property and a reason; an "internal error" is a bug this content ran into.
    assert internal == []
