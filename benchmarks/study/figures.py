"""Figures of docs/results.md drawn from the committed study summary, not from run directories.

    python benchmarks/study/figures.py [--json benchmarks/results/study.json] [--out docs/figures]
        [--only 1 6]

The run directories of a study are large and stay on the machine that ran them (runs/ is not
committed); benchmarks/study/summarize.py keeps every run's metrics in study.json, per seed. This
script redraws from those numbers, so a figure can be remade on any machine, and a figure that
combines sweeps of different sessions needs no rerun of the older ones:

- 1: trace conditioning, MSRE vs FLOPs per step: RTU by RTRL (n = 2..32) against GRU, LRU and
  RTU by T-BPTT (T = 2, 8, 32) inside the same TD(lambda) (`1_trace_msre_vs_flops.png`), and
  against the TD(0) T-BPTT of the first run (`1c_trace_msre_vs_flops_td0.png`);
- 3: trace patterning, the four RTRL cells seed by seed (the same seed is the same stream), with
  each seed's zero-prediction MSRE (`3_patterning_cells_by_seed.png`);
- 6: POPGym Easy, the final return of each cell per task over seeds and the uniformly random
  policy's return (`6_popgym_return.png`).

Each point is the mean over seeds; its bar is the Student-t 95% interval of the mean
(rtu_edge.plots, as `rtu-edge plot`) for 3 or more seeds, and the range of the seeds for 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # zero_predictor, beside this file

from rtu_edge.plots import _pyplot, _save, ci95_half_width, draw_summary  # noqa: E402

# Uniformly random actions, 20 episodes (`python benchmarks/study/random_policy.py --episodes 20
# popgym/...`), as in docs/results.md item 6.
POPGYM_RANDOM = {
    "popgym/RepeatFirstEasy": -0.51,
    "popgym/CountRecallEasy": -0.94,
    "popgym/ConcentrationEasy": -0.19,
    "popgym/AutoencodeEasy": -0.58,
    "popgym/HigherLowerEasy": 0.01,
}


class FigureError(RuntimeError):
    """The summary lacks what a figure needs; the message says which sweep to run."""


def load_sweeps(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
        return {s["sweep"]: s for s in data["sweeps"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FigureError(f"{path} is not a study summary ({e}); run summarize.py") from None


def _sweep(sweeps: dict, name: str) -> dict:
    if name not in sweeps:
        raise FigureError(
            f"study.json has no sweep {name!r}: run `bash benchmarks/study/run.sh {name}` "
            "and `python benchmarks/study/summarize.py`"
        )
    return sweeps[name]


def _finite(values) -> np.ndarray:
    return np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)


def series_of(groups: list[dict], x: str, y: str, label) -> dict:
    """`rtu_edge.plots.summary_series`-shaped numbers from summary groups: one point per group
    at the mean of its x over seeds, y's mean over seeds and its 95% interval; lines by
    ``label(group)``, each sorted by x."""
    lines: dict[str, list[tuple[float, np.ndarray]]] = {}
    for g in groups:
        xs, ys = _finite(g["values"][x]), _finite(g["values"][y])
        if len(xs) == 0 or len(ys) == 0:
            continue
        lines.setdefault(label(g), []).append((float(xs.mean()), ys))
    out = {}
    for name in sorted(lines):
        pts = sorted(lines[name], key=lambda p: p[0])
        mean = np.array([ys.mean() for _, ys in pts])
        low, high = zip(*(_spread(ys) for _, ys in pts))
        out[name] = {
            "x": np.array([xv for xv, _ in pts]),
            "mean": mean,
            "low": np.array(low),
            "high": np.array(high),
            "n": np.array([len(ys) for _, ys in pts]),
        }
    return out


def _spread(ys: np.ndarray) -> tuple[float, float]:
    """The bar of one point: the 95% interval of the mean for 3 or more seeds; for 2 seeds the
    two values themselves (a 2-seed t interval is 12.7 standard deviations wide and hides
    everything else in the figure)."""
    if len(ys) >= 3:
        half = float(ci95_half_width(ys))
        return float(ys.mean()) - half, float(ys.mean()) + half
    return float(ys.min()), float(ys.max())


def _method(g: dict, td: str = "") -> str:
    kind = "RTRL" if g.get("gradient", "rtrl") == "rtrl" else "T-BPTT"
    return f"{g['cell']}, {kind}{td if kind == 'T-BPTT' else ''}"


def figure_1(sweeps: dict, out: Path) -> list[Path]:
    rtrl = _sweep(sweeps, "1_trace_rtrl")["groups"]
    written = []
    for sweep, td, name in (
        ("1_trace_tbptt_lambda", " TD(λ)", "1_trace_msre_vs_flops.png"),
        ("1_trace_tbptt", " TD(0)", "1c_trace_msre_vs_flops_td0.png"),
    ):
        groups = rtrl + _sweep(sweeps, sweep)["groups"]
        series = series_of(groups, "flops_per_step", "msre", lambda g, td=td: _method(g, td))
        title = (
            f"trace conditioning (ISI 7-13): RTRL n = 2..32; T-BPTT{td} n = 8, T = 2, 8, 32\n"
            "mean of 2 seeds, bars from one seed to the other"
        )
        written.append(
            draw_summary(
                series, out / name, "flops_per_step", "msre", logx=True, logy=True, title=title
            )
        )
    return written


def figure_6(sweeps: dict, out: Path) -> list[Path]:
    table = _sweep(sweeps, "6_popgym")
    envs = table["spec"]["envs"]
    cells = table["spec"]["cells"]
    by = {(g["env"], g["cell"]): _finite(g["values"]["final_return"]) for g in table["groups"]}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    try:
        width = 0.8 / len(cells)
        seeds = set()
        for i, cell in enumerate(cells):
            vals = [by.get((env, cell), np.array([])) for env in envs]
            seeds |= {len(v) for v in vals}
            mean = np.array([v.mean() if len(v) else np.nan for v in vals])
            bars = np.array([_spread(v) if len(v) else (np.nan, np.nan) for v in vals])
            yerr = np.vstack([mean - bars[:, 0], bars[:, 1] - mean])
            pos = np.arange(len(envs)) + (i - (len(cells) - 1) / 2) * width
            ax.bar(pos, mean, width, yerr=yerr, capsize=3, label=cell)
        for j, env in enumerate(envs):
            if env in POPGYM_RANDOM:
                ax.hlines(
                    POPGYM_RANDOM[env], j - 0.45, j + 0.45, colors="k", linestyles=":", lw=1.5,
                    label="random policy" if j == 0 else None,
                )  # fmt: skip
        ax.set_xticks(np.arange(len(envs)), [e.split("/")[-1].removesuffix("Easy") for e in envs])
        n = "-".join(str(s) for s in sorted(seeds))
        seeds_text = f"{n} seed{'' if n == '1' else 's'}"
        ax.set(
            ylabel="return (last 10% of steps)",
            title=f"POPGym Easy, ppo, {table['spec']['steps']:,} steps, mean of {seeds_text}",
        )
        ax.axhline(0, color="0.6", lw=0.8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="lower right")
        return [_save(fig, out / "6_popgym_return.png")]
    finally:
        plt.close(fig)


def figure_3(sweeps: dict, out: Path) -> list[Path]:
    """Trace patterning, RTRL cells, seed by seed: the runs of one seed see the same stream, so
    a line per seed shows the paired comparison that the overlapping intervals of the summary
    figure hide; the MSRE of always predicting 0 on that seed's stream is the marker on the
    right."""
    from zero_predictor import ENVS, zero_msre

    table = _sweep(sweeps, "3_patterning_cells")
    cells = table["spec"]["cells"]
    env, steps = table["spec"]["envs"][0], table["spec"]["steps"]
    by = {g["cell"]: dict(zip(g["seeds"], g["values"]["msre"])) for g in table["groups"]}
    seeds = sorted(set.intersection(*(set(by.get(c, {})) for c in cells)))
    if not seeds:
        raise FigureError("3_patterning_cells has no seed that every cell finished")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    try:
        xs = np.arange(len(cells) + 1)
        for s in seeds:
            zero = zero_msre(env, ENVS.get(env, 0.9), steps, s)
            (line,) = ax.plot(xs[:-1], [by[c][s] for c in cells], marker="o", lw=1.2, alpha=0.8)
            ax.plot(xs[-2:], [by[cells[-1]][s], zero], ls=":", lw=1, color=line.get_color())
            ax.plot(xs[-1], zero, marker="x", ms=7, color=line.get_color(), label=f"seed {s}")
        means = [np.mean([by[c][s] for s in seeds]) for c in cells]
        ax.plot(xs[:-1], means, color="k", lw=2.5, marker="s", label="mean")
        ax.set_xticks(xs, [*cells, "zero\nprediction"])
        ax.set(
            ylabel="MSRE (last 10% of steps)",
            title=f"{env}, td by RTRL, 2,000 recurrent params, {steps:,} steps: one line per seed",
        )
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return [_save(fig, out / "3_patterning_cells_by_seed.png")]
    finally:
        plt.close(fig)


FIGURES = {"1": figure_1, "3": figure_3, "6": figure_6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="benchmarks/results/study.json", type=Path)
    ap.add_argument("--out", default="docs/figures", type=Path)
    ap.add_argument("--only", nargs="*", default=sorted(FIGURES), choices=sorted(FIGURES))
    args = ap.parse_args()
    if args.out.exists() and not args.out.is_dir():
        sys.exit(f"error: --out {args.out} is a file; give the directory for the figures")
    try:
        sweeps = load_sweeps(args.json)
        for item in args.only:
            for path in FIGURES[item](sweeps, args.out):
                print(f"wrote {path}")
    except FigureError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
