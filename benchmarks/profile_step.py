"""Where a bundle's step time goes: onnxruntime's profiler over many steps, per op type and node.

    python benchmarks/profile_step.py BUNDLE [--graph learn] [--steps 2000] [--top 25]

Runs the graph with `StepRunner` (the path `rtu-edge run` uses) on "moving" inputs
(firmware_bridge/bench.py `case_inputs`) in a session built with the bundle's session options
plus ``enable_profiling``, then sums the profiler's per-node kernel times over the timed steps:
per op type (count, total us per step, share), and the `--top` most expensive nodes with their
input and output shapes. The sum of kernel times is less than the step's wall time; the rest
is onnxruntime's per-node dispatch, the binding and Python. Robot path: onnxruntime and numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort  # noqa: E402

from firmware_bridge.bench import case_inputs  # noqa: E402
from firmware_bridge.bundle import BundleError, load_bundle  # noqa: E402
from firmware_bridge.runtime import session_options  # noqa: E402


def profile(bundle_dir: str, graph: str, steps: int, warmup: int) -> list[dict]:
    """The profiler's node events of `steps` steps after `warmup` untimed ones."""
    bundle = load_bundle(bundle_dir)
    if graph not in bundle.manifest.graphs:
        raise BundleError(
            f"{bundle_dir} has no {graph} graph (it holds {', '.join(bundle.manifest.graphs)}); "
            "pass --graph act"
        )
    blob = (bundle.path / bundle.manifest.graphs[graph].file).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        so = session_options()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "prof")
        session = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        runner = bundle.runner(graph, session=session)
        inputs = case_inputs(bundle, graph, "moving", warmup + steps, warmup)
        for x in inputs:
            runner.step(**x)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start = runs[warmup]["ts"] if len(runs) > warmup else 0
    return [
        e
        for e in events
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start
    ]


def _shapes(e: dict, key: str) -> str:
    return " ".join(
        "x".join(str(d) for d in next(iter(t.values()))) or "()"
        for t in e.get("args", {}).get(key, [])
    )


def report(events: list[dict], steps: int, top: int) -> str:
    by_op: dict[str, list] = defaultdict(lambda: [set(), 0.0])
    by_node: dict[str, dict] = {}
    for e in events:
        op = e["args"].get("op_name", "?")
        name = e["name"][: -len("_kernel_time")]
        by_op[op][0].add(name)
        by_op[op][1] += e["dur"]
        n = by_node.setdefault(name, {"op": op, "dur": 0.0, "e": e})
        n["dur"] += e["dur"]
    total = sum(v[1] for v in by_op.values()) / steps
    lines = [
        f"{len(by_node)} nodes ran; kernel time {total:.1f} us per step (sum over nodes)",
        "",
        f"{'op type':<24}{'nodes':>6}{'us/step':>9}{'share':>7}",
    ]
    for op, (names, dur) in sorted(by_op.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"{op:<24}{len(names):>6}{dur / steps:>9.2f}{dur / steps / total:>7.1%}")
    lines += ["", f"{'node':<48}{'op':<16}{'us/step':>8}  inputs -> outputs"]
    for name, n in sorted(by_node.items(), key=lambda kv: -kv[1]["dur"])[:top]:
        shapes = f"{_shapes(n['e'], 'input_type_shape')} -> {_shapes(n['e'], 'output_type_shape')}"
        lines.append(f"{name[:47]:<48}{n['op'][:15]:<16}{n['dur'] / steps:>8.2f}  {shapes}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--graph", default="learn", choices=("learn", "act"))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args(argv)
    if a.steps < 1 or a.warmup < 0:
        sys.exit("error: --steps must be at least 1 and --warmup at least 0")
    try:
        events = profile(a.bundle, a.graph, a.steps, a.warmup)
    except BundleError as e:  # not a bundle, or not one that holds this graph
        sys.exit(f"error: {e}")
    print(report(events, a.steps, a.top))


if __name__ == "__main__":
    main()
