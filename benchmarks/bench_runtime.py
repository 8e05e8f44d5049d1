"""Per-step latency of a learn-step-like graph: ``session.run`` with numpy vs `StepRunner`.

    .venv/bin/python benchmarks/bench_runtime.py [--d 8] [--n 32 128 512] [--steps 5000]

The synthetic graph resembles one online learning step (docs/onnx-runtime.md layout rules:
weights in (in, out) layout, ``x(1,d) @ W(d,n)``, broadcasts (d,n)*(1,n)): ``pairs`` weight
matrices W_k (d,n) with eligibility traces E_k (d,n) plus a hidden state h (1,n), all carried
(2*pairs + 1 tensors), and per-step inputs obs, reward, first. Both paths run the same session
in the same process, in alternating blocks, so the ratio is not skewed by drift; the two
paths are also checked to produce identical outputs. The benchmark may import onnx (to build
the graph); the runtime it measures does not.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from firmware_bridge.runtime import StepRunner, carried_names, make_session

F = TensorProto.FLOAT


def build_learn_like(d: int, n: int, pairs: int = 5) -> bytes:
    vi = helper.make_tensor_value_info
    inputs, outputs, nodes = [], [], []
    for k in range(pairs):
        inputs += [vi(f"params.w{k}", F, [d, n]), vi(f"elig_v.w{k}", F, [d, n])]
        outputs += [vi(f"params.w{k}.next", F, [d, n]), vi(f"elig_v.w{k}.next", F, [d, n])]
    inputs += [vi("carry.h", F, [1, n]), vi("obs", F, [1, d]), vi("reward", F, [1])]
    inputs += [vi("first", F, [1])]
    outputs += [vi("carry.h.next", F, [1, n]), vi("action", F, [1, 1])]
    outputs += [vi("value", F, [1]), vi("td_error", F, [1])]
    consts = [
        helper.make_tensor("one", F, [], [1.0]),
        helper.make_tensor("half", F, [], [0.5]),
        helper.make_tensor("lam", F, [], [0.9]),
        helper.make_tensor("lr", F, [], [1e-4]),
        helper.make_tensor("axes1", TensorProto.INT64, [1], [1]),
    ]
    mk = helper.make_node
    nodes += [
        mk("Sub", ["one", "first"], ["keep"]),
        mk("Mul", ["carry.h", "keep"], ["h0"]),
        mk("Mul", ["h0", "half"], ["acc_init"]),
    ]
    acc = "acc_init"
    for k in range(pairs):
        nodes += [mk("MatMul", ["obs", f"params.w{k}"], [f"y{k}"])]
        nodes += [mk("Add", [acc, f"y{k}"], [f"acc{k}"])]
        acc = f"acc{k}"
    nodes += [
        mk("Tanh", [acc], ["carry.h.next"]),
        mk("ReduceSum", ["carry.h.next", "axes1"], ["value"], keepdims=0),
        mk("ReduceSum", ["y0", "axes1"], ["action"], keepdims=1),
        mk("Sub", ["reward", "value"], ["td_error"]),
        mk("Mul", ["td_error", "lr"], ["step_size"]),
        mk("Transpose", ["obs"], ["obs_t"], perm=[1, 0]),
        mk("Mul", ["obs_t", "carry.h.next"], ["outer"]),
        mk("Mul", ["lam", "keep"], ["decay"]),
    ]
    for k in range(pairs):
        nodes += [
            mk("Mul", [f"elig_v.w{k}", "decay"], [f"ed{k}"]),
            mk("Add", [f"ed{k}", "outer"], [f"elig_v.w{k}.next"]),
            mk("Mul", [f"elig_v.w{k}.next", "step_size"], [f"u{k}"]),
            mk("Add", [f"params.w{k}", f"u{k}"], [f"params.w{k}.next"]),
        ]
    graph = helper.make_graph(nodes, "learn_like", inputs, outputs, consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def _initial_state(session: ort.InferenceSession, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {i.name: i.shape for i in session.get_inputs()}
    return {
        name: (rng.normal(size=shapes[name]) * 0.1).astype(np.float32)
        for name in carried_names(session)
    }


def _inputs(rng: np.random.Generator, d: int, count: int) -> list[dict[str, np.ndarray]]:
    return [
        {
            "obs": rng.normal(size=(1, d)).astype(np.float32),
            "reward": rng.normal(size=(1,)).astype(np.float32),
            "first": np.zeros(1, np.float32),
        }
        for _ in range(count)
    ]


class RunPath:
    """The plain path: numpy feeds, ``session.run``, then X.next becomes X."""

    def __init__(self, session: ort.InferenceSession, state: dict[str, np.ndarray]) -> None:
        self.session = session
        self.feeds = dict(state)
        self.names = [o.name for o in session.get_outputs()]
        carried = {f"{name}.next": name for name in state}
        self.carry_slots = [(i, carried[n]) for i, n in enumerate(self.names) if n in carried]
        self.out_slots = [(i, n) for i, n in enumerate(self.names) if n not in carried]

    def step(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        self.feeds.update(inputs)
        values = self.session.run(self.names, self.feeds)
        for i, name in self.carry_slots:
            self.feeds[name] = values[i]
        return {name: values[i] for i, name in self.out_slots}


def _time_block(step, inputs, out: list[int]) -> None:
    clock = time.perf_counter_ns
    for feed in inputs:
        t0 = clock()
        step(**feed)
        out.append(clock() - t0)


def bench(d: int, n: int, steps: int, pairs: int, blocks: int = 10) -> dict[str, float]:
    session = make_session(build_learn_like(d, n, pairs))
    state = _initial_state(session)
    run_path, runner = RunPath(session, state), StepRunner(session, state)
    rng = np.random.default_rng(1)
    feeds = _inputs(rng, d, max(1, steps // blocks))

    # identical results first (same session, same kernels: bitwise equal)
    for feed in feeds[:50]:
        a, b = run_path.step(**feed), runner.step(**feed)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    final_run = run_path.feeds
    for name, value in runner.state().items():
        np.testing.assert_array_equal(value, final_run[name])

    for _ in range(3):  # warm-up
        _time_block(run_path.step, feeds, [])
        _time_block(runner.step, feeds, [])
    t_run: list[int] = []
    t_bind: list[int] = []
    for _ in range(blocks):
        _time_block(run_path.step, feeds, t_run)
        _time_block(runner.step, feeds, t_bind)
    run_us, bind_us = np.array(t_run) / 1e3, np.array(t_bind) / 1e3
    return {
        "run_p50": float(np.percentile(run_us, 50)),
        "run_p99": float(np.percentile(run_us, 99)),
        "bind_p50": float(np.percentile(bind_us, 50)),
        "bind_p99": float(np.percentile(bind_us, 99)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=8, help="input width of each weight matrix")
    parser.add_argument("--n", type=int, nargs="+", default=[32, 128, 512], help="hidden widths")
    parser.add_argument("--pairs", type=int, default=5, help="weight/trace pairs (2x carried)")
    parser.add_argument("--steps", type=int, default=5000, help="timed steps per path")
    args = parser.parse_args()

    print(
        f"onnxruntime {ort.__version__}, numpy {np.__version__}, {platform.machine()}, "
        f"1 intra-op / 1 inter-op thread; {2 * args.pairs + 1} carried tensors, "
        f"{args.steps} timed steps per path; microseconds per step"
    )
    header = "| d | n | run() p50 | run() p99 | StepRunner p50 | StepRunner p99 | p50 ratio |"
    print(header)
    print("|---|---|---|---|---|---|---|")
    for n in args.n:
        r = bench(args.d, n, args.steps, args.pairs)
        print(
            f"| {args.d} | {n} | {r['run_p50']:.1f} | {r['run_p99']:.1f} | "
            f"{r['bind_p50']:.1f} | {r['bind_p99']:.1f} | {r['run_p50'] / r['bind_p50']:.2f}x |"
        )


if __name__ == "__main__":
    main()
