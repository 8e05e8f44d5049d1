"""train -> export: real dynamo export, real onnxruntime, parity against the torch step."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from export.bundle import (
    ExportConfig,
    check_standard_ops,
    export_graph,
    export_graphs,
    export_run,
    packing_of,
)
from export.parity import PARITY_TOL, ParityError, check_parity
from firmware_bridge import contract as C
from rtu_edge import packing as P
from rtu_edge.config import NetConfig
from rtu_edge.learners.ac import ACConfig
from rtu_edge.train import TrainConfig, load_run, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Small trained runs: discrete/linear (the default env), continuous/non-linear, MuJoCo, and
    one with LayerNorm."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, env, cell, ln in (
        ("cartpole", "classic/CartPole-P", "rtu", False),
        ("pendulum", "classic/Pendulum-P", "rtu-nonlinear", False),
        ("cheetah", "mujoco/HalfCheetah-P", "rtu", False),
        ("pendulum-ln", "classic/Pendulum-P", "rtu", True),
    ):
        net = NetConfig(cell=cell, hidden_size=8, layer_norm=ln)
        cfg = TrainConfig(out=str(root / name), env=env, steps=600, net=net)
        train(cfg, progress=False)
        out[name] = root / name
    return out


@pytest.mark.parametrize("name", ["cartpole", "pendulum", "cheetah", "pendulum-ln"])
def test_export_writes_a_verified_bundle(runs, tmp_path, name):
    bundle = tmp_path / "bundle"
    manifest = export_run(
        ExportConfig(run_dir=str(runs[name]), out=str(bundle), parity_steps=200), log=lambda m: None
    )
    assert manifest["format_version"] == C.FORMAT_VERSION
    assert manifest["parity"]["ok"] and manifest["parity"]["worst_rel"] <= PARITY_TOL
    assert manifest["parity"]["steps"] >= 200
    for file, sha in manifest["files"].items():
        assert hashlib.sha256((bundle / file).read_bytes()).hexdigest() == sha
    for graph in ("learn", "act"):
        model = onnx.load(str(bundle / f"{graph}.onnx"))
        check_standard_ops(model)  # full checker + default domain only
        assert model.opset_import[0].version == 18
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
        spec = manifest["graphs"][graph]
        assert [i.name for i in model.graph.input] == [i["name"] for i in spec["inputs"]]
        assert [o.name for o in model.graph.output] == [o["name"] for o in spec["outputs"]]
    learn_in = {i["name"] for i in manifest["graphs"]["learn"]["inputs"]}
    learn_out = {o["name"] for o in manifest["graphs"]["learn"]["outputs"]}
    # every carried tensor goes in and comes out; the step inputs and outputs are there
    for n in manifest["state"]["names"]:
        assert n in learn_in and f"{n}.next" in learn_out
    assert {"obs", "reward", "first", "terminal", "noise"} <= learn_in
    assert {"action", "value", "td_error"} <= learn_out
    with np.load(bundle / "state.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(manifest["state"]["names"])
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["protocol"]["schema_hash"].startswith("0x")


def test_parity_check_catches_a_graph_that_differs(runs):
    """Export the learn step with another discount: the check must see it."""
    run, state = load_run(runs["cartpole"])
    packing = packing_of(run.learner, run.agent, state)
    state = P.pack(state, packing)  # as export_run does
    ac = run.train.learner
    wrong = ACConfig(**{**ac.to_dict(), "gamma": 0.5})
    models, plans = export_graphs(run.learner, ac, run.agent, state, cfgs={"learn": wrong})
    blobs = {g: m.SerializeToString() for g, m in models.items()}
    report = check_parity(run, state, blobs, plans, steps=200, packing=packing)
    assert not report.ok
    assert report.worst_rel > 1e-3
    assert "params.flat" not in report.worst_name  # a packed output is judged tensor by tensor
    with pytest.raises(ParityError, match="NOT written"):
        raise ParityError(report)


@pytest.mark.parametrize("name", ["cartpole", "pendulum"])
def test_act_graph_reads_its_constants_from_act_prepare(runs, tmp_path, name):
    """The RTU's lam and its gamma-scaled input weights (rtu_math.act_constants) and the
    observation std are computed once per loaded state by act_prepare.onnx, not per tick by
    act.onnx, and act gives torch's act_step on any state loaded later (a checkpoint's), not
    only on the bundle's own."""
    from firmware_bridge.bundle import load_bundle

    bundle = tmp_path / "bundle"
    manifest = export_run(
        ExportConfig(run_dir=str(runs[name]), out=str(bundle), parity_steps=200), log=lambda m: None
    )
    prep = manifest["graphs"]["act"]["prepare"]
    assert prep["file"] == "act_prepare.onnx"
    assert {o["name"] for o in prep["outputs"]} == {
        "prep.norm.obs_std",
        "prep.cell.lam_diag",
        "prep.cell.lam_cross",
        "prep.cell.w_in",
    }
    act_ops = {n.op_type for n in onnx.load(str(bundle / "act.onnx")).graph.node}
    assert not act_ops & {"Exp", "Sin", "Cos", "Sqrt"}, act_ops  # nothing derived per tick
    prep_ops = {n.op_type for n in onnx.load(str(bundle / "act_prepare.onnx")).graph.node}
    assert {"Exp", "Sin", "Cos", "Sqrt"} <= prep_ops
    act_inputs = {i["name"] for i in manifest["graphs"]["act"]["inputs"]}
    assert not act_inputs & {"norm.obs_count", "norm.obs_m2", "params.cell.nu_log"}
    assert not act_inputs & {"params.cell.w1", "params.cell.w2"}  # read as prep.cell.w_in

    b = load_bundle(bundle)
    run, trained = load_run(runs[name])
    packing = packing_of(run.learner, run.agent, trained)
    # another state: every parameter and statistic moved, as after learning on the robot
    other = {k: v * 1.1 + 0.01 for k, v in P.pack(trained, packing).items()}
    state_np = {k: v.numpy() for k, v in other.items()}
    runner = b.runner("act", state_np)
    carry = {k: v for k, v in other.items() if k.startswith("carry.")}
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for t in range(20):
            obs = rng.normal(size=(1, run.agent.obs_size)).astype(np.float32)
            first = np.array([float(t == 0)], np.float32)
            got = runner.step(obs=obs, first=first)
            inputs = {"obs": torch.from_numpy(obs), "first": torch.from_numpy(first)}
            carry, want = run.learner.act_step(run.train.learner, run.agent, other | carry, inputs)
            for k, v in want.items():
                np.testing.assert_allclose(got[k], v.numpy(), rtol=1e-5, atol=1e-6)


