"""Figures with matplotlib (workstation install only; the robot install has no matplotlib).

- `write_learning_curve`: one run's episode returns over steps, with a moving average.
- `plot_runs`: `rtu-edge plot` (the default, curve mode): learning curves of many run
  directories, grouped by any key (`cell`, `algo`, `env`, ... or a comma list), each group's
  mean over seeds with a 95% confidence band on a common step grid (one seed: no band).
- `plot_summary`: `rtu-edge plot --x KEY --y KEY` (summary mode), the paper's summary figures:
  one point per run at (x, y), the runs of one group at one x averaged over seeds with a 95%
  confidence interval, one line per group sorted by x. E.g. MSRE vs compute budget
  (``--x flops_per_step --y msre --by cell,gradient --logx``) and time per step vs truncation
  (``--x learner.truncation --y us_per_step --by cell,gradient_kind --flat``; `--flat` draws a
  group measured at one x only, e.g. RTRL, whose cost does not depend on T, as a horizontal
  line). `summary_series` returns the plotted numbers.

Keys (for --x, --y and --by) are looked up per run in this order (`run_value`):

1. derived: ``us_per_step`` (1e6 / steps_per_second), ``gradient`` (summary.json's, e.g.
   ``rtrl`` or ``tbptt16``; a summary without one is from the tick-by-tick loop, which trains
   with RTRL: ``rtrl``), ``gradient_kind`` (the same without T: ``rtrl`` or ``tbptt``, for
   lines over T), ``cell`` / ``algo`` / ``env`` / ``seed``, and ``variant`` / ``budget`` from the
   sweep's index.json next to the run;
2. summary.json, by a dotted path (``msre``, ``flops_per_step``, ``last_update.loss``);
3. config.json's "train" object by a dotted path (``learner.truncation``, ``net.hidden_size``,
   ``steps``), or the whole file (``env_info.obs_size``).

Confidence intervals are mean +- t * standard error over the seeds, t the 97.5% quantile of
Student's t with n - 1 degrees of freedom (12.7 for 2 seeds, 4.3 for 3, 1.96 for many), so a
band over few seeds is as wide as it honestly is. Figures are written atomically (PNG or SVG by
the file's suffix), with round tick values.
"""

from __future__ import annotations

import csv
import io
import json
import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from firmware_bridge.atomic import atomic_write_bytes

FORMATS = (".png", ".svg")
GROUP_KEYS = ("cell", "algo", "env")  # the usual --by keys; any key of `run_value` works


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


class PlotError(ValueError):
    """Runs that cannot be plotted as asked; the message is one line and says what to do."""


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


_MISSING = object()


def _dig(obj, path: list[str]):
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return _MISSING
        obj = obj[part]
    return obj


class RunInfo:
    """One run directory's config.json, summary.json (read when first needed) and sweep index
    entry, with `value(key)` looking a key up as the module docstring says (`run_value`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.config = json.loads((self.path / "config.json").read_text())
            self.train = self.config["train"]
        except (OSError, ValueError, KeyError, TypeError):
            raise PlotError(f"{self.path / 'config.json'} is not a config.json of a run") from None
        self._summary = None

    @property
    def summary(self) -> dict | None:
        if self._summary is None:
            f = self.path / "summary.json"
            try:
                self._summary = json.loads(f.read_text()) if f.is_file() else {}
            except (OSError, ValueError):
                raise PlotError(f"{f} is not valid JSON; the run directory is damaged") from None
        return self._summary or None

    def index_entry(self) -> dict | None:
        index = self.path.parent / "index.json"
        try:
            runs = json.loads(index.read_text())["runs"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return next((r for r in runs if r.get("name") == self.path.name), None)

    def value(self, key: str):
        """The run's value for `key`, or _MISSING."""
        summary = self.summary or {}
        if key == "us_per_step":
            sps = summary.get("steps_per_second")
            return 1e6 / sps if isinstance(sps, (int, float)) and sps > 0 else _MISSING
        if key in ("gradient", "gradient_kind"):
            if not summary:
                return _MISSING
            g = summary.get("gradient", "rtrl")  # the tick-by-tick loop trains with RTRL
            return g.rstrip("0123456789") if key == "gradient_kind" else g
        if key == "cell":
            return _dig(self.train, ["net", "cell"])
        if key in ("algo", "env", "seed"):
            return self.train.get(key, _MISSING)
        if key in ("variant", "budget"):
            entry = self.index_entry()
            return _MISSING if entry is None else entry.get(key, _MISSING)
        path = key.split(".")
        for root in (summary, self.train, self.config):
            v = _dig(root, path)
            if v is not _MISSING:
                return v
        return _MISSING


