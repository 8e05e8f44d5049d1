"""Training runs on each environment family and writes a complete run directory."""

from __future__ import annotations

import csv
import json

import pytest

from rtu_edge.config import NetConfig
from rtu_edge.train import TrainConfig, load_run, train


@pytest.mark.parametrize(
    "env,cell",
    [
        ("mujoco/HalfCheetah-P", "rtu-nonlinear"),
        ("mujoco/Ant-V", "rtu"),
        ("popgym/RepeatFirstEasy", "rtu-nonlinear"),
        ("classic/Pendulum-P", "rtu"),
    ],
)
def test_train_smoke_on_each_family(tmp_path, env, cell):
    out = tmp_path / "run"
    summary = train(
        TrainConfig(out=str(out), env=env, steps=250, net=NetConfig(cell=cell, hidden_size=4)),
        progress=False,
    )
    assert summary["non_finite_updates"] == 0
    assert summary["steps_per_second"] > 0
    run, state = load_run(out)
    agent = run.agent
    assert run.train.env == env and agent.net.cell == cell
    assert all(bool(v.isfinite().all()) for v in state.values())
    # parameters moved away from their initial values: the learner updated them
    from rtu_edge.learners.ac import initial_state

    init = initial_state(agent, seed=0)
    assert any(not (state[k] == init[k]).all() for k in init if k.startswith("params."))
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    if rows:
        assert int(rows[-1]["step"]) <= 250
    assert json.loads((out / "summary.json").read_text())["env"] == env


def test_train_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown cell"):
        train(
            TrainConfig(out=str(tmp_path / "a"), net=NetConfig(cell="lstm"), steps=10),
            progress=False,
        )
    with pytest.raises(ValueError, match="unknown algo"):
        train(TrainConfig(out=str(tmp_path / "b"), algo="sac", steps=10), progress=False)
    with pytest.raises(ValueError, match="steps"):
        train(TrainConfig(out=str(tmp_path / "c"), steps=0), progress=False)


def test_same_seed_same_run(tmp_path):
    net = NetConfig(hidden_size=4)
    a = train(TrainConfig(out=str(tmp_path / "a"), steps=400, net=net), progress=False)
    b = train(TrainConfig(out=str(tmp_path / "b"), steps=400, net=net), progress=False)
    assert (tmp_path / "a" / "metrics.csv").read_text().split("\n")[1:][:5] and a["episodes"] == b[
        "episodes"
    ]
    _, sa = load_run(tmp_path / "a")
    _, sb = load_run(tmp_path / "b")
    for k in sa:
        assert (sa[k] == sb[k]).all(), k


def test_resume_continues_from_the_checkpoint(tmp_path):
    """An interrupted run (here: one that ended at 300 steps) continues to a new total."""
    from rtu_edge.train import resume_config

    out = tmp_path / "run"
    cfg = TrainConfig(out=str(out), steps=300, net=NetConfig(hidden_size=4), checkpoint_every=100)
    train(cfg, progress=False)
    _, before = load_run(out)
    rows_before = (out / "metrics.csv").read_text().splitlines()
    summary = train(resume_config(out, steps=700), progress=False)
    assert summary["steps"] == 700
    _, after = load_run(out)
    assert any(not (after[k] == before[k]).all() for k in before if k.startswith("params."))
    rows_after = (out / "metrics.csv").read_text().splitlines()
    assert rows_after[: len(rows_before)] == rows_before  # history kept
    steps = [int(r.split(",")[0]) for r in rows_after[1:]]
    assert steps == sorted(steps) and steps[-1] > 300
    with pytest.raises(ValueError, match="larger --steps"):
        train(resume_config(out), progress=False)


def test_resume_needs_a_run(tmp_path):
    from rtu_edge.train import resume_config

    with pytest.raises(ValueError, match="rtu-edge train"):
        resume_config(tmp_path / "nope")


