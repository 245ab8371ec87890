"""Market data: canonical frames, provider adapters, the router, the bar store and backfills."""