def _known_keys(infos: list[RunInfo]) -> list[str]:
    keys = {
        "us_per_step",
        "gradient",
        "gradient_kind",
        "cell",
        "algo",
        "env",
        "seed",
        "variant",
        "budget",
    }
    for info in infos[:1]:
        keys.update(k for k, v in (info.summary or {}).items() if not isinstance(v, dict))
        for group in ("net", "learner"):
            keys.update(f"{group}.{k}" for k in (info.train.get(group) or {}))
    return sorted(keys)


def _values(
    infos: list[RunInfo], key: str, what: str, skip_missing: bool = False
) -> tuple[list, list[RunInfo]]:
    """Each run's value of `key` (runs without one dropped when skip_missing), and the runs
    kept. Unknown keys and runs lacking the key raise PlotError, one line."""
    if not key:
        raise PlotError(f"{what}: empty key")
    got = [(info, info.value(key)) for info in infos]
    have = [(i, v) for i, v in got if v is not _MISSING and v is not None]
    if not have:
        nulls = [i for i, v in got if v is None]
        if nulls:
            raise PlotError(
                f"{what} {key!r} is null in every run (e.g. {nulls[0].path}): "
                "not measured for these runs"
            )
        unfinished = [i for i in infos if i.summary is None]
        hint = f"; {len(unfinished)} run(s) have no summary.json yet" if unfinished else ""
        raise PlotError(
            f"unknown {what} {key!r}: no run has it{hint}; keys: {', '.join(_known_keys(infos))}"
        )
    if len(have) < len(got) and not skip_missing:
        bad = next(i for i, v in got if v is _MISSING or v is None)
        why = "no summary.json (unfinished?)" if bad.summary is None else f"no {key!r}"
        raise PlotError(
            f"{what} {key!r}: run {bad.path} has {why} "
            f"({len(got) - len(have)} of {len(got)} runs lack it); pass --skip-missing to leave "
            "them out"
        )
    return [v for _, v in have], [i for i, _ in have]


