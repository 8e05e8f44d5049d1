"""`rtu-edge export`: turn a run directory into a robot bundle (docs/bundle.md).

The learn graph is the run's learner's ``learn_step`` itself, traced by the dynamo exporter; the
act graph is its ``act_step``, and act_prepare.onnx its ``act_prepare`` (the act step's
constants, computed by the robot once per loaded state) when it declares one. Which tensors go in and out, and what each per-step input and
output means, comes from what the learner declares (rtu_edge/learners/base.py); the manifest is
written with the contract (firmware_bridge/contract.py) and checked against it before anything
is written. Export always ends with a parity check:
the exported graph is run in onnxruntime on a real trajectory, teacher-forced step by step
against the torch function, and export fails loudly when they disagree.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

import rtu_edge
from export.parity import PARITY_TOL, ParityError, ParityReport, check_parity
from firmware_bridge import contract as C
from firmware_bridge.atomic import atomic_write_bytes, atomic_write_json
from rtu_edge import packing as P
from rtu_edge import run_dir as rd
from rtu_edge.agent import AgentConfig
from rtu_edge.cells import rtrl_cells
from rtu_edge.learners import Learner, get_learner

OPSET = C.OPSET
STANDARD_DOMAINS = ("", "ai.onnx")

__all__ = ["ExportConfig", "export_run", "ParityError", "ParityReport"]


@dataclass
class ExportConfig:
    """What `rtu-edge export` does. Saved in the manifest."""

    run_dir: str  # a directory written by `rtu-edge train`
    out: str  # bundle directory to create
    parity_steps: int = 256  # teacher-forced steps compared against torch (>= 200)
    parity_tol: float = PARITY_TOL  # max relative error allowed per output (export/parity.py)
    check_parity: bool = True  # skipping the check is possible but says so loudly
    max_delta: float | None = None  # cap on the action change per step on the robot (None: no cap)
    overwrite: bool = False  # replace an existing bundle directory


# ---- a step function as a module with a flat tensor signature ----------------------------------


class StepGraph(torch.nn.Module):
    """forward(*state, *step_inputs) -> (*carried_next, *step_outputs), all by declared name.

    ``fn`` is a learner's learn_step or act_step; ``carried`` are the state tensors it writes
    back (their outputs are named ``X.next`` by the contract's naming rule).
    """

    def __init__(self, fn, cfg, agent: AgentConfig, state_names, input_names, carried, outputs):
        super().__init__()
        self.fn, self.cfg, self.agent = fn, cfg, agent
        self.state_names, self.input_names = list(state_names), list(input_names)
        self.carried, self.outputs = list(carried), list(outputs)  # outputs: by name

    def forward(self, *tensors: torch.Tensor):
        n = len(self.state_names)
        state = dict(zip(self.state_names, tensors[:n]))
        inputs = dict(zip(self.input_names, tensors[n:]))
        new, out = self.fn(self.cfg, self.agent, state, inputs)
        return (*(new[k] for k in self.carried), *(out[k] for k in self.outputs))


@dataclass
class GraphPlan:
    """Everything about one graph that the learner declares: names in graph order."""

    state_names: list[str]  # inputs read from the state (prep.* ones from act_prepare)
    carried: list[str]  # of those, the ones written back as X.next
    step_inputs: tuple[C.StepInput, ...]
    step_outputs: tuple[C.StepOutput, ...]
    prepared: list[str] = dataclasses.field(default_factory=list)  # a prepare graph's outputs

    @property
    def output_names(self) -> list[str]:
        return (
            [C.next_name(k) for k in self.carried]
            + [o.name for o in self.step_outputs]
            + self.prepared
        )


PREPARE = "act_prepare"  # the graph that computes the act graph's prep.* inputs


def plan_graphs(learner: Learner, agent: AgentConfig, state: dict, cfg) -> dict[str, GraphPlan]:
    """The graphs a bundle of this agent holds: learn and act, or act only for a cell without
    exact RTRL (it cannot learn on the robot); and act_prepare when the learner declares one.
    ``cfg`` is the learner's config."""
    act_names = learner.act_state_names(agent, state)
    carry = [k for k in act_names if k.startswith("carry.")]
    plans = {}
    if agent.cell.online:
        # the learn step may read the tensors inside its packed buffers by their own names:
        # views, which the runtime binds to the buffer it carries (contract.view_inputs), so the
        # graph does not split the buffer on every tick. Those it leaves unread are dropped.
        packing = learner.packing(agent) if learner.packing else ()
        views = [t.name for b in packing if b.name in state for t in b.tensors]
        plans["learn"] = GraphPlan(
            list(state) + views,
            list(state),
            learner.step_inputs(agent),
            learner.learn_outputs(agent),
        )
    prepared = list(prepare_values(learner, cfg, agent, state))
    if prepared:  # (a learner's act_prepare may have nothing to compute for this agent)
        plans[PREPARE] = GraphPlan([k for k in act_names if k not in carry], [], (), (), prepared)
    return plans | {
        "act": GraphPlan(
            act_names + prepared, carry, learner.act_inputs(agent), learner.act_outputs(agent)
        ),
    }


def prepare_values(learner: Learner, cfg, agent: AgentConfig, state: dict) -> dict:
    """The act step's prep.* constants of ``state`` in torch ({} without an act_prepare)."""
    if learner.act_prepare is None:
        return {}
    packing = learner.packing(agent) if learner.packing else ()
    with torch.inference_mode():
        return learner.act_prepare(cfg, agent, P.with_views(state, packing))


def export_graph(
    learner: Learner, graph: str, cfg, agent: AgentConfig, state: dict[str, torch.Tensor]
) -> onnx.ModelProto:
    """The learner's `graph` ("learn", "act" or "act_prepare") step as ONNX; dtype of `state`.

    State inputs that no node reads (e.g. what act_prepare consumed, for the act graph) are
    dropped from the graph (`export_graphs` gives the plans with the names that remain)."""
    plan = plan_graphs(learner, agent, state, cfg)[graph]
    fn = learner.step_function(graph)
    dtype = next(iter(state.values())).dtype
    example = [
        (torch.ones if s.source == "first" else torch.zeros)(s.shape, dtype=dtype)
        for s in plan.step_inputs
    ]
    module = StepGraph(
        fn,
        cfg,
        agent,
        plan.state_names,
        [s.name for s in plan.step_inputs],
        plan.carried,
        [o.name for o in plan.step_outputs] + plan.prepared,
    )
    values = P.with_views(state, learner.packing(agent) if learner.packing else ())
    values = values | prepare_values(learner, cfg, agent, state)
    try:
        model = _to_onnx(
            module,
            tuple(values[k] for k in plan.state_names) + tuple(example),
            plan.state_names + [s.name for s in plan.step_inputs],
            plan.output_names,
        )
    except Exception as e:  # the exporter wraps what the step raised: report that
        root = e
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        if isinstance(root, ValueError):
            raise ValueError(f"cannot export the {graph} graph: {root}") from None
        raise
    return _drop_unused_inputs(model, set(plan.state_names) - set(plan.carried))


def export_graphs(
    learner: Learner, cfg, agent: AgentConfig, state: dict[str, torch.Tensor], cfgs=None
) -> tuple[dict[str, onnx.ModelProto], dict[str, GraphPlan]]:
    """Every graph of the bundle (`plan_graphs`) as ONNX, and the plans with the state inputs
    each exported graph kept. ``cfgs`` may give another config per graph (tests)."""
    plans = plan_graphs(learner, agent, state, cfg)
    models = {g: export_graph(learner, g, (cfgs or {}).get(g, cfg), agent, state) for g in plans}
    for g, model in models.items():
        inputs = {i.name for i in model.graph.input}
        plans[g] = dataclasses.replace(
            plans[g], state_names=[k for k in plans[g].state_names if k in inputs]
        )
    return models, plans


# ---- export helpers ------------------------------------------------------------------------


def _to_onnx(
    module: torch.nn.Module, args: tuple, input_names: list[str], output_names: list[str]
) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp, _quiet_exporter():
        path = Path(tmp) / "graph.onnx"
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=True,
            opset_version=OPSET,
            external_data=False,
            input_names=input_names,
            output_names=output_names,
            verbose=False,
        )
        model = onnx.load(str(path))
    # Dynamo attaches ~40 KB of per-node metadata; the robot does not need it.
    for node in model.graph.node:
        del node.metadata_props[:]
    model.producer_name = "rtu-edge"
    model.producer_version = rtu_edge.__version__
    return model


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs and prints progress ("torchvision is not installed", "[torch.onnx]
    Obtain model graph ... "); export prints what it did itself, so silence those."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "onnxscript", "torch")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), open(os.devnull, "w") as null:
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                yield
        finally:
            for lg, lvl in zip(loggers, levels):
                lg.setLevel(lvl)


