"""espbridge storefront SDK: send identify / track / page / … calls to espbridge's ingestion API.

    from espbridge import Client
    client = Client("WRITE_KEY", host="https://espbridge.example.com")
    client.track("user-1", "Product Viewed", {"product_id": "sku-1"})

Calls return at once; a background thread batches, sends and retries. See sdk/README.md.
"""

from ._client import Client, Stats
from ._errors import Dropped, EspbridgeError, InvalidMessage, Rejected
from ._events import Amount, CallOptions, Channel, ConsentStatus, Product
from ._version import PROTOCOL_VERSION, __version__

__all__ = [
    "PROTOCOL_VERSION",
    "Amount",
    "CallOptions",
    "Channel",
    "Client",
    "ConsentStatus",
    "Dropped",
    "EspbridgeError",
    "InvalidMessage",
    "Product",
    "Rejected",
    "Stats",
    "__version__",
]
