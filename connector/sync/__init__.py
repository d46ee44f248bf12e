"""Keeping ESPs in sync: the per-ESP queue (queue), the shared rate limiter (ratelimit), the incremental
engine (engine), full syncs (full) and building adapters from stored connections (adapters)."""