def natural_key(label: str) -> list:
    """Sort key that orders numbers inside labels by value: tbptt4 before tbptt16."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", label)]


def _label(values: list, keys: list[str]) -> str:
    parts = []
    for k, v in zip(keys, values):
        parts.append(str(v) if isinstance(v, str) else f"{k.split('.')[-1]}={v}")
    return " ".join(parts)


def parse_by(by: str | list[str] | tuple[str, ...]) -> list[str]:
    keys = [k.strip() for k in by.split(",")] if isinstance(by, str) else list(by)
    if not keys or not all(keys):
        raise PlotError(f"--by must be a key or a comma-separated list of keys, got {by!r}")
    return keys


def group_labels(infos: list[RunInfo], by, skip_missing: bool = False):
    """(label of each kept run, kept runs) for the grouping keys `by`."""
    keys = parse_by(by)
    kept = infos
    for k in keys:
        _, kept = _values(kept, k, "--by key", skip_missing)
    labels = [_label([i.value(k) for k in keys], keys) for i in kept]
    return labels, kept


def _matches(value, wanted: str) -> bool:
    if isinstance(value, bool):
        return str(value).lower() == wanted.strip().lower()
    if isinstance(value, (int, float)):
        try:
            return float(wanted) == float(value)
        except ValueError:
            return False
    return str(value) == wanted.strip()


def select_runs(runs: list[Path], where: list[str] | None) -> list[Path]:
    """The runs matching every ``KEY=VALUE[,VALUE...]`` of `where` (`--where`, repeatable):
    e.g. ``budget=24960``, ``gradient_kind=tbptt``, ``cell=rtu,gru``. Runs without the key
    do not match; a key no run has, or no run left, raises PlotError."""
    infos = [RunInfo(r) for r in runs]
    for cond in where or []:
        key, sep, values = cond.partition("=")
        key = key.strip()
        wanted = [v for v in values.split(",") if v.strip()]
        if not sep or not key or not wanted:
            raise PlotError(f"--where {cond!r}: expected KEY=VALUE or KEY=VALUE1,VALUE2")
        _values(infos, key, "--where key", skip_missing=True)  # unknown key: PlotError
        infos = [
            i
            for i in infos
            if (v := i.value(key)) is not _MISSING and any(_matches(v, w) for w in wanted)
        ]
        if not infos:
            raise PlotError(f"no run matches --where {cond} (after the --where before it)")
    return [i.path for i in infos]


# Student's t, 97.5% quantile, by degrees of freedom (1..30); beyond: the normal 1.96.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(df) -> np.ndarray:
    """The 97.5% quantile of Student's t for each df >= 1 (NaN for df < 1)."""
    df = np.asarray(df, dtype=int)
    table = np.array((np.nan, *_T975))
    return np.where(df > len(_T975), 1.96, table[np.clip(df, 0, len(_T975))])


