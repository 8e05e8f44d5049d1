"""load_bundle: hashes before parsing, path containment, manifest/graph agreement, no torch."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import firmware_bridge.bundle as bundle_mod
from firmware_bridge import contract as C
from firmware_bridge.bundle import BundleError, load_bundle
from firmware_bridge.runtime import make_session, reference_step, session_options

REPO = Path(__file__).resolve().parents[2]
OBS, N = 2, 3
F = TensorProto.FLOAT
_NP = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64", TensorProto.INT64: "int64"}

# name -> shape of every state tensor of the tiny agent
STATE = {
    "params.enc.w": [OBS, N],
    "elig_v.enc.w": [OBS, N],
    "norm.obs_mean": [1, OBS],
    "carry.c1": [1, N],
    "carry.c2": [1, N],
}


def _consts():
    return [
        helper.make_tensor("half", F, [], [0.5]),
        helper.make_tensor("one", F, [], [1.0]),
        helper.make_tensor("lam", F, [], [0.9]),
        helper.make_tensor("lr", F, [], [0.01]),
        helper.make_tensor("ema", F, [], [0.99]),
        helper.make_tensor("axes1", TensorProto.INT64, [1], [1]),
    ]


def _recurrent_nodes():
    """obs, first, params, norm, carry -> c1n, c2n, value, action (shared by both graphs)."""
    return [
        helper.make_node("Sub", ["obs", "norm.obs_mean"], ["x"]),
        helper.make_node("MatMul", ["x", "params.enc.w"], ["xw"]),
        helper.make_node("Sub", ["one", "first"], ["keep"]),
        helper.make_node("Mul", ["carry.c1", "keep"], ["c1k"]),
        helper.make_node("Mul", ["c1k", "half"], ["c1h"]),
        helper.make_node("Add", ["xw", "c1h"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["carry.c1.next"]),
        helper.make_node("Mul", ["carry.c2", "keep"], ["c2k"]),
        helper.make_node("Add", ["c2k", "carry.c1.next"], ["carry.c2.next"]),
        helper.make_node("ReduceSum", ["carry.c1.next", "axes1"], ["value"], keepdims=0),
        helper.make_node("ReduceSum", ["carry.c2.next", "axes1"], ["action"], keepdims=1),
    ]


def _vi(name, shape, elem=F):
    return helper.make_tensor_value_info(name, elem, shape)


def learn_model():
    inputs = [_vi(n, s) for n, s in STATE.items()] + [
        _vi("obs", [1, OBS]),
        _vi("reward", [1]),
        _vi("first", [1]),
        _vi("terminal", [1]),
        _vi("noise", [1, OBS]),
    ]
    outputs = [_vi(n + ".next", s) for n, s in STATE.items()] + [
        _vi("action", [1, 1]),
        _vi("value", [1]),
        _vi("td_error", [1]),
    ]
    nodes = _recurrent_nodes()
    nodes[-1] = helper.make_node("ReduceSum", ["carry.c2.next", "axes1"], ["act0"], keepdims=1)
    nodes += [
        helper.make_node("ReduceSum", ["noise", "axes1"], ["nsum"], keepdims=1),
        helper.make_node("Add", ["act0", "nsum"], ["action"]),
        helper.make_node("Sub", ["one", "terminal"], ["alive"]),
        helper.make_node("Mul", ["value", "alive"], ["boot"]),
        helper.make_node("Add", ["reward", "boot"], ["td_error"]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node("Mul", ["xt", "carry.c1.next"], ["outer"]),
        helper.make_node("Mul", ["elig_v.enc.w", "lam"], ["decay"]),
        helper.make_node("Add", ["decay", "outer"], ["elig_v.enc.w.next"]),
        helper.make_node("Mul", ["elig_v.enc.w.next", "td_error"], ["g"]),
        helper.make_node("Mul", ["g", "lr"], ["upd"]),
        helper.make_node("Add", ["params.enc.w", "upd"], ["params.enc.w.next"]),
        helper.make_node("Mul", ["norm.obs_mean", "ema"], ["m0"]),
        helper.make_node("Sub", ["one", "ema"], ["ema1"]),
        helper.make_node("Mul", ["obs", "ema1"], ["m1"]),
        helper.make_node("Add", ["m0", "m1"], ["norm.obs_mean.next"]),
    ]
    return _model(nodes, inputs, outputs, "learn")


def act_model():
    reads = ["params.enc.w", "norm.obs_mean", "carry.c1", "carry.c2"]
    inputs = [_vi(n, STATE[n]) for n in reads] + [_vi("obs", [1, OBS]), _vi("first", [1])]
    outputs = [
        _vi("action", [1, 1]),
        _vi("value", [1]),
        _vi("carry.c1.next", STATE["carry.c1"]),
        _vi("carry.c2.next", STATE["carry.c2"]),
    ]
    return _model(_recurrent_nodes(), inputs, outputs, "act")


def prepared_act_model():
    """act_model reading prep.w (what prepare_model computes from params.enc.w) instead."""
    model = act_model()
    for node in model.graph.node:
        node.input[:] = ["prep.w" if i == "params.enc.w" else i for i in node.input]
    for vi in model.graph.input:
        if vi.name == "params.enc.w":
            vi.name = "prep.w"
    return model


def prepare_model():
    nodes = [helper.make_node("Mul", ["params.enc.w", "half"], ["prep.w"])]
    enc = STATE["params.enc.w"]
    return _model(nodes, [_vi("params.enc.w", enc)], [_vi("prep.w", enc)], "act_prepare")


def _model(nodes, inputs, outputs, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, _consts())
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


def _specs(values):
    out = []
    for v in values:
        t = v.type.tensor_type
        out.append(
            {
                "name": v.name,
                "dtype": _NP[t.elem_type],
                "shape": [d.dim_value for d in t.shape.dim],
            }
        )
    return out


def initial_state():
    rng = np.random.default_rng(0)
    return {n: rng.normal(size=s).astype(np.float32) * 0.5 for n, s in STATE.items()}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _io(values) -> tuple[C.TensorSpec, ...]:
    return tuple(C.TensorSpec(d["name"], d["dtype"], tuple(d["shape"])) for d in _specs(values))


SOURCES = {
    "obs": "obs",
    "reward": "reward",
    "first": "first",
    "terminal": "terminal",
    "noise": "noise",
}
USES = {
    "learn": {"action": "action", "value": "check", "td_error": "check"},
    "act": {"action": "action", "value": "report"},
}


def tiny_manifest(learn, act, state_names, blobs, prepare=None) -> C.Manifest:
    """The manifest `rtu-edge export` would write for these graphs, built with the contract."""
    prep = None
    if prepare is not None:
        prep = C.PrepareSpec(
            "act_prepare.onnx", 18, _io(prepare.graph.input), _io(prepare.graph.output)
        )
    graphs = {}
    for g, m in (("learn", learn), ("act", act)):
        inputs, outputs = _io(m.graph.input), _io(m.graph.output)
        graphs[g] = C.GraphSpec(
            file=f"{g}.onnx",
            opset=18,
            inputs=inputs,
            outputs=outputs,
            step_inputs=tuple(
                C.StepInput(i.name, SOURCES[i.name], i.shape, "")
                for i in inputs
                if i.name in SOURCES
            ),
            step_outputs=tuple(
                C.StepOutput(o.name, USES[g][o.name], o.shape, "")
                for o in outputs
                if o.name in USES[g]
            ),
            prepare=prep if g == "act" else None,
        )
    return C.Manifest(
        format_version=C.FORMAT_VERSION,
        created_utc="2026-11-25T10:00:00Z",
        rtu_edge_version="0.1.0",
        env_id="test/Tiny",
        learner="ac",
        cell="rtu",
        observation_size=OBS,
        observation_clip=1e6,
        action=C.ActionSpec("continuous", 1, 0, (-1.0,), (1.0,), (0.0,)),
        noise=C.NoiseSpec("normal", OBS),
        graphs=graphs,
        state_file="state.npz",
        state_names=tuple(state_names),
        files={name: _sha(data) for name, data in blobs.items()},
        protocol_version=1,
        schema_hash=0x1234ABCD,
    )


def write_bundle(directory: Path, learn=None, act=None, state=None, prepare=None) -> Path:
    """A complete bundle built like `rtu-edge export` writes it (manifest via the contract);
    with ``prepare`` (a model) the act graph's prep.* inputs come from act_prepare.onnx."""
    directory.mkdir(parents=True, exist_ok=True)
    learn = learn or learn_model()
    act = act or (act_model() if prepare is None else prepared_act_model())
    state = initial_state() if state is None else state
    blobs = {"learn.onnx": learn.SerializeToString(), "act.onnx": act.SerializeToString()}
    if prepare is not None:
        blobs["act_prepare.onnx"] = prepare.SerializeToString()
    buf = io.BytesIO()
    np.savez(buf, **state)
    blobs["state.npz"] = buf.getvalue()
    for name, data in blobs.items():
        (directory / name).write_bytes(data)
    manifest = tiny_manifest(learn, act, list(state), blobs, prepare).to_json()
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return directory


