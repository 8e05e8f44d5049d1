"""benchmarks/compare_sb3.py: its arguments and its final-return rule (sb3-contrib not needed)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def compare(load_benchmark):
    return load_benchmark("compare_sb3")


def test_help_exits_cleanly(compare, capsys):
    with pytest.raises(SystemExit) as e:
        compare.parse_args(["--help"])
    assert e.value.code == 0
    assert "RecurrentPPO" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--agents", "ac,a2c"], "--agents"),
        (["--seeds", "0,x"], "--seeds"),
        (["--steps", "0"], "--steps"),
        (["--envs", "classic/CartPol-P"], "--envs"),
        (["--throughput-steps", "-1"], "--throughput-steps"),
    ],
)
def test_bad_arguments_are_usage_errors(compare, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        compare.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_cover_two_env_ids_and_all_agents(compare):
    a = compare.parse_args([])
    assert a.env_list == ["classic/CartPole-P", "mujoco/HalfCheetah-P"]
    assert a.agent_list == ["ac", "ppo", "sb3"]
    assert a.seed_list == [0]


def test_final_return_is_the_last_ten_percent_as_in_train(compare):
    returns = [(100, 1.0), (899, 2.0), (900, 3.0), (1000, 5.0)]
    assert compare.final_return(returns, 1000) == 4.0
    assert compare.final_return([(10, 7.0)], 1000) == 7.0  # none in the tail: the last one
    assert compare.final_return([], 1000) is None
