"""Latency of one online learning step: torch eager vs the exported learn.onnx in onnxruntime.

    python benchmarks/bench_learn_step.py [--steps 3000] [--cells rtu,online-lru,...]
        [--budget] [--out benchmarks/results/learn_step.json]

For each size it exports the learner's learn step exactly as `rtu-edge export` does, then times,
in the same process and interleaved in rounds (the machines are noisy, so compare ratios, not
absolutes):
  torch     the learn step in eager mode under inference_mode (what `rtu-edge train` runs)
  ort-run   InferenceSession.run with numpy in/out
  ort-bind  firmware_bridge.runtime.StepRunner (IOBinding ping-pong; what `rtu-edge run` uses)
One thread everywhere. Reports p50/p99 in microseconds and the speed-up over torch at p50.
With --budget, the paper size gives every cell the hidden size that meets the linear RTU's
recurrent-parameter count (rtu_edge/cells/budget.py), and the FLOPs of one learn step.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.bundle import export_graph
from firmware_bridge.runtime import StepRunner, make_session
from rtu_edge.agent import AgentConfig
from rtu_edge.cells.budget import param_count, size_for_budget
from rtu_edge.config import NetConfig
from rtu_edge.learners import LEARNERS
from rtu_edge.train import learn_step_flops

SIZES = {
    # the demo agent on classic/CartPole-P
    "demo (obs 2, enc 32, n 32, head 32, discrete 2)": dict(
        obs_size=2,
        action_kind="discrete",
        action_dims=1,
        num_actions=2,
        net=dict(encoder_size=32, hidden_size=32, head_size=32),
    ),
    # the paper's MuJoCo budget: 64-wide encoder, n = 192 (24,960 recurrent parameters)
    "paper (obs 17, enc 64, n 192, head 64, continuous 6)": dict(
        obs_size=17,
        action_kind="continuous",
        action_dims=6,
        num_actions=0,
        net=dict(encoder_size=64, hidden_size=192, head_size=64),
    ),
}


def _inputs(agent: AgentConfig, rng: np.random.Generator, t: int) -> dict[str, np.ndarray]:
    return {
        "obs": rng.standard_normal((1, agent.obs_size)).astype(np.float32),
        "reward": np.array([1.0], np.float32),
        "first": np.array([1.0 if t % 200 == 0 else 0.0], np.float32),
        "terminal": np.zeros(1, np.float32),
        "noise": rng.standard_normal((1, agent.noise_size)).astype(np.float32),
    }


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs) * 1e6
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99))}


def bench(name: str, kw: dict, steps: int, cell: str, budget: bool, algo: str = "ac") -> dict:
    kw = dict(kw)
    net = NetConfig(cell=cell, **kw.pop("net"))
    if budget and cell != "rtu":  # the same recurrent parameters as the linear RTU at this size
        target = param_count("rtu", net.encoder_size, net.hidden_size)
        net.hidden_size = size_for_budget(cell, net.encoder_size, target)
    agent = AgentConfig(net=net, **kw)
    learner = LEARNERS[algo]
    ac = learner.Config()
    state = learner.initial_state(agent, ac, 0)
    model = export_graph(learner, "learn", ac, agent, state)
    blob = model.SerializeToString()
    sess = make_session(blob)
    np_state = {k: v.numpy().copy() for k, v in state.items()}
    runner = StepRunner(sess, np_state)
    run_state = dict(np_state)
    out_names = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(0)
    times = {"torch": [], "ort-run": [], "ort-bind": []}
    warm = 200
    with torch.inference_mode():
        for rnd in range(10):  # interleave: each path gets its share of every noisy period
            for path in times:
                for t in range(steps // 10 + (warm if rnd == 0 else 0)):
                    x = _inputs(agent, rng, t)
                    if path == "torch":
                        tx = {k: torch.from_numpy(v) for k, v in x.items()}
                        t0 = time.perf_counter()
                        new, _ = learner.learn_step(ac, agent, state, tx)
                        dt = time.perf_counter() - t0
                        state.update(new)
                    elif path == "ort-run":
                        feeds = run_state | x
                        t0 = time.perf_counter()
                        res = sess.run(None, feeds)
                        dt = time.perf_counter() - t0
                        for n, v in zip(out_names, res):
                            if n.endswith(".next"):
                                run_state[n[: -len(".next")]] = v
                    else:
                        t0 = time.perf_counter()
                        runner.step(**x)
                        dt = time.perf_counter() - t0
                    if rnd > 0 or t >= warm:
                        times[path].append(dt)
    res = {k: _pct(v) for k, v in times.items()}
    base = res["torch"]["p50"]
    for k in res:
        res[k]["speedup_vs_torch_p50"] = base / res[k]["p50"]
    return {
        "size": name,
        "cell": cell,
        "hidden_size": net.hidden_size,
        "recurrent_params": agent.cell.recurrent_param_count(),
        "learn_step_flops": learn_step_flops(learner, ac, agent, state),
        "nodes": len(model.graph.node),
        "graph_kb": len(blob) / 1024,
        "carried_floats": int(sum(v.numel() for v in state.values())),
        "results": res,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--cells", default="rtu,rtu-nonlinear")
    ap.add_argument("--budget", action="store_true", help="size every cell like the linear RTU")
    ap.add_argument("--out", default="benchmarks/results/learn_step.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for cell in args.cells.split(","):
        for name, kw in SIZES.items():
            rows.append(bench(name, kw, args.steps, cell, args.budget))
            r = rows[-1]
            print(
                f"\n{cell} n={r['hidden_size']} ({r['recurrent_params']} recurrent params), {name}: "
                f"{r['nodes']} nodes, {r['carried_floats']} carried floats, "
                f"{r['learn_step_flops']} FLOPs"
            )
            print(f"  {'path':<10}{'p50 us':>10}{'p99 us':>10}{'x torch':>10}")
            for path, v in r["results"].items():
                print(
                    f"  {path:<10}{v['p50']:>10.0f}{v['p99']:>10.0f}{v['speedup_vs_torch_p50']:>10.1f}"
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
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
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
