"""Reading one upstream record: the shortcut from its bytes refuses exactly what the full check
of its value refuses."""

from __future__ import annotations

import pytest

from aggregator.harvest import records

BODIES = [
    b'{"content": "cwlVersion: v1.2\\n", "url": "http://u.test/a", "checksum": []}',
    b'[{"id": "1.0", "name": "1.0", "author": ["A"], "descriptor_type": ["CWL"]}]',
    b'{"description": "tool \\u0000 n1"}',
    b'{"description": "an escaped backslash, then u0000: \\\\u0000"}',
    b'{"k\\u0000": 1}',
    b'{"description": "tool \xff u1"}',
    b'{"description": "\\ud800 lone"}',
    b'{"x-size": 1e400}',
    b'{"x-size": -1e400}',
    b'{"x-int": 18446744073709551615, "y": -9223372036854775808}',
    b'{"x-int": 18446744073709551616}',
    b"[" * 64 + b"]" * 64,
    b"[" * 65 + b"]" * 65,
    b'{"a":' * 63 + b"1" + b"}" * 63,
    b'{"a":' * 70 + b"1" + b"}" * 70,
    b'{"deep": ' + b"[" * 100 + b"]" * 100 + b"}",
    b'"just a string"',
    b"null",
]


@pytest.mark.parametrize("body", BODIES)
def test_record_problem_agrees_with_the_full_check(body: bytes) -> None:
    value, why = records.record_problem(body)
    assert value == records.loads(body)
    assert why == records.problem(records.loads(body))


def test_what_the_shortcut_refuses() -> None:
    assert records.record_problem(BODIES[2])[1] == "a NUL character in a string"
    assert records.record_problem(BODIES[3])[1] is None
    assert records.record_problem(BODIES[5])[1] == "a string that is not valid UTF-8"
    assert records.record_problem(BODIES[7])[1] == "a number out of range"
    assert records.record_problem(BODIES[11])[1] is None
    assert records.record_problem(BODIES[12])[1] == "nesting deeper than 64 levels"


def test_not_json_is_raised() -> None:
    with pytest.raises(ValueError, match="unexpected character"):
        records.record_problem(b"<html>")


LISTING = (
    b'[{"id": "a", "versions": [{"author": ["A"]}]}, "not a tool", 7, null, '
    b'{"id": "d", "x": ' + b"[" * 64 + b"]" * 64 + b"}, "
    b'{"id": "e", "x": {"y": ' + b"[" * 63 + b"]" * 63 + b"}}, "
    b'[{"k": ' + b"[" * 70 + b"]" * 70 + b"}], "
    b'{"id": "big", "n": 18446744073709551616, "s": "caf\xc3\xa9"}]'
)


def test_a_plain_listing_is_screened_like_any_other() -> None:
    value, strict = records.decode(LISTING)
    assert strict and records.plain_text(LISTING)
    quick = records.screen(value, plain=True)
    assert quick == records.screen(value)
    assert [i for i, _ in quick[1]] == [4, 5, 6]
    assert {why for _, why in quick[1]} == {"nesting deeper than 64 levels"}


def test_a_listing_with_a_nul_is_not_plain() -> None:
    body = b'[{"id": "n1", "description": "tool \\u0000 n1"}]'
    assert not records.plain_text(body)
    assert records.screen(records.loads(body))[1] == [(0, "a NUL character in a string")]