def _edit_manifest(directory: Path, fn) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    fn(manifest)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def bundle_dir(tmp_path):
    return write_bundle(tmp_path / "bundle")


# -- the happy path ----------------------------------------------------------------------


def test_valid_bundle_loads_and_runs(bundle_dir):
    b = load_bundle(bundle_dir)
    assert b.path == bundle_dir.resolve()
    assert b.manifest.env_id == "test/Tiny"
    assert b.fingerprint == _sha((bundle_dir / "manifest.json").read_bytes())
    assert b.carried_names("learn") == list(STATE)
    assert b.carried_names("act") == ["carry.c1", "carry.c2"]
    assert b.step_input_names("learn") == ["obs", "reward", "first", "terminal", "noise"]
    assert b.step_input_names("act") == ["obs", "first"]
    assert b.state_input_names("act") == ["params.enc.w", "norm.obs_mean", "carry.c1", "carry.c2"]
    state = b.initial_state()
    for k, v in initial_state().items():
        np.testing.assert_array_equal(state[k], v)
    state["carry.c1"][...] = 9  # copies: the bundle's own initial state is untouched
    assert not (b.initial_state()["carry.c1"] == 9).any()
    opts = b.session("learn").get_session_options()
    assert opts.intra_op_num_threads == 1 and opts.inter_op_num_threads == 1

    learn = b.runner("learn")
    act = b.runner("act", learn.state())  # the full state: act takes what it reads
    ref = b.initial_state()
    rng = np.random.default_rng(1)
    for t in range(10):
        inputs = {
            "obs": rng.normal(size=(1, OBS)).astype(np.float32),
            "reward": np.array([rng.normal()], np.float32),
            "first": np.array([1.0 if t == 0 else 0.0], np.float32),
            "terminal": np.zeros(1, np.float32),
            "noise": rng.normal(size=(1, OBS)).astype(np.float32),
        }
        out = learn.step(**inputs)
        ref_out, ref = reference_step(b.session("learn"), ref, inputs)
        for k in ref_out:
            np.testing.assert_array_equal(out[k], ref_out[k])
        a = act.step(obs=inputs["obs"], first=inputs["first"])
        assert a["action"].shape == (1, 1) and a["value"].shape == (1,)
    with pytest.raises(BundleError, match="no graph 'bogus'"):
        b.session("bogus")


