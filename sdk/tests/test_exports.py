"""The SDK's public surface is pinned (httpx's test_exported_members pattern)."""

from __future__ import annotations

import espbridge


def test_public_names_are_exactly_all() -> None:
    public = [*sorted(name for name in vars(espbridge) if not name.startswith("_")), "__version__"]
    assert espbridge.__all__ == sorted(public)
    assert espbridge.PROTOCOL_VERSION == "segment-v1"
