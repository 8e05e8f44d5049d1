"""Load an exported bundle (docs/bundle.md, format version 1) on the robot.

Loading is running code, so nothing is parsed until it is known to be the exported bytes:

1. ``manifest.json`` is read (it must be a regular file inside the bundle directory) and its
   ``format_version`` checked.
2. Every file in ``files`` must name a path inside the bundle directory (no ``..``, no absolute
   path, no symlink that resolves outside it) and is read into memory and hashed; a SHA-256
   mismatch refuses the bundle before any file is parsed. The graphs and the state are parsed
   from those same in-memory bytes, so the file cannot change between check and use.
3. Each ONNX graph is scanned for external-data references (see below), then an
   onnxruntime session is built from the bytes and its inputs and outputs are compared with the
   manifest (names, dtypes, shapes). ``state.npz`` is loaded with ``allow_pickle=False`` and
   checked against the manifest and the graphs.

External data. A bundle holds exactly the files the manifest uses (``learn.onnx``,
``act.onnx``, ``state.npz``); every tensor must live inside its .onnx file. Without the
``onnx`` package, ``_scan_onnx`` walks the protobuf wire format of the model (graphs,
subgraphs in node attributes, functions, training info) and rejects any TensorProto with
``data_location = EXTERNAL`` or an ``external_data`` entry, naming the tensor and its
``location``. This scan is needed: onnxruntime 1.32 given model *bytes* still resolves
external data, relative to the process's working directory.

Robot path: imports onnxruntime, numpy and the standard library only (no torch, no onnx).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnxruntime as ort

from firmware_bridge.runtime import (
    NEXT_SUFFIX,
    StepRunner,
    make_session,
    numpy_dtype,
)

__all__ = [
    "FORMAT_VERSION",
    "GRAPHS",
    "STEP_INPUTS",
    "Bundle",
    "BundleError",
    "TensorSpec",
    "load_bundle",
]

FORMAT_VERSION = 1  # the only bundle format this loader reads
GRAPHS = ("learn", "act")  # graphs every format-1 bundle holds
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB; refuse to slurp something absurd
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DTYPES = frozenset(
    "float32 float64 float16 int8 int16 int32 int64 uint8 uint16 uint32 uint64 bool".split()
)
# Per-step inputs a graph may read besides state tensors (docs/bundle.md).
STEP_INPUTS = ("obs", "reward", "first", "terminal", "noise")
_FIX = "Re-copy the bundle from the workstation or re-export it with `rtu-edge export`."


class BundleError(Exception):
    """The bundle cannot be used; the message says which file or tensor and what to do."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as the manifest declares it."""

    name: str
    dtype: str  # numpy dtype name, e.g. "float32"
    shape: tuple[int, ...]


