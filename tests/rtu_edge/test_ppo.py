"""`--algo ppo`: the RTRL gradient against BPTT, GAE, runs through train(), export as ac."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch.func import functional_call

from firmware_bridge import contract as C
from rtu_edge import agent as A
from rtu_edge import envs as envs_mod
from rtu_edge.config import NetConfig
from rtu_edge.learners import ppo
from rtu_edge.learners.ppo import PPOConfig
from rtu_edge.train import TrainConfig, action_spec, agent_config_for, load_run, train

ENV = "classic/CartPole-P"
SMALL = NetConfig(hidden_size=4, encoder_size=8, head_size=8)


def quick(**kw) -> PPOConfig:
    """A small PPO: rollouts of 256 steps, minibatches of 64."""
    return PPOConfig(**{"rollout": 256, "minibatches": 4, "lr": 1e-3, **kw})


def float64_rollout(cell: str, n: int, cfg: PPOConfig, env: str = ENV):
    """A float64 agent and an n-step rollout on `env` from a fresh episode."""
    tcfg = TrainConfig(
        out="unused", env=env, net=NetConfig(cell=cell, hidden_size=4, encoder_size=3, head_size=5)
    )
    agent = agent_config_for(tcfg)
    s = {k: v.double() for k, v in ppo.initial_state(agent, cfg, seed=3).items()}
    e = envs_mod.make(env, seed=0)
    rtrl = ppo.uses_rtrl(cfg, agent)
    loop = ppo.start_loop(cfg, agent, s, e, rtrl)
    gen = torch.Generator().manual_seed(0)
    spec = action_spec(envs_mod.env_info(env))
    ro = ppo.collect_rollout(cfg, agent, s, loop, n, gen, spec, ppo.LEARNER.noise(agent))
    e.close()
    return agent, s, ro


def bptt_gradients(cfg, agent, p, ro):
    """Autograd BPTT of the same PPO loss through cell.forward over the whole rollout."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in p.items()}
    h0 = A.encode(leaves, ro.x, agent.net.layer_norm).h
    state0 = type(ro.carry)(*(f[:1] for f in ro.carry))
    ys, _ = functional_call(
        agent.cell, A.cell_params(leaves), (h0[:, None], state0, ro.first[:, None])
    )
    value, pi_out = ppo.heads(agent, leaves, ys[:, 0])
    mb = {k: getattr(ro, k) for k in ("action", "logp", "value", "adv", "ret")}
    mb["weight"] = torch.ones(len(ro), dtype=torch.float64)
    loss, _ = ppo.ppo_loss(cfg, agent, leaves, value, pi_out, mb)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def one_step_gradients(cfg, agent, p, ro):
    """Autograd of the same loss through one cell step per sample from its stored carry."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in p.items()}
    h0 = A.encode(leaves, ro.x, agent.net.layer_norm).h
    carry = type(ro.carry)(*(f[:-1] for f in ro.carry))
    y, _ = agent.cell.step_forward(h0, carry, ro.first, A.cell_params(leaves))
    value, pi_out = ppo.heads(agent, leaves, y)
    mb = {k: getattr(ro, k) for k in ("action", "logp", "value", "adv", "ret")}
    mb["weight"] = torch.ones(len(ro), dtype=torch.float64)
    loss, _ = ppo.ppo_loss(cfg, agent, leaves, value, pi_out, mb)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


@pytest.mark.parametrize(
    "cell,env",
    [
        ("rtu", ENV),
        ("rtu-nonlinear", "classic/Pendulum-P"),
        ("online-lru", ENV),
        ("block-rnn", ENV),
    ],
)
def test_rtrl_gradient_equals_bptt_with_fresh_carries(cell, env):
    """With lr 0 the stored carries stay fresh, so the stale-gradient update's cell gradient
    (one cell step from the stored carry, traces from the stored traces) is exactly BPTT's."""
    cfg = PPOConfig(rollout=48, minibatches=1, epochs=2, lr=0.0, ent_coef=0.01)
    agent, s, ro = float64_rollout(cell, 48, cfg, env)
    assert ro.first.sum() >= 1 and ro.first[0] == 1  # starts fresh; CartPole episodes reset
    before = {k: v.clone() for k, v in s.items() if k.startswith("params.")}
    ppo.update(cfg, agent, s, ro, torch.Generator().manual_seed(1))
    assert all(torch.equal(s[k], v) for k, v in before.items())  # lr 0: nothing moved
    p = ppo.params_of(s)
    grads, _ = ppo.minibatch_gradients(cfg, agent, p, ppo._gather(ro, torch.randperm(len(ro))))
    ref = bptt_gradients(cfg, agent, p, ro)
    one_step = one_step_gradients(cfg, agent, p, ro)
    for k in p:
        # the encoder gets one-step credit (as in ac): autograd through one cell step from the
        # stored carry; everything else matches BPTT through the whole sequence
        want = one_step[k] if k.startswith("enc.") else ref[k]
        torch.testing.assert_close(grads[k], want, rtol=0, atol=1e-10, msg=k)
    # and the traces carry real temporal credit: the cell's gradient is not the one-step one
    assert max(float((grads[k] - one_step[k]).abs().max()) for k in p if "cell." in k) > 1e-3


