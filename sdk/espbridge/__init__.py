"""espbridge storefront SDK.

This distribution is a placeholder until the SDK issue lands: it pins the package name and the
protocol version the ingestion service speaks, nothing more.
"""

__all__ = ["PROTOCOL_VERSION", "__version__"]

__version__ = "0.0.1"
#: The ingestion protocol this SDK speaks (Segment HTTP Tracking API, DESIGN.md section 3).
PROTOCOL_VERSION = "segment-v1"