class Bundle:
    """A verified bundle: manifest, one onnxruntime session per graph, and the initial state."""

    def __init__(
        self,
        path: Path,
        manifest: dict,
        fingerprint: str,
        sessions: dict[str, ort.InferenceSession],
        state: dict[str, np.ndarray],
    ) -> None:
        self.path = path  # the bundle directory, resolved
        self.manifest = manifest  # manifest.json as parsed
        self.fingerprint = fingerprint  # SHA-256 of manifest.json: names this exact bundle
        self._sessions = sessions
        self._state = state

    @property
    def graph_names(self) -> tuple[str, ...]:
        return tuple(self._sessions)

    def session(self, name: str) -> ort.InferenceSession:
        """The onnxruntime session of graph ``name`` (``"learn"`` or ``"act"``)."""
        try:
            return self._sessions[name]
        except KeyError:
            raise BundleError(
                f"bundle {self.path} has no graph {name!r}; it has {sorted(self._sessions)}"
            ) from None

    def carried_names(self, graph: str) -> list[str]:
        """Inputs ``X`` of ``graph`` that have an output ``X.next``, in graph input order."""
        session = self.session(graph)
        outputs = {o.name for o in session.get_outputs()}
        return [i.name for i in session.get_inputs() if i.name + NEXT_SUFFIX in outputs]

    def state_input_names(self, graph: str) -> list[str]:
        """Inputs of ``graph`` fed from the state: carried ones and read-only ones (params.*)."""
        return [i.name for i in self.session(graph).get_inputs() if i.name in self._state]

    def step_input_names(self, graph: str) -> list[str]:
        """Per-step inputs of ``graph`` (obs, reward, first, ...): those not held in the state."""
        return [i.name for i in self.session(graph).get_inputs() if i.name not in self._state]

    def initial_state(self) -> dict[str, np.ndarray]:
        """Fresh copies of every tensor in state.npz, keyed by tensor name."""
        return {name: value.copy() for name, value in self._state.items()}

    def runner(self, graph: str, state: Mapping[str, np.ndarray] | None = None) -> StepRunner:
        """A `StepRunner` for ``graph`` fed from ``state`` (default: the initial state).

        Only the tensors ``graph`` reads are taken from ``state``, so the full learner state
        can be passed to the act graph.
        """
        state = self._state if state is None else state
        names = self.state_input_names(graph)
        missing = [n for n in names if n not in state]
        if missing:
            raise BundleError(f"state for graph {graph!r} lacks {sorted(missing)}")
        return StepRunner(self.session(graph), {n: state[n] for n in names})


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Verify and load the bundle directory ``path``; raise `BundleError` if it is unusable."""
    root = Path(path)
    if not root.is_dir():
        raise BundleError(
            f"bundle {root} is not a directory; pass the folder written by `rtu-edge export`."
        )
    root = root.resolve(strict=True)

    manifest_bytes = _read_inside(root, MANIFEST, max_bytes=MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(manifest_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{root / MANIFEST} is not valid JSON ({exc}). {_FIX}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{root / MANIFEST} must hold a JSON object. {_FIX}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise BundleError(
            f"{root / MANIFEST} has format_version {version!r}; this rtu-edge reads format "
            f"version {FORMAT_VERSION} only. Export the bundle with the rtu-edge version "
            "installed on the robot, or install the matching rtu-edge here."
        )
    files, graphs, state_file, state_names = _check_manifest(root, manifest)

    # Containment and hashes of every file, before anything is parsed.
    data: dict[str, bytes] = {}
    for name, expected in files.items():
        blob = _read_inside(root, name)
        actual = hashlib.sha256(blob).hexdigest()
        if actual != expected:
            raise BundleError(
                f"bundle {root} is corrupt: {name} has SHA-256 {actual}, the manifest says "
                f"{expected} (truncated or modified copy; {len(blob)} bytes on disk). "
                f"Nothing was loaded. {_FIX}"
            )
        data[name] = blob

    sessions = {}
    for graph, (file, inputs, outputs, opset) in graphs.items():
        _scan_onnx(data[file], file, opset)
        try:
            session = make_session(data[file])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise BundleError(
                f"onnxruntime could not load graph {graph!r} ({file}): {exc}. {_FIX}"
            ) from None
        _check_io(graph, file, "input", inputs, session.get_inputs())
        _check_io(graph, file, "output", outputs, session.get_outputs())
        sessions[graph] = session

    state = _load_state(data[state_file], state_file, state_names)
    _check_state_against_graphs(state, state_file, graphs)
    fingerprint = hashlib.sha256(manifest_bytes).hexdigest()
    return Bundle(root, manifest, fingerprint, sessions, state)


# -- files -------------------------------------------------------------------------------


def _resolve_inside(root: Path, name: object) -> Path:
    """The real path of bundle file ``name``, which must stay inside ``root``."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise BundleError(f"bundle {root}: invalid file name {name!r} in {MANIFEST}. {_FIX}")
    if "\\" in name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).anchor:
        raise BundleError(
            f"bundle {root}: file {name!r} in {MANIFEST} is an absolute path (or uses "
            "backslashes); bundle files must be plain names inside the bundle directory. "
            "Refusing to read it."
        )
    if ".." in PurePosixPath(name).parts:
        raise BundleError(
            f"bundle {root}: file {name!r} in {MANIFEST} contains '..' and could leave the "
            "bundle directory. Refusing to read it."
        )
    real = Path(os.path.realpath(root / name))
    if root not in real.parents:
        raise BundleError(
            f"bundle {root}: file {name!r} resolves to {real}, outside the bundle directory "
            "(a symlink leaving it). Refusing to read it; copy the real file into the bundle."
        )
    return real


