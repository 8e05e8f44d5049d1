"""Bad option values give a one-line error and a non-zero exit, never a traceback, and are
refused before anything is opened, trained or written."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli import app


def _refused(args: list[str], *words: str):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit), r.exception  # no traceback
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for w in words:
        assert w in lines[0], r.output
    return lines[0]


@pytest.mark.parametrize(
    "option,value,words",
    [
        ("--baud", "0", ("--baud", "UART rate")),
        ("--baud", "-9600", ("--baud",)),
        ("--steps", "0", ("--steps", "at least 1", "Ctrl-C")),
        ("--steps", "-5", ("--steps",)),
        ("--checkpoint-every", "0", ("--checkpoint-every", "positive")),
        ("--checkpoint-every", "-1", ("--checkpoint-every",)),
        ("--checkpoint-every", "nan", ("--checkpoint-every",)),
        ("--checkpoint-every", "inf", ("--checkpoint-every",)),
    ],
)
def test_run_refuses_bad_numbers_before_loading_anything(tmp_path, option, value, words):
    bundle = tmp_path / "no-bundle"  # never looked at: the option is checked first
    _refused(["run", str(bundle), "--port", str(tmp_path / "tty"), option, value], *words)
    assert not (tmp_path / "no-bundle-checkpoints").exists()


@pytest.fixture
def no_serving(monkeypatch):
    """A sim-robot that got past its checks returns at once instead of waiting for a host."""
    from firmware_bridge.sim_robot import SimRobot

    monkeypatch.setattr(SimRobot, "serve", lambda self, *a, **k: None)


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_sim_robot_refuses_a_bad_watchdog(no_serving, value):
    _refused(["sim-robot", "--watchdog-s", value], "--watchdog-s", "positive")


@pytest.mark.parametrize("value", ["0", "-3"])
def test_sim_robot_refuses_bad_max_steps(no_serving, value):
    _refused(["sim-robot", "--max-steps", value], "--max-steps")


def test_train_refuses_an_out_that_is_a_file(tmp_path):
    out = tmp_path / "run"
    out.write_text("precious")
    for extra in ([], ["--resume"], ["--overwrite"]):
        _refused(["train", "--out", str(out), "--steps", "10", "--no-progress", *extra], str(out))
    assert out.read_text() == "precious"


@pytest.mark.parametrize("value", ["0", "-3"])
def test_train_refuses_bad_steps(tmp_path, value):
    _refused(["train", "--out", str(tmp_path / "r"), "--steps", value], "--steps")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "-inf"])
def test_export_refuses_a_bad_max_delta_before_writing_a_bundle(tmp_path, value):
    out = tmp_path / "bundle"
    _refused(
        ["export", str(tmp_path / "run"), "--out", str(out), f"--max-delta={value}"],
        "--max-delta",
        "positive",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "option,value",
    [
        ("--drop-prob", "-0.1"),
        ("--corrupt-prob", "1.5"),
        ("--duplicate-prob", "nan"),
        ("--garbage-prob", "2"),
        ("--rx-drop-prob", "-1"),
    ],
)
def test_sim_robot_refuses_a_probability_outside_0_1(no_serving, option, value):
    _refused(["sim-robot", option, value], option, "probability in [0, 1]")


@pytest.mark.parametrize("value", ["-0.01", "nan", "inf"])
def test_sim_robot_refuses_a_bad_delay(no_serving, value):
    _refused(["sim-robot", "--delay-s", value], "--delay-s", ">= 0")


@pytest.mark.parametrize("option", ["--reboot-after-steps", "--hang-after-steps"])
def test_sim_robot_refuses_bad_fault_step_counts(no_serving, option):
    _refused(["sim-robot", option, "0"], option, "at least 1")


def test_sim_robot_fault_options_reach_simfaults(monkeypatch):
    from firmware_bridge.sim_robot import SimFaults, SimRobot

    seen = {}
    monkeypatch.setattr(SimRobot, "serve", lambda self, *a, **k: seen.update(f=self.faults))
    args = ["sim-robot", "--drop-prob", "0.1", "--corrupt-prob", "0.2", "--duplicate-prob", "0.3"]
    args += ["--garbage-prob", "0.4", "--rx-drop-prob", "0.5", "--split-writes"]
    args += ["--delay-s", "0.001", "--reboot-after-steps", "7", "--hang-after-steps", "9"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert seen["f"] == SimFaults(
        drop_prob=0.1,
        corrupt_prob=0.2,
        duplicate_prob=0.3,
        split_writes=True,
        garbage_prob=0.4,
        rx_drop_prob=0.5,
        delay_s=0.001,
        reboot_after_steps=7,
        hang_after_steps=9,
    )
    r = CliRunner().invoke(app, ["sim-robot"])
    assert r.exit_code == 0 and seen["f"] == SimFaults()  # defaults: no faults


@pytest.mark.parametrize("value", ["-1", "65536"])
def test_sim_robot_refuses_a_bad_period(no_serving, value):
    _refused(["sim-robot", "--period-ms", value], "--period-ms", "[0, 65535]", "lock-step")


def test_sim_robot_period_reaches_simrobot(monkeypatch):
    from firmware_bridge.sim_robot import SimRobot

    seen = []
    monkeypatch.setattr(SimRobot, "serve", lambda self, *a, **k: seen.append(self.period_s))
    for args, period in ((["--period-ms", "20"], 0.02), ([], 0.0)):
        r = CliRunner().invoke(app, ["sim-robot", *args])
        assert r.exit_code == 0, r.output
        assert seen[-1] == period


@pytest.mark.parametrize("value", ["0", "-5"])
def test_train_refuses_a_bad_budget(tmp_path, value):
    _refused(["train", "--out", str(tmp_path / "r"), "--budget", value], "--budget", "at least 1")


def test_train_refuses_a_budget_too_small_for_the_cell(tmp_path):
    r = CliRunner().invoke(
        app, ["train", "--out", str(tmp_path / "r"), "--budget", "3", "--steps", "10"]
    )
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output  # no traceback
    assert r.output.startswith("error: a budget of 3") and "too small for cell 'rtu'" in r.output


def test_train_refuses_budget_with_resume(tmp_path):
    _refused(
        ["train", "--out", str(tmp_path / "r"), "--resume", "--budget", "2000"],
        "--budget sizes a new run",
    )
