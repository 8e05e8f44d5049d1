"""benchmarks/bench_learn_step.py times the bundle's learn graph (packed, parameters as views),
and its plain ``session.run`` path steps the same numbers as the robot's runner."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bls(load_benchmark):
    return load_benchmark("bench_learn_step")


def test_ort_run_path_follows_the_runner(bls, tmp_path):
    from dataclasses import replace

    from export.bench_sizes import SIZES, build
    from firmware_bridge.bundle import load_bundle

    built = build("tiny-x", replace(SIZES["tiny"]), tmp_path)
    bundle = load_bundle(built.bundle)
    assert bundle.view_inputs("learn"), "the bundle's learn graph reads views"
    run, runner = bls._OrtRun(bundle), bundle.runner("learn")
    rng = np.random.default_rng(1)
    for t in range(30):
        x = bls._inputs(built.agent.obs_size, built.agent.noise_size, rng, t)
        run(x)
        runner.step(**x)
    # the views were sliced from the updated buffer every step: the same state as the runner's
    got, want = run.state, runner.state()
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    start = bundle.initial_state()
    assert not np.array_equal(got["params.flat"], start["params.flat"]), "it learned"


def test_reports_each_size_and_path(bls, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bls, "BENCH_SIZES", ("tiny",))
    out = tmp_path / "ls.json"
    bls.main(["--steps", "20", "--cells", "rtu", "--out", str(out)])
    import json

    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["cell"] == "rtu" and row["size"].startswith("tiny")
    assert set(row["results"]) == {"torch", "ort-run", "ort-bind"}
    assert row["results"]["torch"]["speedup_vs_torch_p50"] == 1.0
    assert row["nodes"] > 0 and row["carried_floats"] > 0
    assert "ort-bind" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message", [(["--cells", "nope"], "--cells must name"), (["--steps", "5"], "at least 10")]
)
def test_bad_arguments_are_refused(bls, args, message, capsys):
    with pytest.raises(SystemExit):
        bls.main(args)
    assert message in capsys.readouterr().err