# -- prepare graphs (format 4) -------------------------------------------------------------


def test_prepare_graph_computes_the_act_constants_of_whichever_state_is_loaded(tmp_path):
    b = load_bundle(write_bundle(tmp_path / "b", prepare=prepare_model()))
    assert b.state_input_names("act") == ["prep.w", "norm.obs_mean", "carry.c1", "carry.c2"]
    assert b.step_input_names("act") == ["obs", "first"]
    w = b.initial_state()["params.enc.w"]
    np.testing.assert_array_equal(b.graph_state("act")["prep.w"], w * np.float32(0.5))
    assert "params.enc.w" not in b.graph_state("act")  # act reads prep.w only
    # another state (a checkpoint): its own constants, not the bundle's
    other = b.initial_state() | {"params.enc.w": np.full_like(w, 3.0)}
    np.testing.assert_array_equal(b.graph_state("act", other)["prep.w"], np.full_like(w, 1.5))
    # the act step with them is the plain act graph's step with params.enc.w = prep.w
    plain = load_bundle(write_bundle(tmp_path / "plain"))
    halved = other | {"params.enc.w": np.full_like(w, 1.5)}
    runners = [b.runner("act", other), plain.runner("act", halved)]
    rng = np.random.default_rng(3)
    for _ in range(5):
        feed = {
            "obs": rng.normal(size=(1, OBS)).astype(np.float32),
            "first": np.zeros(1, np.float32),
        }
        got, want = (r.step(**feed) for r in runners)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert "prep.w" not in b.initial_state()  # computed, never stored


