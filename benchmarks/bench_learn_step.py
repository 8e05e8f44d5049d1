"""Latency of one online learning step: torch eager vs the bundle's learn.onnx in onnxruntime.

    python benchmarks/bench_learn_step.py [--steps 3000] [--cells rtu,online-lru,...]
        [--budget] [--out benchmarks/results/learn_step.json]

For each cell and size (export/bench_sizes.py's demo and paper agents, with the cell swapped in)
it writes the learner's initial state as a run and exports it with `export_run`, what
`rtu-edge export` does (the packed state, the parameters read as views of the buffer the
learn graph carries), then times, in the same process and interleaved in rounds (the
machines are noisy, so compare ratios, not absolutes):
  torch     the learn step in eager mode under inference_mode (what `rtu-edge train` runs),
            on the same packed state
  ort-run   InferenceSession.run with numpy in/out (the views sliced out of the carried
            buffers every step: Bundle.graph_state)
  ort-bind  Bundle.runner: StepRunner's IOBinding ping-pong (what `rtu-edge run` uses)
One thread everywhere. Reports p50/p99 in microseconds and the speed-up over torch at p50.
With --budget, each size gives every cell the hidden size that meets the linear RTU's
recurrent-parameter count at that size (rtu_edge/cells/budget.py). Every row reports the FLOPs
of one learn step.
`rtu-edge bench` times the demo and paper agents' act and learn steps against their copy floor.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.bench_sizes import SIZES, build  # noqa: E402
from firmware_bridge.atomic import atomic_write_json  # noqa: E402
from firmware_bridge.bundle import count_nodes, load_bundle  # noqa: E402
from rtu_edge.cells.budget import param_count, size_for_budget  # noqa: E402
from rtu_edge.learners import LEARNERS  # noqa: E402
from rtu_edge.train import learn_step_flops  # noqa: E402

BENCH_SIZES = ("demo", "paper")


def _inputs(obs_size: int, noise_size: int, rng: np.random.Generator, t: int) -> dict:
    return {
        "obs": rng.standard_normal((1, obs_size)).astype(np.float32),
        "reward": np.array([1.0], np.float32),
        "first": np.array([1.0 if t % 200 == 0 else 0.0], np.float32),
        "terminal": np.zeros(1, np.float32),
        "noise": rng.standard_normal((1, noise_size)).astype(np.float32),
    }


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1e6
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


class _OrtRun:
    """`session.run` with numpy feeds: the carried state fed back from the ``.next`` outputs,
    the views sliced from it anew every step."""

    def __init__(self, bundle):
        self.bundle = bundle
        self.session = bundle.session("learn")
        self.state = bundle.initial_state()
        self.out_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: dict) -> None:
        feeds = self.bundle.graph_state("learn", self.state) | x
        for name, value in zip(self.out_names, self.session.run(None, feeds), strict=True):
            if name.endswith(".next"):
                self.state[name[: -len(".next")]] = value


def bench(size_name: str, steps: int, cell: str, budget: bool, tmp: Path) -> dict:
    size = SIZES[size_name]
    net = dict(size.net, cell=cell)
    if budget and cell != "rtu":  # the same recurrent parameters as the linear RTU at this size
        target = param_count("rtu", net["encoder_size"], net["hidden_size"])
        net["hidden_size"] = size_for_budget(cell, net["encoder_size"], target)
    built = build(f"{size_name}-{cell}", replace(size, net=net), tmp)
    bundle = load_bundle(built.bundle)
    learner = LEARNERS[size.algo]
    agent = built.agent
    paths = {
        "torch": built.torch_stepper("learn"),
        "ort-run": _OrtRun(bundle),
        "ort-bind": (lambda r: lambda x: r.step(**x))(bundle.runner("learn")),
    }
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {k: [] for k in paths}
    warm = 200
    for rnd in range(10):  # interleave: each path gets its share of every noisy period
        for path, step in paths.items():
            for t in range(steps // 10 + (warm if rnd == 0 else 0)):
                x = _inputs(agent.obs_size, agent.noise_size, rng, t)
                t0 = time.perf_counter()
                step(x)
                dt = time.perf_counter() - t0
                if rnd > 0 or t >= warm:
                    times[path].append(dt)
    res = {k: _pct(v) for k, v in times.items()}
    base = res["torch"]["p50"]
    for k in res:
        res[k]["speedup_vs_torch_p50"] = base / res[k]["p50"]
    blob = (bundle.path / bundle.manifest.graphs["learn"].file).read_bytes()
    return {
        "size": f"{size_name} ({size.description})",
        "cell": cell,
        "hidden_size": agent.net.hidden_size,
        "recurrent_params": agent.cell.recurrent_param_count(),
        "learn_step_flops": learn_step_flops(learner, built.cfg, agent, built.state),
        "nodes": count_nodes(blob),
        "graph_kb": len(blob) / 1024,
        "carried_floats": int(sum(v.size for v in bundle.initial_state().values())),
        "results": res,
    }


def main(argv: list[str] | None = None) -> None:
    from rtu_edge.cells import CELLS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--cells", default="rtu,rtu-nonlinear")
    ap.add_argument("--budget", action="store_true", help="size every cell like the linear RTU")
    ap.add_argument("--out", default="benchmarks/results/learn_step.json")
    args = ap.parse_args(argv)
    cells = [c for c in args.cells.split(",") if c]
    unknown = [c for c in cells if c not in CELLS]
    if unknown or not cells:
        ap.error(f"--cells must name some of {', '.join(sorted(CELLS))}; got {args.cells!r}")
    if args.steps < 10:
        ap.error("--steps must be at least 10 (one tenth of them per round)")
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rtu-edge-learn-step-") as tmp:
        for cell in cells:
            for name in BENCH_SIZES:
                rows.append(bench(name, args.steps, cell, args.budget, Path(tmp)))
                print(_row_text(rows[-1]))
    meta = {
        "command": "python benchmarks/bench_learn_step.py "
        + f"--steps {args.steps} --cells {args.cells}"
        + (" --budget" if args.budget else ""),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    atomic_write_json(args.out, {"meta": meta, "rows": rows})
    print(f"\nwritten to {args.out}")


def _row_text(r: dict) -> str:
    lines = [
        f"\n{r['cell']} n={r['hidden_size']} ({r['recurrent_params']} recurrent params), "
        f"{r['size']}: {r['nodes']} nodes, {r['carried_floats']} carried floats, "
        f"{r['learn_step_flops']} FLOPs",
        f"  {'path':<10}{'p50 us':>10}{'p99 us':>10}{'x torch':>10}",
    ]
    for path, v in r["results"].items():
        x = v["speedup_vs_torch_p50"]
        lines.append(f"  {path:<10}{v['p50']:>10.0f}{v['p99']:>10.0f}{x:>10.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
