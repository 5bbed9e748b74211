"""Syntax highlighting of descriptors with Pygments: CSS classes only (the console's
Content-Security-Policy allows no inline styles), one span per line so lines can be linked."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Final

from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import get_lexer_by_name
from pygments.util import ClassNotFound

#: Larger files are shown cut at this many bytes (the raw link serves them whole).
MAX_SHOWN: Final = 64 * 1024
_CSS_CLASS: Final = "hl"
_FORMATTER: Final = HtmlFormatter(cssclass=_CSS_CLASS, linespans="L", wrapcode=True)
#: The token colours, appended to the console's stylesheet.
STYLE_CSS: Final = _FORMATTER.get_style_defs("." + _CSS_CLASS)

# Pygments has no WDL or Snakemake lexer: WDL is shown plain, Snakemake as the Python it is.
_BY_EXTENSION: Final = {
    ".cwl": "yaml",
    ".yml": "yaml",
    ".yaml": "yaml",
    ".json": "json",
    ".ga": "json",
    ".nf": "groovy",
    ".config": "groovy",
    ".smk": "python",
    ".py": "python",
    ".sh": "bash",
    ".r": "r",
    ".md": "markdown",
    ".xml": "xml",
}
_BY_NAME: Final = {"dockerfile": "docker", "snakefile": "python", "containerfile": "docker"}
_BY_TYPE: Final = {"CWL": "yaml", "GALAXY": "json", "NFL": "groovy", "SMK": "python"}


@dataclass(frozen=True, slots=True)
class Shown:
    """A file as the viewer shows it.

    Attributes:
        html: The highlighted lines, or None for a binary file.
        language: The lexer's name.
        truncated: Whether only the first ``MAX_SHOWN`` bytes are shown.
        lines: How many lines are shown.
    """

    html: Markup | None
    language: str
    truncated: bool
    lines: int


def lexer_name(path: str, descriptor_type: str) -> str:
    """The Pygments lexer for a file of *descriptor_type* at *path*."""
    base = posixpath.basename(path).lower()
    if base in _BY_NAME:
        return _BY_NAME[base]
    ext = posixpath.splitext(base)[1]
    return _BY_EXTENSION.get(ext) or _BY_TYPE.get(descriptor_type.upper(), "text")


def show(content: bytes, path: str, descriptor_type: str) -> Shown:
    """Highlight *content*; binary content is not shown."""
    truncated = len(content) > MAX_SHOWN
    head = content[:MAX_SHOWN]
    if b"\x00" in head:
        return Shown(None, "binary", truncated, 0)
    source = head.decode("utf-8", errors="replace")
    try:
        lexer = get_lexer_by_name(lexer_name(path, descriptor_type), stripnl=False)
    except ClassNotFound:
        lexer = get_lexer_by_name("text", stripnl=False)
    html = highlight(source, lexer, _FORMATTER)
    markup = Markup(html)  # noqa: S704 - Pygments escapes the source it formats
    return Shown(markup, lexer.name, truncated, source.count("\n") + 1)
