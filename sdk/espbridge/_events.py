"""Typed helpers for the events espbridge acts on: Segment's E-commerce Spec v2 names and properties, and the
reserved events espbridge adds (consent, waitlists, inventory). Each is one ``track()`` call; a wrong type
raises :class:`InvalidMessage` naming the argument, as the core calls do.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, Required, TypedDict, Unpack

from ._errors import InvalidMessage

Amount = int | float | Decimal | str
Channel = Literal["email", "sms", "push", "whatsapp"]
ConsentStatus = Literal["subscribed", "unsubscribed", "pending"]
CHANNELS = ("email", "sms", "push", "whatsapp")
CONSENT_STATUSES = ("subscribed", "unsubscribed", "pending")


class Product(TypedDict, total=False):
    """One product line (Segment E-commerce Spec v2); amounts as numbers, Decimals or numeric strings."""

    product_id: Required[str]
    sku: str
    name: str
    brand: str
    category: str
    variant: str
    price: Amount
    quantity: int
    coupon: str
    position: int
    url: str
    image_url: str


class CallOptions(TypedDict, total=False):
    """What every helper accepts besides its own arguments, with the meaning the core calls give them."""

    anonymous_id: str | int
    context: Mapping[str, Any]
    timestamp: dt.datetime
    integrations: Mapping[str, Any]
    message_id: str


class Events:
    def track(
        self,
        user_id: str | int | None = None,
        event: str | None = None,
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        timestamp: dt.datetime | None = None,
        anonymous_id: str | int | None = None,
        integrations: Mapping[str, Any] | None = None,
        message_id: str | None = None,
    ) -> str | None:
        raise NotImplementedError

    # -- E-commerce Spec v2 ---------------------------------------------------------------------------

    def product_viewed(
        self, user_id: str | int | None = None, *, product: Product, **options: Unpack[CallOptions]
    ) -> str | None:
        return self.track(user_id, "Product Viewed", _product(product, "product"), **options)

    def product_added(
        self,
        user_id: str | int | None = None,
        *,
        product: Product,
        cart_id: str | None = None,
        **options: Unpack[CallOptions],
    ) -> str | None:
        properties = _drop_none({**_product(product, "product"), "cart_id": _text(cart_id, "cart_id")})
        return self.track(user_id, "Product Added", properties, **options)

    def product_removed(
        self,
        user_id: str | int | None = None,
        *,
        product: Product,
        cart_id: str | None = None,
        **options: Unpack[CallOptions],
    ) -> str | None:
        properties = _drop_none({**_product(product, "product"), "cart_id": _text(cart_id, "cart_id")})
        return self.track(user_id, "Product Removed", properties, **options)

    def cart_viewed(
        self,
        user_id: str | int | None = None,
        *,
        products: Sequence[Product],
        cart_id: str | None = None,
        currency: str | None = None,
        **options: Unpack[CallOptions],
    ) -> str | None:
        properties = {
            "cart_id": _text(cart_id, "cart_id"),
            "currency": _currency(currency),
            "products": _products(products),
        }
        return self.track(user_id, "Cart Viewed", _drop_none(properties), **options)

    def checkout_started(
        self,
        user_id: str | int | None = None,
        *,
        products: Sequence[Product],
        order_id: str | None = None,
        cart_id: str | None = None,
        value: Amount | None = None,
        revenue: Amount | None = None,
        discount: Amount | None = None,
        shipping: Amount | None = None,
        tax: Amount | None = None,
        coupon: str | None = None,
        currency: str | None = None,
        **options: Unpack[CallOptions],
    ) -> str | None:
        properties = {
            "order_id": _text(order_id, "order_id"),
            "cart_id": _text(cart_id, "cart_id"),
            "value": _amount(value, "value"),
            "revenue": _amount(revenue, "revenue"),
            "discount": _amount(discount, "discount"),
            "shipping": _amount(shipping, "shipping"),
            "tax": _amount(tax, "tax"),
            "coupon": _text(coupon, "coupon"),
            "currency": _currency(currency),
            "products": _products(products),
        }
        return self.track(user_id, "Checkout Started", _drop_none(properties), **options)

    def order_completed(
        self,
        user_id: str | int | None = None,
        *,
        order_id: str,
        products: Sequence[Product],
        total: Amount,
        revenue: Amount | None = None,
        subtotal: Amount | None = None,
        discount: Amount | None = None,
        shipping: Amount | None = None,
        tax: Amount | None = None,
        coupon: str | None = None,
        currency: str | None = None,
        checkout_id: str | None = None,
        cart_id: str | None = None,
        **options: Unpack[CallOptions],
    ) -> str | None:
        properties = {
            "order_id": _required_text(order_id, "order_id"),
            "checkout_id": _text(checkout_id, "checkout_id"),
            "cart_id": _text(cart_id, "cart_id"),
            "total": _required_amount(total, "total"),
            "revenue": _amount(revenue, "revenue"),
            "subtotal": _amount(subtotal, "subtotal"),
            "discount": _amount(discount, "discount"),
            "shipping": _amount(shipping, "shipping"),
            "tax": _amount(tax, "tax"),
            "coupon": _text(coupon, "coupon"),
            "currency": _currency(currency),
            "products": _products(products),
        }
        return self.track(user_id, "Order Completed", _drop_none(properties), **options)

    def order_refunded(
        self,
        user_id: str | int | None = None,
        *,
        order_id: str,
        total: Amount | None = None,
        currency: str | None = None,
        products: Sequence[Product] | None = None,
        **options: Unpack[CallOptions],
    ) -> str | None:
        return self.track(user_id, "Order Refunded", _order_ref(order_id, total, currency, products), **options)

    def order_cancelled(
        self,
        user_id: str | int | None = None,
        *,
        order_id: str,
        total: Amount | None = None,
        currency: str | None = None,
        products: Sequence[Product] | None = None,
        **options: Unpack[CallOptions],
    ) -> str | None:
        return self.track(user_id, "Order Cancelled", _order_ref(order_id, total, currency, products), **options)

    # -- espbridge's reserved events ------------------------------------------------------------------

    def consent(
        self,
        user_id: str | int | None = None,
        *,
        channel: Channel,
        status: ConsentStatus,
        source: str | None = None,
        method: str | None = None,
        form_id: str | None = None,
        consent_text: str | None = None,
        consent_text_version: str | None = None,
        **options: Unpack[CallOptions],
    ) -> str | None:
        """A consent change; pass the shopper's ``context={"ip": …, "userAgent": …}``: it is kept as evidence."""
        properties = {
            "channel": _choice(channel, "channel", CHANNELS),
            "status": _choice(status, "status", CONSENT_STATUSES),
            "source": _text(source, "source"),
            "method": _text(method, "method"),
            "form_id": _text(form_id, "form_id"),
            "consent_text": _text(consent_text, "consent_text"),
            "consent_text_version": _text(consent_text_version, "consent_text_version"),
        }
        return self.track(user_id, "Consent Updated", _drop_none(properties), **options)

    def join_waitlist(
        self,
        user_id: str | int | None = None,
        *,
        product_id: str,
        variant_id: str | None = None,
        channel: Channel = "email",
        **options: Unpack[CallOptions],
    ) -> str | None:
        """Ask to be told when an out-of-stock product is back ("notify me")."""
        return self.track(user_id, "Waitlist Joined", _waitlist(product_id, variant_id, channel), **options)

    def leave_waitlist(
        self,
        user_id: str | int | None = None,
        *,
        product_id: str,
        variant_id: str | None = None,
        channel: Channel = "email",
        **options: Unpack[CallOptions],
    ) -> str | None:
        return self.track(user_id, "Waitlist Left", _waitlist(product_id, variant_id, channel), **options)

    def inventory_updated(
        self,
        *,
        product_id: str,
        quantity: int,
        variant_id: str | None = None,
        price: Amount | None = None,
        title: str | None = None,
        url: str | None = None,
        image_url: str | None = None,
        category: str | None = None,
        **options: Unpack[CallOptions],
    ) -> str | None:
        """Server-side: stock or price changed (no person). Back in stock triggers the waitlist's flow."""
        properties = {
            "product_id": _required_text(product_id, "product_id"),
            "variant_id": _text(variant_id, "variant_id"),
            "quantity": _count(quantity, "quantity"),
            "price": _amount(price, "price"),
            "title": _text(title, "title"),
            "url": _text(url, "url"),
            "image_url": _text(image_url, "image_url"),
            "category": _text(category, "category"),
        }
        return self.track(None, "Inventory Updated", _drop_none(properties), **options)


