"""`rtu-edge sweep`: a 2 x 2 grid in parallel processes, killed midway, resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtu_edge.sweep import SweepError, load_spec, run_sweep

ROOT = Path(__file__).resolve().parents[2]


def _spec(tmp_path, steps=600, extra=""):
    p = tmp_path / "sweep.toml"
    p.write_text(
        f'out = "{tmp_path / "sw"}"\nsteps = {steps}\nworkers = 2\n'
        'envs = ["classic/CartPole-P"]\ncells = ["rtu", "mlp"]\nseeds = [0, 1]\n'
        'extra = ["--hidden-size", "4", "--compile", "no"]\n' + extra
    )
    return p


def test_sweep_runs_the_grid_and_skips_what_is_done(tmp_path):
    spec = load_spec(_spec(tmp_path))
    index = run_sweep(spec, log=lambda m: None)
    assert [r["status"] for r in index["runs"]] == ["done"] * 4
    assert {(r["cell"], r["seed"]) for r in index["runs"]} == {
        ("rtu", 0), ("rtu", 1), ("mlp", 0), ("mlp", 1)
    }  # fmt: skip
    for r in index["runs"]:
        assert (tmp_path / "sw" / r["name"] / "summary.json").is_file()
    t0 = time.monotonic()
    again = run_sweep(spec, log=lambda m: None)  # nothing to do
    assert time.monotonic() - t0 < 5 and [r["attempts"] for r in again["runs"]] == [1] * 4


def test_sweep_killed_midway_resumes(tmp_path):
    path = _spec(tmp_path, steps=30_000)
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import cli; cli.app()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "sweep", str(path)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    index_path = tmp_path / "sw" / "index.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for a run to have checkpointed something
        if index_path.exists() and list((tmp_path / "sw").glob("*/metrics.csv")):
            break
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and every run it started
    proc.wait()
    killed = json.loads(index_path.read_text())
    assert any(r["status"] == "running" for r in killed["runs"])
    # resume with a short total so the test stays quick: runs continue or start, then finish
    spec = load_spec(_spec(tmp_path, steps=800))
    index = run_sweep(spec, log=lambda m: None)
    assert [r["status"] for r in index["runs"]] == ["done"] * 4


def test_bad_specs_name_the_field(tmp_path):
    p = tmp_path / "s.toml"
    for text, match in (
        ('out = "x"\nsteps = 10\nenvs = []\ncells = ["rtu"]\n', "envs must be a non-empty list"),
        ('out = "x"\nsteps = 0\nenvs = ["a/b"]\ncells = ["rtu"]\n', "steps must be"),
        ('out = "x"\nenvs = ["a/b"]\ncells = ["rtu"]\n', "missing field 'steps'"),
        ('out = "x"\nsteps = 1\nenvs = ["a/b"]\ncells = ["rtu"]\nbogus = 1\n', "unknown fields"),
        ("not toml = = =", "not valid TOML"),
    ):
        p.write_text(text)
        with pytest.raises(SweepError, match=match):
            load_spec(p)


def test_budgets_are_crossed_and_size_each_cell(tmp_path):
    """`budgets = [B]` runs `train --budget B`: each cell gets the hidden size that fits B."""
    from rtu_edge.cells.budget import param_count, size_for_budget

    p = tmp_path / "s.toml"
    p.write_text(
        f'out = "{tmp_path / "sw"}"\nsteps = 50\nworkers = 2\nenvs = ["classic/CartPole-P"]\n'
        'cells = ["rtu", "mlp"]\nbudgets = [300, 1000]\n'
        'extra = ["--encoder-size", "8", "--compile", "no"]\n'
    )
    index = run_sweep(load_spec(p), log=lambda m: None)
    assert [r["status"] for r in index["runs"]] == ["done"] * 4
    for r in index["runs"]:
        assert r["name"].endswith(f"__b{r['budget']}__s0")
        config = json.loads((tmp_path / "sw" / r["name"] / "config.json").read_text())
        n = config["train"]["net"]["hidden_size"]
        assert n == size_for_budget(r["cell"], 8, r["budget"])
        assert param_count(r["cell"], 8, n) <= r["budget"] < param_count(r["cell"], 8, n + 1)
    p.write_text(p.read_text().replace("[300, 1000]", "[0]"))
    with pytest.raises(SweepError, match="budgets must be positive"):
        load_spec(p)


def test_ray_missing_names_the_extra(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = CliRunner().invoke(app, ["sweep", str(_spec(tmp_path)), "--ray", "local"])
    assert r.exit_code == 1 and "pip install 'rtu-edge[ray]'" in r.output, r.output
    assert "Traceback" not in r.output and not (tmp_path / "sw" / "index.json").exists()


@pytest.mark.slow
def test_sweep_on_a_local_ray_instance(tmp_path):
    """The 2 x 2 grid as Ray tasks on a local instance (2 CPUs): all done, each once; the same
    index rules (a run that keeps failing is retried once, then marked failed)."""
    ray = pytest.importorskip(
        "ray", reason="Ray is an optional extra (pip install 'rtu-edge[ray]'); not installed"
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        index = run_sweep(load_spec(_spec(tmp_path, steps=300)), log=print, ray_address="local")
        assert ray.is_initialized()  # an instance the sweep did not start stays up
        assert [r["status"] for r in index["runs"]] == ["done"] * 4
        assert [r["attempts"] for r in index["runs"]] == [1] * 4
        for r in index["runs"]:
            summary = json.loads((tmp_path / "sw" / r["name"] / "summary.json").read_text())
            assert summary["steps"] == 300 and summary["cell"] == r["cell"]
        again = run_sweep(load_spec(_spec(tmp_path, steps=300)), log=print, ray_address="local")
        assert [r["attempts"] for r in again["runs"]] == [1] * 4  # done runs are skipped
        bad = tmp_path / "bad.toml"  # one run that fails at once, every time
        bad.write_text(
            f'out = "{tmp_path / "bad"}"\nsteps = 50\nenvs = ["classic/CartPole-P"]\n'
            'cells = ["rtu"]\nalgos = ["no-such-learner"]\n'
        )
        index = run_sweep(load_spec(bad), log=print, ray_address="local")
        assert [(r["status"], r["attempts"]) for r in index["runs"]] == [("failed", 2)]
    finally:
        ray.shutdown()


def test_unreachable_ray_address_fails_fast():
    from rtu_edge.sweep import _check_reachable

    t0 = time.monotonic()
    with pytest.raises(SweepError, match="cannot reach Ray at --ray 127.0.0.1:1"):
        _check_reachable("127.0.0.1:1")
    assert time.monotonic() - t0 < 15
    _check_reachable("auto")  # not a host:port: left to ray.init