def test_fresh_gradient_scan_reproduces_the_rollout_with_unchanged_parameters():
    cfg = PPOConfig(rollout=40)
    agent, s, ro = float64_rollout("rtu", 40, cfg)
    carry, traces = ro.carry, ro.traces
    ppo.rescan_carries(agent, ppo.params_of(s), ro)
    for a, b in zip(carry + traces, ro.carry + ro.traces):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_gae_against_a_hand_computation():
    # step 1 ends by a time limit (bootstraps from the final observation's value 9),
    # step 2 by termination; gamma 0.9, lambda 0.5
    reward = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    value = torch.tensor([0.5, 0.6, 0.7, 0.8], dtype=torch.float64)
    next_value = torch.tensor([0.6, 9.0, 0.8, 1.0], dtype=torch.float64)
    terminated = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    ended = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    adv, ret = ppo.gae(reward, value, next_value, terminated, ended, 0.9, 0.5)
    a3 = 4 + 0.9 * 1.0 - 0.8  # bootstraps past the rollout's end
    a2 = 3 - 0.7  # terminal: no bootstrap, no continuation
    a1 = 2 + 0.9 * 9.0 - 0.6  # time limit: bootstrap, no continuation
    a0 = (1 + 0.9 * 0.6 - 0.5) + 0.9 * 0.5 * a1
    want = torch.tensor([a0, a1, a2, a3], dtype=torch.float64)
    torch.testing.assert_close(adv, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, want + value, rtol=0, atol=1e-12)


def test_time_limit_is_terminal_only_when_asked():
    class Short:  # a tiny env: every episode is cut by a time limit after 3 steps
        def __init__(self):
            self.t = 0

        def reset(self):
            self.t = 0
            return np.zeros(2, np.float32), {}

        def step(self, a):
            self.t += 1
            return np.full(2, self.t, np.float32), 1.0, False, self.t == 3, {}

    agent = agent_config_for(TrainConfig(out="unused", env=ENV, net=SMALL))
    spec = action_spec(envs_mod.env_info(ENV))
    for as_terminal in (False, True):
        cfg = PPOConfig(time_limit_as_terminal=as_terminal)
        s = ppo.initial_state(agent, cfg)
        loop = ppo.start_loop(cfg, agent, s, Short(), True)
        gen = torch.Generator().manual_seed(0)
        ro = ppo.collect_rollout(cfg, agent, s, loop, 7, gen, spec, ppo.LEARNER.noise(agent))
        assert ro.ended.tolist() == [0, 0, 1, 0, 0, 1, 0]
        assert ro.terminated.tolist() == ([0, 0, 1, 0, 0, 1, 0] if as_terminal else [0] * 7)
        assert ro.first.tolist() == [1, 0, 0, 1, 0, 0, 1]
        assert len(loop.finished) == 2


@pytest.fixture(scope="module")
def ppo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo") / "run"
    cfg = TrainConfig(out=str(out), env=ENV, algo="ppo", steps=3000, net=SMALL, learner=quick())
    return out, train(cfg, progress=False)


def test_ppo_run_writes_a_complete_run_directory(ppo_run):
    out, summary = ppo_run
    for f in ("config.json", "metrics.csv", "checkpoint.safetensors", "summary.json"):
        assert (out / f).is_file(), f
    rows = list(csv.reader(open(out / "metrics.csv")))
    assert rows[0] == ["step", "episode", "episode_return", "episode_length"] + [
        "steps_per_second",
        "wall_time_s",
    ]
    assert len(rows) > 20 and int(rows[-1][0]) <= 3000
    assert [int(r[1]) for r in rows[1:]] == list(range(1, len(rows)))
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["algo"] == "ppo" and summary["gradient"] == "rtrl"
    assert summary["updates"] == 12 and summary["non_finite_updates"] == 0
    assert summary["final_return"] > 0 and summary["steps_per_second"] > 0
    assert summary["recurrent_params"] > 0 and summary["flops_per_step"] > 0
    run, state = load_run(out)
    init = ppo.initial_state(run.agent, run.train.learner, seed=0)
    assert set(state) == set(init)  # exactly the state the learner declares
    # 11 rollouts of 256 steps x 4 epochs x 4 minibatches, then 184 steps: 4 epochs x 3
    assert float(state["opt.step"][0]) == 11 * 16 + 4 * 3
    assert float(state["norm.obs_count"][0]) >= 3000
    assert any(not torch.equal(state[k], init[k]) for k in init if k.startswith("params.cell."))


