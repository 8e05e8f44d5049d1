"""Whether two bundles of one agent compute the same step (learn, or act with --graph act): a
graph change that should keep the values (a restructured update, a folded mask) is checked by
stepping the old and the new export with identical inputs and comparing every output of every
tick and the final state.

    python benchmarks/same_values.py OLD_BUNDLE NEW_BUNDLE [--ticks 800] [--graph act]

The inputs cover what the graphs branch on: episode starts (`first` every 97 ticks) and ends,
a held observation (ticks 300-449: the at-rest case), rewards of 3e38 (ticks 100-102: the
normaliser's finite check) and of inf (ticks 250, 251, 460: the update is skipped, the If's
other branch). The final state compared is what the graph carries (its X.next outputs), so an
act graph that reads constants computed once (act_prepare.onnx) compares with one that
derives them per tick; it is compared tensor by tensor (each packed buffer unpacked through
its own bundle's manifest), so a change of the packed layout compares too. Arrays are
compared exactly (NaN equal to NaN, -0.0 equal to 0.0). Exits 1 if any differ. onnxruntime only (the robot install).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from firmware_bridge.bundle import BundleError, load_bundle
from firmware_bridge.contract import unpack_state
from firmware_bridge.runtime import StepRunnerError


def tick_inputs(specs: dict, t: int, rng: np.random.Generator, rest: dict) -> dict:
    """Tick t's step inputs; specs: name -> (shape, dtype, source), the source as the manifest
    declares it (td's cumulant is a "reward")."""
    feed = {}
    for name, (shape, dtype, source) in specs.items():
        if source == "obs":
            if 300 <= t < 450:
                rest.setdefault("obs", rng.normal(size=shape).astype(dtype))
                feed[name] = rest["obs"]
            else:
                feed[name] = rng.normal(size=shape).astype(dtype)
        elif source == "reward":
            value = 3e38 if t in (100, 101, 102) else np.inf if t in (250, 251, 460) else None
            feed[name] = np.full(shape, rng.normal() if value is None else value, dtype)
        elif source == "first":
            feed[name] = np.full(shape, float(t % 97 == 0), dtype)
        elif source == "terminal":
            feed[name] = np.full(shape, float(t % 97 == 96), dtype)
        else:  # noise and anything else: standard normal
            feed[name] = rng.normal(size=shape).astype(dtype)
    return feed


def step_shapes(bundle, graph: str) -> dict[str, tuple]:
    """The per-step inputs of ``graph``: name -> (shape, declared source)."""
    step = set(bundle.step_input_names(graph))
    sources = {s.name: s.source for s in bundle.manifest.graphs[graph].step_inputs}
    return {
        i.name: (tuple(i.shape), sources.get(i.name, "noise"))
        for i in bundle.session(graph).get_inputs()
        if i.name in step
    }


def _largest_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over the entries that differ (inf where one is non-finite and the other not)."""
    with np.errstate(invalid="ignore", over="ignore"):
        d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    d = np.where(same, 0.0, np.where(np.isnan(d), np.inf, d))
    return float(d.max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--ticks", type=int, default=800)
    ap.add_argument("--graph", choices=("learn", "act"), default="learn")
    args = ap.parse_args(argv)
    if args.ticks < 1:
        ap.error(f"--ticks must be at least 1, got {args.ticks}")
    try:
        bundles = [load_bundle(args.old), load_bundle(args.new)]
        runners = [b.runner(args.graph) for b in bundles]
    except (BundleError, StepRunnerError) as exc:
        sys.exit(f"same_values.py: {exc}")
    shapes = [step_shapes(b, args.graph) for b in bundles]
    if shapes[0] != shapes[1]:
        sys.exit(
            f"same_values.py: the bundles' {args.graph} steps take different inputs "
            f"({shapes[0]} vs {shapes[1]}); compare two exports of one agent"
        )
    specs = {n: (shape, np.float32, source) for n, (shape, source) in shapes[0].items()}
    rng, rest = np.random.default_rng(0), {}
    compared = differ = skipped = 0
    largest: dict[str, float] = {}  # per output: the largest |old - new| where they differ
    for t in range(args.ticks):
        feed = tick_inputs(specs, t, rng, rest)
        old, new = (r.step(**feed) for r in runners)
        for k in old:
            compared += 1
            if not np.array_equal(old[k], new[k], equal_nan=True):
                differ += 1
                print(f"tick {t}: output {k} differs")
                largest[k] = max(largest.get(k, 0.0), _largest_diff(old[k], new[k]))
        skipped += "td_error" in old and bool(np.isnan(old["td_error"]).any())
    # the state each graph writes (what it only reads, parameters and prep.* constants, may
    # be laid out differently by a change that keeps the values)
    old_state, new_state = (
        unpack_state(
            {k: v for k, v in r.state().items() if k in r.carried_names},
            [p for p in b.manifest.packing if p.name in r.carried_names],
        )
        for b, r in zip(bundles, runners, strict=True)
    )
    if set(old_state) != set(new_state):
        sys.exit(f"the bundles carry different state: {sorted(set(old_state) ^ set(new_state))}")
    for k in old_state:
        compared += 1
        if not np.array_equal(old_state[k], new_state[k], equal_nan=True):
            differ += 1
            print(f"state {k} differs (max |diff| {_largest_diff(old_state[k], new_state[k]):.3g})")
    print(
        f"{args.ticks} ticks ({skipped} skipped updates): {compared} arrays compared, "
        f"{differ} differ"
    )
    if largest:
        print("largest |diff| per output: " + ", ".join(f"{k} {v:.3g}" for k, v in largest.items()))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