def test_prepare_outputs_must_be_the_act_graphs_prep_inputs(tmp_path, no_parsing):
    d = write_bundle(tmp_path / "b", prepare=prepare_model())
    _edit_manifest(
        d, lambda m: m["graphs"]["act"]["prepare"]["outputs"][0].update(name="prep.other")
    )
    with pytest.raises(BundleError, match=r"graphs.act.prepare outputs \['prep.other'\] but"):
        load_bundle(d)


def test_prepare_graph_reads_the_state_only(tmp_path, no_parsing):
    d = write_bundle(tmp_path / "b", prepare=prepare_model())
    _edit_manifest(d, lambda m: m["graphs"]["act"]["prepare"]["inputs"][0].update(name="obs"))
    with pytest.raises(BundleError, match=r"prepare reads \['obs'\], which the state does not"):
        load_bundle(d)


def test_prep_inputs_without_a_prepare_graph_are_refused(tmp_path, no_parsing):
    d = write_bundle(tmp_path / "b", prepare=prepare_model())

    def drop(m):
        del m["graphs"]["act"]["prepare"]
        del m["files"]["act_prepare.onnx"]

    _edit_manifest(d, drop)
    with pytest.raises(BundleError, match=r"reads \['prep.w'\] but has no prepare graph"):
        load_bundle(d)


def test_format_3_is_read_without_prepare_graphs_only(bundle_dir, tmp_path):
    _edit_manifest(bundle_dir, lambda m: m.update(format_version=4))  # no views: format 4 too
    assert load_bundle(bundle_dir).manifest.format_version == 4
    _edit_manifest(bundle_dir, lambda m: m.update(format_version=3))
    assert load_bundle(bundle_dir).manifest.format_version == 3
    d = write_bundle(tmp_path / "b", prepare=prepare_model())
    _edit_manifest(d, lambda m: m.update(format_version=3))
    with pytest.raises(BundleError, match="a prepare graph needs format_version 4"):
        load_bundle(d)


def test_format_needed_is_the_lowest_that_describes_the_graphs(tmp_path):
    """Export writes `format_needed`: a bundle without views or prepare graphs is format 3,
    one with a prepare graph 4 (a runtime that predates views can load both); views need 5
    (tests/export/test_export.py, whose learn graphs read them)."""
    plain = load_bundle(write_bundle(tmp_path / "a")).manifest
    assert C.format_needed(plain.graphs, plain.packing) == 3
    prepared = load_bundle(write_bundle(tmp_path / "b", prepare=prepare_model())).manifest
    assert C.format_needed(prepared.graphs, prepared.packing) == 4


def test_symlink_inside_bundle_is_fine(bundle_dir):
    (bundle_dir / "graphs").mkdir()
    os.replace(bundle_dir / "act.onnx", bundle_dir / "graphs" / "act.onnx")
    (bundle_dir / "act.onnx").symlink_to("graphs/act.onnx")
    load_bundle(bundle_dir)


# -- fault 1: corrupt files are refused before parsing ------------------------------------