def ci95_half_width(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Half width of the 95% confidence interval of the mean over `axis`, ignoring NaN:
    t(n-1) * std / sqrt(n); 0 where fewer than two values."""
    values = np.asarray(values, dtype=float)
    n = np.sum(np.isfinite(values), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sd = np.nanstd(values, axis=axis, ddof=1)
        half = t975(n - 1) * sd / np.sqrt(n)
    return np.where(n >= 2, np.nan_to_num(half), 0.0)


def _read_metrics(run: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    steps = np.array([float(r["step"]) for r in rows])
    returns = np.array([float(r["episode_return"]) for r in rows])
    return steps, returns


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


def group_curves(
    runs: list[Path], by="cell", points: int = 200, window: int = 20, skip_missing: bool = False
) -> dict:
    """{group: {"grid", "mean", "low", "high", "seeds"}}: mean over seeds and 95% band.

    `by`: a key or a comma list of keys (see the module docstring), e.g. "cell,gradient"."""
    labels, infos = group_labels([RunInfo(r) for r in runs], by, skip_missing)
    data = [_read_metrics(i.path) for i in infos]
    last = max((s[-1] for s, _ in data if len(s)), default=1.0)
    grid = np.linspace(0, last, points)
    groups: dict[str, list[np.ndarray]] = defaultdict(list)
    for label, (steps, returns) in zip(labels, data):
        groups[label].append(curve_on_grid(steps, returns, grid, window))
    out = {}
    for name, curves in sorted(groups.items(), key=lambda kv: natural_key(kv[0])):
        m = np.vstack(curves)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # grid points before any episode
            mean = np.nanmean(m, axis=0)
        half = ci95_half_width(m, axis=0)
        out[name] = {
            "grid": grid,
            "mean": mean,
            "low": mean - half,
            "high": mean + half,
            "seeds": len(curves),
        }
    return out


def _title(runs: list[Path], title: str | None) -> str:
    if title:
        return title
    return ", ".join(sorted({str(RunInfo(r).train.get("env", "?")) for r in runs}))


def plot_runs(
    paths: list[str | Path],
    out: str | Path,
    by="cell",
    title: str | None = None,
    skip_missing: bool = False,
    where: list[str] | None = None,
) -> dict:
    """`rtu-edge plot`: learning curves of the runs under `paths` (those matching `where`),
    grouped `by`; returns the groups (for a caller that also wants the numbers)."""
    runs = select_runs(find_runs(paths), where)
    groups = group_curves(runs, by, skip_missing=skip_missing)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    try:
        for name, g in groups.items():
            (line,) = ax.plot(g["grid"], g["mean"], lw=2, label=f"{name} ({g['seeds']} seeds)")
            if g["seeds"] > 1:
                ax.fill_between(g["grid"], g["low"], g["high"], color=line.get_color(), alpha=0.2)
        ax.set(
            title=_title(runs, title),
            xlabel="environment step",
            ylabel="episode return (moving average of 20)",
        )
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        _save(fig, Path(out))
    finally:
        plt.close(fig)
    return groups


# ---- summary figures: one point per run ---------------------------------------------------

AXIS_LABELS = {
    "flops_per_step": "FLOPs per step",
    "us_per_step": "time per step (µs)",
    "steps_per_second": "steps per second",
    "msre": "MSRE (last 10% of steps)",
    "first_msre": "MSRE (first 10% of steps)",
    "final_return": "return (last 10% of steps)",
    "first_return": "return (first 10% of steps)",
    "recurrent_params": "recurrent parameters",
    "learner.truncation": "truncation T",
    "net.hidden_size": "hidden units n",
    "budget": "recurrent-parameter budget",
}


def _number(v, key: str, info: RunInfo) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PlotError(f"{key!r} of run {info.path} is {v!r}, not a number")
    return float(v)


def summary_series(runs: list[Path], x: str, y: str, by="cell", skip_missing: bool = False) -> dict:
    """The numbers of a summary figure: {group: {"x", "mean", "low", "high", "n", "runs"}},
    groups sorted by label, each sorted by x; "n" is the seeds averaged at each x and "runs"
    their directories. Raises PlotError for an unknown key, a run lacking one, or two runs of
    one point with the same seed (they differ in a key that --by should name)."""
    if not runs:
        raise PlotError("no runs to plot")
    infos = [RunInfo(r) for r in runs]
    _, infos = _values(infos, x, "--x key", skip_missing)
    _, infos = _values(infos, y, "--y key", skip_missing)
    labels, infos = group_labels(infos, by, skip_missing)
    points: dict[str, dict[float, list[tuple[float, Path, object]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for label, info in zip(labels, infos):
        xv = _number(info.value(x), x, info)
        yv = _number(info.value(y), y, info)
        seed = info.value("seed")
        twin = next((q for _, q, sd in points[label][xv] if sd == seed), None)
        if twin is not None and seed is not _MISSING:
            raise PlotError(
                f"runs {twin} and {info.path} share group {label!r}, {x}={xv:g} and seed {seed}: "
                "they differ in a key --by does not name: add it (e.g. --by cell,gradient,budget) "
                "or leave one out (--where, or name the run directories)"
            )
        points[label][xv].append((yv, info.path, seed))
    out = {}
    for label in sorted(points, key=natural_key):
        xs = sorted(points[label])
        ys = [np.array([v for v, _, _ in points[label][xv]]) for xv in xs]
        mean = np.array([v.mean() for v in ys])
        half = np.array([float(ci95_half_width(v)) for v in ys])
        out[label] = {
            "x": np.array(xs),
            "mean": mean,
            "low": mean - half,
            "high": mean + half,
            "n": np.array([len(v) for v in ys]),
            "runs": [[p for _, p, _ in points[label][xv]] for xv in xs],
        }
    return out


def plot_summary(
    paths: list[str | Path],
    out: str | Path,
    x: str,
    y: str,
    by="cell",
    logx: bool = False,
    logy: bool = False,
    title: str | None = None,
    skip_missing: bool = False,
    flat: bool = False,
    where: list[str] | None = None,
) -> dict:
    """`rtu-edge plot --x X --y Y`: one line per group through the seed means at each x, with
    95% confidence error bars and band; returns `summary_series`'s numbers.

    flat: a group measured at a single x is drawn as a dashed horizontal line (and band)
    across the figure, for a quantity that does not depend on x (RTRL's time per step vs T).
    where: keep only the runs matching these ``KEY=VALUE[,VALUE...]`` (`select_runs`)."""
    runs = select_runs(find_runs(paths), where)
    series = summary_series(runs, x, y, by, skip_missing)
    draw_summary(series, out, x, y, logx=logx, logy=logy, flat=flat, title=_title(runs, title))
    return series


def draw_summary(
    series: dict,
    out: str | Path,
    x: str,
    y: str,
    logx: bool = False,
    logy: bool = False,
    flat: bool = False,
    title: str = "",
) -> Path:
    """Draw `summary_series`-shaped numbers ({label: {"x", "mean", "low", "high", "n"}}) as the
    summary figure of `plot_summary` (also used for figures drawn from a committed summary,
    benchmarks/study/figures.py). Axis labels come from AXIS_LABELS, else the keys."""
    for axis, key, on in (("x", x, logx), ("y", y, logy)):
        if not on:
            continue
        values = np.concatenate([g["x"] if axis == "x" else g["mean"] for g in series.values()])
        if (values <= 0).any():
            raise PlotError(f"--log{axis}: {key!r} has values <= 0; drop --log{axis}")
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    # a flat line spans the x range of the other groups (those measured at several x)
    spread = [g["x"] for g in series.values() if len(g["x"]) > 1] or [
        g["x"] for g in series.values()
    ]
    all_x = np.concatenate(spread)
    span = (all_x.min(), all_x.max())
    try:
        for label, g in series.items():
            seeds = sorted(set(g["n"].tolist()))
            n = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
            if flat and len(g["x"]) == 1 and span[0] < span[1]:
                (line,) = ax.plot(
                    span, [g["mean"][0]] * 2, ls="--", lw=1.8,
                    label=f"{label} ({n} seed{'s' if n != '1' else ''}; at {x}={g['x'][0]:g})",
                )  # fmt: skip
                ax.fill_between(
                    span, [g["low"][0]] * 2, [g["high"][0]] * 2, color=line.get_color(),
                    alpha=0.15, lw=0,
                )  # fmt: skip
                continue
            yerr = np.vstack([g["mean"] - g["low"], g["high"] - g["mean"]])
            line = ax.errorbar(
                g["x"], g["mean"], yerr=yerr, marker="o", ms=4, lw=1.8, capsize=3,
                label=f"{label} ({n} seed{'s' if n != '1' else ''})",
            )  # fmt: skip
            if len(g["x"]) > 1 and (g["n"] > 1).any():
                color = line.lines[0].get_color()
                ax.fill_between(g["x"], g["low"], g["high"], color=color, alpha=0.15, lw=0)
        for on, axis in ((logx, ax.xaxis), (logy, ax.yaxis)):
            if on:  # labels at 1, 2, 5 x 10^k only: round values that never overlap
                (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
                axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(FuncFormatter(_round_tick))
                axis.set_minor_formatter(NullFormatter())
        ax.set(title=title, xlabel=AXIS_LABELS.get(x, x), ylabel=AXIS_LABELS.get(y, y))
        ax.grid(alpha=0.3, which="both" if logx or logy else "major")
        ax.legend(loc="best", fontsize=8)
        return _save(fig, Path(out))
    finally:
        plt.close(fig)


def _round_tick(value: float, _pos=None) -> str:
    """A log-axis tick as a plain round number: 20k, 500, 0.05."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def run_value(run: str | Path, key: str):
    """One run directory's value of `key` (see the module docstring); PlotError if it has none."""
    info = RunInfo(Path(run))
    v = info.value(key)
    if v is _MISSING:
        raise PlotError(f"run {run} has no {key!r}")
    return v
