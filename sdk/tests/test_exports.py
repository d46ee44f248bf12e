"""The SDK's public surface is pinned (httpx's test_exported_members pattern): a name added to or removed from
the package is a deliberate change to this list."""

from __future__ import annotations

import espbridge

PUBLIC = [
    "Amount",
    "CallOptions",
    "Channel",
    "Client",
    "ConsentStatus",
    "Dropped",
    "EspbridgeError",
    "InvalidMessage",
    "PROTOCOL_VERSION",
    "Product",
    "Rejected",
    "Stats",
    "__version__",
]


def test_public_names_are_exactly_all() -> None:
    exported = [name for name in vars(espbridge) if not name.startswith("_")] + ["__version__"]
    assert sorted(espbridge.__all__) == sorted(exported) == PUBLIC
    assert espbridge.PROTOCOL_VERSION == "segment-v1"
