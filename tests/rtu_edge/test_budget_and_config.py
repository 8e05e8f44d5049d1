"""The budget helper, the FLOP counter, and `--set` overrides (one source of defaults)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from cli import app
from rtu_edge.cells import CELLS
from rtu_edge.cells.budget import param_count, rtrl_flops, size_for_budget, tbptt_flops
from rtu_edge.config import NetConfig, OverrideError, TrainConfig, apply_overrides
from rtu_edge.flops import count_flops
from rtu_edge.learners.ac import ACConfig


@pytest.mark.parametrize("name", list(CELLS))
def test_size_for_budget_is_the_largest_that_fits(name):
    n = size_for_budget(name, 64, 24_000)
    step = 2 if name == "block-rnn" else 1
    assert param_count(name, 64, n) <= 24_000 < param_count(name, 64, n + step)


def test_paper_budget_sizes():
    # rtu-rtrl.md: RTU n = 192 is 24,960 parameters with a 64-wide encoder; online LRU n ~ 82
    assert param_count("rtu", 64, 192) == 24_960
    assert 81 <= size_for_budget("online-lru", 64, 24_960) <= 83
    assert size_for_budget("gru", 64, 24_960) == 64  # 3 n (d + n + 2) = 24,960


def test_flop_counter_counts_matmuls_and_elementwise_ops():
    a, b = torch.randn(3, 5), torch.randn(5, 7)
    assert count_flops(torch.mm, a, b) == 2 * 3 * 5 * 7
    assert count_flops(lambda: torch.tanh(a) * 2.0) == 2 * 15
    assert count_flops(lambda: a.reshape(5, 3).clone()) == 0


def test_rtrl_cost_is_linear_in_inputs_times_units_and_tbptt_grows_with_t():
    d, n = 64, 192
    f = rtrl_flops("rtu", d, n)
    assert 15 * d * n < f < 35 * d * n  # about 22 n d (onnx-runtime.md's floor estimate)
    assert rtrl_flops("gru", d, n) is None
    t8, t16 = tbptt_flops("gru", d, 64, 8), tbptt_flops("gru", d, 64, 16)
    assert 1.8 < t16 / t8 < 2.2


def test_overrides_parse_by_field_type_and_name_the_choices():
    cfg = TrainConfig(out="x", learner=ACConfig(), net=NetConfig())
    apply_overrides(
        cfg,
        ["learner.lam=0.5", "learner.entropy_td_scaled=false", "net.head_size=7", "steps=99"],
        cell_factory=CELLS["rtu"],
    )
    assert cfg.learner.lam == 0.5 and cfg.learner.entropy_td_scaled is False
    assert cfg.net.head_size == 7 and cfg.steps == 99
    apply_overrides(cfg, ["cell.activation=tanh"], cell_factory=CELLS["rtu"])
    assert cfg.net.cell_options == {"activation": "tanh"}
    for bad, match in (
        ("learner.lambda=0.5", "no such field"),
        ("learner.lam=fast", "expected a number"),
        ("cell.width=3", "has no option 'width'"),
        ("lam", "key=value"),
        ("net=3", "is a group"),
    ):
        with pytest.raises(OverrideError, match=match):
            apply_overrides(cfg, [bad], cell_factory=CELLS["rtu"])


def test_cli_set_reaches_config_json_and_bad_set_is_one_line(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "train", "--out", str(out), "--steps", "200", "--no-progress", "--hidden-size", "4",
            "--cell", "online-lru", "--set", "learner.lam=0.7", "--set", "cell.r_min=0.5",
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert cfg["learner"]["lam"] == 0.7 and cfg["net"]["cell_options"] == {"r_min": 0.5}
    assert json.loads((out / "summary.json").read_text())["flops_per_step"] > 0
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "b"), "--set", "learner.nope=1"])
    assert res.exit_code == 1 and "no such field" in res.output and "Traceback" not in res.output


def test_cli_cells_lists_every_cell_and_learner():
    res = CliRunner().invoke(app, ["cells", "--budget", "24000"])
    assert res.exit_code == 0, res.output
    for name in CELLS:
        assert name in res.output
    assert "ac" in res.output and "lam=0.8" in res.output