@pytest.fixture
def no_parsing(monkeypatch):
    """Fail the test if anything tries to parse a bundle file."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a file was parsed before its hash was checked")

    monkeypatch.setattr(bundle_mod, "make_session", forbidden)
    monkeypatch.setattr(bundle_mod, "_scan_onnx", forbidden)
    monkeypatch.setattr(bundle_mod, "_load_state", forbidden)


@pytest.mark.parametrize("victim", ["learn.onnx", "act.onnx", "state.npz"])
def test_flipped_byte_refused_before_parsing(bundle_dir, no_parsing, victim):
    path = bundle_dir / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_dir)
    msg = str(err.value)
    assert victim in msg and "corrupt" in msg and "SHA-256" in msg
    assert "re-export" in msg and "Re-copy" in msg


def test_truncated_file_refused(bundle_dir, no_parsing):
    path = bundle_dir / "learn.onnx"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(BundleError, match=r"corrupt: learn.onnx"):
        load_bundle(bundle_dir)


def test_missing_file(bundle_dir, no_parsing):
    (bundle_dir / "state.npz").unlink()
    with pytest.raises(BundleError, match="incomplete: state.npz is missing"):
        load_bundle(bundle_dir)


# -- fault 2: paths leaving the bundle ----------------------------------------------------


def _point_learn_at(directory: Path, name: str) -> None:
    def fn(m):
        old = m["graphs"]["learn"]["file"]
        m["files"][name] = m["files"].pop(old)
        m["graphs"]["learn"]["file"] = name

    _edit_manifest(directory, fn)


def test_dotdot_path_rejected(tmp_path, no_parsing):
    directory = write_bundle(tmp_path / "bundle")
    (tmp_path / "evil.onnx").write_bytes((directory / "learn.onnx").read_bytes())
    _point_learn_at(directory, "../evil.onnx")
    with pytest.raises(BundleError, match=r"'\.\./evil\.onnx'.*contains '\.\.'"):
        load_bundle(directory)
    _point_learn_at(directory, "sub/../../evil.onnx")
    with pytest.raises(BundleError, match=r"sub/\.\./\.\./evil\.onnx"):
        load_bundle(directory)


def test_absolute_path_rejected(tmp_path, no_parsing):
    directory = write_bundle(tmp_path / "bundle")
    outside = tmp_path / "evil.onnx"
    outside.write_bytes((directory / "learn.onnx").read_bytes())
    _point_learn_at(directory, str(outside))
    with pytest.raises(BundleError, match=f"'{outside}'.*absolute path"):
        load_bundle(directory)


def test_symlink_leaving_bundle_rejected(tmp_path, no_parsing):
    directory = write_bundle(tmp_path / "bundle")
    outside = tmp_path / "elsewhere" / "learn.onnx"
    outside.parent.mkdir()
    os.replace(directory / "learn.onnx", outside)  # same bytes, so only containment can fail
    (directory / "learn.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match=rf"'learn.onnx' resolves to {outside}, outside"):
        load_bundle(directory)
    # a symlinked manifest leaving the bundle is refused too
    (directory / "learn.onnx").unlink()
    os.replace(outside, directory / "learn.onnx")
    os.replace(directory / "manifest.json", tmp_path / "manifest.json")
    (directory / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(BundleError, match="'manifest.json' resolves to"):
        load_bundle(directory)


def _external_learn(location: str) -> onnx.ModelProto:
    """learn.onnx whose params-like initializer lives in an external file."""
    model = learn_model()
    big = numpy_helper.from_array(np.ones((OBS, N), np.float32), "extra_w")
    big.data_location = TensorProto.EXTERNAL
    entry = big.external_data.add()
    entry.key, entry.value = "location", location
    big.ClearField("raw_data")
    model.graph.initializer.append(big)
    return model


@pytest.mark.parametrize("location", ["weights.bin", "../weights.bin", "/etc/passwd"])
def test_external_data_rejected_naming_the_path(tmp_path, location):
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "weights.bin").write_bytes(np.ones((OBS, N), np.float32).tobytes())
    write_bundle(directory, learn=_external_learn(location))
    with pytest.raises(BundleError, match=rf"learn.onnx references external data.*{location}"):
        load_bundle(directory)


def test_external_data_rejected_even_where_onnxruntime_would_resolve_it(tmp_path, monkeypatch):
    """onnxruntime 1.32 resolves external data of a model given as bytes against the working
    directory; the loader's protobuf scan refuses it before onnxruntime sees the bytes."""
    directory = tmp_path / "bundle"
    directory.mkdir()
    (directory / "weights.bin").write_bytes(np.ones((OBS, N), np.float32).tobytes())
    model = _external_learn("weights.bin")
    write_bundle(directory, learn=model)
    monkeypatch.chdir(directory)
    try:  # informational: what plain onnxruntime does with these bytes here
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        print("onnxruntime resolved the external file from the working directory")
    except Exception as exc:
        print(f"onnxruntime refused the bytes itself: {exc}")
    with pytest.raises(BundleError, match=r"'extra_w' -> 'weights.bin'"):
        load_bundle(directory)


