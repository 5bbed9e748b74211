"""The merge: one tool per real tool across registries (pure: no I/O)."""
