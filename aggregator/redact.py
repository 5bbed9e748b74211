"""Keeping secrets out of what the service shows: URL user-info and registered secret values."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

#: ``scheme://user:password@`` → ``scheme://***@`` anywhere in a text.
_USERINFO: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")
_SECRETS: set[str] = set()
MASK: Final = "***"


def register(values: Iterable[str | None]) -> None:
    """Remember secret *values* (tokens read from the environment) to mask wherever they
    appear; values shorter than 6 characters are too likely to match ordinary text."""
    _SECRETS.update(v for v in values if v and len(v) >= 6)


def text(value: str) -> str:
    """*value* with URL user-info and registered secrets masked."""
    if "@" in value:
        value = _USERINFO.sub(lambda m: f"{m.group(1)}{MASK}@", value)
    for secret in _SECRETS:
        if secret in value:
            value = value.replace(secret, MASK)
    return value


def deep(value: Any) -> Any:
    """*value* with every string in it masked (dicts, lists and tuples are rebuilt)."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return {k: deep(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [deep(v) for v in value]
    return value
