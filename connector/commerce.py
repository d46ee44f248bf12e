"""Carts and orders from Segment's E-commerce Spec v2 events.

Each handler receives the validated properties of one event. Product lines are authoritative snapshots when an
event carries ``products[]`` (Cart Viewed, Checkout Started, Order Completed); Product Added/Removed adjust one
line.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy.orm import Session

from . import outbox
from .fields import OptionalShortText, OptionalText, Ref
from .money import MAX_ABS_CENTS, Cents
from .store import Cart, CartItem, Contact, Database, Order, OrderItem, WaitlistEntry


class ProductLine(BaseModel):
    model_config = ConfigDict(extra="ignore")

    product_id: Ref
    variant: OptionalShortText = None
    sku: OptionalShortText = None
    name: OptionalText = None
    category: OptionalShortText = None
    price: Cents = None
    quantity: int = Field(1, ge=0, le=1_000_000)

    @property
    def variant_key(self) -> str:
        return self.variant or ""


class CartProperties(BaseModel):
    model_config = ConfigDict(extra="ignore")

    cart_id: OptionalShortText = None
    currency: str | None = Field(None, min_length=3, max_length=3)
    products: list[ProductLine] | None = None


class CartLineProperties(ProductLine):
    cart_id: OptionalShortText = None
    currency: str | None = Field(None, min_length=3, max_length=3)


class OrderProperties(BaseModel):
    model_config = ConfigDict(extra="ignore")

    order_id: Ref
    checkout_id: OptionalShortText = None
    cart_id: OptionalShortText = None
    total: Cents = None
    revenue: Cents = None
    subtotal: Cents = None
    discount: Cents = None
    shipping: Cents = None
    tax: Cents = None
    coupon: OptionalShortText = None
    currency: str | None = Field(None, min_length=3, max_length=3)
    products: list[ProductLine] = Field(default_factory=list)

    @field_validator("products")
    @classmethod
    def _lines_add_up_to_an_amount(cls, products: list[ProductLine]) -> list[ProductLine]:
        # Each price is bounded, but price x quantity summed over the lines is the subtotal we store.
        if abs(sum((line.price or 0) * line.quantity for line in products)) >= MAX_ABS_CENTS:
            raise ValueError("the lines add up to more than any order can hold")
        return products


class OrderRefProperties(BaseModel):
    model_config = ConfigDict(extra="ignore")

    order_id: Ref
    total: Cents = None


def product_added(
    session: Session, store_id: int, contact: Contact | None, props: CartLineProperties, at: dt.datetime
) -> None:
    cart = _cart_for(session, store_id, contact, props.cart_id, at)
    cart.currency = props.currency or cart.currency
    item = _item(session, cart, props.product_id, props.variant_key)
    if item is None:
        item = CartItem(
            store_id=store_id, cart_ref=cart.id, product_id=props.product_id, variant=props.variant_key, quantity=0
        )
        session.add(item)
    _copy_line(item, props)
    item.quantity += max(props.quantity, 1)
    _touched(session, store_id, cart, at)


def product_removed(
    session: Session, store_id: int, contact: Contact | None, props: CartLineProperties, at: dt.datetime
) -> None:
    cart = _cart_for(session, store_id, contact, props.cart_id, at)
    item = _item(session, cart, props.product_id, props.variant_key)
    if item is not None:
        item.quantity -= props.quantity if props.quantity else item.quantity
        if item.quantity <= 0:
            session.delete(item)
    _touched(session, store_id, cart, at)


def cart_snapshot(
    session: Session, store_id: int, contact: Contact | None, props: CartProperties, at: dt.datetime, *, checkout: bool
) -> None:
    """Cart Viewed / Checkout Started: the products listed are the cart's contents."""
    cart = _cart_for(session, store_id, contact, props.cart_id, at)
    cart.currency = props.currency or cart.currency
    if checkout:
        cart.status = "checkout"
    if props.products is not None:
        _replace_items(session, store_id, cart, props.products)
    _touched(session, store_id, cart, at)


