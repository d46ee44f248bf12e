"""A storefront session sent to espbridge with Segment's own Python client (segment-analytics-python).

Any Segment-compatible client works: point its host at espbridge and use a store's write key.

    espbridge stores create "My Shop"            # prints the write key
    espbridge serve &
    python examples/segment_storefront.py --write-key wk_... --host http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import sys
import uuid

from segment.analytics import Client


def send_session(client: Client, user_id: str) -> None:
    """One customer: browses anonymously, signs up, consents, orders, and asks to hear of a restock."""
    anonymous_id = f"anon-{uuid.uuid4().hex[:12]}"
    line = {"product_id": "tee-1", "sku": "TEE-1-M", "name": "Classic Tee", "price": 19.99, "quantity": 2}
    client.page(anonymous_id=anonymous_id, category="Shop", name="Product", properties={"url": "/p/tee-1"})
    client.track(anonymous_id=anonymous_id, event="Product Added", properties={"cart_id": "c-1", **line})
    client.identify(user_id, {"email": f"{user_id}@example.com", "first_name": "Ann"}, anonymous_id=anonymous_id)
    client.track(user_id, "Consent Updated", {"channel": "email", "status": "subscribed", "source": "checkout"})
    order = {"order_id": f"o-{user_id}", "cart_id": "c-1", "revenue": 39.98, "currency": "EUR", "products": [line]}
    client.track(user_id, "Order Completed", order)
    client.track(user_id, "Waitlist Joined", {"product_id": "hoodie-2", "variant_id": "hoodie-2-l"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-key", required=True)
    parser.add_argument("--host", default="http://127.0.0.1:8000")
    parser.add_argument("--user-id", default="cus_42")
    args = parser.parse_args(argv)
    failures: list[Exception] = []
    client = Client(args.write_key, host=args.host, on_error=lambda exc, _batch: failures.append(exc))
    send_session(client, args.user_id)
    client.flush()  # Segment's client sends from a thread: flush before exit or the events are lost
    client.shutdown()
    for exc in failures:
        print(f"not delivered: {exc}", file=sys.stderr)
    print(f"sent a storefront session for {args.user_id} to {args.host}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
