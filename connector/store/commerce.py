"""Catalog, carts and orders. Money is integer minor units (cents): exact on every backend."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, BigId, StoreScoped, utcnow

Cents = sa.BigInteger


class Product(StoreScoped, Base):
    __tablename__ = "catalog_products"
    __table_args__ = (sa.UniqueConstraint("store_id", "product_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[str] = mapped_column(sa.String(200))
    title: Mapped[str | None] = mapped_column(sa.String(500))
    category: Mapped[str | None] = mapped_column(sa.String(200))
    url: Mapped[str | None] = mapped_column(sa.String(2000))
    image_url: Mapped[str | None] = mapped_column(sa.String(2000))
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Variant(StoreScoped, Base):
    """A sellable variant; products without variants have one with ``variant_id = ""``."""

    __tablename__ = "catalog_variants"
    __table_args__ = (sa.UniqueConstraint("store_id", "product_id", "variant_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[str] = mapped_column(sa.String(200))
    variant_id: Mapped[str] = mapped_column(sa.String(200), default="")
    sku: Mapped[str | None] = mapped_column(sa.String(200))
    price_cents: Mapped[int | None] = mapped_column(Cents)
    inventory_quantity: Mapped[int | None]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Cart(StoreScoped, Base):
    __tablename__ = "carts"
    __table_args__ = (sa.Index(None, "store_id", "contact_id", "status"), sa.Index(None, "store_id", "cart_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int | None] = mapped_column(sa.ForeignKey("contacts.id", ondelete="SET NULL"))
    cart_id: Mapped[str | None] = mapped_column(sa.String(200))
    #: open → checkout → converted (or abandoned, decided by the flows issue).
    status: Mapped[str] = mapped_column(sa.String(16), default="open")
    currency: Mapped[str | None] = mapped_column(sa.String(3))
    order_id: Mapped[str | None] = mapped_column(sa.String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_activity_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CartItem(StoreScoped, Base):
    __tablename__ = "cart_items"
    __table_args__ = (sa.UniqueConstraint("cart_ref", "product_id", "variant"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    cart_ref: Mapped[int] = mapped_column(sa.ForeignKey("carts.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[str] = mapped_column(sa.String(200))
    variant: Mapped[str] = mapped_column(sa.String(200), default="")
    sku: Mapped[str | None] = mapped_column(sa.String(200))
    name: Mapped[str | None] = mapped_column(sa.String(500))
    category: Mapped[str | None] = mapped_column(sa.String(200))
    price_cents: Mapped[int | None] = mapped_column(Cents)
    quantity: Mapped[int] = mapped_column(default=1)


class Order(StoreScoped, Base):
    __tablename__ = "orders"
    __table_args__ = (
        sa.UniqueConstraint("store_id", "order_id"),
        sa.Index(None, "store_id", "contact_id", "placed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_id: Mapped[str] = mapped_column(sa.String(200))
    contact_id: Mapped[int | None] = mapped_column(sa.ForeignKey("contacts.id", ondelete="SET NULL"))
    #: completed | refunded | partially_refunded | cancelled
    status: Mapped[str] = mapped_column(sa.String(24), default="completed")
    currency: Mapped[str | None] = mapped_column(sa.String(3))
    subtotal_cents: Mapped[int | None] = mapped_column(Cents)
    total_cents: Mapped[int | None] = mapped_column(Cents)
    revenue_cents: Mapped[int | None] = mapped_column(Cents)
    discount_cents: Mapped[int | None] = mapped_column(Cents)
    shipping_cents: Mapped[int | None] = mapped_column(Cents)
    tax_cents: Mapped[int | None] = mapped_column(Cents)
    refunded_cents: Mapped[int] = mapped_column(Cents, default=0)
    coupon: Mapped[str | None] = mapped_column(sa.String(200))
    placed_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class OrderItem(StoreScoped, Base):
    __tablename__ = "order_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    order_ref: Mapped[int] = mapped_column(sa.ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[str] = mapped_column(sa.String(200))
    variant: Mapped[str] = mapped_column(sa.String(200), default="")
    sku: Mapped[str | None] = mapped_column(sa.String(200))
    name: Mapped[str | None] = mapped_column(sa.String(500))
    category: Mapped[str | None] = mapped_column(sa.String(200))
    price_cents: Mapped[int | None] = mapped_column(Cents)
    quantity: Mapped[int] = mapped_column(default=1)


class WaitlistEntry(StoreScoped, Base):
    """A back-in-stock request: waiting → notified / converted, or left."""

    __tablename__ = "waitlist_entries"
    __table_args__ = (sa.UniqueConstraint("store_id", "contact_id", "product_id", "variant_id", "channel"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(sa.ForeignKey("contacts.id", ondelete="CASCADE"))
    product_id: Mapped[str] = mapped_column(sa.String(200))
    variant_id: Mapped[str] = mapped_column(sa.String(200), default="")
    channel: Mapped[str] = mapped_column(sa.String(16), default="email")
    status: Mapped[str] = mapped_column(sa.String(16), default="waiting")
    joined_at: Mapped[dt.datetime]
    left_at: Mapped[dt.datetime | None]