def _drop_none(properties: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in properties.items() if value is not None}


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value:
        raise InvalidMessage(field, f"must be a non-empty string, not {value!r}")
    return value


def _required_text(value: Any, field: str) -> str:
    text = _text(value, field)
    if text is None:
        raise InvalidMessage(field, "is required")
    return text


def _amount(value: Any, field: str) -> Amount | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        raise InvalidMessage(field, f"must be a number (int, float, Decimal or numeric string), not {value!r}")
    try:
        number = Decimal(value) if not isinstance(value, float) else Decimal(repr(value))
    except InvalidOperation:
        raise InvalidMessage(field, f"must be a number, not {value!r}") from None
    if not number.is_finite() or (isinstance(value, float) and not math.isfinite(value)):
        raise InvalidMessage(field, f"must be a finite number, not {value!r}")
    return value


def _required_amount(value: Any, field: str) -> Amount:
    amount = _amount(value, field)
    if amount is None:
        raise InvalidMessage(field, "is required")
    return amount


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidMessage(field, f"must be a whole number >= 0, not {value!r}")
    return value


def _currency(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 3 or not value.isalpha():
        raise InvalidMessage("currency", f"must be a 3-letter ISO 4217 code such as 'EUR', not {value!r}")
    return value.upper()


def _choice(value: Any, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidMessage(field, f"must be one of {', '.join(allowed)}, not {value!r}")
    return str(value)


def _product(product: Any, field: str) -> dict[str, Any]:
    if not isinstance(product, Mapping):
        raise InvalidMessage(field, f"must be a dict of product properties, not {type(product).__name__}")
    line = dict(product)
    line["product_id"] = _required_text(line.get("product_id"), f"{field}.product_id")
    for key in ("price",):
        if key in line:
            line[key] = _amount(line[key], f"{field}.{key}")
    for key in ("quantity", "position"):
        if key in line and line[key] is not None:
            line[key] = _count(line[key], f"{field}.{key}")
    return line


def _products(products: Any) -> list[dict[str, Any]]:
    if isinstance(products, str | bytes | Mapping) or not isinstance(products, Sequence):
        raise InvalidMessage("products", f"must be a list of products, not {type(products).__name__}")
    return [_product(product, f"products[{index}]") for index, product in enumerate(products)]


def _order_ref(order_id: Any, total: Any, currency: Any, products: Any) -> dict[str, Any]:
    return _drop_none(
        {
            "order_id": _required_text(order_id, "order_id"),
            "total": _amount(total, "total"),
            "currency": _currency(currency),
            "products": None if products is None else _products(products),
        }
    )


def _waitlist(product_id: Any, variant_id: Any, channel: Any) -> dict[str, Any]:
    return _drop_none(
        {
            "product_id": _required_text(product_id, "product_id"),
            "variant_id": _text(variant_id, "variant_id"),
            "channel": _choice(channel, "channel", CHANNELS),
        }
    )
