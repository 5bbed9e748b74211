"""trs-aggregator: a federated aggregator and mirror for GA4GH TRS registries."""

from __future__ import annotations

__version__ = "0.1.0"
