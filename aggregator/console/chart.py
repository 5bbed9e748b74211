"""The run-history chart of an upstream page: run durations as bars, tools seen as a line,
laid out here and drawn by the template as inline SVG (no script, no style attributes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

WIDTH: Final = 720
HEIGHT: Final = 200
_LEFT: Final = 48
_RIGHT: Final = 48
_TOP: Final = 12
_BOTTOM: Final = 28
#: The widest bar, so a short history does not draw slabs.
_MAX_BAR: Final = 36.0


@dataclass(frozen=True, slots=True)
class Bar:
    """One run: its bar (duration) and its point on the tools line."""

    run_id: int
    status: str
    x: float
    y: float
    width: float
    height: float
    point_y: float
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    """What the template draws."""

    width: int
    height: int
    bars: list[Bar]
    line: str
    max_duration_s: float
    max_tools: int
    first: dt.datetime | None
    last: dt.datetime | None
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def layout(runs: Sequence[Any]) -> Chart:
    """Lay out *runs* (oldest first; rows with ``id``, ``status``, ``started_at``,
    ``duration_s``, ``tools_seen``, ``errors``)."""
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    max_d = max((float(r["duration_s"] or 0) for r in runs), default=0.0) or 1.0
    max_t = max((int(r["tools_seen"]) for r in runs), default=0) or 1
    slot = plot_w / max(len(runs), 1)
    bars: list[Bar] = []
    points: list[str] = []
    for i, r in enumerate(runs):
        duration = float(r["duration_s"] or 0)
        h = max(duration / max_d * plot_h, 1.0)
        x = _LEFT + i * slot
        width = min(max(slot * 0.7, 1.0), _MAX_BAR)
        point_y = _TOP + plot_h - int(r["tools_seen"]) / max_t * plot_h
        points.append(f"{x + slot / 2:.1f},{point_y:.1f}")
        started = r["started_at"].astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        bars.append(
            Bar(
                r["id"],
                r["status"],
                round(x + (slot - width) / 2, 1),
                round(_TOP + plot_h - h, 1),
                round(width, 1),
                round(h, 1),
                round(point_y, 1),
                f"run {r['id']} {started}: {r['status']}, {_seconds(duration)}, "
                f"{r['tools_seen']} tools, {r['errors']} errors",
            )
        )
    return Chart(
        WIDTH,
        HEIGHT,
        bars,
        " ".join(points),
        max_d,
        max_t,
        runs[0]["started_at"] if runs else None,
        runs[-1]["started_at"] if runs else None,
        _LEFT,
        WIDTH - _RIGHT,
        _TOP,
        HEIGHT - _BOTTOM,
    )
