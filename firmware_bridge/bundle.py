"""Load an exported bundle (docs/bundle.md; the contract is firmware_bridge/contract.py).

Loading is running code, so nothing is parsed until it is known to be the exported bytes:

1. ``manifest.json`` is read (a regular file inside the bundle directory, size-capped, opened
   non-blocking) and checked field by field against the contract (`Manifest.from_json`,
   `Manifest.check_step_io`): a bad one is a `BundleError` naming the field, never a traceback.
2. Every file in ``files`` must name a path inside the bundle directory (no ``..``, no absolute
   path, no symlink that resolves outside it) and is read into memory and hashed; a SHA-256
   mismatch refuses the bundle before any file is parsed. The graphs and the state are parsed
   from those same in-memory bytes, so the file cannot change between check and use.
3. Each ONNX graph is scanned for external-data references (see below), then an
   onnxruntime session is built from the bytes and its inputs and outputs are compared with the
   manifest (names, dtypes, shapes). ``state.npz`` is loaded with ``allow_pickle=False``
   (entry sizes checked before decompressing) and checked against the manifest and the graphs;
   a non-finite value refuses the bundle.

External data. A bundle holds exactly the files the manifest uses (``learn.onnx``,
``act.onnx``, ``act_prepare.onnx``, ``state.npz``); every tensor must live inside its .onnx file. Without the
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
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import onnxruntime as ort

from firmware_bridge.contract import (
    FIX,
    FORMAT_VERSION,
    GRAPHS,
    MANIFEST,
    NEXT_SUFFIX,
    PREP_PREFIX,
    ContractError,
    Manifest,
    TensorSpec,
    graph_state,
    packed_tensors,
    view_inputs,
)
from firmware_bridge.runtime import StepRunner, make_session, numpy_dtype

__all__ = [
    "FORMAT_VERSION",
    "GRAPHS",
    "Bundle",
    "BundleError",
    "TensorSpec",
    "count_nodes",
    "load_bundle",
]

MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few KB; refuse to slurp something absurd
MAX_FILE_BYTES = 1 << 30  # graphs and state of any agent that fits a robot computer
MAX_STATE_ENTRY_BYTES = 1 << 30  # decompressed size of one state.npz entry
_FIX = FIX


class BundleError(Exception):
    """The bundle cannot be used; the message says which file or tensor and what to do."""


class Bundle:
    """A verified bundle: manifest, one onnxruntime session per graph, and the initial state."""

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        fingerprint: str,
        sessions: dict[str, ort.InferenceSession],
        state: dict[str, np.ndarray],
        prepare: dict[str, ort.InferenceSession] | None = None,
    ) -> None:
        self.path = path  # the bundle directory, resolved
        self.manifest = manifest  # manifest.json, typed and checked against the contract
        self.fingerprint = fingerprint  # SHA-256 of manifest.json: names this exact bundle
        self._sessions = sessions
        self._state = state
        self._prepare = dict(prepare or {})  # step graph -> the session of its prepare graph

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
        """Inputs of ``graph`` fed from the state: carried ones and read-only ones (params.*,
        possibly tensors inside a packed buffer, which a graph reads by their own names: a
        constant copy, or a view of a buffer the graph carries, `view_inputs`)."""
        held = set(self._state) | set(packed_tensors(self.manifest.packing))
        held |= set(self._prepared_names(graph))
        return [i.name for i in self.session(graph).get_inputs() if i.name in held]

    def _prepared_names(self, graph: str) -> list[str]:
        session = self._prepare.get(graph)
        return [] if session is None else [o.name for o in session.get_outputs()]

    def prepared(self, graph: str, state: Mapping[str, np.ndarray] | None = None) -> dict:
        """The ``prep.*`` inputs of ``graph`` computed from ``state`` (default: the initial
        state) by its prepare graph, once (contract.PrepareSpec); ``{}`` when it has none."""
        session = self._prepare.get(graph)
        if session is None:
            return {}
        state = self._state if state is None else state
        names = [i.name for i in session.get_inputs()]
        inside = packed_tensors(self.manifest.packing)
        missing = [n for n in names if n not in state and inside.get(n, ("",))[0] not in state]
        if missing:
            raise BundleError(f"state for graph {graph!r} lacks {sorted(missing)}")
        feeds = graph_state(state, names, self.manifest.packing)
        feeds = {k: np.ascontiguousarray(v) for k, v in feeds.items()}
        try:
            values = session.run(None, feeds)
        except Exception as exc:  # onnxruntime's own error types
            raise BundleError(
                f"the prepare graph of {graph!r} failed on this state ({exc}); the state does "
                f"not fit the bundle. {_FIX}"
            ) from None
        return {o.name: v for o, v in zip(session.get_outputs(), values)}

    def step_input_names(self, graph: str) -> list[str]:
        """Per-step inputs of ``graph`` (obs, reward, first, ...): those not held in the state."""
        held = set(self.state_input_names(graph))
        return [i.name for i in self.session(graph).get_inputs() if i.name not in held]

    def view_inputs(self, graph: str) -> dict:
        """The views among ``graph``'s inputs (contract.view_inputs), name -> (buffer, place):
        the learn graph's parameters by name, inside the params.flat it carries."""
        return view_inputs(self.state_input_names(graph), self.manifest.packing)

    def graph_state(self, graph: str, state: Mapping[str, np.ndarray] | None = None) -> dict:
        """What ``graph`` reads from ``state`` (default: the initial state), by its input
        names; a tensor inside a packed buffer comes out of the buffer (contract.graph_state).

        That is the feed of one plain ``session.run``. For stepping, use `runner`: a
        `StepRunner` built from this dict would hold the graph's views (`view_inputs`) as
        copies, which go stale after the first update."""
        state = self._state if state is None else state
        prep = self.prepared(graph, state)
        names = [n for n in self.state_input_names(graph) if n not in prep]
        inside = packed_tensors(self.manifest.packing)
        missing = [n for n in names if n not in state and inside.get(n, ("",))[0] not in state]
        if missing:
            raise BundleError(f"state for graph {graph!r} lacks {sorted(missing)}")
        return graph_state(state, names, self.manifest.packing) | prep

    def initial_state(self) -> dict[str, np.ndarray]:
        """Fresh copies of every tensor in state.npz, keyed by tensor name."""
        return {name: value.copy() for name, value in self._state.items()}

    def runner(
        self,
        graph: str,
        state: Mapping[str, np.ndarray] | None = None,
        session: ort.InferenceSession | None = None,
    ) -> StepRunner:
        """A `StepRunner` for ``graph`` fed from ``state`` (default: the initial state).

        Only the tensors ``graph`` reads are taken from ``state``, so the full learner state
        can be passed to the act graph. The graph's views (contract.view_inputs: the learn
        graph's parameters by name, inside the params.flat it carries) are bound to the
        runner's own buffers, not fed from ``state``. ``session``: another session of the same
        graph (benchmarks/profile_step.py's, with profiling on) instead of the bundle's.
        """
        views = self.view_inputs(graph)
        feeds = {k: v for k, v in self.graph_state(graph, state).items() if k not in views}
        return StepRunner(
            session if session is not None else self.session(graph),
            feeds,
            views={n: (buf, t.offset, t.shape) for n, (buf, t) in views.items()},
        )


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
        raw = json.loads(manifest_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{root / MANIFEST} is not valid JSON ({exc}). {_FIX}") from None
    try:
        manifest = Manifest.from_json(raw, str(root / MANIFEST))
        manifest.check_step_io()
    except ContractError as exc:
        raise BundleError(str(exc)) from None
    for name in manifest.files:
        _resolve_inside(root, name)
    files = manifest.files
    graphs = {
        g: (spec.file, list(spec.inputs), list(spec.outputs), spec.opset)
        for g, spec in manifest.graphs.items()
    }
    preps = {  # each checked as a graph of its own, "act.prepare", with no per-step I/O
        f"{g}.prepare": (p.file, list(p.inputs), list(p.outputs), p.opset)
        for g, spec in manifest.graphs.items()
        if (p := spec.prepare) is not None
    }
    state_file, state_names = manifest.state_file, list(manifest.state_names)

    # Containment and hashes of every file, before anything is parsed.
    data: dict[str, bytes] = {}
    for name, expected in files.items():
        blob = _read_inside(root, name, max_bytes=MAX_FILE_BYTES)
        actual = hashlib.sha256(blob).hexdigest()
        if actual != expected:
            raise BundleError(
                f"bundle {root} is corrupt: {name} has SHA-256 {actual}, the manifest says "
                f"{expected} (truncated or modified copy; {len(blob)} bytes on disk). "
                f"Nothing was loaded. {_FIX}"
            )
        data[name] = blob

    sessions = {}
    for graph, (file, inputs, outputs, opset) in (graphs | preps).items():
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
    _check_state_against_graphs(state, state_file, graphs | preps, manifest)
    for buf in manifest.packing:
        if state[buf.name].shape != (buf.size,):
            raise BundleError(
                f"{state_file}: packed buffer {buf.name!r} has shape {list(state[buf.name].shape)}"
                f", but the tensors manifest.json places in it need [{buf.size}]. {_FIX}"
            )
    fingerprint = hashlib.sha256(manifest_bytes).hexdigest()
    prepare = {g.split(".")[0]: sessions.pop(g) for g in preps}
    return Bundle(root, manifest, fingerprint, sessions, state, prepare)


def count_nodes(blob: bytes) -> int:
    """The number of nodes in an ONNX model's main graph, those inside the branches of its
    control-flow nodes (``If``) included (read from the protobuf wire format, so without the
    ``onnx`` package)."""
    buf = memoryview(blob)

    def graph(span, depth: int) -> int:
        if depth > _MAX_DEPTH:
            raise _Malformed("subgraphs nested too deeply")
        total = 0
        for field, wire, value in _fields(buf, *span):
            if field != _GRAPH_NODE or wire != 2:
                continue
            total += 1
            for nfield, nwire, nvalue in _fields(buf, *value):
                if nfield != _NODE_ATTR or nwire != 2:
                    continue
                for afield, awire, avalue in _fields(buf, *nvalue):
                    if afield in (_ATTR_G, _ATTR_GRAPHS) and awire == 2:
                        total += graph(avalue, depth + 1)
        return total

    try:
        for field, wire, value in _fields(buf, 0, len(buf)):
            if field == _MODEL_GRAPH and wire == 2:
                return graph(value, 0)
    except _Malformed as exc:
        raise BundleError(f"not a valid ONNX model ({exc})") from None
    return 0


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


def _read_inside(root: Path, name: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read a regular file inside ``root`` without following a final symlink.

    Opened non-blocking (a FIFO in place of a file cannot hang the loader), refused unless it
    is a regular file, and never read past ``max_bytes``.
    """
    real = _resolve_inside(root, name)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
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
        if info.st_size > max_bytes:
            raise BundleError(
                f"bundle {root}: {name} is {info.st_size} bytes (limit {max_bytes}). {_FIX}"
            )
        data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise BundleError(f"bundle {root}: {name} grew past {max_bytes} bytes while read")
        return data


# -- graphs against the manifest ----------------------------------------------------------


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
    """Parse state.npz without pickles, refusing oversized (zip-bomb) entries before
    decompressing them and any non-finite value (a bundle must start from a sane state)."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            infos = zf.infolist()
        if len(infos) > len(names) + 1:
            raise BundleError(f"{file} holds {len(infos)} entries, the manifest names {len(names)}")
        big = [i.filename for i in infos if i.file_size > MAX_STATE_ENTRY_BYTES]
        if big:
            raise BundleError(
                f"{file}: entries {big[:3]} decompress to more than {MAX_STATE_ENTRY_BYTES} bytes"
            )
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            state = {name: npz[name] for name in npz.files}
    except BundleError as exc:
        raise BundleError(f"{exc}. {_FIX}") from None
    except Exception as exc:  # zipfile/ValueError/...: any parse failure means a bad file
        raise BundleError(f"{file} is not a readable npz without pickles ({exc}). {_FIX}") from None
    bad = [
        k
        for k, v in state.items()
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()
    ]
    if bad:
        raise BundleError(
            f"{file} holds non-finite values (NaN or Inf) in {sorted(bad)[:5]}; a bundle must start "
            f"from a finite state. {_FIX}"
        )
    if sorted(state) != sorted(names):
        missing = sorted(set(names) - set(state))
        extra = sorted(set(state) - set(names))
        raise BundleError(
            f"{file} does not match state.names in manifest.json: missing {missing}, "
            f"extra {extra}. {_FIX}"
        )
    return state


def _check_state_against_graphs(
    state: dict[str, np.ndarray], file: str, graphs, manifest: Manifest
) -> None:
    """Every carried input is in the state, with the graph's dtype and shape."""
    problems = []
    inside = {n: v for n, v in packed_tensors(manifest.packing).items() if v[0] in state}
    for graph, (_file, inputs, outputs, _opset) in graphs.items():
        gspec = manifest.graphs.get(graph)  # None: a prepare graph ("act.prepare")
        step_inputs = [] if gspec is None else [s.name for s in gspec.step_inputs]
        if gspec is not None and gspec.prepare is not None:  # computed, not in the state
            inputs = [i for i in inputs if not i.name.startswith(PREP_PREFIX)]
        out = {s.name: s for s in outputs}
        for spec in inputs:
            nxt = out.get(spec.name + NEXT_SUFFIX)
            if nxt is not None and (nxt.dtype, nxt.shape) != (spec.dtype, spec.shape):
                problems.append(
                    f"{graph}: {nxt.name} is {nxt.dtype}{list(nxt.shape)} but {spec.name} is "
                    f"{spec.dtype}{list(spec.shape)}"
                )
            if spec.name not in state and spec.name in inside:  # read out of a packed buffer
                buf, t = inside[spec.name]
                if nxt is not None or (state[buf].dtype.name, t.shape) != (spec.dtype, spec.shape):
                    problems.append(
                        f"{graph}: {spec.name!r} inside {buf} is {state[buf].dtype.name}"
                        f"{list(t.shape)} and read-only, the graph wants {spec.dtype}"
                        f"{list(spec.shape)}" + (" and carries it" if nxt is not None else "")
                    )
                continue
            if spec.name not in state:
                if nxt is not None:
                    problems.append(f"{graph}: carried tensor {spec.name!r} is not in {file}")
                elif spec.name not in step_inputs:
                    problems.append(
                        f"{graph}: input {spec.name!r} is neither in {file} nor a declared "
                        f"per-step input {step_inputs}"
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
