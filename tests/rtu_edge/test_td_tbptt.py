"""td with truncated BPTT (cells without exact RTRL, or learner.mode=tbptt): the window's
gradient, the CLI run, and the cost growing with the truncation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.func import functional_call
from typer.testing import CliRunner

from rtu_edge import agent as A
from rtu_edge.cells.budget import tbptt_flops
from rtu_edge.config import NetConfig
from rtu_edge.flops import count_flops
from rtu_edge.learners import td as L

F64 = torch.float64


def _agent(cell: str, obs: int = 3, hidden: int = 4, layer_norm: bool = False):
    return A.AgentConfig(
        obs_size=obs,
        action_kind="discrete",
        action_dims=1,
        num_actions=2,
        net=NetConfig(
            encoder_size=5,
            hidden_size=hidden,
            head_size=6,
            cell=cell,
            sparsity=0.0,
            layer_norm=layer_norm,
        ),
    )


def _sequence(agent, n: int, reset: int | None, seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, 1, agent.obs_size, generator=gen, dtype=F64)
    cumulants = torch.randn(n, 1, generator=gen, dtype=F64)
    firsts = torch.zeros(n, 1, dtype=F64)
    firsts[0] = 1.0
    if reset is not None:
        firsts[reset] = 1.0
    return obs, cumulants, firsts


def _autograd_value_grad(agent, s0, obs, firsts, upto: int) -> dict[str, torch.Tensor]:
    """grad v(S_upto) by autograd through the encoder, ``cell.forward`` over ticks 0..upto from
    the initial cell state, and the head."""
    names = A.critic_param_names(agent)
    leaves = {k: s0[f"params.{k}"].clone().requires_grad_(True) for k in names}
    carry0 = L.state_from_dict(agent.cell.State, "carry", s0)
    h0 = A.encode(leaves, obs[: upto + 1], agent.net.layer_norm).h
    ys, _ = functional_call(agent.cell, A.cell_params(leaves), (h0, carry0, firsts[: upto + 1]))
    v = A.head(leaves, "critic", ys, agent.net.layer_norm)[0].reshape(-1)
    got = torch.autograd.grad(v[-1], [leaves[k] for k in names], allow_unused=True)
    return {k: torch.zeros_like(leaves[k]) if g is None else g for k, g in zip(names, got)}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize(
    "cell,mode,layer_norm",
    [("gru", "auto", False), ("lru", "auto", True), ("rtu", "tbptt", False)],
)
def test_window_gradient_equals_autograd_over_the_sequence(cell, mode, layer_norm, optimizer):
    """With lr 0 and a window longer than the sequence, every tick's z = grad v(S_{t-1}) is
    autograd through the whole sequence from the initial state (a reset inside the sequence
    cuts it in both), and v(S_t) is the value of that forward pass."""
    agent = _agent(cell, layer_norm=layer_norm)
    n = 11
    cfg = L.TDConfig(lr=0.0, optimizer=optimizer, mode=mode, truncation=n)
    s0 = {k: v.double() for k, v in L.initial_state(agent, cfg, seed=3).items()}
    assert not any(k.startswith("trace.") for k in s0)
    s, window = dict(s0), L.Window(cfg.truncation)
    obs, cumulants, firsts = _sequence(agent, n, reset=6)
    checked = 0
    for t in range(n):
        new, value, delta, z = L.tbptt_step(
            cfg, agent, s, window, obs[t], cumulants[t], firsts[t], torch.zeros(1, dtype=F64)
        )
        s.update(new)
        if firsts[t]:
            assert float(delta) == 0.0
            assert all(float(g.abs().max()) == 0.0 for g in z.values())
            continue
        want = _autograd_value_grad(agent, s0, obs, firsts, t - 1)
        for k in want:
            torch.testing.assert_close(z[k], want[k], rtol=1e-10, atol=1e-12)
        checked += 1
    assert checked == n - 2
    for k in A.critic_param_names(agent):  # lr 0: nothing moved
        torch.testing.assert_close(s[f"params.{k}"], s0[f"params.{k}"], rtol=0, atol=0)


@pytest.mark.parametrize("lam", [0.0, 0.8])
def test_the_trace_accumulates_window_gradients_and_resets_with_the_episode(lam):
    """With lr 0, the eligibility trace after tick t is sum_j (gamma lambda)^j g_{t-1-j} over
    the window gradients g of the same episode (autograd through the whole sequence here), and
    lambda 0 leaves z = g, the TD(0) semi-gradient. The update moves along delta z: with SGD
    and lr > 0 the first update equals lr delta z."""
    agent = _agent("gru")
    n, reset = 10, 6
    cfg = L.TDConfig(lr=0.0, optimizer="sgd", lam=lam, gamma=0.9, truncation=n)
    s0 = {k: v.double() for k, v in L.initial_state(agent, cfg, seed=3).items()}
    s, window = dict(s0), L.Window(cfg.truncation)
    obs, cumulants, firsts = _sequence(agent, n, reset=reset)
    names = A.critic_param_names(agent)
    checked = 0
    for t in range(n):
        new, _, _, g = L.tbptt_step(
            cfg, agent, s, window, obs[t], cumulants[t], firsts[t], torch.zeros(1, dtype=F64)
        )
        s.update(new)
        if firsts[t]:
            continue
        start = 0 if t - 1 < reset else reset  # the episode of S_{t-1}
        for k in names:
            want = sum(
                (cfg.gamma * lam) ** (t - 1 - u)
                * _autograd_value_grad(agent, s0, obs, firsts, u)[k]
                for u in range(start, t)
            )
            torch.testing.assert_close(s[f"elig.{k}"], want, rtol=1e-10, atol=1e-12)
        checked += 1
    assert checked == n - 2
    # one SGD step from that state moves theta by lr * delta * z exactly
    cfg_step = L.TDConfig(lr=0.1, optimizer="sgd", lam=lam, gamma=0.9, truncation=n)
    z_before = {k: s[f"elig.{k}"] for k in names}
    x_next = torch.randn(1, agent.obs_size, dtype=F64)
    new, _, delta, g = L.tbptt_step(
        cfg_step,
        agent,
        s,
        window,
        x_next,
        torch.ones(1, dtype=F64),
        torch.zeros(1, dtype=F64),
        torch.zeros(1, dtype=F64),
    )
    decay = cfg.gamma * lam
    for k in names:
        z = decay * z_before[k] + g[k]
        want = s[f"params.{k}"] + 0.1 * delta * z
        torch.testing.assert_close(new[f"params.{k}"], want, rtol=1e-12, atol=1e-14)


def test_a_short_window_truncates_the_gradient():
    """Negative control: with T = 2 the same sequence's gradient differs from full BPTT."""
    agent = _agent("gru")
    cfg = L.TDConfig(lr=0.0, truncation=2)
    s0 = {k: v.double() for k, v in L.initial_state(agent, cfg, seed=3).items()}
    s, window = dict(s0), L.Window(cfg.truncation)
    obs, cumulants, firsts = _sequence(agent, 8, reset=None)
    for t in range(8):
        new, _, _, z = L.tbptt_step(
            cfg, agent, s, window, obs[t], cumulants[t], firsts[t], torch.zeros(1, dtype=F64)
        )
        s.update(new)
    assert len(window) == 3
    want = _autograd_value_grad(agent, s0, obs, firsts, 6)
    assert max(float((z[k] - want[k]).abs().max()) for k in want if k.startswith("cell.")) > 1e-6