def test_ppo_run_exports_an_ac_bundle_with_parity(ppo_run, tmp_path):
    from export.bundle import ExportConfig, export_run
    from firmware_bridge.bundle import load_bundle

    out, _ = ppo_run
    manifest = export_run(
        ExportConfig(run_dir=str(out), out=str(tmp_path / "b"), parity_steps=200),
        log=lambda m: None,
    )
    assert manifest["parity"]["ok"], manifest["parity"]
    assert manifest["learner"] == "ac"  # the robot runs streaming AC(lambda) from here on
    assert manifest["hyperparameters"]["trained_by"]["algo"] == "ppo"
    assert manifest["hyperparameters"]["train"]["algo"] == "ac"
    b = load_bundle(tmp_path / "b")
    assert b.manifest.learner == "ac"
    bundle_state = C.unpack_state(dict(np.load(tmp_path / "b" / "state.npz")), b.manifest.packing)
    _, state = load_run(out)
    for k in state:  # the trained weights and the normaliser; no Adam moments
        if k.startswith("params.") or k.startswith("norm.obs_"):
            np.testing.assert_array_equal(bundle_state[k], state[k].numpy())
        if k.startswith("opt."):
            assert k not in bundle_state
    assert float(bundle_state["norm.ret_count"][0]) == 0  # the reward scaler starts fresh
    assert all(not bundle_state[k].any() for k in bundle_state if k.startswith("elig_"))


def test_fresh_gradients_and_fresh_targets_run(tmp_path):
    cfg = quick(rollout=128, minibatches=2, fresh_gradients=True, fresh_targets=True)
    s = train(
        TrainConfig(out=str(tmp_path / "r"), algo="ppo", steps=600, net=SMALL, learner=cfg),
        progress=False,
    )
    assert s["updates"] == 5 and s["non_finite_updates"] == 0  # 4 rollouts of 128, one of 88


@pytest.mark.parametrize("cell,mode", [("gru", "auto"), ("lru", "auto"), ("rtu", "tbptt")])
def test_tbptt_runs_train(tmp_path, cell, mode):
    net = NetConfig(cell=cell, hidden_size=4, encoder_size=8, head_size=8)
    cfg = quick(rollout=128, minibatches=2, mode=mode, truncation=8)
    s = train(
        TrainConfig(out=str(tmp_path / "r"), algo="ppo", steps=512, net=net, learner=cfg),
        progress=False,
    )
    assert s["gradient"] == "tbptt8" and s["non_finite_updates"] == 0
    run, state = load_run(tmp_path / "r")
    init = ppo.initial_state(run.agent, cfg, seed=0)
    assert set(state) == set(init)
    assert all(not torch.equal(state[k], init[k]) for k in init if k.startswith("params.cell."))


def test_tbptt_sequences_match_single_steps_at_truncation_1():
    """T-BPTT over sequences of length 1 from the stored states is the same loss (and, for a
    cell's non-recurrent path, the same gradient) as single steps: a check of the gathering."""
    cfg = PPOConfig(rollout=24, minibatches=1, truncation=1, mode="tbptt")
    agent, s, ro = float64_rollout("gru", 24, cfg)
    ppo.compute_targets(cfg, agent, ppo.params_of(s), ro, fresh=False)
    seq = ppo._gather_sequences(ro, torch.arange(24), 1)
    _, a = ppo.minibatch_gradients(cfg, agent, ppo.params_of(s), seq)
    cfg5 = PPOConfig(rollout=24, minibatches=1, truncation=5, mode="tbptt")
    seq5 = ppo._gather_sequences(ro, torch.arange(0, 24, 5), 5)
    assert seq5["weight"].sum() == 24 and seq5["x"].shape[:2] == (5, 5)
    _, b = ppo.minibatch_gradients(cfg5, agent, ppo.params_of(s), seq5)
    # with lr 0 and stored states from the same parameters, both see the same outputs
    for k in ("loss", "pg_loss", "v_loss", "approx_kl"):
        assert a[k] == pytest.approx(b[k], abs=1e-12), k


