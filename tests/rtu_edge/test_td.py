"""The td learner: exact eligibility traces, TD(lambda) learning a delayed cumulant, the CLI, and
export with parity for both RTU cells."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from rtu_edge import agent as A
from rtu_edge.cells import rtu_math
from rtu_edge.config import NetConfig
from rtu_edge.learners import get_learner
from rtu_edge.learners import td as L
from rtu_edge.train import TrainConfig, msre, train


def _agent(cell: str = "rtu", obs: int = 3, layer_norm: bool = False, hidden: int = 4):
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


def _tick(t: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, terminal) of tick t of one long episode."""
    return torch.tensor([1.0 if t == 0 else 0.0], dtype=dtype), torch.zeros(1, dtype=dtype)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("cell", ["rtu", "rtu-nonlinear"])
def test_eligibility_equals_bptt_sum_of_value_gradients(cell, layer_norm, optimizer):
    """With lr=0 and gamma*lambda=1, z is the sum of grad v(S_t) over the sequence: for the cell
    and the head it must equal autograd through the whole sequence (exact RTRL). The encoder
    gets one-step gradients only by design, so it is not compared."""
    agent = _agent(cell, layer_norm=layer_norm)
    cfg = L.TDConfig(lr=0.0, gamma=1.0, lam=1.0, optimizer=optimizer)
    init = {k: v.double() for k, v in L.initial_state(agent, cfg, seed=4).items()}
    s = dict(init)
    T = 12
    gen = torch.Generator().manual_seed(5)
    obs = torch.randn(T, 1, agent.obs_size, generator=gen, dtype=torch.float64)
    cumulants = torch.randn(T, 1, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        for t in range(T):
            new, _, delta = L.td_step(cfg, agent, s, obs[t], cumulants[t], *_tick(t, torch.float64))
            s.update(new)
    assert float(delta) != 0.0  # TD errors were there; lr = 0 kept the parameters
    p = {k: v.clone().requires_grad_(True) for k, v in L.params_of(init).items()}
    for k in p:
        assert torch.equal(s[f"params.{k}"], init[f"params.{k}"]), k
    h0 = torch.cat([A.encode(p, obs[t], layer_norm).h.detach() for t in range(T)]).unsqueeze(1)
    ys, _ = rtu_math.sequence(
        rtu_math.RTUParams(**A.cell_params(p)),
        h0,
        rtu_math.initial_state(agent.net.hidden_size, 1, torch.float64),
        agent.cell.nonlinear,
        agent.cell.activation,
    )
    v_sum = sum(A.head(p, "critic", ys[t], layer_norm)[0].sum() for t in range(T))
    keys = [k for k in A.critic_param_names(agent) if not k.startswith("enc.")]
    auto = torch.autograd.grad(v_sum, [p[k] for k in keys])
    for k, a in zip(keys, auto):
        torch.testing.assert_close(s[f"elig.{k}"], a, rtol=1e-9, atol=1e-10, msg=k)


def test_updates_use_the_trace_up_to_the_previous_state():
    """SGD moves theta by lr * delta_t * z_{t-1}; Adam's first step is lr * sign(delta z); and a
    first tick moves nothing, Adam's moments and step count included."""
    agent = _agent()
    obs = torch.randn(6, 1, agent.obs_size, generator=torch.Generator().manual_seed(1))
    for optimizer in ("sgd", "adam"):
        cfg = L.TDConfig(lr=0.01, optimizer=optimizer)
        s = L.initial_state(agent, cfg, seed=0)
        with torch.no_grad():
            for t in range(6):
                before = dict(s)
                new, _, delta = L.td_step(cfg, agent, s, obs[t], torch.ones(1), *_tick(t))
                s.update(new)
                for k in A.critic_param_names(agent):
                    dw = s[f"params.{k}"] - before[f"params.{k}"]
                    z = before[f"elig.{k}"]
                    if t == 0:
                        assert float(delta) == 0.0 and torch.equal(dw, torch.zeros_like(dw)), k
                    elif optimizer == "sgd":
                        torch.testing.assert_close(dw, 0.01 * delta * z, msg=k)
                    elif t == 1:
                        torch.testing.assert_close(dw, 0.01 * torch.sign(delta * z), msg=k)
                if optimizer == "adam":
                    assert float(s["opt.t"]) == t  # no update on the first tick
    # a first tick in mid-stream: nothing moves
    before = dict(s)
    with torch.no_grad():
        new, _, delta = L.td_step(cfg, agent, s, obs[0], torch.tensor([5.0]), *_tick(0))
    assert float(delta) == 0.0
    for k, v in before.items():
        if k.startswith(("params.", "opt.")):
            assert torch.equal(new[k], v), f"{k} changed on a first tick"


def test_non_finite_update_is_skipped():
    agent = _agent()
    cfg = L.TDConfig()
    s = L.initial_state(agent, cfg, seed=0)
    with torch.no_grad():
        for t in range(3):
            s.update(L.td_step(cfg, agent, s, torch.randn(1, 3), torch.ones(1), *_tick(t))[0])
        before = dict(s)
        new, _, delta = L.td_step(
            cfg, agent, s, torch.randn(1, 3), torch.tensor([np.nan]), *_tick(3)
        )
    assert not torch.isfinite(delta).all()
    for k, v in before.items():
        if k.startswith(("params.", "opt.")):
            assert torch.equal(new[k], v), k


def _trace_conditioning(T: int, trial: int = 10, isi: int = 4):
    """An endless stream of identical trials: the cue (CS) on the trial's first tick, the
    cumulant (US) 1 `isi` ticks later; observation [US, CS]. Between them the observation is
    all zeros, so only a memory of the cue can tell how close the US is."""
    obs = np.zeros((T, 1, 2), np.float32)
    c = np.zeros(T, np.float32)
    k = np.arange(T) % trial
    obs[k == 0, 0, 1] = 1.0
    obs[k == isi, 0, 0] = 1.0
    c[k == isi] = 1.0
    return obs, c


def _true_returns(c: np.ndarray, gamma: float) -> np.ndarray:
    g, out = 0.0, np.zeros(len(c))
    for i in range(len(c) - 2, -1, -1):
        g = c[i + 1] + gamma * g
        out[i] = g
    return out[:-1]  # the last tick has no next cumulant (as in train.msre)


def test_td_lambda_learns_trace_conditioning():
    """TD(lambda) with RTRL learns to predict a delayed cumulant: the MSRE over the last 10% of
    the stream falls well below the first 10% and below the best any memoryless predictor
    (a function of the current observation alone) can do."""
    agent = _agent("rtu", obs=2)
    cfg = L.TDConfig(lr=1e-2)
    T = 2000
    obs, c = _trace_conditioning(T)
    s = L.initial_state(agent, cfg, seed=0)
    values, first = [], []
    with torch.inference_mode():
        for t in range(T):
            f, term = _tick(t)
            new, v, _ = L.td_step(
                cfg, agent, s, torch.from_numpy(obs[t]), torch.tensor(c[t : t + 1]), f, term
            )
            s.update(new)
            values.append(float(v))
            first.append(float(f))
    w = T // 10
    start = msre(values[:w], c[:w], first[:w], cfg.gamma)
    end = msre(values[-w:], c[-w:], first[-w:], cfg.gamma)
    # the memoryless floor: predict each observation's mean return
    g = _true_returns(c[-w:], cfg.gamma)
    keys = [tuple(o) for o in obs[-w:-1, 0]]
    means = {k: np.mean([gi for gi, ki in zip(g, keys) if ki == k]) for k in set(keys)}
    floor = float(np.mean([(gi - means[k]) ** 2 for gi, k in zip(g, keys)]))
    assert end < 0.25 * start, (start, end)
    assert end < 0.6 * floor, (end, floor)


def test_msre_cuts_returns_at_episode_ends():
    # two episodes: C arrives with each call; the final call of each episode is left out
    values = [1.0, 0.5, 9.0, 0.0, 2.0, 9.0]
    cumulants = [0.0, 1.0, 1.0, 0.0, 2.0, 3.0]
    first = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    # episode 1 ends at call 2: G_1 = C_2 = 1, G_0 = C_1 + 0.5 G_1 = 1.5;
    # the window ends at call 5: G_4 = C_5 = 3, G_3 = C_4 + 0.5 G_4 = 3.5
    want = np.mean([(1.0 - 1.5) ** 2, (0.5 - 1.0) ** 2, (0.0 - 3.5) ** 2, (2.0 - 3.0) ** 2])
    assert msre(values, cumulants, first, 0.5) == pytest.approx(want)
    assert msre([1.0], [0.0], [1.0], 0.5) is None


def test_cli_trains_td_on_a_control_env_with_random_behaviour(tmp_path):
    from cli import app

    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--algo", "td", "--env", "classic/CartPole-P"]
    args += ["--steps", "300", "--hidden-size", "4", "--no-progress", "--compile", "no"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algo"] == "td" and summary["steps"] == 300
    assert np.isfinite(summary["msre"]) and np.isfinite(summary["first_msre"])
    assert summary["non_finite_updates"] == 0
    # the zero action would push CartPole left every tick (32-33 episodes in 300 steps, seeds
    # 0-2); uniformly random actions keep it up longer (12-17 episodes)
    assert summary["episodes"] < 25


def test_sgd_bundle_packs_no_moments_and_learns_on_its_runner(tmp_path):
    """With SGD there are no Adam moments: the bundle packs only the parameters and the trace
    (packing.held), passes its parity check, and its learn runner (views of params.flat)
    moves the parameters; the act runner has no views (it carries no buffer)."""
    from export.bundle import ExportConfig, export_run
    from firmware_bridge.bundle import load_bundle

    run = tmp_path / "run"
    cfg = TrainConfig(out=str(run), algo="td", steps=400, net=NetConfig(hidden_size=8))
    cfg.learner = L.TDConfig(optimizer="sgd", lr=0.01)
    train(cfg, progress=False)
    manifest = export_run(
        ExportConfig(run_dir=str(run), out=str(tmp_path / "b"), parity_steps=200),
        log=lambda m: None,
    )
    assert manifest["parity"]["ok"]
    assert sorted(manifest["state"]["packed"]) == ["elig.flat", "params.flat"]
    assert not any(n.startswith("opt.") for n in manifest["state"]["names"])
    b = load_bundle(tmp_path / "b")
    learn, act = b.runner("learn"), b.runner("act")
    assert "params.enc.w" in learn.view_names and act.view_names == ()
    before = learn.state()["params.flat"]
    rng = np.random.default_rng(0)
    for t in range(30):
        out = learn.step(
            obs=rng.standard_normal((1, b.manifest.observation_size)).astype(np.float32),
            cumulant=np.array([1.0], np.float32),
            first=np.array([float(t == 0)], np.float32),
            terminal=np.zeros(1, np.float32),
        )
        assert np.isfinite(out["td_error"]).all()
    assert not np.array_equal(learn.state()["params.flat"], before)


@pytest.mark.parametrize("cell", ["rtu", "rtu-nonlinear"])
def test_export_and_parity_and_bundle_load(tmp_path, cell):
    from export.bundle import ExportConfig, export_run
    from firmware_bridge.bundle import load_bundle

    run = tmp_path / "run"
    net = NetConfig(cell=cell, hidden_size=8)
    train(TrainConfig(out=str(run), algo="td", steps=600, net=net, compile="no"), progress=False)
    bundle = tmp_path / "bundle"
    manifest = export_run(
        ExportConfig(run_dir=str(run), out=str(bundle), parity_steps=200), log=lambda m: None
    )
    assert manifest["learner"] == "td" and manifest["noise"] is None
    assert manifest["parity"]["ok"] and manifest["parity"]["worst_rel"] <= 1e-5
    b = load_bundle(bundle)
    learn_in = [i.name for i in b.session("learn").get_inputs()]
    assert set(b.step_input_names("learn")) == {"obs", "cumulant", "first", "terminal"}
    assert set(b.step_input_names("act")) == {"obs", "first"}
    assert any(n.startswith("opt.m.") for n in learn_in) and "opt.t" in learn_in
    names = manifest["state"]["names"]
    assert {n.split(".")[0] for n in names} == {"params", "elig", "opt", "carry", "trace"}
    uses = {o["name"]: o["use"] for o in manifest["graphs"]["act"]["step_outputs"]}
    assert uses == {"prediction": "prediction"}  # no action: the robot's own controller acts
    learn_uses = {o["name"]: o["use"] for o in manifest["graphs"]["learn"]["step_outputs"]}
    assert learn_uses == {"prediction": "prediction", "td_error": "check"}
    # the act graph gives the same prediction as the learn graph on a first tick
    state = b.initial_state()
    obs = np.ones((1, b.manifest.observation_size), np.float32)
    one = np.ones(1, np.float32)
    act = b.session("act")
    feeds = b.graph_state("act")  # the state it reads, with act_prepare.onnx's prep.* constants
    assert {"prep.cell.lam_diag", "prep.cell.lam_cross", "prep.cell.w_in"} <= set(feeds)
    act_ops = {n.op_type for n in onnx.load(str(bundle / "act.onnx")).graph.node}
    assert not act_ops & {"Exp", "Sin", "Cos", "Sqrt"}, act_ops  # computed once, not per tick
    res = dict(
        zip([o.name for o in act.get_outputs()], act.run(None, feeds | {"obs": obs, "first": one}))
    )
    assert "action" not in res
    learn = b.session("learn")
    # packed: parameters, trace and moments in flat buffers, the parameters read as views
    assert {"params.flat", "elig.flat", "opt.m.flat", "opt.v.flat"} <= set(state)
    assert "params.enc.w" in learn_in and "params.enc.w" not in state
    feeds = dict(b.graph_state("learn"))  # (the views as copies: one plain session.run)
    feeds |= {"obs": obs, "cumulant": 0 * one, "first": one, "terminal": 0 * one}
    lres = dict(zip([o.name for o in learn.get_outputs()], learn.run(None, feeds)))
    np.testing.assert_allclose(lres["prediction"], res["prediction"], rtol=1e-5, atol=1e-6)
    assert get_learner("td").noise(None) is None
