"""Pure TRS logic: reading upstream documents and rendering ours (no I/O)."""
