"""Dependency-free SVG learning curves (episode returns over steps, with a moving average).

No matplotlib on purpose: the robot install and CI stay small, and an SVG opens in any browser.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from firmware_bridge.atomic import atomic_write_bytes


def moving_average(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def write_learning_curve_svg(
    path: str | Path,
    points: list[tuple[float, float]],
    title: str,
    x_label: str = "step",
    y_label: str = "episode return",
    markers: list[tuple[float, str]] | None = None,
    width: int = 720,
    height: int = 360,
) -> Path:
    """Scatter of (x, y) points, their moving average, optional vertical markers (x, label)."""
    if not points:
        raise ValueError("no points to plot")
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    ml, mr, mt, mb = 70, 20, 40, 50
    pw, ph = width - ml - mr, height - mt - mb

    def sx(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return mt + (1 - (y - y0) / (y1 - y0)) * ph

    avg = moving_average(ys, max(1, len(ys) // 20))
    dots = "".join(
        f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="1.5" fill="#9ab" />' for x, y in zip(xs, ys)
    )
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, avg))
    ticks = []
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        xv = x0 + (x1 - x0) * i / 4
        ticks.append(
            f'<text x="{ml - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end" font-size="11">{yv:.3g}</text>'
            f'<line x1="{ml}" x2="{ml + pw}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" stroke="#eee" />'
            f'<text x="{sx(xv):.1f}" y="{mt + ph + 16}" text-anchor="middle" font-size="11">{xv:.3g}</text>'
        )
    marks = ""
    for mx, label in markers or []:
        marks += (
            f'<line x1="{sx(mx):.1f}" x2="{sx(mx):.1f}" y1="{mt}" y2="{mt + ph}" '
            f'stroke="#c33" stroke-dasharray="4 3" />'
            f'<text x="{sx(mx) + 4:.1f}" y="{mt + 12}" font-size="11" fill="#c33">{escape(label)}</text>'
        )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif">'
        f'<rect width="100%" height="100%" fill="white" />'
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="14">{escape(title)}</text>'
        f"{''.join(ticks)}"
        f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#333" />'
        f"{dots}"
        f'<polyline points="{line}" fill="none" stroke="#1f5fbf" stroke-width="2" />'
        f"{marks}"
        f'<text x="{ml + pw / 2}" y="{height - 10}" text-anchor="middle" font-size="12">{escape(x_label)}</text>'
        f'<text x="16" y="{mt + ph / 2}" font-size="12" transform="rotate(-90 16 {mt + ph / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>'
        "</svg>\n"
    )
    return atomic_write_bytes(path, svg.encode())
