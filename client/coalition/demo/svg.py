"""Small line charts as inline SVG, for the demo's self-contained HTML report.

Hand-written rather than drawn with matplotlib: the report needs three kinds of line chart
(offers over rounds, a step supply curve, a cumulative timeline), which fit in a page of
code; the output is a few kilobytes of text that diffs and tests well; and the client
gains no plotting dependency (matplotlib and its compiled parts) for one command.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from typing import Final

PALETTE: Final = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")
"""Distinct colours, as in most plotting libraries' default cycle."""

Formatter = Callable[[float], str]
HALO: Final = 'stroke="white" stroke-width="4" paint-order="stroke"'
"""A white outline that keeps a label readable where it crosses a line."""


@dataclass(frozen=True)
class Series:
    """A line through points (x, y), optionally as steps and with dots."""

    label: str
    points: Sequence[tuple[float, float]]
    color: str
    step: bool = False
    """Draw as a step function: y holds from each x until the next (a supply curve)."""
    dots: bool = True
    dashed: bool = False


@dataclass(frozen=True)
class Rule:
    """A labelled horizontal (``y``) or vertical (``x``) reference line."""

    label: str
    color: str
    x: float | None = None
    y: float | None = None


@dataclass(frozen=True)
class Point:
    """A single labelled marker, e.g. where a deal was struck."""

    label: str
    x: float
    y: float
    color: str
    label_dy: float = -8.0
    """Where the label sits, in pixels below the marker (negative: above)."""


def number(value: float) -> str:
    """A tick label: no trailing zeros, thousands separated."""
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 times a power of ten)
    covering ``[low, high]``."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def line_chart(
    plot_id: str,
    title: str,
    series: Sequence[Series],
    *,
    x_label: str,
    y_label: str,
    rules: Sequence[Rule] = (),
    points: Sequence[Point] = (),
    x_format: Formatter = number,
    y_format: Formatter = number,
    width: int = 620,
    height: int = 340,
    y_from_zero: bool = True,
    subtitle: str = "",
) -> str:
    """An SVG line chart (a string), with axes, grid, legend, reference lines and
    markers. ``plot_id`` becomes the element's id (and ``data-plot``). Horizontal rules
    are labelled in the right margin, so their labels never cover the data."""
    horizontal = any(r.y is not None for r in rules)
    left, right, bottom = 70, 124 if horizontal else 20, 48
    legend_y = 52 if subtitle else 36
    top = legend_y + 20
    xs = [x for s in series for x, _ in s.points] + [p.x for p in points]
    ys = [y for s in series for _, y in s.points] + [p.y for p in points]
    xs += [r.x for r in rules if r.x is not None]
    ys += [r.y for r in rules if r.y is not None]
    x_ticks = nice_ticks(min(xs, default=0.0), max(xs, default=1.0))
    y_low = 0.0 if y_from_zero else min(ys, default=0.0)
    y_ticks = nice_ticks(min(y_low, min(ys, default=0.0)), max(ys, default=1.0))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{escape(plot_id)}" '
        f'data-plot="{escape(plot_id)}" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)}" '
        'font-family="system-ui, sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<text x="{left}" y="18" font-size="14" font-weight="600">{escape(title)}</text>',
    ]
    if subtitle:
        out.append(f'<text x="{left}" y="34" fill="#555">{escape(subtitle)}</text>')
    for tick in x_ticks:
        x = px(tick)
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" '
            f'fill="#555">{escape(x_format(tick))}</text>'
        )
    for tick in y_ticks:
        y = py(tick)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
            f'fill="#555">{escape(y_format(tick))}</text>'
        )
    out.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#999"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 8}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text transform="translate(16 {top + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{escape(y_label)}</text>'
    )
    label_ys: list[float] = []
    for rule in sorted((r for r in rules if r.y is not None), key=lambda r: -(r.y or 0.0)):
        assert rule.y is not None
        y = py(rule.y)
        # Labels in the margin, nudged down so that close rules' labels do not overlap.
        label_y = max([y + 4, *(previous + 13 for previous in label_ys)])
        label_ys.append(label_y)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
            f'stroke="{rule.color}" stroke-dasharray="6 4"/>'
            f'<text x="{left + plot_w + 4}" y="{label_y:.1f}" fill="{rule.color}">'
            f"{escape(rule.label)}</text>"
        )
    for row, rule in enumerate(r for r in rules if r.x is not None):
        assert rule.x is not None
        x = px(rule.x)
        # Alternate rows, so that labels of nearby vertical rules do not run together.
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}" '
            f'stroke="{rule.color}" stroke-dasharray="6 4"/>'
            f'<text x="{x + 4:.1f}" y="{top + 12 + 14 * (row % 2)}" fill="{rule.color}" '
            f"{HALO}>"
            f"{escape(rule.label)}</text>"
        )
    for s in series:
        if not s.points:
            continue
        out.append(_path(s, px, py, x1))
    for p in points:
        x, y = px(p.x), py(p.y)
        out.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="none" stroke="{p.color}" '
            f'stroke-width="2.5"><title>{escape(p.label)}</title></circle>'
        )
        if p.label:
            out.append(
                f'<text x="{x + 9:.1f}" y="{y + p.label_dy:.1f}" fill="{p.color}" '
                f'font-weight="600" {HALO}>{escape(p.label)}</text>'
            )
    out.append(_legend(series, left, legend_y))
    out.append("</svg>")
    return "\n".join(out)


def _path(
    s: Series, px: Callable[[float], float], py: Callable[[float], float], x_end: float
) -> str:
    coords = sorted(s.points) if s.step else list(s.points)
    if s.step:
        # y holds from each x to the next one, and from the last x to the axis' end.
        parts = [f"M{px(coords[0][0]):.1f},{py(coords[0][1]):.1f}"]
        for x, y in coords[1:]:
            parts.append(f"H{px(x):.1f}V{py(y):.1f}")
        parts.append(f"H{px(x_end):.1f}")
        d = "".join(parts)
    else:
        d = " ".join(
            f"{'M' if i == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for i, (x, y) in enumerate(coords)
        )
    dash = ' stroke-dasharray="5 3"' if s.dashed else ""
    out = [
        f'<path d="{d}" fill="none" stroke="{s.color}" stroke-width="2"{dash}>'
        f"<title>{escape(s.label)}</title></path>"
    ]
    if s.dots:
        out.extend(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{s.color}"/>' for x, y in coords
        )
    return "".join(out)


def _legend(series: Sequence[Series], x: float, y: float) -> str:
    out = []
    for s in series:
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        out.append(
            f'<line x1="{x:.1f}" y1="{y - 4}" x2="{x + 18:.1f}" y2="{y - 4}" '
            f'stroke="{s.color}" stroke-width="2"{dash}/>'
            f'<text x="{x + 22:.1f}" y="{y}">{escape(s.label)}</text>'
        )
        x += 30 + 7 * len(s.label)
    return "".join(out)