def order_completed(
    session: Session, store_id: int, contact: Contact | None, props: OrderProperties, at: dt.datetime
) -> None:
    """Upsert by order_id (a resent Order Completed updates, never duplicates) and convert the cart."""
    order = session.scalar(sa.select(Order).where(Order.store_id == store_id, Order.order_id == props.order_id))
    if order is None:
        order = Order(store_id=store_id, order_id=props.order_id, placed_at=at, refunded_cents=0)
        session.add(order)
    lines_cents = sum((line.price or 0) * line.quantity for line in props.products)
    order.contact_id = contact.id if contact else order.contact_id
    order.status = "completed"
    order.currency = props.currency
    order.subtotal_cents = props.subtotal if props.subtotal is not None else lines_cents
    order.revenue_cents = props.revenue if props.revenue is not None else order.subtotal_cents
    order.total_cents = props.total if props.total is not None else order.revenue_cents
    order.discount_cents, order.shipping_cents, order.tax_cents = props.discount, props.shipping, props.tax
    order.coupon = props.coupon
    order.placed_at = at
    session.flush()
    session.execute(sa.delete(OrderItem).where(OrderItem.store_id == store_id, OrderItem.order_ref == order.id))
    for line in props.products:
        session.add(
            OrderItem(
                store_id=store_id,
                order_ref=order.id,
                product_id=line.product_id,
                variant=line.variant_key,
                sku=line.sku,
                name=line.name,
                category=line.category,
                price_cents=line.price,
                quantity=line.quantity,
            )
        )
    _convert_cart(session, store_id, contact, props, at)
    if contact is not None:
        _convert_waitlists(session, store_id, contact, {line.product_id for line in props.products})
    outbox.add(session, store_id, outbox.Topic.ORDER_CHANGED, order.id)


def order_status(session: Session, store_id: int, props: OrderRefProperties, status: str) -> bool:
    """Order Refunded / Order Cancelled. Returns False when the order is unknown here."""
    order = session.scalar(sa.select(Order).where(Order.store_id == store_id, Order.order_id == props.order_id))
    if order is None:
        return False
    if status == "refunded" and props.total is not None and order.total_cents and props.total < order.total_cents:
        order.refunded_cents = min(order.total_cents, order.refunded_cents + props.total)
        order.status = "refunded" if order.refunded_cents >= order.total_cents else "partially_refunded"
    else:
        order.status = status
        if status == "refunded":
            order.refunded_cents = order.total_cents or 0
    outbox.add(session, store_id, outbox.Topic.ORDER_CHANGED, order.id)
    return True


#: Carts that can still change or convert; an abandoned cart comes back to "open" when its shopper returns to it.
LIVE_CART_STATUSES = ("open", "checkout", "abandoned")


def mark_abandoned(db: Database, now: dt.datetime, inactive_for: dt.timedelta, *, limit: int = 1000) -> int:
    """Mark carts abandoned, in every store: a known shopper, at least one line, no activity for ``inactive_for``,
    not converted. Each gets a ``cart.abandoned`` outbox row (ESPs with cart automations get the cart). Returns
    how many were marked; at most ``limit`` per call (the relay's next tick takes the rest).

    It looks in a read transaction first and takes the write turn only when there is a cart to mark: the relay
    calls it every tick, and on SQLite every write waits for (and holds up) the ingestion's commits."""
    has_lines = sa.exists().where(CartItem.store_id == Cart.store_id, CartItem.cart_ref == Cart.id)
    inactive = (
        Cart.status.in_(["open", "checkout"]),
        Cart.contact_id.is_not(None),
        Cart.last_activity_at < now - inactive_for,
    )
    with db.reader() as session:
        ids = list(session.scalars(sa.select(Cart.id).where(*inactive, has_lines).order_by(Cart.id).limit(limit)))
    if not ids:
        return 0
    with db.writer() as session:  # checked again: a shopper may have come back since
        carts = session.scalars(
            sa.select(Cart).where(Cart.id.in_(ids), *inactive).with_for_update(skip_locked=True)
        ).all()
        for cart in carts:
            cart.status = "abandoned"
            outbox.add(session, cart.store_id, outbox.Topic.CART_ABANDONED, cart.id)
        return len(carts)


