"""benchmarks/dispatch_floor.py: its probes are the graphs they claim, its counts are the
step's, and its report holds together (not its timings)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest


@pytest.fixture(scope="module")
def dispatch_floor(load_benchmark):
    return load_benchmark("dispatch_floor")


def test_probes_compute_what_they_say(dispatch_floor):
    import onnxruntime as ort

    def run(blob, feeds):
        s = ort.InferenceSession(blob, providers=["CPUExecutionProvider"])
        return s.run(None, feeds)

    x = np.full((1, 32), 2.0, np.float32)
    (y,) = run(dispatch_floor.node_chain(5), {"x": x})
    np.testing.assert_allclose(y, x * np.float32(1.0001) ** 5, rtol=1e-6)
    assert len(onnx.load_from_string(dispatch_floor.node_chain(5)).graph.node) == 5
    feeds = {f"x{i}": np.array([float(i)], np.float32) for i in range(4)}
    assert run(dispatch_floor.input_fan(4), feeds)[0][0] == 6.0
    outs = run(dispatch_floor.output_fan(3), {"x": x})
    assert len(outs) == 3 and all(np.allclose(o, x * 1.0001) for o in outs)


def test_counts_the_aten_ops_of_a_step(dispatch_floor):
    import torch

    calls = []

    def step(_inputs):
        a = torch.ones(3)
        calls.append((a * 2 + 1).sum())

    # ones, mul, add, sum: four aten ops, whatever Python does around them
    assert dispatch_floor.aten_ops_per_step(step, {}) == 4
    assert len(calls) == 1


def test_report_on_the_tiny_size(dispatch_floor, tmp_path, capsys):
    out = tmp_path / "floor.json"
    dispatch_floor.main(["--sizes", "tiny", "--steps", "20", "--rounds", "2", "--json", str(out)])
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    (size,) = report["sizes"]
    assert size["name"] == "tiny" and size["target"] is None and size["nodes_for_target"] is None
    # the counts are the exported graph's and the eager step's, not guesses
    assert size["ort_nodes"] > 100 and size["torch_aten_ops"] > size["ort_nodes"] / 2
    assert size["ort_inputs"] > 10 and size["ort_outputs"] > 10
    f = report["fixed_costs"]
    assert f["ort_per_node_us"] > 0 and f["torch_per_op_us"] > 0
    # the floor is the model the docstring gives, from the fixed costs and the counts
    floor = (
        f["ort_base_us"]
        + size["ort_inputs"] * f["ort_per_input_us"]
        + size["ort_outputs"] * max(f["ort_per_output_us"], 0.0)
        + size["ort_nodes"] * f["ort_per_node_us"]
    )
    assert size["ort_floor_us"] == pytest.approx(floor)
    assert size["torch_over_ort_floor"] == pytest.approx(size["torch_p50_us"] / floor)
    assert report["meta"]["command"].startswith("python benchmarks/dispatch_floor.py")
    assert "tiny" in text and "t/floor" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sizes", "huge"], "--sizes must name"),
        (["--steps", "0"], "--steps and --rounds"),
        (["--steps", "5", "--rounds", "9"], "--steps and --rounds"),
    ],
)
def test_bad_arguments_are_refused(dispatch_floor, args, message, capsys):
    with pytest.raises(SystemExit):
        dispatch_floor.main(args)
    assert message in capsys.readouterr().err
