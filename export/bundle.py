"""`rtu-edge export`: turn a run directory into a robot bundle (docs/bundle.md).

The learn graph is :func:`rtu_edge.learners.ac.ac_step` itself, traced by the dynamo exporter;
the act graph is :func:`rtu_edge.learners.ac.act_step`. Export always ends with a parity check:
the exported graph is run in onnxruntime on a real trajectory, teacher-forced step by step
against the torch function, and export fails loudly when they disagree.
"""

from __future__ import annotations

import hashlib
import io
import json
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
from export.parity import ParityError, ParityReport, check_parity
from rtu_edge import envs as envs_mod
from rtu_edge.agent import AgentConfig
from rtu_edge.atomic import atomic_write_bytes, atomic_write_json
from rtu_edge.learners.ac import ACConfig, ac_step, act_step
from rtu_edge.train import load_run

FORMAT_VERSION = 1
OPSET = 18
STEP_INPUTS = ("obs", "reward", "first", "terminal", "noise")
LEARN_OUTPUTS = ("action", "value", "td_error")
ACT_OUTPUTS = ("action", "value", "carry.c1.next", "carry.c2.next")
STANDARD_DOMAINS = ("", "ai.onnx")

__all__ = ["ExportConfig", "export_run", "ParityError", "ParityReport"]


@dataclass
class ExportConfig:
    """What `rtu-edge export` does. Saved in the manifest."""

    run_dir: str  # a directory written by `rtu-edge train`
    out: str  # bundle directory to create
    parity_steps: int = 256  # teacher-forced steps compared against torch (>= 200)
    parity_tol: float = 1e-5  # max relative error allowed per output (see export/parity.py)
    check_parity: bool = True  # skipping the check is possible but says so loudly
    max_delta: float | None = None  # cap on the action change per step on the robot (None: no cap)
    overwrite: bool = False  # replace an existing bundle directory


# ---- the two step functions as modules with flat tensor signatures ----------------------


class LearnGraph(torch.nn.Module):
    """forward(*carried, obs, reward, first, terminal, noise) -> (*carried_next, action, value, td_error)."""

    def __init__(self, ac: ACConfig, agent: AgentConfig, carried: list[str]):
        super().__init__()
        self.ac, self.agent, self.carried = ac, agent, carried

    def forward(self, *tensors: torch.Tensor):
        n = len(self.carried)
        state = dict(zip(self.carried, tensors[:n]))
        obs, reward, first, terminal, noise = tensors[n:]
        new, action, value, delta = ac_step(
            self.ac, self.agent, state, obs, reward, first, terminal, noise
        )
        return (*(new[k] for k in self.carried), action, value, delta)


class ActGraph(torch.nn.Module):
    """forward(*inputs, obs, first) -> (action, value, c1_next, c2_next)."""

    def __init__(self, ac: ACConfig, agent: AgentConfig, inputs: list[str]):
        super().__init__()
        self.ac, self.agent, self.inputs = ac, agent, inputs

    def forward(self, *tensors: torch.Tensor):
        n = len(self.inputs)
        state = dict(zip(self.inputs, tensors[:n]))
        obs, first = tensors[n:]
        return act_step(self.agent, state, obs, first, self.ac)


def act_input_names(state: dict[str, torch.Tensor], agent: AgentConfig) -> list[str]:
    """The carried tensors the act graph reads: parameters it uses, obs statistics, hidden state."""
    names = [k for k in state if k.startswith("params.") and k != "params.actor.log_std"]
    names += ["norm.obs_count", "norm.obs_mean", "norm.obs_m2", "carry.c1", "carry.c2"]
    return names


def step_example(agent: AgentConfig) -> dict[str, torch.Tensor]:
    return {
        "obs": torch.zeros(1, agent.obs_size),
        "reward": torch.zeros(1),
        "first": torch.ones(1),
        "terminal": torch.zeros(1),
        "noise": torch.zeros(1, agent.noise_size),
    }


# ---- export helpers ------------------------------------------------------------------------


def _to_onnx(
    module: torch.nn.Module, args: tuple, input_names: list[str], output_names: list[str]
) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
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


def export_learn_graph(
    ac: ACConfig, agent: AgentConfig, state: dict[str, torch.Tensor]
) -> onnx.ModelProto:
    """`ac_step` as an ONNX graph; carried tensors in `state` order, dtype of `state`."""
    carried = list(state)
    dtype = next(iter(state.values())).dtype
    example = {k: v.to(dtype) for k, v in step_example(agent).items()}
    return _to_onnx(
        LearnGraph(ac, agent, carried),
        tuple(state[k] for k in carried) + tuple(example[k] for k in STEP_INPUTS),
        carried + list(STEP_INPUTS),
        [f"{k}.next" for k in carried] + list(LEARN_OUTPUTS),
    )


