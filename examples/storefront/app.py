"""A small storefront that tells espbridge what its shoppers do, through the espbridge SDK.

Each view does the shop's own work, then makes one SDK call. SDK calls enqueue and return at once: an
espbridge that is slow or down never slows a page down or breaks it.

Who is acting: every browser gets an ``anonymous_id`` (a uuid in Flask's signed session cookie) on its first
request, and signing up adds a ``user_id``. Every call carries both, so espbridge links what a shopper did
before signing up to the customer they became. Every call also carries the request's IP address and user
agent: espbridge keeps them as the evidence of a consent.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from espbridge import Client, Product
from flask import Blueprint, Flask, abort, current_app, flash, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from .catalog import CATALOG, CURRENCY, Item

#: The signup form's consent checkbox. espbridge stores a hash of the text and its version as evidence.
CONSENT_TEXT = "Email me news and offers. I can unsubscribe at any time with the link in every email."
CONSENT_TEXT_VERSION = "2025-01"
SIGNUP_FORM_ID = "signup"

bp = Blueprint("shop", __name__)


@dataclass(eq=False)
class Shop:
    """What the views share: the SDK client, the catalog, and how many of each product are on the shelf."""

    client: Client
    products: dict[str, Item]
    stock: dict[str, int]
    admin_token: str | None


def create_app(
    client: Client,
    *,
    secret_key: str | None = None,
    admin_token: str | None = None,
    products: Iterable[Item] = CATALOG,
) -> Flask:
    """The storefront, sending through ``client``.

    ``secret_key`` signs the session cookie (a random one if unset: carts do not survive a restart).
    ``admin_token`` enables the inventory routes (``Authorization: Bearer <token>``); without it they answer 403.
    """
    app = Flask(__name__)
    app.config["SECRET_KEY"] = secret_key or secrets.token_hex(32)
    items = {item.product_id: item for item in products}
    stock = {product_id: item.stock for product_id, item in items.items()}
    app.extensions["storefront"] = Shop(client=client, products=items, stock=stock, admin_token=admin_token)
    app.register_blueprint(bp)
    return app


def _shop() -> Shop:
    return cast(Shop, current_app.extensions["storefront"])


@bp.before_app_request
def _give_the_browser_an_anonymous_id() -> None:
    if "anonymous_id" not in session:
        session["anonymous_id"] = str(uuid.uuid4())


@bp.app_context_processor
def _layout() -> dict[str, Any]:
    return {
        "signed_in": "user_id" in session,
        "email": session.get("email", ""),
        "cart_size": sum(_cart().values()),
        "currency": CURRENCY,
    }


# -- shopping ------------------------------------------------------------------------------------


@bp.get("/")
def catalog() -> str:
    """Every product, with its price and whether it is in stock."""
    shop = _shop()
    shop.client.page(category="Shop", name="Catalog", **_who())
    return render_template("catalog.html", items=shop.products.values(), stock=shop.stock)


@bp.get("/products/<product_id>")
def product(product_id: str) -> str:
    """One product: "add to cart" while in stock, "notify me" when sold out."""
    shop = _shop()
    item = _item_or_404(product_id)
    shop.client.product_viewed(product=_line(item), **_who())
    return render_template("product.html", item=item, in_stock=shop.stock[item.product_id])


@bp.post("/cart/add/<product_id>")
def add_to_cart(product_id: str) -> Response:
    shop = _shop()
    item = _item_or_404(product_id)
    cart = _cart()
    if cart.get(item.product_id, 0) >= shop.stock[item.product_id]:
        flash(f"Sorry, we have no more {item.name} on the shelf.")
        return redirect(url_for(".product", product_id=item.product_id))
    cart[item.product_id] = cart.get(item.product_id, 0) + 1
    session["cart"] = cart
    shop.client.product_added(product=_line(item), cart_id=_cart_id(), **_who())
    flash(f"{item.name} is in your cart.")
    return redirect(url_for(".cart"))


@bp.post("/cart/remove/<product_id>")
def remove_from_cart(product_id: str) -> Response:
    item = _item_or_404(product_id)
    cart = _cart()
    quantity = cart.pop(item.product_id, 0)
    if quantity:
        session["cart"] = cart
        _shop().client.product_removed(product=_line(item, quantity), cart_id=_cart_id(), **_who())
    return redirect(url_for(".cart"))


@bp.get("/cart")
def cart() -> str:
    lines = _lines()
    if lines:  # an empty cart is no cart: telling espbridge would open one
        _shop().client.cart_viewed(products=lines, cart_id=_cart_id(), currency=CURRENCY, **_who())
    return render_template("cart.html", lines=lines, total=_total())


@bp.route("/checkout", methods=["GET", "POST"])
def checkout() -> ResponseReturnValue:
    """GET shows the order and starts the checkout; POST places it (guests give an email address)."""
    client = _shop().client
    lines = _lines()
    if not lines:
        return redirect(url_for(".cart"))
    total = _total()
    if request.method == "GET":
        client.checkout_started(products=lines, cart_id=_cart_id(), value=total, currency=CURRENCY, **_who())
        return render_template("checkout.html", lines=lines, total=total)
    if "user_id" not in session:
        email = _email_from_form()
        if email is None:
            flash("Please give an email address for your receipt.")
            return render_template("checkout.html", lines=lines, total=total), 400
        session["email"] = email
        client.identify(traits={"email": email}, **_who())
    order_id = f"ord-{uuid.uuid4().hex[:12]}"
    client.order_completed(
        order_id=order_id,
        products=lines,
        total=total,
        revenue=total,
        currency=CURRENCY,
        cart_id=session.pop("cart_id"),
        **_who(),
    )
    session.pop("cart")
    return render_template("thanks.html", order_id=order_id, total=total)


# -- customers -----------------------------------------------------------------------------------


@bp.route("/signup", methods=["GET", "POST"])
def signup() -> ResponseReturnValue:
    """An account for an email address, with an unticked "email me news and offers" box."""
    if request.method == "GET":
        return render_template("signup.html", consent_text=CONSENT_TEXT)
    email = _email_from_form()
    if email is None:
        flash("Please give a valid email address.")
        return render_template("signup.html", consent_text=CONSENT_TEXT), 400
    client = _shop().client
    session["user_id"], session["email"] = customer_id(email), email
    traits = {"email": email}
    if first_name := request.form.get("first_name", "").strip():
        traits["first_name"] = first_name
    client.identify(traits=traits, **_who())
    if request.form.get("email_consent"):
        # Only a ticked box is a consent. An unticked one records nothing: not asking again is not withdrawing.
        client.consent(
            channel="email",
            status="subscribed",
            source=url_for(".signup", _external=True),
            method="form",
            form_id=SIGNUP_FORM_ID,
            consent_text=CONSENT_TEXT,
            consent_text_version=CONSENT_TEXT_VERSION,
            **_who(),
        )
    flash(f"Welcome! You are signed in as {email}.")
    return redirect(url_for(".catalog"))


@bp.post("/products/<product_id>/notify")
def notify_me(product_id: str) -> Response:
    """Join the product's waitlist; a guest gives the email address to notify."""
    shop = _shop()
    item = _item_or_404(product_id)
    if shop.stock[item.product_id] > 0:
        abort(409, f"{item.name} is in stock")
    if "user_id" not in session:
        email = _email_from_form()
        if email is None:
            flash("Please give the email address we should write to.")
            return redirect(url_for(".product", product_id=item.product_id))
        session["email"] = email
        shop.client.identify(traits={"email": email}, **_who())
    shop.client.join_waitlist(product_id=item.product_id, channel="email", **_who())
    flash(f"We will email {session['email']} when {item.name} is back.")
    return redirect(url_for(".product", product_id=item.product_id))


