"""How onnxruntime takes an L1 norm: ReduceL1 against Abs then ReduceSum, per shape.

    python benchmarks/reduce_l1.py [--calls 2000] [--rounds 7]

Prints the median time per call (one thread, IOBinding, the session options `rtu-edge run`
uses) of the two forms, each a graph of its own, for the shapes of ac's eligibility-trace norms at the demo and
paper sizes: the trunk's (2, T) over axis 1 and a head's (N,) over all of it. It is why
`rtu_edge.ops.l1_norm` exports ReduceL1 over all of a tensor and Abs + ReduceSum over one axis
(onnxruntime 1.32 on the 2-core Xeon with 4 MiB L2: (2, 26112) over axis 1, ReduceL1 29 us, Abs + ReduceSum
10 us; (25030,) over all, ReduceL1 3.9 us, Abs + ReduceSum 6.3 us).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firmware_bridge.runtime import make_session  # noqa: E402

# (shape, axis): the trunk's two traces at demo and paper, a head's trace at demo and paper
CASES = (((2, 2000), 1), ((2, 26112), 1), ((2000,), 0), ((25030,), 0))
KINDS = ("ReduceL1", "Abs+ReduceSum")


def l1_session(kind: str, shape: tuple[int, ...], axis: int) -> ort.InferenceSession:
    vi = helper.make_tensor_value_info
    axes = numpy_helper.from_array(np.array([axis], np.int64), "axes")
    if kind == "ReduceL1":
        nodes = [helper.make_node("ReduceL1", ["z", "axes"], ["y"], keepdims=0)]
    else:
        nodes = [
            helper.make_node("Abs", ["z"], ["a"]),
            helper.make_node("ReduceSum", ["a", "axes"], ["y"], keepdims=0),
        ]
    graph = helper.make_graph(
        nodes, "l1", [vi("z", TensorProto.FLOAT, list(shape))], [vi("y", TensorProto.FLOAT, None)]
    )
    graph.initializer.append(axes)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return make_session(model.SerializeToString())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="calls per timed round")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median taken)")
    args = ap.parse_args(argv)
    if args.calls < 1 or args.rounds < 1:
        ap.error("--calls and --rounds must be at least 1")
    print(f"onnxruntime {ort.__version__}; median us per call over {args.rounds} rounds")
    print(f"{'shape':>12} {'axis':>4} " + " ".join(f"{k:>14}" for k in KINDS))
    rng = np.random.default_rng(0)
    for shape, axis in CASES:
        z = rng.standard_normal(shape).astype(np.float32)
        want = np.abs(z).sum(axis)
        bindings = {}
        for kind in KINDS:
            session = l1_session(kind, shape, axis)
            got = session.run(None, {"z": z})[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=kind)
            binding = session.io_binding()
            binding.bind_cpu_input("z", z)
            binding.bind_output("y")
            bindings[kind] = (session, binding)
        times = {k: [] for k in KINDS}
        for _ in range(args.rounds):
            for kind, (session, binding) in bindings.items():
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    session.run_with_iobinding(binding)
                times[kind].append((time.perf_counter() - t0) / args.calls * 1e6)
        row = " ".join(f"{np.median(times[k]):>14.2f}" for k in KINDS)
        print(f"{'x'.join(map(str, shape)):>12} {axis:>4} {row}")


if __name__ == "__main__":
    main()
