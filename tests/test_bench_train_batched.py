"""benchmarks/bench_train_batched.py: its steady-state rate and its table (no training here)."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    yield load_benchmark("bench_train_batched")
    sys.modules.pop("compare_sb3", None)


def test_steady_rate_is_between_the_first_and_last_episode_end(bench, tmp_path):
    metrics = tmp_path / "metrics.csv"
    header = "step,episode,episode_return,episode_length,steps_per_second,wall_time_s\n"
    metrics.write_text(
        header + "1000,1,-5,1000,50,20.0\n2000,2,-4,1000,70,22.5\n3000,3,-3,1000,90,25.0\n"
    )
    assert bench.steady_rate(metrics) == pytest.approx(2000 / 5.0)  # the 20 s of setup left out
    metrics.write_text(header + "1000,1,-5,1000,50,20.0\n")
    assert bench.steady_rate(metrics) is None


def test_ratios_are_to_eager_and_to_sb3(bench):
    rows = [
        {"name": "eager", "agent_steps_per_s": 100.0, "agent_steps_per_cpu_s": 90.0},
        {"name": "eager", "agent_steps_per_s": 300.0, "agent_steps_per_cpu_s": 110.0},
        {"name": "compiled batch 4", "agent_steps_per_s": 800.0, "agent_steps_per_cpu_s": 500.0},
        {"name": "sb3 RecurrentPPO", "agent_steps_per_s": 40.0, "agent_steps_per_cpu_s": 25.0},
    ]
    table = bench.summarize(rows)
    assert table["eager"]["agent_steps_per_s"] == 200.0  # median over rounds
    fast = table["compiled batch 4"]
    assert fast["agent_steps_per_s_vs_eager"] == pytest.approx(4.0)
    assert fast["agent_steps_per_s_vs_sb3"] == pytest.approx(20.0)
    assert fast["agent_steps_per_cpu_s_vs_eager"] == pytest.approx(5.0)
    text = bench.format_table(table)
    assert "| compiled batch 4 | 800 | 4.00x | 20.00x | 500 | 5.00x | 20.00x |" in text


def test_configs_cover_eager_batches_compiled_and_sb3(bench):
    names = [c[0] for c in bench.configs([4, 8], sb3=True)]
    assert names == [
        "eager",
        "batch 4",
        "batch 8",
        "compiled",
        "compiled batch 4",
        "compiled batch 8",
        "sb3 RecurrentPPO",
    ]
    assert "sb3 RecurrentPPO" not in [c[0] for c in bench.configs([4], sb3=False)]
