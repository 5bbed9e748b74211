"""Operating the mirror: probe, plan and apply, admin tokens, metrics and health."""