def test_sigterm_saves_progress_and_resume_continues(tmp_path):
    """A killed training run (SIGTERM, e.g. from a scheduler) keeps what it learned."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from safetensors import safe_open

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "train",
            "--out",
            str(out),
            "--steps",
            "1000000",
            "--no-progress",
            "--hidden-size",
            "4",
            "--compile",
            "no",
        ],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "metrics.csv").exists():
        time.sleep(0.2)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err
    with safe_open(str(out / "checkpoint.safetensors"), framework="pt") as f:
        step = int(f.metadata()["step"])
    assert step > 0
    from rtu_edge.train import resume_config

    summary = train(resume_config(out, steps=step + 200), progress=False)
    assert summary["steps"] == step + 200


@pytest.mark.slow
def test_compiled_learn_step_matches_eager(tmp_path):
    """torch.compile of the learn step (used for long runs) computes the same step."""
    import torch

    from rtu_edge.learners.ac import ACConfig, initial_state
    from rtu_edge.train import agent_config_for, make_step_fn

    cfg = TrainConfig(out=str(tmp_path), net=NetConfig(hidden_size=4), compile="yes")
    cfg.learner = ACConfig()
    agent = agent_config_for(cfg)
    state = initial_state(agent)
    messages = []
    compiled = make_step_fn(cfg, agent, state, log=messages.append)
    eager_cfg = TrainConfig(out=str(tmp_path), net=NetConfig(hidden_size=4), compile="no")
    eager_cfg.learner = cfg.learner
    eager = make_step_fn(eager_cfg, agent, state)
    assert compiled is not eager and "compiled" in messages[0], messages
    gen = torch.Generator().manual_seed(0)
    a, b = dict(state), dict(state)
    with torch.inference_mode():
        for t in range(50):
            x = {
                "obs": torch.randn(1, agent.obs_size, generator=gen),
                "reward": torch.ones(1),
                "first": torch.tensor([1.0 if t == 0 else 0.0]),
                "terminal": torch.zeros(1),
                "noise": torch.randn(1, agent.noise_size, generator=gen),
            }
            na, _ = compiled(a, x)
            nb, _ = eager(b, x)
            a.update(na)
            b.update(nb)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


class _Terminated(Exception):
    """What a SIGTERM raises in these tests when nothing else handles it."""


@pytest.fixture
def fake_compile(monkeypatch):
    """torch.compile replaced by a stand-in whose first call (the warm-up compile) receives a
    signal, then does what `swallow` says torch might do with the KeyboardInterrupt."""
    import os
    import signal
    import time

    import rtu_edge.train as train_mod

    def on_term(signum, frame):  # without a handler of train's own, SIGTERM raises this
        raise _Terminated

    old = signal.signal(signal.SIGTERM, on_term)

    def install(sig, swallow=None):
        def compile_(fn, **kw):
            calls = []

            def compiled(*a):
                if not calls:
                    calls.append(1)
                    try:
                        os.kill(os.getpid(), sig)
                        time.sleep(5)  # the handler interrupts this
                    except KeyboardInterrupt:
                        if swallow == "wrap":
                            raise RuntimeError("backend compiler failed") from None
                        if swallow != "ignore":
                            raise
                return fn(*a)

            return compiled

        monkeypatch.setattr(train_mod.torch, "compile", compile_)

    yield install
    signal.signal(signal.SIGTERM, old)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("swallow", [None, "wrap", "ignore"])
def test_interrupt_while_compiling_is_honoured_and_leaves_a_resumable_run(
    tmp_path, fake_compile, sig, swallow
):
    import signal

    from rtu_edge.run_dir import read_progress as _read_progress
    from rtu_edge.train import resume_config

    fake_compile(getattr(signal, sig), swallow)
    out = tmp_path / "run"
    cfg = TrainConfig(out=str(out), steps=300, net=NetConfig(hidden_size=4), compile="yes")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert _read_progress(out)["step"] == "0"  # the starting state, saved
    assert signal.getsignal(signal.SIGTERM).__name__ == "on_term"  # handlers restored
    resumed = resume_config(out)
    resumed.compile = "no"
    assert train(resumed, progress=False)["steps"] == 300


def test_cli_says_checkpoint_saved_only_when_one_was(tmp_path, fake_compile, monkeypatch):
    import signal

    from typer.testing import CliRunner

    import rtu_edge.train as train_mod
    from cli import app

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--steps", "300", "--hidden-size", "4", "--no-progress"]
    fake_compile(signal.SIGTERM)
    r = CliRunner().invoke(app, [*args, "--compile", "yes"])
    assert r.exit_code == 130 and "checkpoint saved" in r.output, r.output
    assert (out / "checkpoint.safetensors").exists()

    def interrupted_early(cfg, progress=True):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the environment is being built

    monkeypatch.setattr(train_mod, "train", interrupted_early)
    r = CliRunner().invoke(app, [*args, "--resume"])
    assert r.exit_code == 130 and "checkpoint saved" not in r.output
    assert "previous one" in r.output and "--resume" in r.output
    r = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "new"), "--no-progress"])
    assert r.exit_code == 130 and "before any checkpoint was written" in r.output, r.output