def test_td_learns_with_adam_and_reports_nan_on_non_finite():
    """A sanity check of the update: learning moves the parameters; a NaN cumulant skips it."""
    agent = _agent("gru")
    cfg = L.TDConfig(lr=1e-2, truncation=4)
    s = L.initial_state(agent, cfg, seed=0)
    window = L.Window(cfg.truncation)
    obs, cumulants, firsts = _sequence(agent, 6, reset=None)
    obs, cumulants, firsts = obs.float(), cumulants.float(), firsts.float()
    for t in range(5):
        new, _, _, _ = L.tbptt_step(
            cfg, agent, s, window, obs[t], cumulants[t], firsts[t], 0 * firsts[t]
        )
        s.update(new)
    assert float(s["opt.t"]) == 4.0
    before = {k: v.clone() for k, v in s.items()}
    nan = torch.tensor([float("nan")])
    new, _, delta, _ = L.tbptt_step(cfg, agent, s, window, obs[5], nan, firsts[5], 0 * firsts[5])
    assert torch.isnan(delta).all()
    for k, v in new.items():
        if k.startswith(("params.", "opt.")):
            torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_mode_rtrl_needs_an_rtrl_cell():
    with pytest.raises(ValueError, match="no exact RTRL"):
        L.initial_state(_agent("gru"), L.TDConfig(mode="rtrl"))
    with pytest.raises(ValueError, match="learner.mode"):
        L.initial_state(_agent("rtu"), L.TDConfig(mode="bptt"))
    with pytest.raises(ValueError, match="truncation"):
        L.Window(0)


