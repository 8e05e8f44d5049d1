"""Tables of the reproduction study (docs/results.md) from the sweeps of benchmarks/study/run.sh.

    python benchmarks/study/summarize.py [--runs runs/study] [--json benchmarks/results/study.json]

For every sweep directory under --runs: its runs grouped over seeds by (env, cell, algo, variant,
budget), with the mean, the standard deviation and the per-seed values of the metrics that
summary.json holds (msre, final_return, steps/s, FLOPs per step, size). Prints one markdown
table per sweep and writes all of them to --json (a small file, committed; the run directories
are not). Sweeps already in --json whose directories are not under --runs are kept as they were
(the run directories of earlier sessions are gone, their summaries are not); `--drop NAME`
removes one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from firmware_bridge.atomic import atomic_write_json  # noqa: E402

METRICS = ("msre", "final_return", "steps_per_second", "flops_per_step", "recurrent_params")


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    m = sum(values) / len(values)
    sd = (
        math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    )
    return m, sd


def summarize_sweep(sweep: Path) -> dict:
    index = json.loads((sweep / "index.json").read_text())
    groups: dict[tuple, dict] = {}
    for r in index["runs"]:
        run = sweep / r["name"]
        key = (r["env"], r["cell"], r["algo"], r["variant"], r.get("budget"))
        g = groups.setdefault(
            key,
            {
                "env": key[0],
                "cell": key[1],
                "algo": key[2],
                "variant": key[3],
                "budget": key[4],
                "seeds": [],
                "status": [],
                "values": {m: [] for m in METRICS},
            },
        )
        g["status"].append(r["status"])
        if r["status"] != "done" or not (run / "summary.json").is_file():
            continue
        summary = json.loads((run / "summary.json").read_text())
        config = json.loads((run / "config.json").read_text())["train"]
        g["seeds"].append(r["seed"])
        g["hidden_size"] = config["net"]["hidden_size"]
        g["gradient"] = summary.get("gradient", "rtrl")
        g["steps"] = summary.get("steps")
        for m in METRICS:
            g["values"][m].append(summary.get(m))
    rows = []
    for g in groups.values():
        for m in METRICS:
            g[m], g[m + "_sd"] = _mean_sd(g["values"][m])
        rows.append(g)
    return {"sweep": sweep.name, "spec": index["spec"], "groups": rows}


def _fmt(v, sd=None, digits=3) -> str:
    if v is None:
        return "-"
    text = f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if sd:
        text += f" ± {sd:.2g}"
    return text


def markdown(table: dict) -> str:
    lines = [
        f"### {table['sweep']} ({table['spec']['steps']:,} steps)",
        "",
        "| env | cell | algo | variant | gradient | n | params | FLOPs/step | steps/s "
        "| msre | final return | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in table["groups"]:
        done = f"{len(g['seeds'])}/{len(g['status'])}"
        lines.append(
            f"| {g['env']} | {g['cell']} | {g['algo']} | {g['variant']} | {g.get('gradient', '-')} "
            f"| {g.get('hidden_size', '-')} | {_fmt(g['recurrent_params'])} "
            f"| {_fmt(g['flops_per_step'])} | {_fmt(g['steps_per_second'])} "
            f"| {_fmt(g['msre'], g['msre_sd'])} | {_fmt(g['final_return'], g['final_return_sd'])} "
            f"| {done} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/study", help="the directory holding the sweeps")
    ap.add_argument("--json", default="benchmarks/results/study.json", help="where to write")
    ap.add_argument("--only", nargs="*", default=[], help="sweep name prefixes to include")
    ap.add_argument("--drop", nargs="*", default=[], help="sweeps to remove from --json")
    args = ap.parse_args()
    runs = Path(args.runs)
    sweeps = sorted(p.parent for p in runs.glob("*/index.json"))
    if args.only:
        sweeps = [s for s in sweeps if any(s.name.startswith(p) for p in args.only)]
    if not sweeps:
        sys.exit(f"error: no sweeps (*/index.json) under {runs}; run benchmarks/study/run.sh first")
    try:
        tables = [summarize_sweep(s) for s in sweeps]
    except (OSError, ValueError, KeyError) as e:  # a damaged index.json or summary.json
        sys.exit(f"error: cannot read a sweep under {runs}: {e}; rerun its spec to repair it")
    for t in tables:
        print(markdown(t), end="\n\n")
    if args.json:
        fresh = {t["sweep"] for t in tables}
        earlier = _earlier(Path(args.json))
        unknown = set(args.drop) - {t["sweep"] for t in earlier}
        if unknown:
            sys.exit(f"error: --drop {sorted(unknown)}: not in {args.json}; nothing written")
        kept = [t for t in earlier if t["sweep"] not in fresh | set(args.drop)]
        if kept:
            print(
                f"kept from {args.json} (no run directories here): "
                + ", ".join(t["sweep"] for t in kept)
            )
        merged = sorted(tables + kept, key=lambda t: t["sweep"])
        atomic_write_json(Path(args.json), {"command": " ".join(sys.argv), "sweeps": merged})


def _earlier(path: Path) -> list[dict]:
    """The sweeps of an existing --json file ([] when there is none)."""
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["sweeps"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"error: {path} is not a study summary ({e}); move it away or fix it")


if __name__ == "__main__":
    main()
