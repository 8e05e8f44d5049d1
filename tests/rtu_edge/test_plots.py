"""`rtu-edge plot` and the per-run learning curve (matplotlib, real files)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from rtu_edge.config import NetConfig
from rtu_edge.plots import curve_on_grid, find_runs, group_curves, run_value
from rtu_edge.train import TrainConfig, train


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    for cell in ("rtu", "mlp"):
        for seed in (0, 1):
            net = NetConfig(cell=cell, hidden_size=4)
            train(
                TrainConfig(out=str(root / f"{cell}-{seed}"), steps=400, seed=seed, net=net),
                progress=False,
            )
    return root


def test_curve_on_grid_holds_the_last_moving_average():
    steps, rets = np.array([10.0, 20.0, 30.0]), np.array([1.0, 3.0, 5.0])
    got = curve_on_grid(steps, rets, np.array([5.0, 10.0, 25.0, 40.0]), window=2)
    assert np.isnan(got[0]) and list(got[1:]) == [1.0, 2.0, 4.0]


def test_groups_average_over_seeds_with_a_band(sweep):
    runs = find_runs([sweep])
    assert len(runs) == 4
    groups = group_curves(runs, "cell")
    assert sorted(groups) == ["mlp", "rtu"]
    for g in groups.values():
        assert g["seeds"] == 2
        ok = np.isfinite(g["mean"])
        assert ok.any() and (g["low"][ok] <= g["mean"][ok]).all()
        assert (g["high"][ok] >= g["mean"][ok]).all()


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_cli_plot_writes_the_figure(sweep, tmp_path, suffix):
    out = tmp_path / f"fig{suffix}"
    r = CliRunner().invoke(app, ["plot", str(sweep), "--out", str(out), "--group", "cell"])
    assert r.exit_code == 0, r.output
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in data[:400]
    assert "rtu: 2 seed(s)" in r.output and "mlp: 2 seed(s)" in r.output


def test_cli_plot_bad_input_is_one_line(tmp_path):
    r = CliRunner().invoke(app, ["plot", str(tmp_path / "none"), "--out", str(tmp_path / "f.png")])
    assert r.exit_code == 1 and "does not exist" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["plot", str(tmp_path), "--out", str(tmp_path / "f.gif")])
    assert r.exit_code == 2 and ".png or .svg" in r.output


# ---- summary figures: one point per run -------------------------------------------------


def _fake_run(root, name, cell, seed, summary, learner=None, hidden=8):
    """A run directory with hand-written config.json / summary.json (exact numbers)."""
    d = root / name
    d.mkdir(parents=True)
    train_cfg = {
        "env": "animal/trace-conditioning",
        "algo": "td",
        "seed": seed,
        "steps": 100,
        "net": {"cell": cell, "hidden_size": hidden},
        "learner": learner or {"truncation": 16, "mode": "auto"},
    }
    (d / "config.json").write_text(json.dumps({"train": train_cfg, "env_info": {}}))
    (d / "metrics.csv").write_text("step,episode,episode_return\n10,1,1.0\n")
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    return d


@pytest.fixture()
def study(tmp_path):
    """rtu (RTRL: no "gradient" key, as the tick-by-tick loop wrote before it had one) and gru T-BPTT at two
    budgets, 3 seeds each; gru at T = 4 and 16 for the time-per-step figure."""
    root = tmp_path / "study"
    for seed, (m1, m2) in enumerate([(1.0, 0.5), (2.0, 0.7), (3.0, 0.9)]):
        for flops, m in ((1000, m1), (4000, m2)):
            _fake_run(
                root, f"rtu-{flops}-{seed}", "rtu", seed,
                {"msre": m, "flops_per_step": flops, "steps_per_second": 1000.0 * (seed + 1)},
            )  # fmt: skip
        for t, sps in ((4, 500.0), (16, 125.0)):
            _fake_run(
                root, f"gru-T{t}-{seed}", "gru", seed,
                {"msre": 5.0 + seed, "flops_per_step": 2000 * t, "steps_per_second": sps,
                 "gradient": f"tbptt{t}"},
                learner={"truncation": t, "mode": "auto"},
            )  # fmt: skip
    return root


def test_summary_series_averages_seeds_with_a_t_interval(study):
    from rtu_edge.plots import summary_series

    s = summary_series(find_runs([study]), "flops_per_step", "msre", by="cell,gradient")
    assert sorted(s) == ["gru tbptt16", "gru tbptt4", "rtu rtrl"]
    rtu = s["rtu rtrl"]
    assert list(rtu["x"]) == [1000.0, 4000.0] and list(rtu["n"]) == [3, 3]
    assert np.allclose(rtu["mean"], [2.0, 0.7])
    # 3 seeds: t(2) = 4.303, sd of (1, 2, 3) = 1, so half width 4.303 / sqrt(3)
    assert np.allclose(rtu["high"] - rtu["mean"], [4.303 / np.sqrt(3), 4.303 * 0.2 / np.sqrt(3)])
    assert np.allclose(rtu["mean"] - rtu["low"], rtu["high"] - rtu["mean"])
    assert list(s["gru tbptt4"]["x"]) == [8000.0] and np.allclose(s["gru tbptt4"]["mean"], [6.0])
    # grouping by cell alone merges gru's two truncations into one line, sorted by x
    by_cell = summary_series(find_runs([study]), "flops_per_step", "msre", by="cell")
    assert list(by_cell["gru"]["x"]) == [8000.0, 32000.0]


def test_summary_series_time_per_step_vs_truncation(study):
    from rtu_edge.plots import PlotError, summary_series

    runs = [r for r in find_runs([study]) if "rtu-4000" not in r.name]
    s = summary_series(runs, "learner.truncation", "us_per_step", by="cell,gradient_kind")
    assert sorted(s) == ["gru tbptt", "rtu rtrl"]
    assert list(s["gru tbptt"]["x"]) == [4.0, 16.0]
    assert np.allclose(s["gru tbptt"]["mean"], [2000.0, 8000.0])  # 1e6 / steps_per_second
    assert np.allclose(s["gru tbptt"]["low"], s["gru tbptt"]["mean"])  # equal seeds: no width
    assert np.allclose(s["rtu rtrl"]["mean"], [np.mean([1e6 / 1000, 1e6 / 2000, 1e6 / 3000])])
    # rtu's two budgets at one T and seed: a point may not mix them
    with pytest.raises(PlotError, match="share group 'rtu rtrl'.*seed 0"):
        summary_series(find_runs([study]), "learner.truncation", "us_per_step", by="cell,gradient")


def test_one_seed_has_no_interval_and_t_quantiles():
    from rtu_edge.plots import ci95_half_width, t975

    assert ci95_half_width(np.array([3.0])) == 0.0
    assert np.allclose(t975([1, 2, 30, 31, 1000]), [12.706, 4.303, 2.042, 1.96, 1.96])


def test_cli_summary_figure_is_written_with_its_numbers(study, tmp_path):
    out = tmp_path / "msre.png"
    args = ["plot", str(study), "--x", "flops_per_step", "--y", "msre"]
    r = CliRunner().invoke(app, [*args, "--by", "cell,gradient", "--logx", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_bytes().startswith(b"\x89PNG")
    assert "rtu rtrl:" in r.output and "flops_per_step=1000  msre=2  " in r.output
    assert "n=3" in r.output
    out = tmp_path / "t.svg"
    args = ["plot", str(study), "--x", "learner.truncation", "--y", "us_per_step", "--flat"]
    r = CliRunner().invoke(
        app, [*args, "--by", "cell,gradient_kind,flops_per_step", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    assert b"<svg" in out.read_bytes()[:400] and "rtu rtrl flops_per_step=1000:" in r.output


def test_cli_summary_errors_are_one_line(study, tmp_path):
    out = str(tmp_path / "f.png")
    base = ["plot", str(study), "--out", out]

    def run(*args):
        r = CliRunner().invoke(app, [*base, *args])
        assert r.exit_code != 0 and "Traceback" not in r.output and r.exception is not None
        assert isinstance(r.exception, SystemExit)
        return r.output

    assert "unknown --y key 'bogus'" in run("--x", "flops_per_step", "--y", "bogus")
    assert "keys: " in run("--x", "nope.deep", "--y", "msre")
    assert "unknown --by key 'colour'" in run(
        "--x", "flops_per_step", "--y", "msre", "--by", "colour"
    )
    assert "needs both --x and --y" in run("--x", "flops_per_step")
    msg = run("--x", "cell", "--y", "msre")
    assert "'cell' of run" in msg and "not a number" in msg
    # a run lacking the key: named, and --skip-missing leaves it out
    _fake_run(study, "unfinished", "rtu", 9, None)
    msg = run("--x", "flops_per_step", "--y", "msre")
    assert "unfinished" in msg and "--skip-missing" in msg and len(msg.strip().splitlines()) == 1
    r = CliRunner().invoke(app, [*base, "--x", "flops_per_step", "--y", "msre", "--skip-missing"])
    assert r.exit_code == 0, r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    r = CliRunner().invoke(app, ["plot", str(empty), "--x", "a", "--y", "b", "--out", out])
    assert r.exit_code == 1 and "holds no run directory" in r.output


def test_real_runs_summary_and_curves_by_two_keys(sweep, tmp_path):
    """The module fixture's trained runs: flops_per_step and us_per_step from real summaries."""
    from rtu_edge.plots import summary_series

    s = summary_series(find_runs([sweep]), "net.hidden_size", "us_per_step", by="cell,gradient")
    assert sorted(s) == ["mlp rtrl", "rtu rtrl"] and all(list(g["n"]) == [2] for g in s.values())
    assert all((g["mean"] > 0).all() for g in s.values())
    for r in find_runs([sweep]):  # the tick-by-tick loop writes its gradient too
        assert json.loads((r / "summary.json").read_text())["gradient"] == "rtrl"
        assert run_value(r, "gradient_kind") == "rtrl" and run_value(r, "net.hidden_size") == 4
    curves = group_curves(find_runs([sweep]), "cell,algo")
    assert sorted(curves) == ["mlp ac", "rtu ac"]


def test_where_keeps_the_matching_runs(study, tmp_path):
    from rtu_edge.plots import PlotError, select_runs

    runs = find_runs([study])
    assert len(select_runs(runs, ["cell=gru"])) == 6
    assert len(select_runs(runs, ["cell=gru,rtu", "learner.truncation=4"])) == 3
    assert len(select_runs(runs, ["flops_per_step=1000"])) == 3  # numbers compare as numbers
    with pytest.raises(PlotError, match="no run matches --where cell=lru"):
        select_runs(runs, ["cell=lru"])
    with pytest.raises(PlotError, match="unknown --where key 'colour'"):
        select_runs(runs, ["colour=red"])
    with pytest.raises(PlotError, match="expected KEY=VALUE"):
        select_runs(runs, ["cell"])
    out = tmp_path / "f.png"
    args = ["plot", str(study), "--x", "learner.truncation", "--y", "us_per_step"]
    r = CliRunner().invoke(app, [*args, "--where", "gradient_kind=tbptt", "--out", str(out)])
    assert r.exit_code == 0 and "gru:" in r.output and "rtu" not in r.output, r.output