def test_cli_trains_td_with_tbptt_and_writes_msre(tmp_path):
    from cli import app

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--algo", "td", "--cell", "gru"]
    args += ["--env", "classic/CartPole-P", "--steps", "300", "--set", "learner.truncation=4"]
    args += ["--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "td" and summary["steps"] == 300
    assert summary["gradient"] == "tbptt4"
    assert np.isfinite(summary["msre"]) and np.isfinite(summary["first_msre"])
    assert summary["non_finite_updates"] == 0
    assert summary["recurrent_params"] > 0 and summary["flops_per_step"] > 0
    assert summary["steps_per_second"] > 0
    for name in ("config.json", "metrics.csv", "checkpoint.safetensors"):
        assert (out / name).exists()
    cfg = json.loads((out / "config.json").read_text())["train"]
    assert cfg["learner"]["truncation"] == 4 and cfg["learner"]["mode"] == "auto"


def _step_flops(T: int) -> int:
    """FLOPs of one learner tick with a full window of T + 1 observations."""
    agent = _agent("gru", hidden=16)
    cfg = L.TDConfig(truncation=T)
    s = L.initial_state(agent, cfg, seed=0)
    window = L.Window(T)
    x = torch.zeros(1, agent.obs_size)
    zero, one = torch.zeros(1), torch.ones(1)
    for t in range(T + 1):
        s.update(L.tbptt_step(cfg, agent, s, window, x, zero, one if t == 0 else zero, zero)[0])
    return count_flops(L.tbptt_step, cfg, agent, dict(s), window, x, zero, zero, zero)


def test_tbptt_cost_grows_with_the_truncation():
    """Incremental T-BPTT re-runs the window every tick: T=16 costs over twice T=4 (FLOPs)."""
    assert _step_flops(16) > 2 * _step_flops(4)
    for cell in ("gru", "lru"):
        assert tbptt_flops(cell, 3, 16, 16) > 2 * tbptt_flops(cell, 3, 16, 4)


def test_export_of_an_rtu_trained_by_tbptt_is_a_one_line_refusal(tmp_path):
    """An RTU trained by T-BPTT has no per-tick learn step to export: one clear line, exit 1
    (the exporter used to wrap the learner's ValueError in its own error and trace)."""
    from typer.testing import CliRunner

    from cli import app

    run = tmp_path / "r"
    r = CliRunner().invoke(
        app,
        [
            "train", "--algo", "td", "--steps", "100", "--no-progress", "--out", str(run),
            "--set", "learner.mode=tbptt", "--set", "learner.truncation=4",
        ],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "b")])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "truncated BPTT" in lines[0], r.output
    assert not (tmp_path / "b").exists()
