"""The shop's catalog: a few products, two of them sold out (which is what "notify me" is for)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

#: Every price is in this currency; orders and checkouts say so.
CURRENCY = "EUR"


@dataclass(frozen=True, slots=True)
class Item:
    """One product as the shop sells it; ``stock`` is how many are on the shelf when the shop opens."""

    product_id: str
    sku: str
    name: str
    category: str
    price: Decimal
    stock: int


CATALOG = (
    Item("tee-classic", "TEE-CL-M", "Classic Tee", "Apparel", Decimal("19.99"), 40),
    Item("hoodie-alpine", "HOO-AL-L", "Alpine Hoodie", "Apparel", Decimal("59.00"), 0),
    Item("mug-ceramic", "MUG-CE-W", "Ceramic Mug", "Home", Decimal("14.50"), 25),
    Item("candle-cedar", "CAN-CE-S", "Cedar Candle", "Home", Decimal("18.00"), 0),
    Item("tote-canvas", "TOT-CA-N", "Canvas Tote", "Accessories", Decimal("24.00"), 12),
    Item("beanie-merino", "BEA-ME-G", "Merino Beanie", "Accessories", Decimal("29.95"), 8),
)
