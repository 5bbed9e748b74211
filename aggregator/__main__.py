"""Entry point for ``python -m aggregator``."""

from __future__ import annotations

from aggregator.cli import main

raise SystemExit(main())
