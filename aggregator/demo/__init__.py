"""Bundled demo upstream registries and the `demo` command."""
