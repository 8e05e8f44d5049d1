"""Figures with matplotlib (workstation install only; the robot install has no matplotlib).

- `write_learning_curve`: one run's episode returns over steps, with a moving average.
- `plot_runs`: `rtu-edge plot`: learning curves of many run directories, grouped (by cell, algo
  or env), each group's mean over seeds with a 95% confidence band (mean +- 1.96 standard
  errors across seeds, on a common step grid; one seed: no band).

Figures are written atomically (PNG or SVG by the file's suffix), with round tick values.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from firmware_bridge.atomic import atomic_write_bytes

FORMATS = (".png", ".svg")
GROUP_KEYS = ("cell", "algo", "env")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plots need matplotlib, part of the workstation install: pip install 'rtu-edge[train]'"
        ) from None
    return plt


def moving_average(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _save(fig, path: Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: the figure must end in {' or '.join(FORMATS)}")
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix[1:].lower(), dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def write_learning_curve(
    path: str | Path,
    points: list[tuple[float, float]],
    title: str,
    x_label: str = "step",
    y_label: str = "episode return",
) -> Path:
    """Scatter of (x, y) points and their moving average (window: a twentieth of the points)."""
    if not points:
        raise ValueError("no points to plot")
    plt = _pyplot()
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    try:
        ax.scatter(xs, ys, s=4, color="#9ab", label="episode")
        ax.plot(xs, moving_average(ys, max(1, len(ys) // 20)), color="#1f5fbf", lw=2, label="mean")
        ax.set(title=title, xlabel=x_label, ylabel=y_label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


# ---- many runs ------------------------------------------------------------------------------


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories among `paths`: each path is a run directory (it has config.json and
    metrics.csv) or a directory searched recursively for them (a sweep)."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p} does not exist")
        if (p / "config.json").is_file() and (p / "metrics.csv").is_file():
            runs.append(p)
            continue
        found = sorted(
            c.parent for c in p.rglob("metrics.csv") if (c.parent / "config.json").is_file()
        )
        if not found:
            raise FileNotFoundError(f"{p} holds no run directory (config.json and metrics.csv)")
        runs.extend(found)
    return runs


def _read_run(run: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    train = json.loads((run / "config.json").read_text())["train"]
    label = {"cell": train["net"]["cell"], "algo": train["algo"], "env": train["env"]}
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = np.array([float(r["step"]) for r in rows])
    returns = np.array([float(r["episode_return"]) for r in rows])
    return label, steps, returns


def curve_on_grid(
    steps: np.ndarray, returns: np.ndarray, grid: np.ndarray, window: int
) -> np.ndarray:
    """A run's smoothed return at each grid step (the moving average of the episodes ended by
    then; NaN before the first episode ends)."""
    if len(steps) == 0:
        return np.full(len(grid), np.nan)
    smooth = np.asarray(moving_average(list(returns), max(1, window)))
    idx = np.searchsorted(steps, grid, side="right") - 1
    out = np.where(idx >= 0, smooth[np.clip(idx, 0, None)], np.nan)
    return out


def group_curves(runs: list[Path], by: str, points: int = 200, window: int = 20) -> dict:
    """{group: {"grid", "mean", "low", "high", "seeds"}}: mean over seeds and 95% band."""
    if by not in GROUP_KEYS:
        raise ValueError(f"--group must be one of {GROUP_KEYS}, got {by!r}")
    data = [_read_run(r) for r in runs]
    last = max((s[-1] for _, s, _ in data if len(s)), default=1.0)
    grid = np.linspace(0, last, points)
    groups: dict[str, list[np.ndarray]] = defaultdict(list)
    for label, steps, returns in data:
        groups[label[by]].append(curve_on_grid(steps, returns, grid, window))
    out = {}
    for name, curves in sorted(groups.items()):
        m = np.vstack(curves)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # grid points before any episode
            mean = np.nanmean(m, axis=0) if np.isfinite(m).any() else np.full(points, np.nan)
            n = np.sum(np.isfinite(m), axis=0)
            se = np.nanstd(m, axis=0, ddof=1) / np.sqrt(np.maximum(n, 1)) if len(curves) > 1 else 0
        half = 1.96 * np.nan_to_num(se)
        out[name] = {
            "grid": grid,
            "mean": mean,
            "low": mean - half,
            "high": mean + half,
            "seeds": len(curves),
        }
    return out


def plot_runs(
    paths: list[str | Path], out: str | Path, by: str = "cell", title: str | None = None
) -> dict:
    """`rtu-edge plot`: learning curves of the runs under `paths`, grouped `by`; returns the
    groups (for a caller that also wants the numbers)."""
    runs = find_runs(paths)
    groups = group_curves(runs, by)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    try:
        for name, g in groups.items():
            (line,) = ax.plot(g["grid"], g["mean"], lw=2, label=f"{name} ({g['seeds']} seeds)")
            if g["seeds"] > 1:
                ax.fill_between(g["grid"], g["low"], g["high"], color=line.get_color(), alpha=0.2)
        envs = sorted({_read_run(r)[0]["env"] for r in runs})
        ax.set(
            title=title or ", ".join(envs),
            xlabel="environment step",
            ylabel="episode return (moving average of 20)",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        _save(fig, Path(out))
    finally:
        plt.close(fig)
    return groups