def test_export_refuses_existing_bundle_and_missing_run(runs, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_run(ExportConfig(run_dir=str(runs["cartpole"]), out=str(out)), log=lambda m: None)
    assert (out / "keep.txt").read_text() == "user data"
    with pytest.raises(ValueError, match="rtu-edge train"):
        export_run(
            ExportConfig(run_dir=str(tmp_path / "nope"), out=str(tmp_path / "c")),
            log=lambda m: None,
        )


def test_float64_learn_graph_teacher_forced_is_tight(runs):
    """In float64 the graph must match torch far below float32 rounding, step by step.

    Not to 1e-12: the dynamo exporter stores Python float constants (gamma=0.99, eps, ...)
    rounded to float32 even in a float64 graph, which moves results by ~1e-8."""
    import onnxruntime as ort

    from rtu_edge.learners.ac import ac_step

    run, state = load_run(runs["cartpole"])
    agent, ac = run.agent, run.train.learner
    layout = packing_of(run.learner, agent, state)
    state = P.pack(state, layout)
    state = {k: v.double() for k, v in state.items()}
    carried = list(state)
    step_names = ["obs", "reward", "first", "terminal", "noise"]
    model = export_graph(run.learner, "learn", ac, agent, state)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(0)
    worst = 0.0
    with torch.inference_mode():
        for t in range(200):
            x = {
                "obs": rng.standard_normal((1, agent.obs_size)),
                "reward": rng.standard_normal(1),
                "first": np.array([1.0 if t % 100 == 0 else 0.0]),
                "terminal": np.zeros(1),
                "noise": rng.gumbel(size=(1, agent.noise_size)),
            }
            feeds = P.with_views(state, layout)  # the parameters by name too (views)
            names = {i.name for i in sess.get_inputs()}
            feeds = {k: v.numpy() for k, v in feeds.items() if k in names}
            res = dict(zip(outs, sess.run(None, feeds | x)))
            tx = {k: torch.from_numpy(v) for k, v in x.items()}
            new, *_ = ac_step(ac, agent, state, *(tx[k] for k in step_names))
            for k in carried:
                ref = new[k].numpy()
                err = np.abs(res[f"{k}.next"] - ref).max() / max(1.0, np.abs(ref).max())
                worst = max(worst, err)
            state.update(new)
    assert worst < 1e-6, worst


def test_export_cli_prints_what_it_did_and_nothing_else(runs, tmp_path):
    """No third-party chatter (torch.onnx progress lines, "torchvision is not installed")."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "export",
            str(runs["cartpole"]),
            "--out",
            str(tmp_path / "b"),
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert [ln.split()[0] for ln in lines] == ["exported", "parity:", "bundle"], lines


def test_check_standard_ops_looks_inside_if_branches():
    """The learn graph's update sits in an If: a custom-domain op there is refused too."""

    def branch(name, domain):
        node = helper.make_node("Relu", ["x"], ["y"], domain=domain)
        out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        return helper.make_graph([node], name, [], [out])

    def model(domain):
        node = helper.make_node(
            "If", ["c"], ["o"], then_branch=branch("t", domain), else_branch=branch("e", "")
        )
        graph = helper.make_graph(
            [node],
            "g",
            [
                helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
            ],
            [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1])],
        )
        opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)]
        return helper.make_model(graph, opset_imports=opsets)

    check_standard_ops(model(""))  # a standard If with standard branches passes
    with pytest.raises(RuntimeError, match="com.example::Relu"):
        check_standard_ops(model("com.example"))


