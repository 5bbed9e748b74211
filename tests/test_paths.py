"""The file-path normaliser: canonical relative paths inside the tree, never out of it."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from aggregator.trs.paths import UnsafePath, common_root, parent, safe_tree_path, tree_path

SEGMENT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=6
)
NAME = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
RAW = st.lists(
    st.one_of(SEGMENT, st.sampled_from(["", ".", "..", "%2e%2e", "C:", "~", "a\\b", "\x00"])),
    min_size=1,
    max_size=8,
).map("/".join)


@given(RAW)
@example("../etc/passwd")
@example("a/../../b")
@example("%2E%2E/x")
@example("C:/x")
@example("file:///etc/passwd")
@example("//evil/x")
@example("a\\..\\b")
@example("a\x00b")
def test_every_accepted_path_stays_inside_the_tree(raw: str) -> None:
    """Whatever an upstream sends, an accepted path is canonical and resolves below any root;
    normalising it again changes nothing."""
    try:
        out = tree_path(raw)
    except UnsafePath:
        return
    assert out and not out.startswith("/") and not out.endswith("/")
    assert all(s not in ("", ".", "..") for s in out.split("/"))
    assert "\\" not in out and "\x00" not in out
    assert posixpath.normpath(posixpath.join("/srv/root", out)).startswith("/srv/root/")
    assert tree_path(out) == out


@given(st.lists(NAME, min_size=1, max_size=5).map("/".join))
def test_every_spelling_of_a_path_is_one_path(path: str) -> None:
    """``a/b``, ``/a/b``, ``./a/b``, ``a//b`` and ``x/../a/b`` are the same file."""
    assert tree_path(path) == path
    for spelling in (
        "/" + path,
        "./" + path,
        path.replace("/", "//"),
        "x/../" + path,
        path + "/",
    ):
        assert tree_path(spelling) == path


@given(st.lists(NAME, min_size=0, max_size=4).map("/".join), st.integers(1, 3))
def test_climbing_above_the_root_is_refused(path: str, extra: int) -> None:
    """``..`` one level more than the path is deep always leaves the tree."""
    depth = len([p for p in path.split("/") if p])
    climb = "/".join([path, *([".."] * (depth + extra)), "x"]) if path else "../" * extra + "x"
    with pytest.raises(UnsafePath):
        tree_path(climb)


@pytest.mark.parametrize(
    "raw",
    [
        "..",
        "../x",
        "a/../../x",
        "%2e%2e/x",
        "a/%2E%2E/x",
        "a%2fb",
        "a%5cb",
        "a%00b",
        "a\\b",
        "..\\x",
        "C:\\x",
        "c:/x",
        "file:///etc/passwd",
        "https://zenodo.org/x.cwl",
        "//host/share",
        "~/x",
        "a\x00b",
        "a\nb",
        "",
        "/",
        "./",
    ],
)
def test_unsafe_forms_are_refused(raw: str) -> None:
    """Each form that could leave the tree, or mean something else to a client, is refused."""
    with pytest.raises(UnsafePath):
        tree_path(raw)
    assert safe_tree_path(raw) is None


def test_common_root_and_parent() -> None:
    """The common root is the deepest shared directory; parent stops at the root."""
    assert common_root(["api/files/x", "api/files/x/tools", "api/files/x"]) == "api/files/x"
    assert common_root(["a/b", "a/c"]) == "a"
    assert common_root(["a", "b"]) == ""
    assert common_root([]) == ""
    assert parent("a/b/c", 2) == "a"
    assert parent("a", 1) == ""
    assert parent("a", 2) is None