def test_ort_format_bytes_are_not_accepted(tmp_path):
    """ORT-format (flatbuffer) bytes would bypass the protobuf scan; sessions refuse them."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "act.ort")
    so.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(act_model().SerializeToString(), so, providers=["CPUExecutionProvider"])
    ort_bytes = (tmp_path / "act.ort").read_bytes()
    ort.InferenceSession(ort_bytes, providers=["CPUExecutionProvider"])  # plain ORT takes it
    assert session_options().get_session_config_entry("session.load_model_format") == "ONNX"
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own exception types
        make_session(ort_bytes)


def test_external_data_inside_a_subgraph_attribute_rejected(tmp_path):
    """A Constant node's tensor inside an If branch, marked external: still found."""
    model = learn_model()
    t = numpy_helper.from_array(np.ones(1, np.float32), "c")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "../../secret.bin"
    t.ClearField("raw_data")
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=t)], "b", [], [_vi("k", [1])]
    )
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    model.graph.initializer.append(cond)
    model.graph.node.append(
        helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch)
    )
    write_bundle(tmp_path / "bundle", learn=model)
    with pytest.raises(BundleError, match=r"'c' -> '\.\./\.\./secret\.bin'"):
        load_bundle(tmp_path / "bundle")


def test_extra_files_in_manifest_rejected(bundle_dir, no_parsing):
    (bundle_dir / "weights.bin").write_bytes(b"x")
    _edit_manifest(bundle_dir, lambda m: m["files"].update({"weights.bin": _sha(b"x")}))
    with pytest.raises(BundleError, match=r"'weights.bin'.*external data is not supported"):
        load_bundle(bundle_dir)


# -- fault 3: graph I/O not matching the manifest -----------------------------------------


def _edit_spec(graph, kind, target, changes):
    def fn(m):
        for spec in m["graphs"][graph][kind]:
            if spec["name"] == target:
                spec.update(changes)

    return fn


@pytest.mark.parametrize(
    "graph,kind,name,changes,pattern",
    [
        (
            "learn",
            "inputs",
            "params.enc.w",
            {"shape": [OBS, 7]},
            r"'params.enc.w' has shape \[2, 3\]",
        ),
        ("act", "outputs", "value", {"dtype": "float64"}, r"output 'value' is tensor\(float\)"),
        ("learn", "inputs", "norm.obs_mean", {"dtype": "float64"}, r"'norm.obs_mean' is tensor"),
        ("act", "inputs", "carry.c1", {"shape": [N]}, r"'carry.c1' has shape \[1, 3\].*rank 2"),
        ("learn", "outputs", "params.enc.w.next", {"shape": [N, OBS]}, r"\[2, 3\] in the graph"),
    ],
)
def test_manifest_io_mismatch_rejected_at_load(bundle_dir, graph, kind, name, changes, pattern):
    _edit_manifest(bundle_dir, _edit_spec(graph, kind, name, changes))
    with pytest.raises(BundleError, match=pattern) as err:
        load_bundle(bundle_dir)
    assert f"graph '{graph}' ({graph}.onnx) does not match manifest.json" in str(err.value)