def _drop_unused_inputs(model: onnx.ModelProto, droppable: set[str]) -> onnx.ModelProto:
    """``model`` without the inputs in ``droppable`` that no node (in any branch) reads and no
    output returns: a graph input the step never uses would still cost a binding per tick."""
    read = {i for n in _all_nodes(model.graph) for i in n.input}
    read |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.input if i.name not in droppable or i.name in read]
    if len(keep) < len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)
    return model


def _all_nodes(graph: onnx.GraphProto):
    """The graph's nodes and those of every subgraph (the branches of an ``If``), depth first."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def check_standard_ops(model: onnx.ModelProto) -> None:
    """Only default-domain ONNX ops (inside ``If`` branches too) and a full checker pass, or
    raise."""
    onnx.checker.check_model(model, full_check=True)
    odd = sorted(
        {
            f"{n.domain}::{n.op_type}"
            for n in _all_nodes(model.graph)
            if n.domain not in STANDARD_DOMAINS
        }
    )
    if odd:
        raise RuntimeError(
            f"exported graph uses non-standard ops {odd}; the robot's onnxruntime may lack them"
        )
    if model.functions:
        raise RuntimeError("exported graph contains local functions; inline them before shipping")


_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
}


def graph_io(model: onnx.ModelProto) -> tuple[tuple[C.TensorSpec, ...], tuple[C.TensorSpec, ...]]:
    """The graph's inputs and outputs as contract TensorSpecs (static shapes only)."""

    def describe(values) -> tuple[C.TensorSpec, ...]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = tuple(d.dim_value for d in t.shape.dim)
            if any(not d.HasField("dim_value") for d in t.shape.dim):
                raise RuntimeError(f"exported graph has a symbolic dimension in {v.name!r}")
            out.append(C.TensorSpec(v.name, _DTYPES.get(t.elem_type, str(t.elem_type)), shape))
        return tuple(out)

    return describe(model.graph.input), describe(model.graph.output)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ---- the export -------------------------------------------------------------------------------