@pytest.mark.parametrize("cell", ["gru", "lru"])
def test_a_tbptt_run_exports_an_act_only_bundle_that_runs_frozen(tmp_path, cell):
    """A cell without RTRL cannot learn on the robot: export writes act.onnx only (parity-
    checked), `run --no-learn` drives the simulated robot with it, and `run --learn` refuses
    with a message that names the cells that can learn."""
    from export.bundle import ExportConfig, export_run
    from firmware_bridge.bundle import load_bundle
    from firmware_bridge.robot_loop import RunConfig, RunError, run
    from firmware_bridge.sim_robot import SimRobot
    from rtu_edge import envs

    net = NetConfig(cell=cell, hidden_size=4, encoder_size=8, head_size=8)
    cfg = TrainConfig(out=str(tmp_path / "r"), algo="ppo", steps=256, net=net, learner=quick())
    train(cfg, progress=False)
    manifest = export_run(
        ExportConfig(run_dir=str(tmp_path / "r"), out=str(tmp_path / "b"), parity_steps=200),
        log=lambda m: None,
    )
    assert sorted(manifest["graphs"]) == ["act"] and manifest["parity"]["ok"]
    # no views (no learn graph): the lowest format that describes it, so older runtimes load it
    assert manifest["format_version"] == (4 if manifest["graphs"]["act"].get("prepare") else 3)
    assert manifest["noise"] is None and "rtu" in manifest["rtrl_cells"]
    b = load_bundle(tmp_path / "b")
    assert not b.manifest.learns and b.manifest.cell == cell

    info = envs.env_info(envs.DEFAULT_ENV)
    robot = SimRobot(
        envs.make(envs.DEFAULT_ENV, seed=1),
        action_kind=info.action_kind,
        safe_action=list(info.safe_action),
        seed=2,
        link_path=str(tmp_path / "tty"),
    )
    robot.start()
    try:
        base = dict(bundle=str(tmp_path / "b"), port=str(tmp_path / "tty"), status_every_s=0)
        with pytest.raises(RunError, match=r"cannot learn on the robot.*--no-learn.*rtu, rtu-nonl"):
            run(RunConfig(**base, checkpoint_dir=str(tmp_path / "ck")), log=lambda m: None)
        summary = run(RunConfig(**base, learn=False, steps=300), log=lambda m: None)
    finally:
        robot.close()
    assert summary["graph"] == "act" and summary["ticks"] == 300


def test_rtrl_mode_refuses_a_tbptt_cell(tmp_path):
    net = NetConfig(cell="gru", hidden_size=4)
    cfg = TrainConfig(out=str(tmp_path / "r"), algo="ppo", steps=64, net=net)
    cfg.learner = PPOConfig(mode="rtrl")
    with pytest.raises(ValueError, match="no exact RTRL.*mode=tbptt"):
        train(cfg, progress=False)


def test_resume_continues_a_ppo_run(tmp_path):
    from rtu_edge.train import resume_config

    out = tmp_path / "r"
    cfg = TrainConfig(out=str(out), algo="ppo", steps=512, net=SMALL, learner=quick())
    train(cfg, progress=False)
    _, before = load_run(out)
    s = train(resume_config(out, steps=768), progress=False)
    assert s["steps"] == 768
    _, after = load_run(out)
    assert float(after["opt.step"][0]) == float(before["opt.step"][0]) + 16
    steps = [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and steps[-1] > 512


def test_sigterm_checkpoints_a_ppo_run_and_resume_continues(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from rtu_edge.run_dir import read_progress
    from rtu_edge.train import resume_config

    out = tmp_path / "run"
    args = ["--out", str(out), "--algo", "ppo", "--steps", "1000000", "--no-progress"]
    args += ["--hidden-size", "4", "--set", "learner.rollout=256", "--set", "learner.minibatches=4"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "train", *args],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "metrics.csv").exists():
        time.sleep(0.2)
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in err, err
    step = int(read_progress(out)["step"])
    assert step > 0
    s = train(resume_config(out, steps=step + 100), progress=False)
    assert s["steps"] == step + 100 and s["updates"] == 1


@pytest.mark.slow
def test_ppo_learns_cartpole_with_velocities_hidden(tmp_path):
    """20k steps of PPO-RTRL on classic/CartPole-P (about 25 s; lr 1e-3, rollouts of 1024).
    Seeds 0 and 1 reached final returns 219 and 377 from first returns of 23."""
    cfg = TrainConfig(
        out=str(tmp_path / "r"),
        algo="ppo",
        steps=20_000,
        seed=0,
        learner=PPOConfig(rollout=1024, lr=1e-3),
    )
    s = train(cfg, progress=False)
    assert s["non_finite_updates"] == 0
    assert s["final_return"] > 100.0
    assert s["final_return"] > 3 * s["first_return"]
