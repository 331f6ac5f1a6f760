"""Scatter plots as plain geometry for an inline-SVG template: no plotting library, no script, no network.

A plot compares decoding strategies: one series per model run, one point per
strategy, and each series' Pareto front (strategies no other strategy of the
same run beats on both axes) drawn as a dashed line through ringed points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from evalkit.report.stats import pareto_front

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
WIDTH, HEIGHT = 560, 360
LEFT, RIGHT, TOP, BOTTOM = 64, 64, 16, 48  # the right margin leaves room for point labels


@dataclass
class Point:
    label: str
    x: float
    y: float
    px: float = 0.0
    py: float = 0.0
    on_front: bool = False


@dataclass
class Series:
    name: str
    color: str
    points: list[Point]
    front: str = ""  # SVG polyline "x,y x,y ..." through the Pareto points, in x order


@dataclass
class Plot:
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    x_higher_better: bool = True
    y_higher_better: bool = True
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    plot_width: int = WIDTH - LEFT - RIGHT
    plot_height: int = HEIGHT - TOP - BOTTOM


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [low, high]."""
    if high == low:  # a single value: widen by half its size so it sits mid-axis
        pad = abs(low) / 2 or 0.5
        low, high = low - pad, high + pad
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _tick_text(value: float) -> str:
    return f"{value:.4g}"


def scatter(
    title: str,
    x_label: str,
    y_label: str,
    series: dict[str, list[tuple[str, float, float]]],
    x_higher_better: bool = True,
    y_higher_better: bool = True,
) -> Plot:
    """Lay out ``series`` (name -> [(point label, x, y)]) in pixel space and mark each series' Pareto front."""
    plot = Plot(title, x_label, y_label, series=[], x_higher_better=x_higher_better, y_higher_better=y_higher_better)
    xs = [x for points in series.values() for _, x, _ in points]
    ys = [y for points in series.values() for _, _, y in points]
    x_ticks, y_ticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return round(plot.left + (x - x0) / (x1 - x0) * plot.plot_width, 2)

    def py(y: float) -> float:
        return round(plot.top + plot.plot_height - (y - y0) / (y1 - y0) * plot.plot_height, 2)

    plot.x_ticks = [(px(t), _tick_text(t)) for t in x_ticks]
    plot.y_ticks = [(py(t), _tick_text(t)) for t in y_ticks]
    for index, (name, raw) in enumerate(series.items()):
        points = [Point(label, x, y, px(x), py(y)) for label, x, y in raw]
        oriented = [(p.x if x_higher_better else -p.x, p.y if y_higher_better else -p.y) for p in points]
        for point, on_front in zip(points, pareto_front(oriented)):
            point.on_front = on_front
        front = sorted((p for p in points if p.on_front), key=lambda p: p.px)
        plot.series.append(
            Series(
                name=name,
                color=PALETTE[index % len(PALETTE)],
                points=points,
                front=" ".join(f"{p.px},{p.py}" for p in front) if len(front) > 1 else "",
            )
        )
    return plot