def _cart_for(session: Session, store_id: int, contact: Contact | None, cart_id: str | None, at: dt.datetime) -> Cart:
    query = sa.select(Cart).where(Cart.store_id == store_id, Cart.status.in_(LIVE_CART_STATUSES))
    if cart_id is not None:
        cart = session.scalar(query.where(Cart.cart_id == cart_id).order_by(Cart.id.desc()).limit(1))
    elif contact is not None:
        cart = session.scalar(query.where(Cart.contact_id == contact.id).order_by(Cart.id.desc()).limit(1))
    else:
        cart = None
    if cart is None:
        cart = Cart(
            store_id=store_id,
            contact_id=contact.id if contact else None,
            cart_id=cart_id,
            created_at=at,
            last_activity_at=at,
        )
        session.add(cart)
        session.flush()
    else:
        if cart.contact_id is None and contact is not None:
            cart.contact_id = contact.id
        if cart.status == "abandoned":
            cart.status = "open"  # the shopper is back; it is abandoned again if they leave again
    return cart


def _item(session: Session, cart: Cart, product_id: str, variant: str) -> CartItem | None:
    return session.scalar(
        sa.select(CartItem).where(
            CartItem.store_id == cart.store_id,
            CartItem.cart_ref == cart.id,
            CartItem.product_id == product_id,
            CartItem.variant == variant,
        )
    )


def _copy_line(item: CartItem, line: ProductLine) -> None:
    item.sku = line.sku or item.sku
    item.name = line.name or item.name
    item.category = line.category or item.category
    item.price_cents = line.price if line.price is not None else item.price_cents


def _replace_items(session: Session, store_id: int, cart: Cart, lines: list[ProductLine]) -> None:
    session.execute(sa.delete(CartItem).where(CartItem.store_id == store_id, CartItem.cart_ref == cart.id))
    merged: dict[tuple[str, str], CartItem] = {}
    for line in lines:
        key = (line.product_id, line.variant_key)
        if key not in merged:
            merged[key] = CartItem(
                store_id=store_id, cart_ref=cart.id, product_id=line.product_id, variant=line.variant_key, quantity=0
            )
        _copy_line(merged[key], line)
        merged[key].quantity += line.quantity
    session.add_all(merged.values())


def _touched(session: Session, store_id: int, cart: Cart, at: dt.datetime) -> None:
    cart.last_activity_at = max(cart.last_activity_at, at)
    session.flush()
    outbox.add(session, store_id, outbox.Topic.CART_CHANGED, cart.id)


def _convert_cart(
    session: Session, store_id: int, contact: Contact | None, props: OrderProperties, at: dt.datetime
) -> None:
    converted = sa.select(Cart.id).where(Cart.store_id == store_id, Cart.order_id == props.order_id).limit(1)
    if session.scalar(converted) is not None:
        return  # a resent Order Completed: its cart is converted, and a cart opened since is another one
    cart_id = props.cart_id or props.checkout_id
    query = sa.select(Cart).where(Cart.store_id == store_id, Cart.status.in_(LIVE_CART_STATUSES))
    if cart_id is not None:
        cart = session.scalar(query.where(Cart.cart_id == cart_id).order_by(Cart.id.desc()).limit(1))
    else:
        cart = None
    if cart is None and contact is not None:
        cart = session.scalar(query.where(Cart.contact_id == contact.id).order_by(Cart.id.desc()).limit(1))
    if cart is not None:
        cart.status, cart.order_id = "converted", props.order_id
        cart.last_activity_at = max(cart.last_activity_at, at)


def _convert_waitlists(session: Session, store_id: int, contact: Contact, product_ids: set[str]) -> None:
    if not product_ids:
        return
    session.execute(
        sa.update(WaitlistEntry)
        .where(
            WaitlistEntry.store_id == store_id,
            WaitlistEntry.contact_id == contact.id,
            WaitlistEntry.product_id.in_(product_ids),
            WaitlistEntry.status.in_(["waiting", "notified"]),
        )
        .values(status="converted")
        .execution_options(synchronize_session=False)
    )