def export_act_graph(
    ac: ACConfig, agent: AgentConfig, state: dict[str, torch.Tensor]
) -> onnx.ModelProto:
    """`act_step` as an ONNX graph reading the tensors named by `act_input_names`."""
    names = act_input_names(state, agent)
    example = step_example(agent)
    return _to_onnx(
        ActGraph(ac, agent, names),
        tuple(state[k] for k in names) + (example["obs"], example["first"]),
        names + ["obs", "first"],
        list(ACT_OUTPUTS),
    )


def check_standard_ops(model: onnx.ModelProto) -> None:
    """Only default-domain ONNX ops and a full checker pass, or raise."""
    onnx.checker.check_model(model, full_check=True)
    odd = sorted(
        {f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS}
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


def graph_io(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    def describe(values) -> list[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            out.append(
                {
                    "name": v.name,
                    "dtype": _DTYPES.get(t.elem_type, str(t.elem_type)),
                    "shape": [
                        d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim
                    ],
                }
            )
        return out

    return describe(model.graph.input), describe(model.graph.output)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ---- the export -------------------------------------------------------------------------------


def export_run(cfg: ExportConfig, log=print) -> dict:
    """Export RUN_DIR to a bundle; returns the manifest. Raises ParityError on a parity failure."""
    if cfg.parity_steps < 200 and cfg.check_parity:
        raise ValueError("--parity-steps must be at least 200")
    config, agent, ac, state = load_run(cfg.run_dir)
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise FileExistsError(
                f"{out} already holds files; choose another --out or pass --overwrite"
            )
    torch.set_num_threads(1)
    carried = list(state.keys())

    t0 = time.perf_counter()
    learn = export_learn_graph(ac, agent, state)
    act_inputs = act_input_names(state, agent)
    act = export_act_graph(ac, agent, state)
    for m in (learn, act):
        check_standard_ops(m)
    log(
        f"exported learn.onnx ({len(learn.graph.node)} nodes) and act.onnx ({len(act.graph.node)} nodes) "
        f"in {time.perf_counter() - t0:.1f}s"
    )

    learn_bytes, act_bytes = learn.SerializeToString(), act.SerializeToString()
    report = None
    if cfg.check_parity:
        report = check_parity(
            learn_bytes,
            act_bytes,
            config,
            agent,
            ac,
            state,
            carried,
            act_inputs,
            steps=cfg.parity_steps,
            tol=cfg.parity_tol,
        )
        log(
            f"parity: {report.steps} teacher-forced steps, worst relative error {report.worst_rel:.2e} "
            f"({report.worst_name}), tolerance {cfg.parity_tol:.0e}"
        )
        if not report.ok:
            raise ParityError(report)
    else:
        log("WARNING: parity check skipped (--no-parity); the bundle is unverified")

    info = config.get("env_info") or asdict(envs_mod.env_info(config["train"]["env"]))
    state_np = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in state.items()}
    files = {"learn.onnx": learn_bytes, "act.onnx": act_bytes, "state.npz": _npz_bytes(state_np)}
    learn_in, learn_out = graph_io(learn)
    act_in, act_out = graph_io(act)
    n_act = agent.action_dims
    max_delta = [float(cfg.max_delta)] * n_act if cfg.max_delta is not None else None
    manifest = {
        "format_version": FORMAT_VERSION,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rtu_edge_version": rtu_edge.__version__,
        "env_id": config["train"]["env"],
        "observation": {"size": agent.obs_size, "dtype": "float32", "clip": ac.obs_clip},
        "action": {
            "kind": agent.action_kind,
            "dims": n_act,
            "num_actions": agent.num_actions,
            "low": list(info["action_low"]),
            "high": list(info["action_high"]),
            "safe": list(info["safe_action"]),
            "max_delta": max_delta,
        },
        "noise": {
            "distribution": "normal" if agent.action_kind == "continuous" else "gumbel",
            "size": agent.noise_size,
        },
        "hyperparameters": {
            "agent": agent.to_dict(),
            "learner": ac.to_dict(),
            "train": config["train"],
        },
        "protocol": {
            "version": _protocol().PROTOCOL_VERSION,
            "schema_hash": f"0x{_protocol().SCHEMA_HASH:08x}",
        },
        "graphs": {
            "learn": {
                "file": "learn.onnx",
                "opset": OPSET,
                "inputs": learn_in,
                "outputs": learn_out,
            },
            "act": {"file": "act.onnx", "opset": OPSET, "inputs": act_in, "outputs": act_out},
        },
        "state": {"file": "state.npz", "names": carried},
        "parity": asdict(report) if report is not None else None,
        "files": {name: _sha256(data) for name, data in files.items()},
    }
    # Write into a sibling temp dir, then swap it in: a crash never leaves a half bundle.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        for name, data in files.items():
            atomic_write_bytes(staging / name, data)
        atomic_write_json(staging / "manifest.json", manifest)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(
        f"bundle written to {out} (learn {len(learn_bytes) / 1024:.0f} KB, act {len(act_bytes) / 1024:.0f} KB)"
    )
    return json.loads((out / "manifest.json").read_text())


def _protocol():
    from firmware_bridge import protocol

    return protocol