def packing_of(learner: Learner, agent: AgentConfig, state: dict) -> tuple[C.PackedBuffer, ...]:
    """The learner's packed buffers whose tensors are all in ``state`` (an act-only state
    has parameters but no eligibility traces)."""
    return P.held(learner.packing(agent), state) if learner.packing is not None else ()


def streaming_run(run: rd.Run, state: dict) -> tuple[rd.Run, dict]:
    """A run of a learner that does not learn per tick (ppo) as the streaming learner its
    ``to_streaming`` converts the trained state to (ac): the bundle is that learner's."""
    if run.learner.to_streaming is None:
        raise ValueError(
            f"learner {run.learner.name!r} does not learn one tick at a time and declares no "
            "conversion to a streaming learner, so it cannot be exported"
        )
    algo, learner_cfg, state = run.learner.to_streaming(run.train.learner, run.agent, state)
    train = dataclasses.replace(run.train, algo=algo, learner=learner_cfg)
    return dataclasses.replace(run, train=train, learner=get_learner(algo)), state


def export_run(cfg: ExportConfig, log=print) -> dict:
    """Export RUN_DIR to a bundle; returns the manifest. Raises ParityError on a parity failure."""
    if cfg.parity_steps < 200 and cfg.check_parity:
        raise ValueError("--parity-steps must be at least 200")
    if cfg.max_delta is not None and not (np.isfinite(cfg.max_delta) and cfg.max_delta > 0):
        raise ValueError(f"--max-delta must be a positive number, got {cfg.max_delta}")
    run, state = rd.load_run(cfg.run_dir)
    trained_by = None
    if not run.learner.streaming:  # trained off the robot (ppo): export what it converts to
        trained_by = run.train
        run, state = streaming_run(run, state)
    learner, agent = run.learner, run.agent
    if not agent.cell.online:
        log(
            f"cell {agent.net.cell!r} has no exact RTRL, so it cannot learn on the robot: "
            "writing an act-only bundle (`rtu-edge run --no-learn`)"
        )
    bad = rd.non_finite(state)
    if bad:
        raise ValueError(f"{cfg.run_dir}: the checkpoint holds non-finite tensors {bad[:5]}")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; choose a directory for the bundle")
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise FileExistsError(
            f"{out} already holds files; choose another --out or pass --overwrite"
        )
    torch.set_num_threads(1)
    packing = packing_of(learner, agent, state)
    state = P.pack(state, packing)

    t0 = time.perf_counter()
    models, plans = export_graphs(learner, run.train.learner, agent, state)
    for m in models.values():
        check_standard_ops(m)
    log(
        "exported "
        + " and ".join(f"{g}.onnx ({len(m.graph.node)} nodes)" for g, m in models.items())
        + f" in {time.perf_counter() - t0:.1f}s"
    )
    blobs = {g: m.SerializeToString() for g, m in models.items()}
    report = None
    if cfg.check_parity:
        report = check_parity(
            run, state, blobs, plans, steps=cfg.parity_steps, tol=cfg.parity_tol, packing=packing
        )
        log(
            f"parity: {report.steps} teacher-forced steps, worst relative error {report.worst_rel:.2e} "
            f"({report.worst_name}), tolerance {cfg.parity_tol:.0e}"
        )
        if not report.ok:
            raise ParityError(report)
    else:
        log("WARNING: parity check skipped (--no-parity); the bundle is unverified")

    info = run.env_info
    state_np = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in state.items()}
    files = {f"{g}.onnx": blobs[g] for g in models} | {C.STATE_FILE: _npz_bytes(state_np)}
    n_act = agent.action_dims
    protocol = _protocol()
    graphs = {}
    for g, model in models.items():
        if g == PREPARE:
            continue
        inputs, outputs = graph_io(model)
        prepare = None
        if g == "act" and PREPARE in models:
            prepare = C.PrepareSpec(f"{PREPARE}.onnx", OPSET, *graph_io(models[PREPARE]))
        graphs[g] = C.GraphSpec(
            file=f"{g}.onnx",
            opset=OPSET,
            inputs=inputs,
            outputs=outputs,
            step_inputs=plans[g].step_inputs,
            step_outputs=plans[g].step_outputs,
            prepare=prepare,
        )
    manifest = C.Manifest(
        format_version=C.format_needed(graphs, packing),
        created_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        rtu_edge_version=rtu_edge.__version__,
        env_id=run.train.env,
        learner=learner.name,
        cell=agent.net.cell,
        observation_size=agent.obs_size,
        observation_clip=float(getattr(run.train.learner, "obs_clip", 1e6)),
        action=C.ActionSpec(
            kind=agent.action_kind,
            dims=n_act,
            num_actions=agent.num_actions,
            low=tuple(info["action_low"]),
            high=tuple(info["action_high"]),
            safe=tuple(info["safe_action"]),
            max_delta=None if cfg.max_delta is None else (float(cfg.max_delta),) * n_act,
        ),
        noise=learner.noise(agent) if "learn" in graphs else None,
        graphs=graphs,
        state_file=C.STATE_FILE,
        state_names=tuple(state),
        files={name: _sha256(data) for name, data in files.items()},
        protocol_version=protocol.PROTOCOL_VERSION,
        schema_hash=protocol.SCHEMA_HASH,
        hyperparameters={"train": asdict(run.train), "export": asdict(cfg)}
        | ({"trained_by": asdict(trained_by)} if trained_by is not None else {}),
        parity=asdict(report) if report is not None else None,
        rtrl_cells=tuple(rtrl_cells()),
        packing=packing,
    )
    # What the robot will check, checked here first: a bundle that breaks the contract is a bug.
    written = manifest.to_json()
    C.Manifest.from_json(json.loads(json.dumps(written))).check_step_io()
    # Write into a sibling temp dir, then swap it in: a crash never leaves a half bundle.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for name, data in files.items():
            atomic_write_bytes(staging / name, data)
        atomic_write_json(staging / C.MANIFEST, written)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    sizes = ", ".join(f"{g} {len(b) / 1024:.0f} KB" for g, b in blobs.items())
    log(f"bundle written to {out} ({sizes})")
    return json.loads((out / C.MANIFEST).read_text())


def _protocol():
    from firmware_bridge import protocol

    return protocol
