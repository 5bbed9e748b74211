"""Progress of long operations for a person at a terminal (one redrawn status line)."""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Protocol, TextIO


class Progress(Protocol):
    """Receives counters while upstreams are harvested."""

    def update(self, upstream: str, **counters: int) -> None:
        """Replace *upstream*'s counters."""

    def done(self, upstream: str, status: str) -> None:
        """Mark *upstream* finished with *status*."""


@dataclass(slots=True)
class NoProgress:
    """Shows nothing (services log instead)."""

    def update(self, upstream: str, **counters: int) -> None:
        """Ignore."""

    def done(self, upstream: str, status: str) -> None:
        """Ignore."""


@dataclass(slots=True)
class TerminalProgress:
    """One status line, redrawn at most every *interval* seconds, then a line per upstream."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    interval: float = 0.1
    _state: dict[str, dict[str, int]] = field(default_factory=dict)
    _status: dict[str, str] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)
    _last_draw: float = 0.0

    def update(self, upstream: str, **counters: int) -> None:
        """Replace *upstream*'s counters and redraw if it is time."""
        self._started.setdefault(upstream, time.monotonic())
        self._state.setdefault(upstream, {}).update(counters)
        now = time.monotonic()
        if now - self._last_draw >= self.interval:
            self._last_draw = now
            self._draw()

    def done(self, upstream: str, status: str) -> None:
        """Print *upstream*'s final line."""
        self._status[upstream] = status
        elapsed = time.monotonic() - self._started.get(upstream, time.monotonic())
        self._clear()
        self.stream.write(f"{upstream}: {status} — {self._summary(upstream)} in {elapsed:.1f}s\n")
        self._state.pop(upstream, None)
        self._draw()

    def _summary(self, upstream: str) -> str:
        c = self._state.get(upstream, {})
        mb = c.get("bytes", 0) / 1e6
        return (
            f"{c.get('tools', 0)} tools, {c.get('versions', 0)} versions, "
            f"{c.get('files', 0)} files, {c.get('requests', 0)} requests, {mb:.1f} MB"
            + (f", {c['errors']} errors" if c.get("errors") else "")
        )

    def _draw(self) -> None:
        if not self._state:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        line = " | ".join(f"{name}: {self._summary(name)}" for name in self._state)
        self.stream.write("\r" + line[:width].ljust(width))
        self.stream.flush()

    def _clear(self) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r" + " " * width + "\r")