@pytest.mark.parametrize(
    "graph,kind,name,new",
    [("learn", "inputs", "params.enc.w", "params.w"), ("act", "outputs", "carry.c2.next", "c2")],
)
def test_manifest_naming_a_tensor_twice_differently_is_refused(bundle_dir, graph, kind, name, new):
    """A renamed tensor breaks the contract's naming rule before any graph is compared."""
    _edit_manifest(bundle_dir, _edit_spec(graph, kind, name, {"name": new}))
    with pytest.raises(BundleError, match=rf"graphs.{graph}.step_.*{new}"):
        load_bundle(bundle_dir)


def test_graph_input_neither_state_nor_step_input(tmp_path):
    model = act_model()
    model.graph.input.append(_vi("mystery", [1]))
    write_bundle(tmp_path / "b", act=model)
    with pytest.raises(BundleError, match=r"graph's inputs not held in the state are.*'mystery'"):
        load_bundle(tmp_path / "b")


def test_state_not_matching_graph(tmp_path):
    state = initial_state()
    state["carry.c1"] = np.zeros((1, N), np.float64)
    write_bundle(tmp_path / "b", state=state)
    with pytest.raises(BundleError, match=r"'carry.c1' is float64\[1, 3\] in state.npz"):
        load_bundle(tmp_path / "b")


def test_state_names_mismatch_and_pickles(bundle_dir, tmp_path):
    _edit_manifest(bundle_dir, lambda m: m["state"]["names"].append("params.ghost"))
    with pytest.raises(BundleError, match=r"missing \['params.ghost'\]"):
        load_bundle(bundle_dir)
    # an npz with a pickled member, hashed correctly, is still refused
    d = write_bundle(tmp_path / "p")
    buf = io.BytesIO()
    np.savez(buf, **initial_state(), evil=np.array([{"a": 1}], dtype=object))
    (d / "state.npz").write_bytes(buf.getvalue())
    _edit_manifest(d, lambda m: m["files"].update({"state.npz": _sha(buf.getvalue())}))
    with pytest.raises(BundleError, match="not a readable npz without pickles"):
        load_bundle(d)


def test_opset_mismatch(bundle_dir):
    _edit_manifest(bundle_dir, lambda m: m["graphs"]["act"].update(opset=17))
    with pytest.raises(
        BundleError, match="act.onnx imports ai.onnx opset 18, the manifest says 17"
    ):
        load_bundle(bundle_dir)


# -- manifest itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "max_delta",
    [-1, 0, 0.25, [-0.5], [0.5, 0.0], [float("nan")], [float("inf")], [1e39], [], "1", True]
    + [pytest.param(10**400, id="10**400")],
)
def test_max_delta_must_be_positive_and_finite(bundle_dir, no_parsing, max_delta):
    """`rtu-edge export --max-delta -1` used to write such a bundle; run then crashed."""
    _edit_manifest(bundle_dir, lambda m: m["action"].update(max_delta=max_delta))
    with pytest.raises(BundleError, match=r"action.max_delta must be"):
        load_bundle(bundle_dir)


def test_run_with_a_negative_max_delta_bundle_is_a_clear_error(bundle_dir, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    _edit_manifest(bundle_dir, lambda m: m["action"].update(max_delta=[-1.0]))
    r = CliRunner().invoke(app, ["run", str(bundle_dir), "--port", str(tmp_path / "tty")])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit)
    assert "error: BundleError" in r.output and "max_delta" in r.output


@pytest.mark.parametrize("max_delta", [None, [0.25], [3]])
def test_valid_max_delta_loads(bundle_dir, max_delta):
    _edit_manifest(bundle_dir, lambda m: m["action"].update(max_delta=max_delta))
    got = load_bundle(bundle_dir).manifest.action.max_delta
    assert got == (None if max_delta is None else tuple(float(v) for v in max_delta))


