"""Paired differences between the groups of one sweep, seed by seed, from the study summary.

    python benchmarks/study/paired.py SWEEP [--metric msre] [--base CELL] [--json study.json]

Within a sweep, runs of the same seed see the same environment stream (the seed sets it), so
the difference of two cells on one seed removes the stream's own difficulty, which varies a lot
between seeds (the MSRE of a zero prediction on trace patterning ranges 0.05-0.12 over six
seeds). For each group against the base group (by default the first of the sweep's cells):
the mean of (group - base) over the seeds both have, its Student-t 95% interval, and on how
many seeds the base was better (lower for msre, higher for a return).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from rtu_edge.plots import ci95_half_width  # noqa: E402

LOWER_IS_BETTER = {"msre", "first_msre"}


def _label(g: dict) -> str:
    return g["cell"] if g["variant"] == "default" else f"{g['cell']} {g['variant']}"


def paired(sweep: dict, metric: str, base: str | None) -> list[dict]:
    groups = {_label(g): g for g in sweep["groups"]}
    base = base or _label(sweep["groups"][0])
    if base not in groups:
        raise SystemExit(f"error: no group {base!r} in {sweep['sweep']}; groups: {sorted(groups)}")
    ref = dict(zip(groups[base]["seeds"], groups[base]["values"][metric]))
    rows = []
    for name, g in groups.items():
        if name == base:
            continue
        mine = dict(zip(g["seeds"], g["values"][metric]))
        seeds = sorted(s for s in mine if s in ref and mine[s] is not None and ref[s] is not None)
        if not seeds:
            continue
        diff = np.array([mine[s] - ref[s] for s in seeds])
        better = diff > 0 if metric in LOWER_IS_BETTER else diff < 0
        half = float(ci95_half_width(diff))
        rows.append(
            {
                "group": name,
                "base": base,
                "seeds": len(seeds),
                "mean_diff": float(diff.mean()),
                "ci95": [float(diff.mean()) - half, float(diff.mean()) + half],
                "base_better_on": int(better.sum()),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep")
    ap.add_argument("--metric", default="msre")
    ap.add_argument("--base", default=None, help="the group to compare against (a cell name)")
    ap.add_argument("--json", default="benchmarks/results/study.json", type=Path)
    args = ap.parse_args()
    try:
        sweeps = {s["sweep"]: s for s in json.loads(args.json.read_text())["sweeps"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"error: {args.json} is not a study summary ({e}); run summarize.py")
    if args.sweep not in sweeps:
        sys.exit(f"error: no sweep {args.sweep!r} in {args.json}; sweeps: {sorted(sweeps)}")
    known = (
        sorted(sweeps[args.sweep]["groups"][0]["values"]) if sweeps[args.sweep]["groups"] else []
    )
    if args.metric not in known:
        sys.exit(f"error: no metric {args.metric!r} in {args.sweep}; metrics: {known}")
    rows = paired(sweeps[args.sweep], args.metric, args.base)
    print(f"{args.sweep}: {args.metric} of each group minus {rows[0]['base'] if rows else '-'}")
    print("| group | seeds | mean difference | 95% interval | base better on |")
    print("|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["ci95"]
        print(
            f"| {r['group']} | {r['seeds']} | {r['mean_diff']:+.4f} | [{lo:+.4f}, {hi:+.4f}] "
            f"| {r['base_better_on']}/{r['seeds']} |"
        )


if __name__ == "__main__":
    main()
