"""How far restructuring the learn graph can move the torch-eager / onnxruntime ratio.

    python benchmarks/dispatch_floor.py [--sizes demo,paper] [--steps 2000] [--rounds 10] [--json OUT]

Both paths of `rtu-edge bench`'s ``torch/ORT`` column pay a fixed cost per operation: torch
eager per aten op it dispatches (Python included), onnxruntime per graph node it runs and per
tensor it binds. This script measures those costs on this machine with probes of one-element
and (1, 32) tensors, where the fixed cost is all there is, and counts the operations of each
size's learn step: aten ops of one eager step (a TorchDispatchMode counts them), nodes after
onnxruntime's optimisations, graph inputs and outputs. Interleaved in rounds with the probes,
it times both steps as `rtu-edge bench` does (the "moving" case), and reports:

- ``ort_floor_us``: what the onnxruntime step would cost if every node ran at the probe's
  fixed cost (base + inputs + nodes; a bound output is charged only what the probes measure
  beyond a node writing an intermediate, which has been zero or below), i.e. with no work
  in any kernel;
- ``torch_over_ort_floor``: the measured torch step over that floor, the highest torch/ORT
  ratio this graph could reach (torch as measured, onnxruntime with free kernels);
- ``nodes_for_target``: how many nodes the graph could have, at the fixed cost, for the ratio
  to reach ``--target`` against today's torch time (optimistic: removing a computation from
  the shared step function removes it from the torch step as well).

Workstation only (torch). Needs: onnxruntime, numpy, onnx.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from firmware_bridge.atomic import atomic_write_json  # noqa: E402
from firmware_bridge.bench import _OrtStepper, case_inputs, graph_nodes, machine_info  # noqa: E402
from firmware_bridge.runtime import session_options  # noqa: E402

PROBE_LOW, PROBE_HIGH = 10, 210  # probe lengths; the fixed cost is the slope between them
TARGETS = {"demo": 10.0, "paper": 4.0}  # issue 8's torch-eager / ORT learn targets


# ---- onnxruntime probes --------------------------------------------------------------------


def _model(nodes, inputs, outputs, inits=()) -> bytes:
    graph = helper.make_graph(nodes, "probe", inputs, outputs, initializer=list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model.SerializeToString()


def _vi(name: str, shape) -> object:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def node_chain(k: int) -> bytes:
    """k Mul nodes in a chain on a (1, 32) tensor: one input, one output."""
    c = numpy_helper.from_array(np.full((1,), 1.0001, np.float32), "c")
    nodes, prev = [], "x"
    for i in range(k):
        nodes.append(helper.make_node("Mul", [prev, "c"], [f"t{i}"]))
        prev = f"t{i}"
    nodes[-1].output[0] = "y"
    return _model(nodes, [_vi("x", (1, 32))], [_vi("y", (1, 32))], [c])


def input_fan(k: int) -> bytes:
    """One Sum node over k bound (1,) inputs."""
    names = [f"x{i}" for i in range(k)]
    return _model(
        [helper.make_node("Sum", names, ["y"])], [_vi(n, (1,)) for n in names], [_vi("y", (1,))]
    )


def output_fan(k: int) -> bytes:
    """k Mul nodes of one (1, 32) input, each a bound output (per output: a node and a bind)."""
    c = numpy_helper.from_array(np.full((1,), 1.0001, np.float32), "c")
    nodes = [helper.make_node("Mul", ["x", "c"], [f"y{i}"]) for i in range(k)]
    outputs = [_vi(f"y{i}", (1, 32)) for i in range(k)]
    return _model(nodes, [_vi("x", (1, 32))], outputs, [c])


class _OrtProbe:
    """A probe model run with IOBinding on preallocated values, as `StepRunner` does."""

    def __init__(self, blob: bytes):
        so = session_options()
        so.log_severity_level = 3
        self.session = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        self.binding = self.session.io_binding()
        self._keep = []
        for arg, bind in (
            (self.session.get_inputs(), self.binding.bind_ortvalue_input),
            (self.session.get_outputs(), self.binding.bind_ortvalue_output),
        ):
            for a in arg:
                shape = [d if isinstance(d, int) else 1 for d in a.shape]
                v = ort.OrtValue.ortvalue_from_numpy(np.full(shape, 0.5, np.float32))
                self._keep.append(v)
                bind(a.name, v)

    def __call__(self, _x=None) -> None:
        self.session.run_with_iobinding(self.binding)


# ---- torch probes and op count ---------------------------------------------------------------


class _TorchChain:
    """k torch.mul calls in a Python loop on a (1, 32) tensor, under inference_mode."""

    def __init__(self, k: int):
        import torch

        self.torch, self.k = torch, k
        self.x = torch.rand(1, 32)
        self.c = torch.full((1,), 1.0001)

    def __call__(self, _x=None) -> None:
        torch = self.torch
        with torch.inference_mode():
            y, c = self.x, self.c
            for _ in range(self.k):
                y = torch.mul(y, c)


def aten_ops_per_step(stepper, inputs: dict) -> int:
    """The aten ops one eager step dispatches (views and in-place ops included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        stepper(inputs)
    return Count.n


# ---- timing -----------------------------------------------------------------------------------


def _time(tasks: dict, inputs: dict, calls: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of every task, interleaved in `rounds`."""
    times: dict[str, list[float]] = {k: [] for k in tasks}
    pos = dict.fromkeys(tasks, 0)
    perf = time.perf_counter
    for _ in range(rounds):
        for key, fn in tasks.items():
            xs = inputs.get(key)
            fn(None if xs is None else xs[pos[key]])  # untimed: caches after the task before
            for _ in range(calls):
                x = None if xs is None else xs[pos[key]]
                t0 = perf()
                fn(x)
                times[key].append(perf() - t0)
                if xs is not None:
                    pos[key] = (pos[key] + 1) % len(xs)
    return {k: float(np.median(v)) * 1e6 for k, v in times.items()}


def measure(sizes: list[str], steps: int, rounds: int, log=print) -> dict:
    import torch

    from export.bench_sizes import build_size
    from firmware_bridge.bundle import load_bundle

    torch.set_num_threads(1)
    calls = -(-steps // rounds)
    probes = {
        "ort_nodes_low": _OrtProbe(node_chain(PROBE_LOW)),
        "ort_nodes_high": _OrtProbe(node_chain(PROBE_HIGH)),
        "ort_inputs_low": _OrtProbe(input_fan(1)),
        "ort_inputs_high": _OrtProbe(input_fan(1 + PROBE_HIGH - PROBE_LOW)),
        "ort_outputs_low": _OrtProbe(output_fan(1)),
        "ort_outputs_high": _OrtProbe(output_fan(1 + PROBE_HIGH - PROBE_LOW)),
        "torch_ops_low": _TorchChain(PROBE_LOW),
        "torch_ops_high": _TorchChain(PROBE_HIGH),
    }
    tasks, inputs, counts = dict(probes), {}, {}
    with tempfile.TemporaryDirectory(prefix="rtu-edge-dispatch-") as tmp:
        for name in sizes:
            log(f"building {name} ...")
            built = build_size(name, tmp)
            bundle = load_bundle(built.bundle)
            warm = 300
            xs = case_inputs(bundle, "learn", "moving", warm + calls * rounds + 1, warm // 4)
            ort_step, torch_step = _OrtStepper(bundle, "learn"), built.torch_stepper("learn")
            for x in xs[:warm]:
                ort_step(x)
                torch_step(x)
            graph = onnx.load_from_string(
                (bundle.path / bundle.manifest.graphs["learn"].file).read_bytes()
            ).graph
            counts[name] = {
                "ort_nodes": graph_nodes(bundle, "learn")["optimised"],
                "ort_inputs": len(graph.input),
                "ort_outputs": len(graph.output),
                "torch_aten_ops": aten_ops_per_step(torch_step, xs[warm]),
            }
            tasks[f"{name}_ort"], inputs[f"{name}_ort"] = ort_step, xs[warm:]
            tasks[f"{name}_torch"], inputs[f"{name}_torch"] = torch_step, xs[warm:]
        log(f"timing {len(tasks)} paths, {calls * rounds} calls each in {rounds} rounds ...")
        t = _time(tasks, inputs, calls, rounds)
    span = PROBE_HIGH - PROBE_LOW
    node_us = (t["ort_nodes_high"] - t["ort_nodes_low"]) / span
    input_us = (t["ort_inputs_high"] - t["ort_inputs_low"]) / span
    output_us = (t["ort_outputs_high"] - t["ort_outputs_low"]) / span - node_us
    base_us = t["ort_inputs_low"] - input_us - node_us  # one input, one node, one output
    op_us = (t["torch_ops_high"] - t["torch_ops_low"]) / span
    fixed = {
        "ort_base_us": base_us,
        "ort_per_node_us": node_us,
        "ort_per_input_us": input_us,
        "ort_per_output_us": output_us,
        "torch_per_op_us": op_us,
    }
    out = []
    for name in sizes:
        c = counts[name]
        ort_p50, torch_p50 = t[f"{name}_ort"], t[f"{name}_torch"]
        # a bound output has cost no more than a node's allocated intermediate (the probe's
        # difference is at or below zero): the floor charges outputs nothing beyond their nodes
        io = base_us + c["ort_inputs"] * input_us + c["ort_outputs"] * max(output_us, 0.0)
        floor = io + c["ort_nodes"] * node_us
        target = TARGETS.get(name)
        out.append(
            {
                "name": name,
                **c,
                "ort_p50_us": ort_p50,
                "torch_p50_us": torch_p50,
                "torch_over_ort": torch_p50 / ort_p50,
                "ort_floor_us": floor,
                "ort_over_floor": ort_p50 / floor,
                "torch_floor_us": c["torch_aten_ops"] * op_us,
                "torch_over_ort_floor": torch_p50 / floor,
                "target": target,
                "nodes_for_target": (
                    None if target is None else int((torch_p50 / target - io) // node_us)
                ),
            }
        )
    return {
        "meta": machine_info() | {"steps": calls * rounds, "rounds": rounds, "units": "us"},
        "fixed_costs": fixed,
        "sizes": out,
    }


def format_report(report: dict) -> str:
    f = report["fixed_costs"]
    lines = [
        "fixed cost per operation (probes, median us): "
        f"ORT node {f['ort_per_node_us']:.3f}, input {f['ort_per_input_us']:.3f}, "
        f"output {f['ort_per_output_us']:.3f}, base {f['ort_base_us']:.2f}; "
        f"torch eager aten op {f['torch_per_op_us']:.3f}",
        "",
        f"{'size':<8}{'nodes':>6}{'in':>4}{'out':>4}{'aten':>6}{'ORT':>8}{'floor':>8}"
        f"{'torch':>8}{'t.floor':>8}{'t/ORT':>7}{'t/floor':>8}{'target':>7}{'nodes@tgt':>10}",
    ]
    for s in report["sizes"]:
        tgt = "-" if s["target"] is None else f"{s['target']:.0f}"
        at = "-" if s["nodes_for_target"] is None else str(s["nodes_for_target"])
        lines.append(
            f"{s['name']:<8}{s['ort_nodes']:>6}{s['ort_inputs']:>4}{s['ort_outputs']:>4}"
            f"{s['torch_aten_ops']:>6}{s['ort_p50_us']:>8.1f}{s['ort_floor_us']:>8.1f}"
            f"{s['torch_p50_us']:>8.1f}{s['torch_floor_us']:>8.1f}{s['torch_over_ort']:>7.2f}"
            f"{s['torch_over_ort_floor']:>8.2f}{tgt:>7}{at:>10}"
        )
    lines += [
        "",
        "ORT, torch: learn p50 (us); floor: ORT's fixed cost of this graph (kernels free);",
        "t.floor: torch's aten ops x its fixed cost; t/floor: torch over the ORT floor, the",
        "highest torch/ORT this graph could reach; nodes@tgt: nodes the graph could have for",
        "the target at today's torch time (negative: not even a graph of no nodes).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from export.bench_sizes import SIZES

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="demo,paper", help=f"comma-separated: {', '.join(SIZES)}")
    ap.add_argument("--steps", type=int, default=2000, help="timed calls per path")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    ap.add_argument("--json", help="also write the report here (atomically)")
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown or not sizes:
        ap.error(f"--sizes must name some of {', '.join(SIZES)}; got {args.sizes!r}")
    if args.steps < 1 or args.rounds < 1 or args.rounds > args.steps:
        ap.error("--steps and --rounds must be at least 1, and --rounds at most --steps")
    report = measure(sizes, args.steps, args.rounds, log=lambda m: print(m, file=sys.stderr))
    report["meta"]["command"] = " ".join(["python benchmarks/dispatch_floor.py", *(argv or [])])
    print(format_report(report))
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main(sys.argv[1:])
