"""Charts as self-contained SVG text: they render in JupyterLab, classic Notebook, nbconvert's
HTML and a browser test alike, need no plotting library and can be checked as XML."""

from __future__ import annotations

from html import escape
from typing import Sequence

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
OUTCOME_COLORS = {"warm": "#2ca02c", "cold": "#1f77b4", "failed": "#d62728"}


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    return [low + (high - low) * index / count for index in range(count + 1)]


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    y_label: str,
    y_range: tuple[float, float] | None = None,
    width: int = 420,
    height: int = 240,
) -> str:
    """One line per series of (round, value) points; the y axis spans `y_range`, or 0 to the largest value."""
    left, right, top, bottom = 48, 12, 28, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    points = [point for values in series.values() for point in values]
    xs = [x for x, _ in points] or [1.0]
    ys = [y for _, y in points] or [0.0]
    x_low, x_high = min(xs), max(max(xs), min(xs) + 1)
    y_low, y_high = y_range if y_range is not None else (min(0.0, min(ys)), max(ys))
    if y_high <= y_low:
        y_high = y_low + 1.0

    def place(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * plot_w, top + plot_h - (y - y_low) / (y_high - y_low) * plot_h)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="fedless-chart" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>',
        f'<text x="12" y="{top + plot_h / 2}" transform="rotate(-90 12 {top + plot_h / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>',
        f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">round</text>',
    ]
    for tick in _ticks(y_low, y_high):
        _, y = place(x_low, tick)
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{tick:.2f}</text>')
    rounds = sorted({int(x) for x in xs})
    step = max(1, len(rounds) // 8)
    for value in rounds[::step]:
        x, _ = place(value, y_low)
        parts.append(f'<text x="{x:.1f}" y="{top + plot_h + 14}" text-anchor="middle">{value}</text>')
    for index, (name, values) in enumerate(series.items()):
        color = PALETTE[index % len(PALETTE)]
        coordinates = " ".join(f"{x:.1f},{y:.1f}" for x, y in (place(*point) for point in values))
        parts.append(f'<polyline class="fedless-series" data-name="{escape(name)}" fill="none" stroke="{color}" '
                     f'stroke-width="2" points="{coordinates}"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in (place(*p) for p in values)]
        parts.append(f'<text x="{left + 6}" y="{top + 14 + 13 * index}" fill="{color}">{escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def timeline_chart(
    bars: Sequence[tuple[str, float, float, str, str]],
    *,
    width: int = 860,
    row_height: int = 14,
) -> str:
    """A client timeline: one row per client, a bar per invocation from its start to its end,
    coloured cold, warm or failed. `bars`: (client, start, end, provider, outcome) with times in
    seconds since the run began."""
    clients = sorted({bar[0] for bar in bars})
    left, top = 90, 22
    height = top + row_height * max(1, len(clients)) + 8
    end = max((bar[2] for bar in bars), default=1.0) or 1.0
    scale = (width - left - 10) / end
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="fedless-timeline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="10">',
        f'<text x="4" y="12">client timeline ({end:.1f}s)</text>',
    ]
    for index, (name, color) in enumerate(OUTCOME_COLORS.items()):
        x = width - 190 + 62 * index
        parts.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{color}"/><text x="{x + 13}" y="13">{name}</text>')
    rows = {client: index for index, client in enumerate(clients)}
    for index, client in enumerate(clients):
        parts.append(f'<text x="{left - 4}" y="{top + row_height * index + 10}" text-anchor="end">{escape(client)}</text>')
    for client, start, finish, provider, outcome in bars:
        y = top + row_height * rows[client]
        parts.append(
            f'<rect class="fedless-invocation" data-outcome="{outcome}" x="{left + start * scale:.1f}" y="{y + 2}" '
            f'width="{max(1.0, (finish - start) * scale):.1f}" height="{row_height - 4}" fill="{OUTCOME_COLORS[outcome]}">'
            f"<title>{escape(client)} on {escape(provider)}: {outcome}, {start:.2f}s to {finish:.2f}s</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)
