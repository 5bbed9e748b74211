"""The HTTP API: TRS v2 and the aggregator's own endpoints."""