def _read_inside(root: Path, name: str, max_bytes: int | None = None) -> bytes:
    """Read a regular file inside ``root`` without following a final symlink."""
    real = _resolve_inside(root, name)
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError:
        raise BundleError(f"bundle {root} is incomplete: {name} is missing. {_FIX}") from None
    except OSError as exc:
        raise BundleError(f"bundle {root}: cannot open {name}: {exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"bundle {root}: {name} is not a regular file. {_FIX}")
        if max_bytes is not None and info.st_size > max_bytes:
            raise BundleError(
                f"bundle {root}: {name} is {info.st_size} bytes (limit {max_bytes}). {_FIX}"
            )
        return f.read()


# -- manifest ----------------------------------------------------------------------------


def _check_manifest(root: Path, manifest: dict):
    """Structure of the parts the loader uses; returns (files, graphs, state file, names)."""

    def bad(msg: str) -> BundleError:
        return BundleError(f"{root / MANIFEST}: {msg}. {_FIX}")

    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise bad("'files' must map each bundle file to its SHA-256")
    for name, digest in files.items():
        _resolve_inside(root, name)
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise bad(f"files[{name!r}] must be a lowercase hex SHA-256, got {digest!r}")

    graphs_in = manifest.get("graphs")
    if not isinstance(graphs_in, dict) or sorted(graphs_in) != sorted(GRAPHS):
        got = sorted(graphs_in) if isinstance(graphs_in, dict) else graphs_in
        raise bad(f"'graphs' must describe exactly {list(GRAPHS)}, got {got!r}")
    graphs = {}
    for graph in GRAPHS:
        entry = graphs_in[graph]
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise bad(f"graphs.{graph} must have a 'file'")
        opset = entry.get("opset")
        if opset is not None and (not isinstance(opset, int) or isinstance(opset, bool)):
            raise bad(f"graphs.{graph}.opset must be an integer, got {opset!r}")
        specs = {}
        for kind in ("inputs", "outputs"):
            specs[kind] = _parse_specs(entry.get(kind), f"graphs.{graph}.{kind}", bad)
        graphs[graph] = (entry["file"], specs["inputs"], specs["outputs"], opset)

    state = manifest.get("state")
    if not isinstance(state, dict) or not isinstance(state.get("file"), str):
        raise bad("'state' must have a 'file'")
    names = state.get("names")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("state.names must be a list of tensor names")
    if len(set(names)) != len(names):
        raise bad("state.names lists a name twice")

    used = [g[0] for g in graphs.values()] + [state["file"]]
    if len(set(used)) != len(used):
        raise bad(f"graphs and state must use distinct files, got {used}")
    unhashed = [f for f in used if f not in files]
    if unhashed:
        raise bad(f"{unhashed} are used but have no SHA-256 in 'files'")
    unused = sorted(set(files) - set(used))
    if unused:
        raise bad(
            f"'files' lists {unused}, which no graph or state uses; a format-1 bundle holds "
            "only its graphs and state.npz (ONNX external data is not supported)"
        )

    # The rate limit the host applies to every action: a negative, zero or non-finite cap
    # would make the limiter clamp to nonsense (or refuse to start) on the robot.
    def positive_float32(v: object) -> bool:  # > 0 and finite as the host's float32
        if isinstance(v, bool) or not isinstance(v, int | float):
            return False
        try:
            return 0 < float(v) <= float(np.finfo(np.float32).max)
        except OverflowError:  # an integer too large for a float
            return False

    action = manifest.get("action")
    max_delta = action.get("max_delta") if isinstance(action, dict) else None
    if max_delta is not None:
        values = max_delta if isinstance(max_delta, list) else [max_delta]
        if not values or not all(positive_float32(v) for v in values):
            raise bad(
                f"action.max_delta must be null or positive finite numbers (the largest "
                f"action change per tick), got {max_delta!r}; export with a positive "
                "--max-delta, or without it for no cap"
            )
    return files, graphs, state["file"], names


def _parse_specs(items, where: str, bad) -> list[TensorSpec]:
    if not isinstance(items, list) or not items:
        raise bad(f"{where} must be a non-empty list")
    specs = []
    for item in items:
        if not isinstance(item, dict):
            raise bad(f"{where}: each entry must be an object with name, dtype, shape")
        name, dtype, shape = item.get("name"), item.get("dtype"), item.get("shape")
        if not isinstance(name, str) or not name:
            raise bad(f"{where}: entry without a name: {item!r}")
        if dtype not in _DTYPES:
            raise bad(f"{where}: {name!r} has unsupported dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise bad(f"{where}: {name!r} shape must be a list of non-negative ints, got {shape!r}")
        specs.append(TensorSpec(name, dtype, tuple(shape)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise bad(f"{where} lists a name twice")
    return specs


def _check_io(graph: str, file: str, kind: str, declared: list[TensorSpec], actual) -> None:
    """The session's inputs or outputs must equal the manifest's (names, dtypes, shapes).

    Order is not compared: the runtime feeds and fetches by name.
    """
    want = {s.name: s for s in declared}
    have = {a.name: a for a in actual}
    problems = []
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    if missing:
        problems.append(f"the manifest lists {kind}s {missing} that the graph lacks")
    if extra:
        problems.append(f"the graph has {kind}s {extra} that the manifest does not list")
    for name in want.keys() & have.keys():
        spec, arg = want[name], have[name]
        dtype = numpy_dtype(arg.type)
        if dtype != spec.dtype:
            problems.append(f"{kind} {name!r} is {arg.type} in the graph, {spec.dtype} in manifest")
        shape = list(arg.shape)
        if shape != list(spec.shape):
            rank = (
                ""
                if len(shape) == len(spec.shape)
                else f" (rank {len(shape)} vs {len(spec.shape)})"
            )
            problems.append(
                f"{kind} {name!r} has shape {shape} in the graph, {list(spec.shape)} in the "
                f"manifest{rank}"
            )
    if problems:
        raise BundleError(
            f"graph {graph!r} ({file}) does not match manifest.json: "
            + "; ".join(sorted(problems))
            + ". The graph and manifest come from different exports (or were edited): "
            "re-export the bundle with `rtu-edge export`."
        )


# -- state -------------------------------------------------------------------------------


def _load_state(blob: bytes, file: str, names: list[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            state = {name: npz[name] for name in npz.files}
    except Exception as exc:  # zipfile/ValueError/...: any parse failure means a bad file
        raise BundleError(f"{file} is not a readable npz without pickles ({exc}). {_FIX}") from None
    if sorted(state) != sorted(names):
        missing = sorted(set(names) - set(state))
        extra = sorted(set(state) - set(names))
        raise BundleError(
            f"{file} does not match state.names in manifest.json: missing {missing}, "
            f"extra {extra}. {_FIX}"
        )
    return state


def _check_state_against_graphs(state: dict[str, np.ndarray], file: str, graphs) -> None:
    """Every carried input is in the state, with the graph's dtype and shape."""
    problems = []
    for graph, (_file, inputs, outputs, _opset) in graphs.items():
        out = {s.name: s for s in outputs}
        for spec in inputs:
            nxt = out.get(spec.name + NEXT_SUFFIX)
            if nxt is not None and (nxt.dtype, nxt.shape) != (spec.dtype, spec.shape):
                problems.append(
                    f"{graph}: {nxt.name} is {nxt.dtype}{list(nxt.shape)} but {spec.name} is "
                    f"{spec.dtype}{list(spec.shape)}"
                )
            if spec.name not in state:
                if nxt is not None:
                    problems.append(f"{graph}: carried tensor {spec.name!r} is not in {file}")
                elif spec.name not in STEP_INPUTS:
                    problems.append(
                        f"{graph}: input {spec.name!r} is neither in {file} nor a per-step "
                        f"input {list(STEP_INPUTS)}"
                    )
                continue
            arr = state[spec.name]
            if (arr.dtype.name, arr.shape) != (spec.dtype, spec.shape):
                problems.append(
                    f"{graph}: {spec.name!r} is {arr.dtype.name}{list(arr.shape)} in {file}, "
                    f"{spec.dtype}{list(spec.shape)} in the graph"
                )
    if problems:
        raise BundleError(
            "bundle state does not fit its graphs: "
            + "; ".join(sorted(set(problems)))
            + f". {_FIX}"
        )


# -- ONNX protobuf scan (no onnx package) --------------------------------------------------

# Field numbers from onnx.proto (onnx 1.23).
_MODEL_OPSET, _MODEL_GRAPH, _MODEL_TRAINING, _MODEL_FUNCTIONS = 8, 7, 20, 25
_GRAPH_NODE, _GRAPH_INIT, _GRAPH_SPARSE_INIT = 1, 5, 15
_NODE_ATTR = 5
_ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 8, 13, 14
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_FUNC_NODE = 7
_TRAIN_INIT, _TRAIN_ALGO = 1, 2
_MAX_DEPTH = 64  # nested subgraphs deeper than this are refused rather than recursed into


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("bad varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """Yield (field, wire_type, value) of one message; value is an int or a (start, end) span."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _Malformed("length past end of message")
            yield field, wire, (pos, pos + length)
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed(f"unsupported wire type {wire}")
    if pos != end:
        raise _Malformed("field past end of message")


def _scan_onnx(blob: bytes, file: str, opset: int | None) -> None:
    """Refuse external-data tensors anywhere in the model; check the default-domain opset."""
    buf = memoryview(blob)
    found: list[str] = []
    opsets: dict[str, int] = {}

    def text(span) -> str:
        return bytes(buf[span[0] : span[1]]).decode("utf-8", "replace")

    def tensor(span) -> None:
        name, location, external = "?", "?", False
        for field, wire, value in _fields(buf, *span):
            if field == _TENSOR_NAME and wire == 2:
                name = text(value)
            elif field == _TENSOR_LOCATION and wire == 0 and value != 0:
                external = True
            elif field == _TENSOR_EXTERNAL and wire == 2:
                external = True
                entry = dict(
                    (k, text(v)) for k, w, v in _fields(buf, *value) if w == 2 and k in (1, 2)
                )
                if entry.get(1) == "location":
                    location = entry.get(2, "?")
        if external:
            found.append(f"tensor {name!r} -> {location!r}")

    def sparse(span) -> None:
        for field, wire, value in _fields(buf, *span):
            if field in (_SPARSE_VALUES, _SPARSE_INDICES) and wire == 2:
                tensor(value)

    def node(span, depth: int) -> None:
        for field, wire, value in _fields(buf, *span):
            if field != _NODE_ATTR or wire != 2:
                continue
            for afield, awire, avalue in _fields(buf, *value):
                if awire != 2:
                    continue
                if afield in (_ATTR_T, _ATTR_TENSORS):
                    tensor(avalue)
                elif afield in (_ATTR_G, _ATTR_GRAPHS):
                    graph(avalue, depth + 1)
                elif afield in (_ATTR_SPARSE, _ATTR_SPARSES):
                    sparse(avalue)

    def graph(span, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise _Malformed("subgraphs nested too deeply")
        for field, wire, value in _fields(buf, *span):
            if wire != 2:
                continue
            if field == _GRAPH_NODE:
                node(value, depth)
            elif field == _GRAPH_INIT:
                tensor(value)
            elif field == _GRAPH_SPARSE_INIT:
                sparse(value)

    try:
        for field, wire, value in _fields(buf, 0, len(buf)):
            if wire != 2:
                continue
            if field == _MODEL_GRAPH:
                graph(value, 0)
            elif field == _MODEL_OPSET:
                entry = {k: v for k, _w, v in _fields(buf, *value)}
                domain = text(entry[1]) if isinstance(entry.get(1), tuple) else ""
                if isinstance(entry.get(2), int):
                    opsets[domain] = entry[2]
            elif field == _MODEL_FUNCTIONS:
                for ffield, fwire, fvalue in _fields(buf, *value):
                    if ffield == _FUNC_NODE and fwire == 2:
                        node(fvalue, 1)
            elif field == _MODEL_TRAINING:
                for tfield, twire, tvalue in _fields(buf, *value):
                    if tfield in (_TRAIN_INIT, _TRAIN_ALGO) and twire == 2:
                        graph(tvalue, 1)
    except _Malformed as exc:
        raise BundleError(f"{file} is not a valid ONNX model ({exc}). {_FIX}") from None
    if found:
        raise BundleError(
            f"{file} references external data: {'; '.join(found)}. Bundles must embed every "
            "tensor in the .onnx file (export with external_data=False); refusing to load it "
            "(nothing outside the bundle was read)."
        )
    default = opsets.get("", opsets.get("ai.onnx"))
    if opset is not None and default != opset:
        raise BundleError(
            f"{file} imports ai.onnx opset {default}, the manifest says {opset}. The graph and "
            "manifest come from different exports: re-export the bundle."
        )
