"""`rtu-edge plot` and the per-run learning curve (matplotlib, real files)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from rtu_edge.config import NetConfig
from rtu_edge.plots import curve_on_grid, find_runs, group_curves
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