@pytest.mark.parametrize("name", ["cartpole", "pendulum"])
def test_learn_graph_reads_the_parameters_as_views_of_params_flat(runs, tmp_path, name):
    """Bundle format 5: learn.onnx reads each parameter by its own name (a view of the
    params.flat it carries, bound by the runtime to the buffer's current value) instead of
    splitting params.flat on every tick. Over many learning steps the runner follows torch's
    learn_step; the same graph fed the parameters as copies made once (what a format-4
    runtime would bind) drifts away, so the views are what keeps it right."""
    from firmware_bridge.bundle import load_bundle
    from firmware_bridge.runtime import StepRunner

    bundle = tmp_path / "bundle"
    export_run(
        ExportConfig(run_dir=str(runs[name]), out=str(bundle), parity_steps=200), log=lambda m: None
    )
    b = load_bundle(bundle)
    learn = onnx.load(str(bundle / "learn.onnx"))
    flat = next(buf for buf in b.manifest.packing if buf.name == "params.flat")
    packed = {t.name for t in flat.tensors}
    inputs = {i.name for i in learn.graph.input}
    assert "params.flat" in inputs
    assert packed <= inputs  # every parameter read by name
    splits = [n for n in learn.graph.node if n.op_type == "Split" and "params.flat" in n.input]
    assert not splits  # params.flat is read by the update only
    runner = b.runner("learn")
    assert set(runner.view_names) == packed and not set(runner.view_names) & set(runner.state())

    run, trained = load_run(runs[name])
    state = P.pack(trained, packing_of(run.learner, run.agent, trained))
    stale = StepRunner(b.session("learn"), b.graph_state("learn"))  # views as constants
    spec = b.manifest.graphs["learn"]
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for t in range(60):
            values = {
                "obs": rng.normal(size=(1, run.agent.obs_size)).astype(np.float32),
                "reward": np.array([rng.normal()], np.float32),
                "first": np.array([float(t == 0)], np.float32),
                "terminal": np.zeros(1, np.float32),
                "noise": C.sample_noise(b.manifest.noise, rng),
            }
            feed = {s.name: values[s.source] for s in spec.step_inputs}
            got, old = runner.step(**feed), stale.step(**feed)
            tin = {k: torch.from_numpy(v) for k, v in feed.items()}
            state, want = run.learner.learn_step(run.train.learner, run.agent, state, tin)
            np.testing.assert_allclose(got["value"], want["value"].numpy(), rtol=1e-4, atol=1e-5)
    params = runner.state()["params.flat"]
    np.testing.assert_allclose(params, state["params.flat"].numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(params, b.initial_state()["params.flat"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(old["value"], got["value"], rtol=1e-4, atol=1e-5)

    # the manifest says format 5, and says each view's shape right; else the bundle is refused
    import shutil

    from firmware_bridge.bundle import BundleError

    def edited(fn):
        copy = tmp_path / f"edited-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(bundle, copy)
        m = json.loads((copy / "manifest.json").read_text())
        fn(m)
        (copy / "manifest.json").write_text(json.dumps(m))
        return copy

    old_format = edited(lambda m: m.update(format_version=4))
    with pytest.raises(BundleError, match=r"graphs.learn reads .* \(views of the buffer\), which"):
        load_bundle(old_format)

    def misshape(m):
        view = next(i for i in m["graphs"]["learn"]["inputs"] if i["name"] == "params.enc.w")
        view["shape"] = [1, *view["shape"]]

    with pytest.raises(BundleError, match=r"reads 'params.enc.w' as float32\[1, .* a view of"):
        load_bundle(edited(misshape))