def customer_id(email: str) -> str:
    """The user id of the customer with this email address (a real shop would use its database's id)."""
    return "cus_" + hashlib.sha256(email.encode()).hexdigest()[:16]


# -- inventory (the shop's back office, not its shoppers) --------------------------------------


@bp.post("/admin/inventory")
def publish_inventory() -> dict[str, Any]:
    """Send espbridge every product with its stock, as a shop does when it first connects."""
    shop = _shop()
    _require_admin(shop)
    for item in shop.products.values():
        _inventory_updated(shop, item)
    return {"products": len(shop.products)}


@bp.post("/admin/restock/<product_id>")
def restock(product_id: str) -> dict[str, Any]:
    """Set a product's stock (form field ``quantity``); back in stock, espbridge notifies its waitlist."""
    shop = _shop()
    _require_admin(shop)
    item = _item_or_404(product_id)
    quantity = request.form.get("quantity", type=int)
    if quantity is None or quantity < 0:
        abort(400, "quantity must be a whole number >= 0")
    shop.stock[item.product_id] = quantity
    _inventory_updated(shop, item)
    return {"product_id": item.product_id, "quantity": quantity}


def _inventory_updated(shop: Shop, item: Item) -> None:
    shop.client.inventory_updated(
        product_id=item.product_id,
        quantity=shop.stock[item.product_id],
        price=item.price,
        title=item.name,
        category=item.category,
        url=url_for(".product", product_id=item.product_id, _external=True),
    )


def _require_admin(shop: Shop) -> None:
    sent = request.headers.get("Authorization", "")
    if shop.admin_token is None or not secrets.compare_digest(sent, f"Bearer {shop.admin_token}"):
        abort(403)


# -- helpers -------------------------------------------------------------------------------------


def _who() -> dict[str, Any]:
    """Who is acting, and the request's evidence: the arguments every shopper's SDK call carries."""
    context: dict[str, Any] = {
        # Behind a reverse proxy, wrap the app in werkzeug's ProxyFix, or this is the proxy's address.
        "ip": request.remote_addr,
        "userAgent": request.user_agent.string,
        "page": {"path": request.path, "url": request.url, "referrer": request.referrer or ""},
    }
    if locale := request.accept_languages.best:
        context["locale"] = locale
    return {"user_id": session.get("user_id"), "anonymous_id": session["anonymous_id"], "context": context}


def _item_or_404(product_id: str) -> Item:
    item = _shop().products.get(product_id)
    if item is None:
        abort(404)
    return item


def _line(item: Item, quantity: int = 1) -> Product:
    """The product as Segment's E-commerce spec describes it."""
    return {
        "product_id": item.product_id,
        "sku": item.sku,
        "name": item.name,
        "category": item.category,
        "price": item.price,
        "quantity": quantity,
        "url": url_for(".product", product_id=item.product_id, _external=True),
    }


def _cart() -> dict[str, int]:
    """The cart in the session, as a copy: assigning it back is what marks the session as changed."""
    return dict(session.get("cart", {}))


def _cart_id() -> str:
    if "cart_id" not in session:
        session["cart_id"] = str(uuid.uuid4())
    return str(session["cart_id"])


def _lines() -> list[Product]:
    products = _shop().products
    return [_line(products[product_id], quantity) for product_id, quantity in _cart().items()]


def _total() -> Decimal:
    products = _shop().products
    return sum((products[product_id].price * quantity for product_id, quantity in _cart().items()), Decimal(0))


def _email_from_form() -> str | None:
    email = request.form.get("email", "").strip().lower()
    return email if "@" in email and len(email) <= 254 else None
