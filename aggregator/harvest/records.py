"""Reading upstream JSON that may be hostile: a lenient decoder and a check of each record.

A record that PostgreSQL or the API could not store or re-serialise is refused on its own, so
it fails only itself: a NUL character (jsonb and text refuse it), a string that is not valid
UTF-8, a number out of range (infinite, or an integer beyond 64 bits), or nesting deeper than
``MAX_DEPTH`` (orjson re-serialises at most 254 levels, and the API nests records further).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any, Final

import orjson

#: The deepest nesting a record may have; TRS documents are a few levels deep.
MAX_DEPTH: Final = 64
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1


def loads(body: bytes) -> Any:
    """Decode JSON, tolerating what only some records may carry.

    orjson refuses a whole document for one string that is not valid UTF-8 or one number it
    cannot represent; then the document is read again leniently (invalid UTF-8 kept as lone
    surrogates, numbers at full range) so that ``problem`` can refuse the records that carry
    them and keep the rest. Raises ValueError (orjson's) when the document is not JSON at all.
    """
    return decode(body)[0]


def decode(body: bytes) -> tuple[Any, bool]:
    """``loads``, and whether orjson read *body* strictly (then every string in it is valid
    UTF-8 and every number finite and in range: see ``plain``)."""
    try:
        return orjson.loads(body), True
    except orjson.JSONDecodeError as strict:
        try:
            return json.loads(body.decode("utf-8", "surrogateescape")), False
        except (ValueError, RecursionError):
            raise strict from None


def plain(body: bytes) -> bool:
    r"""Whether a JSON text that orjson read strictly holds nothing ``problem`` refuses, seen
    from its bytes alone: no NUL (in JSON only the escape ``\u0000`` makes one) and too few
    brackets to nest deeper than ``MAX_DEPTH``. False says nothing: check the value."""
    return plain_text(body) and body.count(b"[") + body.count(b"{") <= MAX_DEPTH


def record_problem(body: bytes) -> tuple[Any, str | None]:
    """Decode *body* as one record: its value and why it cannot be stored (None when it can).

    Raises ValueError (orjson's) when it is not JSON at all."""
    value, strict = decode(body)
    if strict and plain(body):
        return value, None
    return value, problem(value)


def _string_problem(s: str) -> str | None:
    if "\x00" in s:
        return "a NUL character in a string"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "a string that is not valid UTF-8"
    return None


def problem(value: Any) -> str | None:
    """Why *value* (one record) cannot be stored and served; None when it can."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            why = _string_problem(item)
            if why:
                return why
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not _INT_MIN <= item <= _INT_MAX:
                return "an integer out of range"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return "a number out of range"
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return f"nesting deeper than {MAX_DEPTH} levels"
            if isinstance(item, dict):
                for k, v in item.items():
                    why = _string_problem(k)
                    if why:
                        return why
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in item)
    return None


def _too_deep(value: Any) -> str | None:
    """``problem`` for a value whose strings and numbers are known to be fine (see
    ``plain_text``): only its nesting is checked, visiting containers only."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nesting deeper than {MAX_DEPTH} levels"
        values = item.values() if type(item) is dict else item
        stack.extend((v, depth + 1) for v in values if type(v) is dict or type(v) is list)
    return None


def plain_text(body: bytes) -> bool:
    r"""Whether a JSON text that orjson read strictly can hold nothing ``problem`` refuses but
    nesting: no string in it has a NUL (in JSON only the escape ``\u0000`` makes one)."""
    return b"\\u0000" not in body


def screen(items: Sequence[Any], *, plain: bool = False) -> tuple[list[Any], list[tuple[int, str]]]:
    """The records of *items* that can be stored, and (index, problem) of the others.

    *plain*: the document holding them was read strictly and is ``plain_text``; only their
    nesting can then be a problem."""
    check = _too_deep if plain else problem
    good: list[Any] = []
    refused: list[tuple[int, str]] = []
    for i, item in enumerate(items):
        why = check(item) if type(item) is dict or type(item) is list else problem(item)
        if why is None:
            good.append(item)
        else:
            refused.append((i, why))
    return good, refused


def label(item: Any, index: int) -> str:
    """How to name a refused record in a run's errors: its id when it has a printable one."""
    ident = item.get("id") if isinstance(item, dict) else None
    if isinstance(ident, str | int) and not isinstance(ident, bool):
        text = str(ident)
        if _string_problem(text) is None and len(text) <= 200:
            return repr(text)
    return f"#{index + 1}"
