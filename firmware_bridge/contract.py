"""The bundle contract, defined once: what `rtu-edge export` writes and `rtu-edge run` reads.

This module sits at the bottom of the dependency graph: numpy and the standard library only (no
torch, no onnxruntime), so the exporter, the learners that declare their step I/O, and the robot
side all import the same definitions. docs/bundle.md describes the same contract in prose.

- **Format**: `FORMAT_VERSION`, the graphs a bundle holds (`GRAPHS`), the opset.
- **Naming rule**: a graph input ``X`` is *carried* when the same graph has an output
  ``X + NEXT_SUFFIX``; the runtime feeds ``X.next`` back as ``X`` on the next step. Carried
  tensors have dotted names ``<group>.<path>`` (`STATE_GROUPS` says what each group holds).
- **Step I/O**: every per-step input declares a `source` (what the robot loop fills it with,
  one of `INPUT_SOURCES`) and every per-step output a `use` (`OUTPUT_USES`). The robot loop is
  driven by these declarations, never by tensor names.
- **Rules shared by every side**: the exploration noise (`sample_noise`) and the action that
  reaches the actuator (`ActionSpec.to_actuator`).
- **Manifest**: a typed `Manifest`; `Manifest.from_json` checks every field and raises
  `ContractError` with a message that names the field, never a KeyError or a traceback.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

# 2: step I/O declared with sources and uses; cell-generic tensor names
# 3: parameters and eligibility traces packed into flat buffers (`PackedBuffer`, state.packed)
# 4: a step graph may read constants (``prep.*``) that its prepare graph computes from the
#    state once per loaded state (`PrepareSpec`; act_prepare.onnx). Format 3 is read too.
# 5: a graph that carries a packed buffer may also read tensors inside it by their own names:
#    *views*, which the runtime binds to the buffer's current value (`view_inputs`). A format-4
#    runtime would feed them a copy made once, gone stale after the first update.
FORMAT_VERSION = 5
# a format-3 bundle is a format-4 one without prepare graphs, a format-4 one a format-5 one
# without views
READABLE_FORMATS = (3, 4, 5)
OPSET = 18  # ai.onnx opset of every exported graph
GRAPHS = ("learn", "act")  # the graphs a bundle may hold; the robot runs one of them
# act.onnx is always there; learn.onnx only when the cell has exact RTRL (a cell trained by
# truncated BPTT cannot learn on the robot, so its bundle is act-only: `run --no-learn`).
REQUIRED_GRAPHS = ("act",)
MANIFEST = "manifest.json"
NEXT_SUFFIX = ".next"
# Inputs of a step graph named ``prep.<...>`` are computed by its prepare graph (`PrepareSpec`)
# from the state; they are neither carried nor stored in the state file or a checkpoint.
PREP_PREFIX = "prep."
STATE_FILE = "state.npz"

# What each group of carried tensors holds (docs/bundle.md repeats this table).
STATE_GROUPS = {
    "params": "learnable parameters, (in, out) layout",
    "elig_v": "critic eligibility traces, one per critic parameter",
    "elig_pi": "actor eligibility traces, one per actor parameter",
    "elig": "eligibility traces of a single-head learner (td)",
    "opt": "optimizer state (e.g. Adam moments)",
    "norm": "running observation normaliser and reward scaler statistics",
    "carry": "recurrent state of the cell and the learner's one-step memory",
    "trace": "RTRL traces of the cell (learn graph only)",
}

# Per-step inputs: what the robot loop fills each one with.
INPUT_SOURCES = {
    "obs": "the raw observation vector from the robot (the graph normalises it)",
    "reward": "the reward (or cumulant) of the transition that led to obs; 0 on a first tick",
    "first": "1.0 when obs is the first observation of an episode, else 0.0",
    "terminal": "1.0 when obs is a terminal state (its value is 0 for bootstrapping)",
    "noise": "exploration noise drawn every tick from the manifest's noise distribution",
}
# Per-step outputs: what the robot loop does with each one.
OUTPUT_USES = {
    "action": "sent to the robot after clamping (exactly one output has this use, or none "
    "when one has use 'prediction')",
    "prediction": "sent to the robot as PREDICTION; the robot's own controller acts (a graph "
    "without an action output has exactly one output with this use)",
    "check": "must be finite, or the tick counts as a bad update (learn graph)",
    "report": "shown in the live line and summary only",
}
NOISE_DISTRIBUTIONS = ("normal", "gumbel")
ACTION_KINDS = ("discrete", "continuous")
DTYPES = frozenset(
    "float32 float64 float16 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool".split()
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$")
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_NAMES = 100_000  # no real bundle has this many tensors; a bigger list is refused
FIX = "Re-copy the bundle from the workstation or re-export it with `rtu-edge export`."


class ContractError(ValueError):
    """A manifest or a declaration breaks the contract; the message names the field."""


# ---- the naming rule -----------------------------------------------------------------------


def next_name(name: str) -> str:
    """The output that carries input ``name`` to the next step."""
    return name + NEXT_SUFFIX


def carried_names(inputs: Sequence[str], outputs: Sequence[str]) -> list[str]:
    """Inputs ``X`` that have an output ``X.next``, in input order."""
    out = set(outputs)
    return [n for n in inputs if next_name(n) in out]


# ---- packed state: several tensors in one flat buffer -------------------------------------------


@dataclass(frozen=True)
class PackedTensor:
    """One tensor inside a packed buffer: its own state name, where it starts, its shape."""

    name: str  # e.g. "params.enc.w"
    offset: int  # index of its first element in the buffer
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class PackedBuffer:
    """A 1-D state tensor (e.g. ``params.flat``) holding several tensors back to back, each
    flattened in C order. A graph reads and writes the buffer; checkpoints and tools name the
    tensors inside it with `unpack_state`. (One buffer costs one binding and one elementwise
    op where separate tensors cost one each: the exported step is dispatch-bound.)"""

    name: str
    tensors: tuple[PackedTensor, ...]

    @property
    def size(self) -> int:
        return sum(t.size for t in self.tensors)

    @classmethod
    def of(cls, name: str, shapes: Sequence[tuple[str, Sequence[int]]]) -> PackedBuffer:
        """The buffer `name` holding `(tensor name, shape)` in that order, offsets computed."""
        tensors, offset = [], 0
        for tname, shape in shapes:
            t = PackedTensor(tname, offset, tuple(int(d) for d in shape))
            tensors.append(t)
            offset += t.size
        return cls(name, tuple(tensors))


def pack_state(state: Mapping[str, np.ndarray], packing: Sequence[PackedBuffer]) -> dict:
    """``state`` with the tensors of every buffer in `packing` replaced by the buffer."""
    out = dict(state)
    for buf in packing:
        parts = [np.asarray(out.pop(t.name)).reshape(-1) for t in buf.tensors]
        out[buf.name] = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return out


def unpack_state(state: Mapping[str, np.ndarray], packing: Sequence[PackedBuffer]) -> dict:
    """``state`` with every packed buffer replaced by the tensors it holds (copies), by name."""
    out = dict(state)
    for buf in packing:
        flat = np.asarray(out.pop(buf.name))
        if flat.shape != (buf.size,):
            raise ContractError(
                f"packed buffer {buf.name!r} has shape {list(flat.shape)}, its layout says "
                f"[{buf.size}]. {FIX}"
            )
        for t in buf.tensors:
            out[t.name] = flat[t.offset : t.offset + t.size].reshape(t.shape).copy()
    return out


def packed_tensors(packing: Sequence[PackedBuffer]) -> dict[str, tuple[str, PackedTensor]]:
    """Every tensor inside the packed buffers: name -> (buffer name, its place)."""
    return {t.name: (b.name, t) for b in packing for t in b.tensors}


def view_inputs(
    names: Sequence[str], packing: Sequence[PackedBuffer]
) -> dict[str, tuple[str, PackedTensor]]:
    """The *views* among a graph's state-fed inputs `names`: tensors inside a packed buffer that
    the same graph also reads (format 5), name -> (buffer name, its place). A view is not
    state: the runtime binds it to the part of the buffer's current value that holds it, so
    it changes when the buffer does (the learn step reads ``params.enc.w`` and writes
    ``params.flat.next``; next tick ``params.enc.w`` is the updated part). A tensor inside a
    buffer that the graph does not read (act.onnx reads ``params.enc.w`` without
    ``params.flat``) is a constant input, fed a copy (`graph_state`)."""
    read = set(names)
    return {
        n: (buf, t) for n, (buf, t) in packed_tensors(packing).items() if n in read and buf in read
    }


def format_needed(graphs: Mapping[str, GraphSpec], packing: Sequence[PackedBuffer]) -> int:
    """The lowest format version that describes a bundle of these graphs and packing (what
    export writes, so a runtime that predates a feature can still load a bundle without it):
    5 when a graph reads views (`view_inputs`), 4 when a graph has a prepare graph, else 3."""
    if any(view_inputs([s.name for s in g.inputs], packing) for g in graphs.values()):
        return 5
    if any(g.prepare is not None for g in graphs.values()):
        return 4
    return 3


def graph_state(
    state: Mapping[str, np.ndarray], names: Sequence[str], packing: Sequence[PackedBuffer]
) -> dict[str, np.ndarray]:
    """The state-fed inputs `names` of a graph: each from ``state``, or, for a tensor inside a
    packed buffer (a graph may read one by its own name, e.g. act.onnx reads params.enc.w
    without the rest of params.flat), a copy of its part of the buffer. (What one plain
    ``session.run`` is fed; a `StepRunner` binds the `view_inputs` among them instead.)"""
    inside = packed_tensors(packing)
    out = {}
    for n in names:
        if n in state:
            out[n] = state[n]
        elif n in inside:
            buf, t = inside[n]
            out[n] = np.asarray(state[buf])[t.offset : t.offset + t.size].reshape(t.shape).copy()
        else:
            raise ContractError(f"the state has no tensor {n!r} (nor a packed buffer holding it)")
    return out


# ---- step I/O declarations -------------------------------------------------------------------


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, numpy dtype name, static shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class StepInput:
    """A per-step input a learner declares: what it is and where the robot loop gets it."""

    name: str  # graph input name
    source: str  # one of INPUT_SOURCES
    shape: tuple[int, ...]
    meaning: str
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.source not in INPUT_SOURCES:
            raise ContractError(
                f"step input {self.name!r}: unknown source {self.source!r}; "
                f"choose one of {sorted(INPUT_SOURCES)}"
            )


@dataclass(frozen=True)
class StepOutput:
    """A per-step output a learner declares, and what the robot loop does with it."""

    name: str
    use: str  # one of OUTPUT_USES
    shape: tuple[int, ...]
    meaning: str
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.use not in OUTPUT_USES:
            raise ContractError(
                f"step output {self.name!r}: unknown use {self.use!r}; "
                f"choose one of {sorted(OUTPUT_USES)}"
            )


# ---- shared rules: noise and actions --------------------------------------------------------


@dataclass(frozen=True)
class NoiseSpec:
    """Exploration noise: one draw of `size` values per tick."""

    distribution: str  # "normal" (Gaussian policies) or "gumbel" (categorical, Gumbel-max)
    size: int


def sample_noise(spec: NoiseSpec, rng: np.random.Generator) -> np.ndarray:
    """One tick of exploration noise, (1, size) float32: standard normal or standard Gumbel."""
    shape = (1, spec.size)
    if spec.distribution == "normal":
        return rng.standard_normal(shape).astype(np.float32)
    return rng.gumbel(size=shape).astype(np.float32)


@dataclass(frozen=True)
class ActionSpec:
    """The actuator: kind, sizes, limits, the safe action and the per-tick change cap."""

    kind: str  # "discrete" | "continuous"
    dims: int  # continuous: vector length; discrete: 1
    num_actions: int  # discrete: number of actions; continuous: 0
    low: tuple[float, ...]  # per dim; discrete: (0.0,)
    high: tuple[float, ...]  # per dim; discrete: (num_actions - 1,)
    safe: tuple[float, ...]  # what the robot holds when the controller is gone
    max_delta: tuple[float, ...] | None = None  # cap on |a_t - a_{t-1}| per dim; None: no cap

    def to_actuator(self, action) -> np.ndarray:
        """The graph's action as the actuator takes it, (dims,) float32.

        Discrete: the index rounded (ties to even) and clipped to [0, num_actions - 1].
        Continuous: clipped to [low, high]. A non-finite action becomes the safe action.
        The training loop, the parity check, the host and the simulated robot all use this.
        """
        a = np.asarray(action, dtype=np.float32).reshape(-1)[: self.dims]
        if a.shape != (self.dims,) or not np.isfinite(a).all():
            return np.asarray(self.safe, np.float32).copy()
        if self.kind == "discrete":
            return np.clip(np.round(a), 0, self.num_actions - 1).astype(np.float32)
        return np.clip(a, np.asarray(self.low, np.float32), np.asarray(self.high, np.float32))


# ---- the manifest -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareSpec:
    """The graph that computes a step graph's ``prep.*`` inputs from the state (format 4).

    Its inputs are state tensors (a tensor inside a packed buffer by its own name, as a step
    graph reads it) and its outputs exactly the step graph's ``prep.*`` inputs. They depend on
    the state alone, so the runtime computes them once for each state it loads, not on every
    tick: an act graph's parameters do not change while it runs, and what it derives from them
    (an RTU's lam and gamma, the observation std) need not be recomputed per tick.
    """

    file: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class GraphSpec:
    file: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    step_inputs: tuple[StepInput, ...]  # the inputs that are not read from the state
    step_outputs: tuple[StepOutput, ...]  # the outputs that are not X.next of a carried X
    prepare: PrepareSpec | None = None  # computes the ``prep.*`` inputs (None: there are none)

    def output_with_use(self, use: str) -> list[StepOutput]:
        return [o for o in self.step_outputs if o.use == use]

    @property
    def predicts(self) -> bool:
        """Prediction mode: the graph answers each OBS with PREDICTION instead of ACTION."""
        return bool(self.output_with_use("prediction")) and not self.output_with_use("action")


@dataclass(frozen=True)
class Manifest:
    """manifest.json, typed. Build with `from_json` (checks everything) or directly (export)."""

    format_version: int
    created_utc: str
    rtu_edge_version: str
    env_id: str
    learner: str  # `--algo` the bundle was trained with (the robot runs its streaming step)
    cell: str  # `--cell`
    observation_size: int
    observation_clip: float
    action: ActionSpec
    noise: NoiseSpec | None  # None: the learn graph takes no noise (e.g. td)
    graphs: dict[str, GraphSpec]
    state_file: str
    state_names: tuple[str, ...]
    files: dict[str, str]  # file name -> SHA-256 hex
    protocol_version: int
    schema_hash: int
    hyperparameters: dict = field(default_factory=dict)  # recorded once, free-form
    parity: dict | None = None  # the export's parity report
    # the cells that can learn on the robot with the exporting rtu-edge (named in the robot's
    # message when an act-only bundle is asked to learn; the robot side has no cell registry)
    rtrl_cells: tuple[str, ...] = ()
    # state tensors that hold several tensors each (format 3), in state_names; `unpack_state`
    # with these names every tensor inside them (a checkpoint of a packed state included)
    packing: tuple[PackedBuffer, ...] = ()

    @property
    def learns(self) -> bool:
        """Whether the bundle can keep learning on the robot (it holds learn.onnx)."""
        return "learn" in self.graphs

    # -- writing ------------------------------------------------------------------------

    def to_json(self) -> dict:
        def io(specs) -> list[dict]:
            return [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in specs]

        return {
            "format_version": self.format_version,
            "created_utc": self.created_utc,
            "rtu_edge_version": self.rtu_edge_version,
            "env_id": self.env_id,
            "learner": self.learner,
            "cell": self.cell,
            "observation": {
                "size": self.observation_size,
                "dtype": "float32",
                "clip": self.observation_clip,
            },
            "action": {
                "kind": self.action.kind,
                "dims": self.action.dims,
                "num_actions": self.action.num_actions,
                "low": list(self.action.low),
                "high": list(self.action.high),
                "safe": list(self.action.safe),
                "max_delta": None if self.action.max_delta is None else list(self.action.max_delta),
            },
            "noise": None if self.noise is None else asdict(self.noise),
            "hyperparameters": self.hyperparameters,
            "protocol": {
                "version": self.protocol_version,
                "schema_hash": f"0x{self.schema_hash:08x}",
            },
            "graphs": {
                name: {
                    "file": g.file,
                    "opset": g.opset,
                    "inputs": io(g.inputs),
                    "outputs": io(g.outputs),
                    "step_inputs": [
                        {"name": s.name, "source": s.source, "meaning": s.meaning}
                        for s in g.step_inputs
                    ],
                    "step_outputs": [
                        {"name": s.name, "use": s.use, "meaning": s.meaning} for s in g.step_outputs
                    ],
                }
                | (
                    {}
                    if g.prepare is None
                    else {
                        "prepare": {
                            "file": g.prepare.file,
                            "opset": g.prepare.opset,
                            "inputs": io(g.prepare.inputs),
                            "outputs": io(g.prepare.outputs),
                        }
                    }
                )
                for name, g in self.graphs.items()
            },
            "state": {
                "file": self.state_file,
                "names": list(self.state_names),
                "packed": {
                    b.name: [
                        {"name": t.name, "offset": t.offset, "shape": list(t.shape)}
                        for t in b.tensors
                    ]
                    for b in self.packing
                },
            },
            "parity": self.parity,
            "files": dict(self.files),
            "rtrl_cells": list(self.rtrl_cells),
        }

    # -- reading ------------------------------------------------------------------------

    @classmethod
    def from_json(cls, obj: object, where: str = MANIFEST) -> Manifest:
        """Check every field of a parsed manifest.json; raise ContractError naming the field."""
        r = _Reader(where)
        m = r.obj(obj, "the manifest")
        version = r.int_(m, "format_version")
        if version not in READABLE_FORMATS:
            older = (
                " (format 2 carries every parameter and eligibility trace as a tensor of its "
                "own; format 3 packs them into flat buffers, state.packed)"
                if version == 2
                else ""
            )
            raise ContractError(
                f"{where} has format_version {version}; this rtu-edge reads format versions "
                f"{', '.join(map(str, READABLE_FORMATS))} only{older}. Export the bundle with "
                "the rtu-edge version installed on the robot, or install the matching rtu-edge "
                "here."
            )
        obs = r.obj(r.get(m, "observation"), "observation")
        obs_size = r.int_(obs, "size", lo=1, ctx="observation")
        if r.str_(obs, "dtype", ctx="observation") != "float32":
            raise r.bad("observation.dtype must be 'float32'")
        obs_clip = r.float_(obs, "clip", ctx="observation", positive=True)
        action = _read_action(r, r.obj(r.get(m, "action"), "action"))
        noise = None
        if m.get("noise") is not None:
            n = r.obj(m["noise"], "noise")
            dist = r.str_(n, "distribution", ctx="noise")
            if dist not in NOISE_DISTRIBUTIONS:
                raise r.bad(
                    f"noise.distribution must be one of {NOISE_DISTRIBUTIONS}, got {dist!r}"
                )
            noise = NoiseSpec(dist, r.int_(n, "size", lo=1, ctx="noise"))
        proto = r.obj(r.get(m, "protocol"), "protocol")
        schema = r.str_(proto, "schema_hash", ctx="protocol")
        if not re.fullmatch(r"0x[0-9a-fA-F]{1,8}", schema):
            raise r.bad(
                f"protocol.schema_hash must be a hex string like 0x1234abcd, got {schema!r}"
            )

        files_in = r.obj(r.get(m, "files"), "files")
        if not files_in:
            raise r.bad("'files' must map each bundle file to its SHA-256")
        files = {}
        for name, digest in files_in.items():
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise r.bad(f"files[{name!r}] must be a lowercase hex SHA-256, got {digest!r}")
            files[name] = digest

        graphs_in = r.obj(r.get(m, "graphs"), "graphs")
        if not set(REQUIRED_GRAPHS) <= set(graphs_in) <= set(GRAPHS):
            raise r.bad(
                f"'graphs' must describe {list(REQUIRED_GRAPHS)} and may add 'learn'; "
                f"got {sorted(graphs_in)}"
            )
        graphs = {g: _read_graph(r, g, graphs_in[g]) for g in GRAPHS if g in graphs_in}

        state = r.obj(r.get(m, "state"), "state")
        state_file = r.str_(state, "file", ctx="state")
        names = r.get(state, "names", ctx="state")
        if not isinstance(names, list) or len(names) > MAX_NAMES:
            raise r.bad(f"state.names must be a list of at most {MAX_NAMES} tensor names")
        for n in names:
            if not isinstance(n, str) or not _NAME.match(n):
                raise r.bad(f"state.names holds an invalid tensor name {n!r}")
        if len(set(names)) != len(names):
            raise r.bad("state.names lists a name twice")
        packing = _read_packing(r, state.get("packed", {}), names)

        if version < 4 and any(g.prepare is not None for g in graphs.values()):
            raise r.bad("a prepare graph needs format_version 4 or later")
        for gname, g in graphs.items():
            views = view_inputs([s.name for s in g.inputs], packing)
            if version < 5 and views:
                raise r.bad(
                    f"graphs.{gname} reads {sorted(views)[:3]} inside packed buffers it also "
                    "reads (views of the buffer), which need format_version 5 or later"
                )
        used = [g.file for g in graphs.values()]
        used += [g.prepare.file for g in graphs.values() if g.prepare is not None]
        used += [state_file]
        if len(set(used)) != len(used):
            raise r.bad(f"graphs and state must use distinct files, got {used}")
        unhashed = [f for f in used if f not in files]
        if unhashed:
            raise r.bad(f"{unhashed} are used but have no SHA-256 in 'files'")
        unused = sorted(set(files) - set(used))
        if unused:
            raise r.bad(
                f"'files' lists {unused}, which no graph or state uses; a bundle holds only its "
                "graphs and its state file (ONNX external data is not supported)"
            )
        hyper = m.get("hyperparameters", {})
        if not isinstance(hyper, dict):
            raise r.bad("'hyperparameters' must be an object")
        parity = m.get("parity")
        if parity is not None and not isinstance(parity, dict):
            raise r.bad("'parity' must be an object or null")
        rtrl = m.get("rtrl_cells", [])
        if (
            not isinstance(rtrl, list)
            or not all(isinstance(c, str) for c in rtrl)
            or len(rtrl) > 100
        ):
            raise r.bad("'rtrl_cells' must be a list of cell names")
        return cls(
            format_version=version,
            created_utc=r.str_(m, "created_utc"),
            rtu_edge_version=r.str_(m, "rtu_edge_version"),
            env_id=r.str_(m, "env_id"),
            learner=r.str_(m, "learner"),
            cell=r.str_(m, "cell"),
            observation_size=obs_size,
            observation_clip=obs_clip,
            action=action,
            noise=noise,
            graphs=graphs,
            state_file=state_file,
            state_names=tuple(names),
            files=files,
            protocol_version=r.int_(proto, "version", lo=0, ctx="protocol"),
            schema_hash=int(schema, 16),
            hyperparameters=hyper,
            parity=parity,
            rtrl_cells=tuple(rtrl),
            packing=packing,
        )

    def check_step_io(self) -> None:
        """Cross-field rules: step I/O against graph I/O, action and noise against the specs."""
        modes = {g.predicts for g in self.graphs.values()}
        if len(modes) > 1:
            raise ContractError(
                f"{MANIFEST}: every graph must be in the same mode: all with an 'action' output "
                f"or all with a 'prediction' output and no action. {FIX}"
            )
        for gname, g in self.graphs.items():
            where = f"graphs.{gname}"
            in_specs = {s.name: s for s in g.inputs}
            out_specs = {s.name: s for s in g.outputs}
            carried = set(carried_names(list(in_specs), list(out_specs)))
            declared_in = {s.name for s in g.step_inputs}
            held = set(self.state_names) | set(packed_tensors(self.packing))
            self._check_prepare(where, g, in_specs, held)
            self._check_views(where, in_specs, self.packing)
            held |= {s.name for s in g.prepare.outputs} if g.prepare is not None else set()
            expected_in = {n for n in in_specs if n not in held}
            if declared_in != expected_in:
                raise ContractError(
                    f"{MANIFEST}: {where}.step_inputs declares {sorted(declared_in)} but the graph's "
                    f"inputs not held in the state are {sorted(expected_in)}. {FIX}"
                )
            for s in g.step_inputs:
                spec = in_specs[s.name]
                if spec.dtype != "float32":
                    raise ContractError(
                        f"{MANIFEST}: {where}: step input {s.name!r} must be float32"
                    )
                if s.source == "obs" and spec.shape != (1, self.observation_size):
                    raise ContractError(
                        f"{MANIFEST}: {where}: the obs input {s.name!r} has shape {list(spec.shape)},"
                        f" observation.size says (1, {self.observation_size}). {FIX}"
                    )
                if s.source == "noise":
                    if self.noise is None or spec.shape != (1, self.noise.size):
                        raise ContractError(
                            f"{MANIFEST}: {where}: noise input {s.name!r} has shape "
                            f"{list(spec.shape)} but 'noise' is {self.noise}. {FIX}"
                        )
                elif s.source in ("reward", "first", "terminal") and spec.shape != (1,):
                    raise ContractError(
                        f"{MANIFEST}: {where}: input {s.name!r} ({s.source}) must have shape [1]"
                    )
            sources = [s.source for s in g.step_inputs]
            if "obs" not in sources:
                raise ContractError(f"{MANIFEST}: {where} declares no obs input. {FIX}")
            dup = sorted({s for s in sources if sources.count(s) > 1})
            if dup:
                raise ContractError(f"{MANIFEST}: {where} declares sources {dup} twice. {FIX}")
            declared_out = {s.name for s in g.step_outputs}
            expected_out = {
                n
                for n in out_specs
                if not (n.endswith(NEXT_SUFFIX) and n[: -len(NEXT_SUFFIX)] in carried)
            }
            if declared_out != expected_out:
                raise ContractError(
                    f"{MANIFEST}: {where}.step_outputs declares {sorted(declared_out)} but the "
                    f"graph's non-carried outputs are {sorted(expected_out)}. {FIX}"
                )
            actions = g.output_with_use("action")
            predictions = g.output_with_use("prediction")
            if not actions and len(predictions) == 1:  # prediction mode: the robot acts
                p_shape = out_specs[predictions[0].name].shape
                if not p_shape or math.prod(p_shape) < 1:
                    raise ContractError(
                        f"{MANIFEST}: {where}: the prediction output has shape {list(p_shape)}; "
                        f"it must hold at least one value. {FIX}"
                    )
                continue
            if len(actions) != 1 or predictions:
                raise ContractError(
                    f"{MANIFEST}: {where} must declare exactly one output with use 'action', or "
                    "none and exactly one with use 'prediction' (the robot's own controller "
                    f"acts); it declares {len(actions)} action and {len(predictions)} "
                    "prediction outputs"
                )
            a_shape = out_specs[actions[0].name].shape
            if a_shape != (1, self.action.dims):
                raise ContractError(
                    f"{MANIFEST}: {where}: the action output has shape {list(a_shape)}, "
                    f"action.dims says (1, {self.action.dims}). {FIX}"
                )

    @staticmethod
    def _check_views(where: str, in_specs: dict, packing: Sequence[PackedBuffer]) -> None:
        """A view input has the shape of its part of the buffer and the buffer's dtype."""
        sizes = {b.name: b.size for b in packing}
        for name, (buf, t) in view_inputs(list(in_specs), packing).items():
            spec, whole = in_specs[name], in_specs[buf]
            if spec.shape != t.shape or spec.dtype != whole.dtype or whole.shape != (sizes[buf],):
                raise ContractError(
                    f"{MANIFEST}: {where} reads {name!r} as {spec.dtype}{list(spec.shape)}, a "
                    f"view of {buf!r} ({whole.dtype}{list(whole.shape)}) where state.packed "
                    f"puts a {list(t.shape)} part. {FIX}"
                )

    @staticmethod
    def _check_prepare(where: str, g: GraphSpec, in_specs: dict, held: set) -> None:
        """The ``prep.*`` inputs of a step graph are exactly its prepare graph's outputs (same
        dtype and shape), and the prepare graph reads the state only."""
        prep_in = {n: s for n, s in in_specs.items() if n.startswith(PREP_PREFIX)}
        if g.prepare is None:
            if prep_in:
                raise ContractError(
                    f"{MANIFEST}: {where} reads {sorted(prep_in)} but has no prepare graph to "
                    f"compute them. {FIX}"
                )
            return
        outs = {s.name: s for s in g.prepare.outputs}
        if set(outs) != set(prep_in) or any(outs[n] != prep_in[n] for n in outs):
            raise ContractError(
                f"{MANIFEST}: {where}.prepare outputs {sorted(outs)} but the graph reads "
                f"{sorted(prep_in)} (names, dtypes and shapes must match). {FIX}"
            )
        unheld = sorted(s.name for s in g.prepare.inputs if s.name not in held)
        if unheld:
            raise ContractError(
                f"{MANIFEST}: {where}.prepare reads {unheld}, which the state does not hold "
                f"(a prepare graph reads the state only). {FIX}"
            )


# ---- field readers ------------------------------------------------------------------------------


class _Reader:
    """Typed field access with messages that name the field (`where` names the file)."""

    _MISSING = object()

    def __init__(self, where: str):
        self.where = where

    def bad(self, msg: str) -> ContractError:
        return ContractError(f"{self.where}: {msg}. {FIX}")

    def get(self, obj: Mapping, key: str, ctx: str | None = None):
        value = obj.get(key, self._MISSING)
        if value is self._MISSING:
            raise self.bad(f"missing field '{f'{ctx}.' if ctx else ''}{key}'")
        return value

    def obj(self, value, what: str) -> dict:
        if not isinstance(value, dict):
            raise self.bad(f"{what} must be a JSON object, got {type(value).__name__}")
        return value

    def int_(self, obj, key, lo: int | None = None, ctx: str | None = None) -> int:
        v = self.get(obj, key, ctx)
        name = f"{ctx}.{key}" if ctx else key
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.bad(f"{name} must be an integer, got {v!r}")
        if lo is not None and v < lo:
            raise self.bad(f"{name} must be >= {lo}, got {v}")
        return v

    def float_(self, obj, key, ctx: str | None = None, positive: bool = False) -> float:
        v = self.get(obj, key, ctx)
        name = f"{ctx}.{key}" if ctx else key
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.bad(f"{name} must be a finite number, got {v!r}")
        if abs(v) > FLOAT32_MAX:
            raise self.bad(f"{name} must be a finite float32, got {v!r}")
        if positive and v <= 0:
            raise self.bad(f"{name} must be > 0, got {v}")
        return float(v)

    def str_(self, obj, key, ctx: str | None = None) -> str:
        v = self.get(obj, key, ctx)
        if not isinstance(v, str):
            raise self.bad(f"{f'{ctx}.' if ctx else ''}{key} must be a string, got {v!r}")
        return v

    def floats(self, obj, key, n: int, ctx: str) -> tuple[float, ...]:
        v = self.get(obj, key, ctx)
        ok = isinstance(v, list) and len(v) == n
        ok = ok and all(
            isinstance(x, (int, float))
            and not isinstance(x, bool)
            and math.isfinite(x)
            and abs(x) <= FLOAT32_MAX
            for x in v
        )
        if not ok:
            raise self.bad(f"{ctx}.{key} must be a list of {n} finite numbers, got {v!r}")
        return tuple(float(x) for x in v)


def _read_action(r: _Reader, a: dict) -> ActionSpec:
    kind = r.str_(a, "kind", ctx="action")
    if kind not in ACTION_KINDS:
        raise r.bad(f"action.kind must be one of {ACTION_KINDS}, got {kind!r}")
    dims = r.int_(a, "dims", lo=1, ctx="action")
    num = r.int_(a, "num_actions", lo=0, ctx="action")
    if kind == "discrete" and (dims != 1 or num < 2):
        raise r.bad(f"a discrete action has dims 1 and num_actions >= 2, got {dims} and {num}")
    low = r.floats(a, "low", dims, "action")
    high = r.floats(a, "high", dims, "action")
    safe = r.floats(a, "safe", dims, "action")
    for i in range(dims):
        if low[i] > high[i]:
            raise r.bad(f"action.low[{i}] = {low[i]} is above action.high[{i}] = {high[i]}")
        if not low[i] <= safe[i] <= high[i]:
            raise r.bad(f"action.safe[{i}] = {safe[i]} lies outside [{low[i]}, {high[i]}]")
    if kind == "discrete":
        if (low[0], high[0]) != (0.0, float(num - 1)):
            raise r.bad(f"a discrete action's limits are [0, {num - 1}], got [{low[0]}, {high[0]}]")
        if safe[0] != round(safe[0]):
            raise r.bad(f"a discrete safe action must be an index, got {safe[0]}")
    max_delta = None
    if a.get("max_delta") is not None:
        max_delta = r.floats(a, "max_delta", dims, "action")
        if any(d <= 0 for d in max_delta):
            raise r.bad(
                f"action.max_delta must be positive per dim (or null), got {list(max_delta)}"
            )
    return ActionSpec(kind, dims, num, low, high, safe, max_delta)


def _read_packing(r: _Reader, packed, names: list[str]) -> tuple[PackedBuffer, ...]:
    """state.packed: {buffer name: [{name, offset, shape}, ...]}, each buffer a state tensor
    and its tensors back to back from offset 0, every name unique."""
    if not isinstance(packed, dict) or len(packed) > MAX_NAMES:
        raise r.bad("state.packed must be an object: packed buffer -> the tensors it holds")
    seen = set(names)
    out = []
    for bname, entries in packed.items():
        where = f"state.packed[{bname!r}]"
        if bname not in names:
            raise r.bad(f"{where}: the buffer is not in state.names")
        if not isinstance(entries, list) or not entries or len(entries) > MAX_NAMES:
            raise r.bad(f"{where} must be a non-empty list of tensors")
        tensors, offset = [], 0
        for e in entries:
            e = r.obj(e, f"each entry of {where}")
            name, off, shape = e.get("name"), e.get("offset"), e.get("shape")
            if not isinstance(name, str) or not _NAME.match(name) or name in seen:
                raise r.bad(f"{where}: invalid or repeated tensor name {name!r}")
            if not (
                isinstance(shape, list)
                and len(shape) <= 8
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            ):
                raise r.bad(f"{where}: {name!r} shape must be a list of non-negative ints")
            if isinstance(off, bool) or off != offset:
                raise r.bad(f"{where}: {name!r} must start at offset {offset}, got {off!r}")
            t = PackedTensor(name, offset, tuple(shape))
            seen.add(name)
            tensors.append(t)
            offset += t.size
        out.append(PackedBuffer(bname, tuple(tensors)))
    return tuple(out)


def _read_specs(r: _Reader, items, where: str) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list) or not items or len(items) > MAX_NAMES:
        raise r.bad(f"{where} must be a non-empty list")
    specs = []
    for item in items:
        item = r.obj(item, f"each entry of {where}")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise r.bad(f"{where}: invalid tensor name {name!r}")
        dtype, shape = item.get("dtype"), item.get("shape")
        if dtype not in DTYPES:
            raise r.bad(f"{where}: {name!r} has unsupported dtype {dtype!r}")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 31 for d in shape
            )
        ):
            raise r.bad(
                f"{where}: {name!r} shape must be a list of non-negative ints, got {shape!r}"
            )
        specs.append(TensorSpec(name, dtype, tuple(shape)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise r.bad(f"{where} lists a name twice")
    return tuple(specs)


def _read_graph(r: _Reader, gname: str, entry) -> GraphSpec:
    where = f"graphs.{gname}"
    entry = r.obj(entry, where)
    file = r.str_(entry, "file", ctx=where)
    opset = r.int_(entry, "opset", lo=1, ctx=where)
    inputs = _read_specs(r, r.get(entry, "inputs", where), f"{where}.inputs")
    outputs = _read_specs(r, r.get(entry, "outputs", where), f"{where}.outputs")
    in_shapes = {s.name: s.shape for s in inputs}
    out_shapes = {s.name: s.shape for s in outputs}

    def items(key: str, kind: str, build: Callable):
        raw = r.get(entry, key, where)
        if not isinstance(raw, list):
            raise r.bad(f"{where}.{key} must be a list")
        out = []
        for item in raw:
            item = r.obj(item, f"each entry of {where}.{key}")
            name = r.str_(item, "name", ctx=f"{where}.{key}")
            shapes, side = (in_shapes, "input") if kind == "source" else (out_shapes, "output")
            if name not in shapes:
                raise r.bad(f"{where}.{key}: {name!r} is not a graph {side}")
            tag = r.str_(item, kind, ctx=f"{where}.{key}")
            meaning = item.get("meaning", "")
            try:
                out.append(build(name, tag, shapes[name], str(meaning)))
            except ContractError as e:
                raise r.bad(f"{where}.{key}: {e}") from None
        return tuple(out)

    prepare = None
    if entry.get("prepare") is not None:
        pw = f"{where}.prepare"
        p = r.obj(entry["prepare"], pw)
        prepare = PrepareSpec(
            file=r.str_(p, "file", ctx=pw),
            opset=r.int_(p, "opset", lo=1, ctx=pw),
            inputs=_read_specs(r, r.get(p, "inputs", pw), f"{pw}.inputs"),
            outputs=_read_specs(r, r.get(p, "outputs", pw), f"{pw}.outputs"),
        )
    return GraphSpec(
        file=file,
        opset=opset,
        inputs=inputs,
        outputs=outputs,
        step_inputs=items("step_inputs", "source", StepInput),
        step_outputs=items("step_outputs", "use", StepOutput),
        prepare=prepare,
    )
