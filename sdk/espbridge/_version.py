__version__ = "0.1.0"
#: The ingestion protocol this SDK speaks (Segment HTTP Tracking API, DESIGN.md section 3).
PROTOCOL_VERSION = "segment-v1"
