"""`rtu-edge bench`: the act and learn step of a bundle against the memory-copy floor of its state.

For every graph of every bundle (or size) and every case, in one process and interleaved in
rounds (each path gets its share of every noisy period of a shared machine):

- ``ORT``: `StepRunner.step`, the IOBinding ping-pong that `rtu-edge run` uses;
- ``torch``: the learner's step function in eager mode, when the caller supplies it (the
  workstation install; see export/bench_sizes.py);
- the floor: copying the graph's state once with numpy (its bytes as one buffer, so the
  copy is bound by memory, not by per-call overhead), hot in cache, and from memory after a
  buffer twice the size of the last-level cache was read and written.

Several bundles (`rtu-edge bench BUNDLE_A BUNDLE_B ...`) are timed in the same rounds, so an
A/B of two exports (e.g. before and after a change to the graphs) shares every noisy period;
with ``compare=True`` the report also gives each one's ORT p50 and p99 over those of the first
bundle of the same agent (`versus_first`; benchmarks/bench_ab.sh exports two commits' bundles
and runs it). Each graph's node count is
reported as stored and after onnxruntime's graph optimisations (what actually runs).

In every round each path first takes one untimed step (with the input of its first timed one),
so that its times do not depend on which path ran before it: the from-memory floor evicts
the caches, and the path after it used to pay for that (the paper act graph's first case
read 56 us where the same graph's next cases read 32).

Cases (`CASES`): every case starts with `warmup` untimed steps, the first quarter of them with a
moving robot so that the traces are not zero when the robot stops; then `steps` timed steps.
A robot at rest drives eligibility traces into the subnormal range, which is slow on many CPUs;
the count of subnormal floats left in each ORT state is reported with the times, and the
timing runs with subnormals flushed as `rtu-edge run` does (firmware_bridge/fpenv.py) unless
``denormals="keep"``.

Robot path: onnxruntime, numpy and the standard library only (no torch).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from firmware_bridge.bundle import Bundle, count_nodes
from firmware_bridge.contract import GRAPHS, sample_noise
from firmware_bridge.fpenv import flush_denormals, subnormal_count
from firmware_bridge.runtime import session_options

__all__ = [
    "CASES",
    "DENORMALS",
    "VERSUS_COLUMNS",
    "BenchTarget",
    "BenchError",
    "case_inputs",
    "format_table",
    "graph_nodes",
    "machine_info",
    "run_bench",
    "subnormal_count",
]

CASES = {
    "moving": "a new random observation and reward every tick, exploration noise as usual",
    "rest": "the observation held constant and reward 0, exploration noise as usual",
    "zero": "every step input zero, the exploration noise included",
}
DENORMALS = ("flush", "keep")

# A step function under test: takes the per-step inputs by name; may offer .state() (numpy).
Stepper = Callable[[Mapping[str, np.ndarray]], object]
# graph name -> a fresh stepper starting from the bundle's initial state
StepperFactory = Callable[[str], Stepper]


class BenchError(ValueError):
    """The bundle cannot be benchmarked as asked (e.g. an input source the bench cannot fill)."""


@dataclass
class BenchTarget:
    """One agent to measure: a loaded bundle and, optionally, other paths of the same steps."""

    name: str  # "demo", "paper", or the bundle directory
    bundle: Bundle
    description: str = ""
    other_paths: dict[str, StepperFactory] = field(default_factory=dict)  # e.g. {"torch": ...}


# ---- inputs -------------------------------------------------------------------------------


def case_inputs(
    bundle: Bundle, graph: str, case: str, n: int, lead_in: int, seed: int = 0
) -> list[dict[str, np.ndarray]]:
    """`n` ticks of per-step inputs of `graph` for `case`, filled by their declared source.

    The first `lead_in` ticks are "moving" whatever the case; ``first`` is 1 on tick 0 only.
    """
    if case not in CASES:
        raise BenchError(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    m = bundle.manifest
    specs = m.graphs[graph].step_inputs
    rng = np.random.default_rng(seed)
    held_obs = rng.standard_normal((1, m.observation_size)).astype(np.float32)
    out = []
    for t in range(n):
        regime = "moving" if t < lead_in else case
        x: dict[str, np.ndarray] = {}
        for s in specs:
            if s.source == "obs":
                if regime == "moving":
                    v = rng.standard_normal((1, m.observation_size)).astype(np.float32)
                else:
                    v = held_obs if regime == "rest" else np.zeros_like(held_obs)
            elif s.source == "reward":
                r = rng.standard_normal() if regime == "moving" else 0.0
                v = np.array([r], np.float32)
            elif s.source == "first":
                v = np.array([1.0 if t == 0 else 0.0], np.float32)
            elif s.source == "terminal":
                v = np.zeros(1, np.float32)
            elif s.source == "noise":
                if m.noise is None:
                    raise BenchError(
                        f"{graph}: input {s.name!r} wants noise; the manifest has none"
                    )
                if regime == "zero":
                    v = np.zeros((1, m.noise.size), np.float32)
                else:
                    v = sample_noise(m.noise, rng)
            else:
                raise BenchError(f"{graph}: the bench cannot fill input source {s.source!r}")
            x[s.name] = v
        out.append(x)
    return out


# ---- paths ----------------------------------------------------------------------------------


class _OrtStepper:
    """`StepRunner.step` as `rtu-edge run` calls it (firmware_bridge/robot_loop.py)."""

    def __init__(self, bundle: Bundle, graph: str):
        self.runner = bundle.runner(graph)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> object:
        return self.runner.step(**inputs)

    def state(self) -> dict[str, np.ndarray]:
        return self.runner.state()


def _state_of(bundle: Bundle, graph: str) -> dict[str, np.ndarray]:
    """The graph's state, each tensor once: its views (the learn graph's parameters by name,
    inside the params.flat it carries: contract.view_inputs) are not counted twice."""
    views = bundle.view_inputs(graph)
    state = bundle.graph_state(graph)
    return {k: np.ascontiguousarray(v) for k, v in state.items() if k not in views}


def last_level_cache_bytes() -> int | None:
    """Size of the largest CPU cache (Linux sysfs), or None when unknown."""
    best = None
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        entries = sorted(base.glob("index*/size"))
    except OSError:
        return None
    for p in entries:
        try:
            text = p.read_text().strip().upper()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            size = int(digits) * mult
            best = size if best is None else max(best, size)
    return best


class _Floor:
    """Copy a state's bytes once with numpy: one contiguous buffer of the same size, hot in
    cache, or after `evict` (the floor of any step that reads its state and writes it anew)."""

    def __init__(self, state: Mapping[str, np.ndarray], evict: np.ndarray | None = None):
        parts = [np.ascontiguousarray(v).reshape(-1).view(np.uint8) for v in state.values()]
        self.src = np.concatenate(parts)
        self.dst = np.empty_like(self.src)
        self.evict_buf = evict

    def __call__(self, _inputs=None) -> None:
        np.copyto(self.dst, self.src)

    def evict(self) -> None:
        np.add(self.evict_buf, 1.0, out=self.evict_buf)  # reads and writes all of it


def graph_nodes(bundle: Bundle, graph: str) -> dict[str, int]:
    """Nodes of `graph` as stored in the bundle and after onnxruntime's optimisations (the
    session options `rtu-edge run` uses; the optimised model is written to a temporary file)."""
    blob = (bundle.path / bundle.manifest.graphs[graph].file).read_bytes()
    with tempfile.TemporaryDirectory(prefix="rtu-edge-nodes-") as tmp:
        so = session_options()
        so.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        so.log_severity_level = 3  # not the warning that the optimised file is machine-specific
        ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        optimised = Path(so.optimized_model_filepath).read_bytes()
    return {"stored": count_nodes(blob), "optimised": count_nodes(optimised)}


# ---- timing ---------------------------------------------------------------------------------


@dataclass
class _Task:
    key: tuple  # (target index, graph, path, case) or (target index, graph, "floor", where)
    fn: Callable
    inputs: list | None  # per-step inputs (warm-up first), or None for the floor
    per_round: int
    warmup: int = 0
    before: Callable | None = None  # untimed, before every timed call (cache eviction)
    pos: int = 0
    times: list = field(default_factory=list)


def _pct(seconds: list[float]) -> dict:
    a = np.asarray(seconds, dtype=np.float64) * 1e6
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "n": len(seconds),
    }


def _run_tasks(tasks: list[_Task], rounds: int) -> None:
    perf = time.perf_counter
    for task in tasks:  # warm-up, untimed
        for _ in range(task.warmup):
            task.fn(None if task.inputs is None else task.inputs[task.pos])
            task.pos += 1
    for _ in range(rounds):
        for task in tasks:
            fn, before, times, inputs = task.fn, task.before, task.times, task.inputs
            if before is None:  # one untimed call first: the task before may have evicted
                fn(None if inputs is None else inputs[task.pos])  # its data from the caches
            for _ in range(task.per_round):
                x = None if inputs is None else inputs[task.pos]
                if before is not None:
                    before()
                t0 = perf()
                fn(x)
                times.append(perf() - t0)
                task.pos += 1


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def run_bench(
    targets: Sequence[BenchTarget],
    *,
    steps: int = 2000,
    warmup: int = 2000,
    rounds: int = 10,
    cases: Sequence[str] = tuple(CASES),
    denormals: str = "flush",
    seed: int = 0,
    command: str | None = None,
    compare: bool = False,
    log: Callable[[str], object] | None = None,
) -> dict:
    """Time every target's graphs in every case; returns the report (see `format_table`).

    `steps` timed steps per path, case and graph, split over `rounds` interleaved rounds.
    With `compare` (several exports, an A/B) the report's ``versus_first`` gives every target's
    ORT times over the first target's of the same agent.
    """
    if steps < 1 or rounds < 1 or warmup < 0:
        raise BenchError("steps and rounds must be at least 1 and warmup at least 0")
    if rounds > steps:
        raise BenchError(f"rounds ({rounds}) cannot exceed steps ({steps})")
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        raise BenchError(f"cases must be some of {', '.join(CASES)}; got {list(cases)}")
    if denormals not in DENORMALS:
        raise BenchError(f"denormals must be one of {DENORMALS}, got {denormals!r}")
    per_round = -(-steps // rounds)
    llc = last_level_cache_bytes()
    evict_bytes = max(2 * (llc or 32 << 20), 16 << 20)
    evict = np.ones(evict_bytes // 4, dtype=np.float32)
    lead_in = warmup // 4

    tasks: list[_Task] = []
    for ti, target in enumerate(targets):
        b = target.bundle
        for graph in GRAPHS:
            state = _state_of(b, graph)
            floor_cache = _Floor(state)
            floor_mem = _Floor(state, evict)
            tasks.append(_Task((ti, graph, "floor", "cache"), floor_cache, None, per_round, 1))
            tasks.append(
                _Task(
                    (ti, graph, "floor", "memory"),
                    floor_mem,
                    None,
                    max(1, per_round // 10),
                    1,
                    before=floor_mem.evict,
                )
            )
            for case in cases:
                inputs = case_inputs(b, graph, case, warmup + per_round * rounds, lead_in, seed)
                factories = {"ort": lambda g, b=b: _OrtStepper(b, g)} | dict(target.other_paths)
                for path, make in factories.items():
                    tasks.append(
                        _Task((ti, graph, path, case), make(graph), inputs, per_round, warmup)
                    )
    if log:
        log(
            f"timing {len(tasks)} paths: {warmup} warm-up and {per_round * rounds} timed steps "
            f"each, {rounds} interleaved rounds"
        )
    t0 = time.perf_counter()
    # The flags belong to this thread and are set after every session exists (fpenv.py).
    with flush_denormals(denormals == "flush") as fp:
        _run_tasks(tasks, rounds)
        flushed = fp.active
        fp_text = fp.describe()
        fp_mechanism = fp.mechanism
    elapsed = time.perf_counter() - t0

    by_key = {t.key: t for t in tasks}
    sizes = []
    for ti, target in enumerate(targets):
        b, m = target.bundle, target.bundle.manifest
        paths = ["ort", *target.other_paths]
        graphs = {}
        for graph in GRAPHS:
            state = _state_of(b, graph)
            floor = {w: _pct(by_key[(ti, graph, "floor", w)].times) for w in ("cache", "memory")}
            per_case = {}
            for case in cases:
                entry: dict = {p: _pct(by_key[(ti, graph, p, case)].times) for p in paths}
                sub = {}
                for p in paths:
                    fn = by_key[(ti, graph, p, case)].fn
                    if hasattr(fn, "state"):
                        sub[p] = subnormal_count(fn.state())
                entry["subnormals_in_state"] = sub
                per_case[case] = entry
            for entry in per_case.values():
                ort_p50 = entry["ort"]["p50"]
                entry["ratios"] = {
                    "ort_over_copy_cache": _ratio(ort_p50, floor["cache"]["p50"]),
                    "ort_over_copy_memory": _ratio(ort_p50, floor["memory"]["p50"]),
                    "torch_over_ort": _ratio(entry.get("torch", {}).get("p50"), ort_p50),
                    "ort_over_moving": _ratio(
                        ort_p50, per_case.get("moving", {}).get("ort", {}).get("p50")
                    ),
                    "torch_over_moving": _ratio(
                        entry.get("torch", {}).get("p50"),
                        per_case.get("moving", {}).get("torch", {}).get("p50"),
                    ),
                }
            graphs[graph] = {
                "nodes": graph_nodes(b, graph),
                "state_tensors": len(state),
                "state_floats": int(sum(v.size for v in state.values())),
                "state_bytes": int(sum(v.nbytes for v in state.values())),
                "copy_floor_us": floor,
                "cases": per_case,
            }
        sizes.append(
            {
                "name": target.name,
                "description": target.description,
                "bundle": str(b.path),
                "learner": m.learner,
                "cell": m.cell,
                "observation_size": m.observation_size,
                "action": {"kind": m.action.kind, "dims": m.action.dims},
                "bundle_rtu_edge_version": m.rtu_edge_version,
                "paths": paths,
                "graphs": graphs,
            }
        )
    meta = machine_info() | {
        "command": command,
        "steps": per_round * rounds,
        "warmup": warmup,
        "lead_in_moving": lead_in,
        "rounds": rounds,
        "cases": {c: CASES[c] for c in cases},
        "denormals": {
            "asked": denormals,
            "flushed": flushed,
            "mechanism": fp_mechanism,
            "text": fp_text,
        },
        "evict_buffer_bytes": evict_bytes,
        "elapsed_s": elapsed,
        "units": "microseconds",
    }
    report = {"meta": meta, "sizes": sizes}
    if compare:
        report["versus_first"] = versus_first(sizes)
    return report


def _agent_key(size: dict) -> tuple:
    return (
        size["learner"],
        size["cell"],
        size["observation_size"],
        size["action"]["kind"],
        size["action"]["dims"],
    )


def versus_first(sizes: list[dict]) -> list[dict]:
    """Every size's ORT p50 and p99 over those of the first size of the same agent (learner,
    cell, observation and action sizes), per graph and case: an A/B of several exports."""
    first: dict[tuple, int] = {}
    for index, size in enumerate(sizes):
        first.setdefault(_agent_key(size), index)
    rows = []
    for index, size in enumerate(sizes):
        ref_index = first[_agent_key(size)]
        base = sizes[ref_index]["graphs"]
        for graph, g in size["graphs"].items():
            for case, e in g["cases"].items():
                ref = base.get(graph, {}).get("cases", {}).get(case, {}).get("ort", {})
                rows.append(
                    {
                        "index": index,
                        "name": size["name"],
                        "first": ref_index,
                        "graph": graph,
                        "case": case,
                        "nodes": g["nodes"]["optimised"],
                        "p50": e["ort"]["p50"],
                        "p99": e["ort"]["p99"],
                        "p50_over_first": _ratio(e["ort"]["p50"], ref.get("p50")),
                        "p99_over_first": _ratio(e["ort"]["p99"], ref.get("p99")),
                        "over_copy_memory": e["ratios"]["ort_over_copy_memory"],
                    }
                )
    return rows


def machine_info() -> dict:
    """Machine and version metadata (no torch import: its version only if already loaded)."""
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    try:
        from importlib.metadata import version

        rtu_version = version("rtu-edge")
    except Exception:  # not installed as a package (run from a checkout)
        rtu_version = None
    torch = sys.modules.get("torch")
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "last_level_cache_bytes": last_level_cache_bytes(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "torch": getattr(torch, "__version__", None),
        "rtu_edge": rtu_version,
        "onnxruntime_threads": {"intra_op": 1, "inter_op": 1},
    }


# ---- the table ------------------------------------------------------------------------------

COLUMNS = (
    "case",
    "ORT p50",
    "ORT p99",
    "torch p50",
    "torch p99",
    "torch/ORT",
    "ORT/copy",
    "ORT/copy-mem",
    "vs moving",
    "subnormals",
)


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _us(v: float) -> str:
    return f"{v:.1f}" if v < 10 else f"{v:.0f}"


def format_table(report: dict) -> str:
    """The report as text: one block per size and graph, one row per case (microseconds)."""
    meta = report["meta"]
    widths = [8, 8, 8, 10, 10, 10, 9, 13, 10, 11]
    lines = [
        f"rtu-edge bench: onnxruntime {meta['onnxruntime']}"
        + (f", torch {meta['torch']}" if meta.get("torch") else "")
        + f"; {meta['machine']}, {meta['cpus_usable']} usable CPUs ({meta['cpu']}); "
        + f"subnormals {meta['denormals']['text']}",
        f"{meta['steps']} timed steps per path and case in {meta['rounds']} interleaved rounds, "
        f"after {meta['warmup']} warm-up steps (the first {meta['lead_in_moving']} moving)",
        "times in microseconds; copy = one numpy copy of the graph's state, in cache / from memory",
    ]
    header = "".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths))
    )
    for size in report["sizes"]:
        for graph, g in size["graphs"].items():
            fl = g["copy_floor_us"]
            nodes = g["nodes"]
            lines.append("")
            lines.append(
                f"{size['name']} {graph}: {size['description'] or size['cell']}; "
                f"{nodes['optimised']} nodes ({nodes['stored']} stored); state "
                f"{g['state_floats']:,} floats ({g['state_bytes'] / 1024:,.0f} KiB), copy p50 "
                f"{_us(fl['cache']['p50'])} us in cache, {_us(fl['memory']['p50'])} us from memory"
            )
            lines.append(header)
            for case, e in g["cases"].items():
                r = e["ratios"]
                torch = e.get("torch")
                cells = [
                    case,
                    _num(e["ort"]["p50"], ".0f"),
                    _num(e["ort"]["p99"], ".0f"),
                    _num(torch and torch["p50"], ".0f"),
                    _num(torch and torch["p99"], ".0f"),
                    _num(r["torch_over_ort"], ".2f"),
                    _num(r["ort_over_copy_cache"], ".1f"),
                    _num(r["ort_over_copy_memory"], ".1f"),
                    _num(r["ort_over_moving"], ".2f"),
                    str(e["subnormals_in_state"].get("ort", "-")),
                ]
                lines.append(_row(cells, widths))
    if "versus_first" in report:
        lines += _versus_first_lines(report["versus_first"])
    return "\n".join(lines)


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "".join(
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )


VERSUS_COLUMNS = (
    "graph",
    "case",
    "nodes",
    "ORT p50",
    "ORT p99",
    "p50/first",
    "p99/first",
    "ORT/copy-mem",
)


def _versus_first_lines(rows: list[dict]) -> list[str]:
    """The A/B block: one row per bundle, graph and case, its ORT times over the first's of
    the same agent."""
    names = {r["index"]: (r["name"], r["first"]) for r in rows}
    widths = [7, 8, 7, 9, 9, 11, 11, 14]
    lines = ["", "versus the first bundle of the same agent, timed in the same rounds:"]
    for i, (name, first) in names.items():
        lines.append(f"[{i}] {name}" + ("" if first == i else f" (over [{first}])"))
        lines.append(_row(VERSUS_COLUMNS, widths))
        for r in rows:
            if r["index"] != i:
                continue
            cells = [
                r["graph"],
                r["case"],
                str(r["nodes"]),
                _num(r["p50"], ".0f"),
                _num(r["p99"], ".0f"),
                _num(r["p50_over_first"], ".2f"),
                _num(r["p99_over_first"], ".2f"),
                _num(r["over_copy_memory"], ".1f"),
            ]
            lines.append(_row(cells, widths))
    return lines