@pytest.mark.parametrize("version", [1, 2, 6, 0])
def test_unknown_format_version(bundle_dir, no_parsing, version):
    _edit_manifest(bundle_dir, lambda m: m.update(format_version=version))
    with pytest.raises(BundleError, match=rf"format_version {version!r}; this rtu-edge reads"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("version", ["2", None, True, 2.0])
def test_format_version_of_the_wrong_type(bundle_dir, no_parsing, version):
    _edit_manifest(bundle_dir, lambda m: m.update(format_version=version))
    with pytest.raises(BundleError, match="format_version must be an integer"):
        load_bundle(bundle_dir)


def test_broken_manifest(bundle_dir, tmp_path, no_parsing):
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="is not a directory"):
        load_bundle(tmp_path / "nowhere")
    d = write_bundle(tmp_path / "g")
    _edit_manifest(d, lambda m: m["graphs"].pop("act"))
    with pytest.raises(BundleError, match=r"must describe \['act'\] and may add 'learn'"):
        load_bundle(d)
    d = write_bundle(tmp_path / "h")
    _edit_manifest(d, lambda m: m["files"].update({"act.onnx": "nothex"}))
    with pytest.raises(BundleError, match="lowercase hex SHA-256"):
        load_bundle(d)


def test_malformed_protobuf_with_valid_hash(bundle_dir):
    junk = b"\x0a\xff\xff\xff\xff\x0f" + b"\x00" * 20  # length field far past the end
    (bundle_dir / "act.onnx").write_bytes(junk)
    _edit_manifest(bundle_dir, lambda m: m["files"].update({"act.onnx": _sha(junk)}))
    with pytest.raises(BundleError, match="act.onnx is not a valid ONNX model"):
        load_bundle(bundle_dir)


# -- the robot path imports no torch and no onnx ------------------------------------------


def test_robot_path_imports_neither_torch_nor_onnx(bundle_dir, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from firmware_bridge.bundle import load_bundle
        from firmware_bridge.checkpoints import CheckpointStore
        from firmware_bridge.runtime import StepRunner

        b = load_bundle({str(bundle_dir)!r})
        act = b.runner("act")
        out = act.step(obs=np.zeros((1, 2), np.float32), first=np.ones(1, np.float32))
        store = CheckpointStore({str(tmp_path / "ck")!r})
        store.save(1, act.state(), {{"bundle": b.fingerprint}})
        assert store.load_latest() is not None
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx"))
        print("BAD", bad)
        sys.exit(1 if bad else 0)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_packed_layout_that_does_not_fit_its_buffer_is_refused(bundle_dir):
    """state.packed places tensors in a state tensor; a layout whose sizes do not add up to a
    1-D buffer of that length is refused at load, naming the buffer and the size it needs."""
    _edit_manifest(
        bundle_dir,
        lambda m: m["state"].update(
            packed={"norm.obs_mean": [{"name": "norm.a", "offset": 0, "shape": [OBS + 1]}]}
        ),
    )
    with pytest.raises(BundleError, match=rf"packed buffer 'norm.obs_mean'.*need \[{OBS + 1}\]"):
        load_bundle(bundle_dir)


def test_count_nodes_counts_the_nodes_inside_if_branches():
    """The learn graph's update sits inside an If: its nodes count, at any depth."""
    model = learn_model()
    top = len(model.graph.node)
    assert bundle_mod.count_nodes(model.SerializeToString()) == top

    def branch(name, n_nodes, inner=None):
        nodes = [helper.make_node("Identity", ["x"], ["k"])]
        nodes += [helper.make_node("Identity", ["k"], ["k"]) for _ in range(n_nodes - 1)]
        if inner is not None:
            nodes.append(inner)
        return helper.make_graph(nodes, name, [], [_vi("k", [1])])

    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    model.graph.initializer.append(cond)
    inner = helper.make_node(
        "If", ["cond"], ["j"], then_branch=branch("t2", 2), else_branch=branch("e2", 1)
    )
    model.graph.node.append(
        helper.make_node(
            "If",
            ["cond"],
            ["unused"],
            then_branch=branch("t", 3, inner),
            else_branch=branch("e", 1),
        )
    )
    # the outer If, its branches' 3 + 1 nodes, the inner If and its branches' 2 + 1
    assert bundle_mod.count_nodes(model.SerializeToString()) == top + 1 + 3 + 1 + 1 + 2 + 1
