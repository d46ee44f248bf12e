"""The catalog, kept current by server-side "Inventory Updated" events."""

from __future__ import annotations

from typing import Annotated

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from . import outbox
from .fields import OptionalRef, OptionalShortText, OptionalText, Ref
from .money import Cents
from .store import Product, Variant

Url = Annotated[str | None, Field(max_length=2000)]


class InventoryProperties(BaseModel):
    model_config = ConfigDict(extra="ignore")

    product_id: Ref
    variant_id: OptionalRef = ""
    quantity: int | None = Field(None, ge=-1_000_000_000, le=1_000_000_000)
    price: Cents = None
    sku: OptionalShortText = None
    title: OptionalText = None
    category: OptionalShortText = None
    url: Url = None
    image_url: Url = None


def inventory_updated(session: Session, store_id: int, props: InventoryProperties) -> None:
    """Upsert product and variant; a variant going from none in stock to some emits a restock."""
    product = session.scalar(
        sa.select(Product).where(Product.store_id == store_id, Product.product_id == props.product_id)
    )
    if product is None:
        product = Product(store_id=store_id, product_id=props.product_id)
        session.add(product)
    for field in ("title", "category", "url", "image_url"):
        if getattr(props, field) is not None:
            setattr(product, field, getattr(props, field))
    variant = session.scalar(
        sa.select(Variant).where(
            Variant.store_id == store_id,
            Variant.product_id == props.product_id,
            Variant.variant_id == props.variant_id,
        )
    )
    if variant is None:
        variant = Variant(store_id=store_id, product_id=props.product_id, variant_id=props.variant_id)
        session.add(variant)
    was_out = variant.inventory_quantity is not None and variant.inventory_quantity <= 0
    if props.quantity is not None:
        variant.inventory_quantity = props.quantity
    if props.price is not None:
        variant.price_cents = props.price
    variant.sku = props.sku or variant.sku
    session.flush()
    if was_out and (variant.inventory_quantity or 0) > 0:
        outbox.add(
            session,
            store_id,
            outbox.Topic.CATALOG_RESTOCKED,
            variant.id,
            {"product_id": props.product_id, "variant_id": props.variant_id, "quantity": variant.inventory_quantity},
        )
