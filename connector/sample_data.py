"""A deterministic storefront day as Segment HTTP Tracking API messages, for the demo, tests and benchmarks.

Everything derives from seeded ``random.Random`` instances, so the same arguments always give the same
messages. Only reserved values appear: ``*.example`` hosts, ``example.com`` emails, RFC 5737 documentation
IP addresses and fictional ``+1555…`` phone numbers. Money is generated as integer cents and emitted as
2-decimal numbers, so every total adds up exactly.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

STORE_URL = "https://demo-store.example"
#: A fixed default (not today) so that the default output never changes.
DEFAULT_DAY = dt.date(2026, 11, 20)
CURRENCIES = ("EUR", "USD")
CONSENT_TEXT_VERSION = "v3"

_DAY_MS = 86_400_000
_MINUTE = 60_000

# Behaviour mix. New visitors start anonymous; returning customers arrive already logged in.
_P_RETURNING = 0.05
_P_CART = 0.40
_P_CART_RETURNING = 0.60
_P_CHECKOUT = 0.50
_P_CHECKOUT_RETURNING = 0.65
_P_COMPLETE = 0.85
_P_SIGNUP = 0.15  # of anonymous visitors who do not check out
_P_WAITLIST = 0.20  # of views of an out-of-stock variant
_P_WAITLIST_LEFT = 0.15
_P_EMAIL_AT_SIGNUP = 0.90
_P_EMAIL_AT_CHECKOUT = 0.55
_P_EMAIL_AT_WAITLIST = 0.25
_P_EMAIL_PENDING = 0.15  # double opt-in: pending first, confirmed a few minutes later (usually)
_P_EMAIL_CONFIRMED = 0.75
_P_SMS = 0.35  # of email subscribers who gave a phone number
_P_UNSUBSCRIBE = 0.10
_P_REFUND = 0.06
_P_CANCEL = 0.04
_P_COUPON = 0.20

_HOUR_WEIGHTS = (1, 1, 1, 1, 1, 2, 3, 5, 7, 8, 8, 9, 10, 10, 9, 9, 9, 10, 11, 12, 12, 10, 7)  # 00:00-22:59


@dataclass(frozen=True, slots=True)
class _Category:
    name: str
    code: str
    nouns: str  # comma-separated
    variants: tuple[str, ...]
    single: str  # the variant label of a product that has only one variant
    dollars: tuple[int, int]  # price range in whole currency units
    min_variants: int = 1


_CATEGORIES = (
    _Category(
        "Apparel",
        "APP",
        "Crew Tee, Oxford Shirt, Hoodie, Chinos, Denim Jacket, Merino Sweater, Linen Dress, Parka",
        ("S", "M", "L"),
        "One Size",
        (19, 149),
    ),
    _Category(
        "Shoes",
        "SHO",
        "Runner, Chelsea Boot, Loafer, Trail Shoe, Court Sneaker, Sandal, Derby, Slipper",
        ("EU 40", "EU 42", "EU 44"),
        "EU 42",
        (39, 189),
        min_variants=2,
    ),
    _Category(
        "Accessories",
        "ACC",
        "Leather Belt, Canvas Tote, Wool Scarf, Card Wallet, Sunglasses, Beanie, Backpack, Cap",
        ("Black", "Tan", "Navy"),
        "One Size",
        (12, 89),
    ),
    _Category(
        "Home",
        "HOM",
        "Ceramic Mug, Linen Throw, Scented Candle, Towel Set, Table Lamp, Planter, Cushion, Carafe",
        ("White", "Sage", "Charcoal"),
        "Standard",
        (9, 129),
    ),
    _Category(
        "Beauty",
        "BEA",
        "Face Serum, Hand Cream, Lip Balm, Shampoo Bar, Body Oil, Sunscreen, Eye Cream, Bath Salts",
        ("30 ml", "50 ml", "100 ml"),
        "50 ml",
        (8, 59),
    ),
)
_ADJECTIVES = ("Classic", "Everyday", "Heritage", "Organic", "Alpine", "Coastal", "Studio", "Nordic", "Bold")
_BRANDS = ("Tideline", "Marlow Goods", "Brightwater", "Kestrel & Co", "Northbay Supply")
_FIRST_NAMES = (
    "Anna",
    "Ben",
    "Chloe",
    "David",
    "Elena",
    "Felix",
    "Grace",
    "Hugo",
    "Ines",
    "Jonas",
    "Klara",
    "Liam",
    "Maya",
    "Noah",
    "Olivia",
    "Paul",
    "Rosa",
    "Sam",
    "Tara",
    "Umar",
    "Vera",
    "Will",
    "Yara",
    "Zoe",
)
_LAST_NAMES = (
    "Andersen",
    "Becker",
    "Costa",
    "Dubois",
    "Evans",
    "Fischer",
    "Garcia",
    "Hansen",
    "Ivanova",
    "Jensen",
    "Keller",
    "Lambert",
    "Moreau",
    "Nielsen",
    "Okafor",
    "Peters",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Vogel",
)
_EU_PLACES = (
    ("Berlin", "DE", "de-DE"),
    ("Hamburg", "DE", "de-DE"),
    ("Munich", "DE", "de-DE"),
    ("Paris", "FR", "fr-FR"),
    ("Lyon", "FR", "fr-FR"),
    ("Amsterdam", "NL", "nl-NL"),
    ("Madrid", "ES", "es-ES"),
    ("Barcelona", "ES", "es-ES"),
    ("Milan", "IT", "it-IT"),
    ("Vienna", "AT", "de-AT"),
    ("Dublin", "IE", "en-IE"),
    ("Lisbon", "PT", "pt-PT"),
    ("Brussels", "BE", "fr-BE"),
    ("Helsinki", "FI", "fi-FI"),
)
_US_PLACES = (
    ("New York", "US", "en-US"),
    ("Chicago", "US", "en-US"),
    ("Austin", "US", "en-US"),
    ("Seattle", "US", "en-US"),
    ("Denver", "US", "en-US"),
    ("Boston", "US", "en-US"),
    ("Los Angeles", "US", "en-US"),
    ("Miami", "US", "es-US"),
    ("Portland", "US", "en-US"),
    ("Atlanta", "US", "en-US"),
)
_USER_AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/18.1 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:132.0) Gecko/20100101 Firefox/132.0",
)
_USER_AGENT_WEIGHTS = (35, 25, 20, 15, 5)
#: RFC 5737 documentation networks: never routable, never a real person's address.
_IP_PREFIXES = ("192.0.2", "198.51.100", "203.0.113")
#: Refunds and cancellations come from the store's backend, not the shopper's browser.
_BACKEND = {"ip": "203.0.113.10", "userAgent": "demo-store-backend/2.4 (+https://demo-store.example)"}
_REFERRERS = ("", "", "https://search.example/", "https://social.example/", "https://newsletter.example/")
_COUPONS = (("WELCOME10", 10), ("EARLYBF20", 20))
_CONSENT_FORMS = {
    "form": (f"{STORE_URL}/signup", "signup-form"),
    "checkout": ("checkout", "checkout-form"),
    "preference_center": (f"{STORE_URL}/account/preferences", "preference-center"),
}


@dataclass(frozen=True, slots=True)
class Product:
    """One sellable variant of a catalog product; ``quantity`` is its inventory at the start of the day."""

    product_id: str
    variant_id: str
    sku: str
    name: str
    category: str
    price_cents: int
    quantity: int
    variant: str = ""  # the shopper-facing label, Segment's ``variant`` property
    brand: str = ""

    @property
    def price(self) -> float:
        return _money(self.price_cents)

    @property
    def url(self) -> str:
        slug = "-".join(self.name.lower().replace("&", " ").split())
        return f"{STORE_URL}/products/{slug}"

    @property
    def image_url(self) -> str:
        return f"{STORE_URL}/images/{self.product_id}.jpg"


def catalog(seed: int = 7) -> list[Product]:
    """About 40 products in five categories with 1-3 variants each; a few variants are out of stock."""
    rng = random.Random(f"espbridge-catalog:{seed}")
    adjectives = list(_ADJECTIVES)
    rng.shuffle(adjectives)
    variants: list[list[Product]] = []
    number = 1000
    for category in _CATEGORIES:
        for index, noun in enumerate(category.nouns.split(", ")):
            number += 1
            product_id = f"prod_{number}"
            name = f"{adjectives[index % len(adjectives)]} {noun}"
            brand = rng.choice(_BRANDS)
            count = rng.choices((1, 2, 3), weights=(25, 35, 40))[0]
            count = max(count, category.min_variants)
            labels = (category.single,) if count == 1 else category.variants[:count]
            base = rng.randrange(*category.dollars)
            ending = rng.choice((-1, -1, -1, 0, -5))  # mostly x.99, some x.00 and x.95
            rows = []
            for position, label in enumerate(labels):
                # Bigger bottles cost more; sizes and colours of the same product cost the same.
                dollars = base * (2, 3, 5)[position] // 2 if category.name == "Beauty" else base
                rows.append(
                    Product(
                        product_id=product_id,
                        variant_id=f"var_{number}_{position + 1}",
                        sku=f"{category.code}-{number}-{label.upper().replace(' ', '')}",
                        name=name,
                        category=category.name,
                        price_cents=dollars * 100 + ending,
                        quantity=rng.randrange(8, 150),
                        variant=label,
                        brand=brand,
                    )
                )
            variants.append(rows)
    # A few sold-out products (every variant) and a few sold-out sizes, which is what waitlists are for.
    picks = rng.sample(range(len(variants)), 6)
    for product_index in picks[:2]:
        variants[product_index] = [_sold_out(row) for row in variants[product_index]]
    for product_index in picks[2:]:
        rows = variants[product_index]
        position = rng.randrange(len(rows))
        rows[position] = _sold_out(rows[position])
    return [row for rows in variants for row in rows]


def _sold_out(product: Product) -> Product:
    return Product(
        product_id=product.product_id,
        variant_id=product.variant_id,
        sku=product.sku,
        name=product.name,
        category=product.category,
        price_cents=product.price_cents,
        quantity=0,
        variant=product.variant,
        brand=product.brand,
    )


def storefront_day(
    *, customers: int = 300, seed: int = 7, day: dt.date | None = None, currency: str = "EUR"
) -> list[dict[str, Any]]:
    """Every message of one storefront day for ``customers`` visitors, sorted by timestamp.

    The day opens with an ``Inventory Updated`` per catalog variant and has a few restocks later on.
    """
    if customers < 0:
        raise ValueError("customers must be >= 0")
    if currency not in CURRENCIES:
        raise ValueError(f"currency must be one of {', '.join(CURRENCIES)}")
    if day is None:
        day = DEFAULT_DAY
    elif isinstance(day, dt.datetime):
        day = day.date()
    generator = _Day(random.Random(f"espbridge-day:{seed}:{day.isoformat()}:{currency}"), day, currency, seed)
    generator.open_store()
    for number in range(1, customers + 1):
        generator.visitor(number)
    generator.close_store()
    return generator.messages()


def batches(messages: Sequence[dict[str, Any]], size: int = 100) -> Iterator[list[dict[str, Any]]]:
    """Consecutive chunks of at most ``size`` messages, for ``/v1/batch`` requests.

    Generated messages are under 4 KB each, so 100 per batch stays far below the 500 KB batch limit.
    """
    if size < 1:
        raise ValueError("size must be >= 1")  # raised at the call, not at the first next()
    return (list(messages[start : start + size]) for start in range(0, len(messages), size))


def _money(cents: int) -> float:
    return round(cents / 100, 2)


@dataclass(eq=False)
class _Visitor:
    number: int
    anonymous_id: str | None
    user_id: str | None
    first_name: str
    last_name: str
    city: str
    country: str
    phone: str | None
    context: dict[str, str]
    t: int = 0  # the session clock, in milliseconds since midnight UTC
    page: dict[str, str] = field(default_factory=dict)
    email_subscribed: bool = False

    def traits(self) -> dict[str, Any]:
        traits: dict[str, Any] = {
            "email": f"{self.first_name.lower()}.{self.last_name.lower()}+{self.number}@example.com",
            "first_name": self.first_name,
            "last_name": self.last_name,
        }
        if self.phone is not None:
            traits["phone"] = self.phone
        traits["city"] = self.city
        traits["country"] = self.country
        return traits


@dataclass(eq=False)
class _Line:
    product: Product
    quantity: int


class _Day:
    """Builds one day of messages; kept as one object so that all randomness comes from one stream."""

    def __init__(self, rng: random.Random, day: dt.date, currency: str, seed: int) -> None:
        self.rng = rng
        self.currency = currency
        self.prefix = day.isoformat() + "T"
        self.variants = catalog(seed)
        self.products: dict[str, list[Product]] = {}
        for variant in self.variants:
            self.products.setdefault(variant.product_id, []).append(variant)
        self.product_ids = list(self.products)
        # Sold-out products get extra attention, as they do in real shops, which feeds the waitlists.
        weights = [
            2.0 if all(v.quantity == 0 for v in variants) else rng.uniform(0.3, 2.5)
            for variants in self.products.values()
        ]
        self.cum_weights = list(accumulate(weights))
        self.places = _EU_PLACES if currency == "EUR" else _US_PLACES
        self.shipping_cents = 495 if currency == "EUR" else 599
        # EUR shelf prices include VAT; US sales tax is added at checkout.
        self.tax_percent = 0 if currency == "EUR" else 8
        #: variant_id -> when a sold-out variant is back in stock; decided up front so shoppers see it.
        self.restocked_at: dict[str, int] = {}
        self.waitlist_joins: dict[str, list[int]] = {}  # variant_id -> when shoppers joined its waitlist
        self.orders = 0
        self._out: list[tuple[int, int, dict[str, Any]]] = []

    def messages(self) -> list[dict[str, Any]]:
        # Ties keep generation order, so one visitor's same-millisecond messages stay causal.
        self._out.sort(key=lambda item: (item[0], item[1]))
        return [message for _, _, message in self._out]

    # -- emitting --------------------------------------------------------------------------------

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _stamp(self, ms: int) -> str:
        hours, rest = divmod(ms, 3_600_000)
        minutes, rest = divmod(rest, _MINUTE)
        seconds, millis = divmod(rest, 1000)
        return f"{self.prefix}{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}Z"

    def _emit(self, ms: int, kind: str, body: dict[str, Any], visitor: _Visitor | None, *, web: bool = True) -> None:
        message: dict[str, Any] = {"type": kind, "messageId": self._uuid(), "timestamp": self._stamp(ms)}
        if visitor is not None:
            if visitor.user_id is not None:
                message["userId"] = visitor.user_id
            if visitor.anonymous_id is not None:
                message["anonymousId"] = visitor.anonymous_id
        message.update(body)
        if visitor is not None:
            if web:
                context: dict[str, Any] = dict(visitor.context)
                context["page"] = dict(visitor.page)
            else:
                context = {**_BACKEND, "locale": visitor.context["locale"]}
            message["context"] = context
        self._out.append((ms, len(self._out), message))

    def _step(self, visitor: _Visitor, low_s: float, high_s: float) -> int:
        # Clamped so a late session can never leave the day; equal times still sort in emission order.
        visitor.t = min(visitor.t + self.rng.randrange(int(low_s * 1000), int(high_s * 1000)), _DAY_MS - 1)
        return visitor.t

    def _later(self, t: int) -> int | None:
        """A time at least 20 minutes after ``t`` on the same day, or None when the day is nearly over."""
        earliest = t + 20 * _MINUTE
        return self.rng.randrange(earliest, _DAY_MS - 1) if earliest < _DAY_MS - 1 else None

    def _page(self, visitor: _Visitor, path: str, name: str, title: str, category: str | None = None) -> None:
        url = path if path.startswith("https://") else STORE_URL + path
        page = {"path": url.removeprefix(STORE_URL) or "/", "title": f"{title} | Demo Store", "url": url}
        if not visitor.page:
            referrer = self.rng.choice(_REFERRERS)
            if referrer:
                page["referrer"] = referrer
        visitor.page = page
        body: dict[str, Any] = {"name": name, "properties": dict(page)}
        if category is not None:
            body["category"] = category
        self._emit(visitor.t, "page", body, visitor)

    def _track(self, visitor: _Visitor, event: str, properties: dict[str, Any], *, web: bool = True) -> None:
        self._emit(visitor.t, "track", {"event": event, "properties": properties}, visitor, web=web)

    def _inventory(self, ms: int, product: Product, quantity: int) -> None:
        properties = {
            "product_id": product.product_id,
            "variant_id": product.variant_id,
            "sku": product.sku,
            "quantity": quantity,
            "price": product.price,
            "currency": self.currency,
            "title": f"{product.name} - {product.variant}",
            "url": product.url,
            "image_url": product.image_url,
            "category": product.category,
        }
        self._emit(ms, "track", {"event": "Inventory Updated", "properties": properties}, None)

    # -- the store -------------------------------------------------------------------------------

    def open_store(self) -> None:
        """The catalog load at midnight, then restocks: half the sold-out variants and a few top-ups."""
        for index, product in enumerate(self.variants):
            self._inventory(index, product, product.quantity)
        sold_out = [p for p in self.variants if p.quantity == 0]
        for product in self.rng.sample(sold_out, max(1, len(sold_out) // 2)) if sold_out else []:
            ms = self.rng.randrange(11 * 3_600_000, 20 * 3_600_000)
            self.restocked_at[product.variant_id] = ms
            self._inventory(ms, product, self.rng.randrange(10, 60))
        for product in self.rng.sample([p for p in self.variants if p.quantity > 0], 3):
            self._inventory(
                self.rng.randrange(8 * 3_600_000, 22 * 3_600_000),
                product,
                product.quantity + self.rng.randrange(20, 80),
            )

    def close_store(self) -> None:
        """Restock the most wanted sold-out variant after its last waitlist join, if it was not restocked yet.

        The planned restocks may all miss the variants people waited for; a back-in-stock moment is the
        point of a waitlist, so the day always has one when there are waitlists at all.
        """
        waiting = [v for v in self.waitlist_joins if v not in self.restocked_at]
        if not waiting:
            return
        variant_id = max(waiting, key=lambda v: len(self.waitlist_joins[v]))  # first of equals: deterministic
        earliest = max(self.waitlist_joins[variant_id]) + 10 * _MINUTE
        if earliest < _DAY_MS - 1:
            product = next(p for p in self.variants if p.variant_id == variant_id)
            ms = self.rng.randrange(earliest, _DAY_MS - 1)
            self.restocked_at[variant_id] = ms
            self._inventory(ms, product, self.rng.randrange(10, 60))

    def _in_stock(self, product: Product, t: int) -> bool:
        # Stock is not drawn down by orders: the demo is about events, and starting stock covers the day.
        restocked = self.restocked_at.get(product.variant_id)
        return product.quantity > 0 or (restocked is not None and t >= restocked)

    def _pick(self) -> Product:
        product_id = self.rng.choices(self.product_ids, cum_weights=self.cum_weights)[0]
        return self.rng.choice(self.products[product_id])

    # -- one visitor -----------------------------------------------------------------------------

    def visitor(self, number: int) -> None:
        rng = self.rng
        returning = rng.random() < _P_RETURNING
        city, country, locale = rng.choice(self.places)
        visitor = _Visitor(
            number=number,
            anonymous_id=None if returning else self._uuid(),
            user_id=f"cus_{10000 + number}" if returning else None,
            first_name=rng.choice(_FIRST_NAMES),
            last_name=rng.choice(_LAST_NAMES),
            city=city,
            country=country,
            # Fictional +1 555 numbers, unique per visitor so contacts never merge by phone by accident.
            phone=f"+1555{100000 + number:07d}" if rng.random() < 0.7 else None,
            context={
                "ip": f"{rng.choice(_IP_PREFIXES)}.{rng.randrange(1, 255)}",
                "userAgent": rng.choices(_USER_AGENTS, weights=_USER_AGENT_WEIGHTS)[0],
                "locale": locale,
            },
        )
        hour = rng.choices(range(len(_HOUR_WEIGHTS)), weights=_HOUR_WEIGHTS)[0]
        # Never before 00:01, so the midnight catalog load always comes first.
        visitor.t = max(hour * 3_600_000 + rng.randrange(3_600_000), _MINUTE)

        if rng.random() < 0.5:
            self._page(visitor, "/", "Home", "Home")
        else:
            category = rng.choice(_CATEGORIES).name
            self._page(visitor, f"/collections/{category.lower()}", "Collection", category, category)
        if returning:
            # Still logged in from an earlier visit: the storefront re-identifies them on arrival.
            self._step(visitor, 1, 3)
            self._emit(visitor.t, "identify", {"traits": visitor.traits()}, visitor)

        carting = rng.random() < (_P_CART_RETURNING if returning else _P_CART)
        checking_out = carting and rng.random() < (_P_CHECKOUT_RETURNING if returning else _P_CHECKOUT)
        cart_id = f"cart_{rng.getrandbits(48):012x}"
        wanted_lines = rng.choices((1, 2, 3), weights=(50, 35, 15))[0]
        cart: list[_Line] = []
        waitlisted: list[Product] = []

        for _ in range(rng.choices((1, 2, 3, 4, 5), weights=(25, 30, 20, 15, 10))[0]):
            product = self._pick()
            self._view(visitor, product)
            if not self._in_stock(product, visitor.t):
                if product not in waitlisted and rng.random() < _P_WAITLIST and self._join_waitlist(visitor, product):
                    waitlisted.append(product)
            elif carting and len(cart) < wanted_lines and all(line.product != product for line in cart):
                self._add(visitor, cart_id, cart, product)
        if carting and not cart:
            # Shoppers who came to buy find something that is in stock.
            product = self._pick()
            while not self._in_stock(product, visitor.t):
                product = self._pick()
            self._view(visitor, product)
            self._add(visitor, cart_id, cart, product)
        if len(cart) >= 2 and rng.random() < 0.25:
            self._remove(visitor, cart_id, cart)
        if cart and (checking_out or rng.random() < 0.6):
            self._step(visitor, 5, 40)
            self._page(visitor, "/cart", "Cart", "Cart")
            self._track(visitor, "Cart Viewed", self._cart_properties(cart_id, cart))

        if checking_out:
            self._checkout(visitor, cart_id, cart)
        elif visitor.user_id is None and rng.random() < _P_SIGNUP:
            self._step(visitor, 10, 60)
            self._page(visitor, "/signup", "Sign Up", "Sign Up")
            self._step(visitor, 15, 90)
            self._identify(visitor)
            if rng.random() < _P_EMAIL_AT_SIGNUP:
                self._grant(visitor, "form")

        for product in waitlisted:
            if rng.random() < _P_WAITLIST_LEFT:
                self._leave_waitlist(visitor, product)
        if visitor.email_subscribed and rng.random() < _P_UNSUBSCRIBE:
            self._unsubscribe(visitor)

    def _view(self, visitor: _Visitor, product: Product) -> None:
        self._step(visitor, 8, 90)
        self._page(visitor, product.url, "Product", product.name, product.category)
        visitor.t = min(visitor.t + self.rng.randrange(50, 400), _DAY_MS - 1)
        self._track(
            visitor,
            "Product Viewed",
            {
                "product_id": product.product_id,
                "variant_id": product.variant_id,
                "sku": product.sku,
                "category": product.category,
                "name": product.name,
                "brand": product.brand,
                "variant": product.variant,
                "price": product.price,
                "currency": self.currency,
                "url": product.url,
                "image_url": product.image_url,
            },
        )

    def _line(self, line: _Line) -> dict[str, Any]:
        product = line.product
        return {
            "product_id": product.product_id,
            "variant_id": product.variant_id,
            "sku": product.sku,
            "category": product.category,
            "name": product.name,
            "variant": product.variant,
            "price": product.price,
            "quantity": line.quantity,
        }

    def _cart_properties(self, cart_id: str, cart: list[_Line]) -> dict[str, Any]:
        return {
            "cart_id": cart_id,
            "currency": self.currency,
            "products": [self._line(line) for line in cart],
        }

    def _add(self, visitor: _Visitor, cart_id: str, cart: list[_Line], product: Product) -> None:
        line = _Line(product, self.rng.choices((1, 2, 3), weights=(75, 20, 5))[0])
        cart.append(line)
        self._step(visitor, 3, 30)
        self._track(visitor, "Product Added", {"cart_id": cart_id, **self._line(line), "currency": self.currency})

    def _remove(self, visitor: _Visitor, cart_id: str, cart: list[_Line]) -> None:
        line = cart.pop(self.rng.randrange(len(cart)))
        self._step(visitor, 5, 30)
        self._track(visitor, "Product Removed", {"cart_id": cart_id, **self._line(line), "currency": self.currency})

    def _identify(self, visitor: _Visitor) -> None:
        if visitor.user_id is None:
            visitor.user_id = f"cus_{10000 + visitor.number}"
        self._emit(visitor.t, "identify", {"traits": visitor.traits()}, visitor)

    def _consent(self, visitor: _Visitor, channel: str, status: str, method: str) -> None:
        source, form_id = _CONSENT_FORMS[method]
        properties = {
            "channel": channel,
            "status": status,
            "source": source,
            "method": method,
            "form_id": form_id,
            "consent_text_version": CONSENT_TEXT_VERSION,
        }
        self._track(visitor, "Consent Updated", properties)

    def _grant(self, visitor: _Visitor, method: str) -> None:
        """Email consent (sometimes double opt-in), and SMS consent for some who gave a phone number."""
        rng = self.rng
        self._step(visitor, 1, 5)
        if rng.random() < _P_EMAIL_PENDING:
            self._consent(visitor, "email", "pending", method)
            if rng.random() >= _P_EMAIL_CONFIRMED:
                return
            # The confirmation link is clicked from the inbox a little later, apart from the shopping session.
            confirming = replace(visitor, page={})
            self._step(confirming, 60, 900)
            self._page(confirming, "/signup/confirm", "Subscription Confirmed", "Subscription Confirmed")
            self._consent(confirming, "email", "subscribed", method)
        else:
            self._consent(visitor, "email", "subscribed", method)
        visitor.email_subscribed = True
        if visitor.phone is not None and rng.random() < _P_SMS:
            self._step(visitor, 1, 5)
            self._consent(visitor, "sms", "subscribed", method)

    def _unsubscribe(self, visitor: _Visitor) -> None:
        later = self._later(visitor.t)
        if later is None:
            return
        visitor.t = later
        visitor.page = {}
        self._page(visitor, "/account/preferences", "Preferences", "Email Preferences")
        self._step(visitor, 5, 40)
        self._consent(visitor, "email", "unsubscribed", "preference_center")
        visitor.email_subscribed = False

    def _join_waitlist(self, visitor: _Visitor, product: Product) -> bool:
        """Identify if needed, then join; False when a restock landed while the visitor filled in the form."""
        if visitor.user_id is None:
            # The "notify me" form asks for an email address, which identifies the visitor.
            self._step(visitor, 10, 40)
            self._identify(visitor)
            if self.rng.random() < _P_EMAIL_AT_WAITLIST:
                self._grant(visitor, "form")
        self._step(visitor, 1, 5)
        if self._in_stock(product, visitor.t):
            return False
        properties = {"product_id": product.product_id, "variant_id": product.variant_id, "channel": "email"}
        self._track(visitor, "Waitlist Joined", properties)
        self.waitlist_joins.setdefault(product.variant_id, []).append(visitor.t)
        return True

    def _leave_waitlist(self, visitor: _Visitor, product: Product) -> None:
        later = self._later(visitor.t)
        if later is None:
            return
        visitor.t = later
        visitor.page = {}
        self._page(visitor, "/account/waitlist", "Waitlist", "My Waitlist")
        self._step(visitor, 3, 20)
        properties = {"product_id": product.product_id, "variant_id": product.variant_id, "channel": "email"}
        self._track(visitor, "Waitlist Left", properties)

    def _checkout(self, visitor: _Visitor, cart_id: str, cart: list[_Line]) -> None:
        rng = self.rng
        self._step(visitor, 5, 30)
        self._page(visitor, "/checkout", "Checkout", "Checkout")
        if visitor.anonymous_id is not None and visitor.user_id is None:
            # Signing up (or logging in) at checkout is where most anonymous shoppers become known.
            self._step(visitor, 20, 120)
            self._identify(visitor)
            if rng.random() < _P_EMAIL_AT_CHECKOUT:
                self._grant(visitor, "checkout")
        subtotal = sum(line.product.price_cents * line.quantity for line in cart)
        checkout_id = f"chk_{rng.getrandbits(48):012x}"
        products = [self._line(line) for line in cart]
        self._step(visitor, 5, 30)
        self._track(
            visitor,
            "Checkout Started",
            {
                "checkout_id": checkout_id,
                "cart_id": cart_id,
                "value": _money(subtotal),
                "revenue": _money(subtotal),
                "currency": self.currency,
                "products": products,
            },
        )
        if rng.random() >= _P_COMPLETE:
            return
        coupon, percent = rng.choice(_COUPONS) if rng.random() < _P_COUPON else ("", 0)
        discount = subtotal * percent // 100
        shipping = 0 if subtotal - discount >= 6000 else self.shipping_cents
        tax = ((subtotal - discount) * self.tax_percent + 50) // 100  # half-up, in cents
        total = subtotal - discount + shipping + tax
        self.orders += 1
        order_id = f"ord_{100000 + self.orders}"
        self._step(visitor, 60, 300)
        self._page(visitor, "/checkout/thank-you", "Order Confirmation", "Thank You")
        properties: dict[str, Any] = {
            "order_id": order_id,
            "checkout_id": checkout_id,
            "cart_id": cart_id,
            "total": _money(total),
            "revenue": _money(subtotal),
            "subtotal": _money(subtotal),
            "shipping": _money(shipping),
            "tax": _money(tax),
            "discount": _money(discount),
            "currency": self.currency,
            "products": products,
        }
        if coupon:
            properties["coupon"] = coupon
        self._track(visitor, "Order Completed", properties)

        outcome = rng.random()
        if outcome < _P_REFUND + _P_CANCEL:
            later = self._later(visitor.t)
            if later is not None:
                after = replace(visitor, t=later)
                if outcome < _P_REFUND:
                    event = {"order_id": order_id, "total": _money(total), "currency": self.currency}
                    self._track(after, "Order Refunded", event, web=False)
                else:
                    self._track(after, "Order Cancelled", {"order_id": order_id}, web=False)
