"""The agent's hand-written gradients and the streaming AC(lambda) step, checked against autograd."""

from __future__ import annotations

import math

import pytest
import torch

from rtu_edge import agent as A
from rtu_edge.cells import rtu_math
from rtu_edge.config import NetConfig
from rtu_edge.learners import ac as L


def _agent(kind: str, cell: str = "rtu", obs: int = 3, layer_norm: bool = False) -> A.AgentConfig:
    return A.AgentConfig(
        obs_size=obs,
        action_kind=kind,
        action_dims=2 if kind == "continuous" else 1,
        num_actions=3 if kind == "discrete" else 0,
        net=NetConfig(
            encoder_size=5,
            hidden_size=4,
            head_size=6,
            cell=cell,
            sparsity=0.0,
            layer_norm=layer_norm,
        ),
    )


def _double(p: dict) -> dict:
    return {k: v.double().clone().requires_grad_(True) for k, v in p.items()}


@pytest.mark.parametrize("layer_norm", [False, True])
@pytest.mark.parametrize("name", ["critic", "actor"])
def test_head_backward_matches_autograd(name, layer_norm):
    cfg = _agent("discrete")
    p = _double(A.init_params(cfg, seed=1))
    y = torch.randn(1, 2 * cfg.net.hidden_size, dtype=torch.float64, requires_grad=True)
    out, hid = A.head(p, name, y, layer_norm)
    g_out = torch.randn_like(out)
    grads, g_y = A.head_backward(p, name, y, hid, g_out)
    keys = [f"{name}.w1", f"{name}.b1", f"{name}.w2", f"{name}.b2"]
    auto = torch.autograd.grad((out * g_out).sum(), [p[k] for k in keys] + [y])
    for k, a in zip(keys, auto[:-1]):
        torch.testing.assert_close(grads[k], a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_y, auto[-1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_encode_backward_matches_autograd(layer_norm):
    cfg = _agent("discrete")
    p = _double(A.init_params(cfg, seed=2))
    p["enc.b"] = torch.randn_like(p["enc.b"]).requires_grad_(True)  # a bias LayerNorm cannot hide
    x = torch.randn(1, cfg.obs_size, dtype=torch.float64)
    h0 = A.encode(p, x, layer_norm)
    g = torch.randn_like(h0.h)
    mine = A.encode_backward(p, x, h0, g)
    auto = torch.autograd.grad((h0.h * g).sum(), [p["enc.w"], p["enc.b"]])
    torch.testing.assert_close(mine["enc.w"], auto[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mine["enc.b"], auto[1], rtol=1e-12, atol=1e-12)


def test_layer_norm_normalises_the_pre_activation():
    x = torch.randn(1, 7, dtype=torch.float64) * 50 + 3
    w, b = torch.eye(7, dtype=torch.float64), torch.zeros(7, dtype=torch.float64)
    layer = A.tanh_layer(x, w, b, layer_norm=True)
    torch.testing.assert_close(layer.u.mean(), torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(layer.u.std(unbiased=False), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(layer.h, torch.tanh(layer.u))
    assert A.tanh_layer(x, w, b, layer_norm=False).u is None


def test_gaussian_policy_gradients_match_autograd():
    cfg = _agent("continuous")
    p = _double(A.init_params(cfg, seed=3))
    p["actor.log_std"] = torch.tensor([0.3, -0.2], dtype=torch.float64, requires_grad=True)
    mu = torch.randn(1, 2, dtype=torch.float64, requires_grad=True)
    noise = torch.randn(1, 2, dtype=torch.float64)
    s = A.sample_policy(cfg, p, mu, noise)
    action = s.action.detach()  # log pi is evaluated at the sampled action, held fixed
    dist = torch.distributions.Normal(mu, torch.exp(p["actor.log_std"]))
    logp = dist.log_prob(action).sum()
    g_mu, g_ls = torch.autograd.grad(logp, [mu, p["actor.log_std"]], retain_graph=True)
    torch.testing.assert_close(s.dlogp_dout, g_mu)
    torch.testing.assert_close(s.dlogp_dlogstd, g_ls)
    (g_ent,) = torch.autograd.grad(dist.entropy().sum(), [p["actor.log_std"]])
    torch.testing.assert_close(s.dent_dlogstd, g_ent)


def test_categorical_policy_gradients_match_autograd():
    cfg = _agent("discrete")
    p = A.init_params(cfg)
    logits = torch.randn(1, 3, dtype=torch.float64, requires_grad=True)
    noise = -torch.log(-torch.log(torch.rand(1, 3, dtype=torch.float64)))
    s = A.sample_policy(cfg, p, logits, noise)
    a = int(s.action.item())
    assert a == int(torch.argmax(logits + noise))
    dist = torch.distributions.Categorical(logits=logits)
    (g,) = torch.autograd.grad(dist.log_prob(torch.tensor([a])).sum(), [logits], retain_graph=True)
    torch.testing.assert_close(s.dlogp_dout, g)
    (g_ent,) = torch.autograd.grad(dist.entropy().sum(), [logits])
    torch.testing.assert_close(s.dent_dout, g_ent)


def test_gumbel_sampling_follows_softmax():
    cfg = _agent("discrete")
    p = A.init_params(cfg)
    logits = torch.tensor([[0.0, 1.0, -1.0]])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    for _ in range(4000):
        u = torch.rand(1, 3, generator=gen)
        a = int(A.sample_policy(cfg, p, logits, -torch.log(-torch.log(u))).action.item())
        counts[a] += 1
    torch.testing.assert_close(counts / 4000, torch.softmax(logits, -1)[0], atol=0.03, rtol=0)


def _double_state(s: dict) -> dict:
    return {k: v.double() for k, v in s.items()}


@pytest.mark.parametrize(
    "cell,kind,layer_norm",
    [
        ("rtu", "discrete", False),
        ("rtu", "continuous", False),
        ("rtu-nonlinear", "discrete", False),
        ("rtu-nonlinear", "continuous", False),
        ("rtu", "continuous", True),
        ("rtu-nonlinear", "discrete", True),
    ],
)
def test_critic_eligibility_equals_bptt_sum_of_value_gradients(cell, kind, layer_norm):
    """With lr=0 and gamma*lambda=1, z_v is the sum of grad v(S_t); for the cell and the head
    that must equal autograd through the whole sequence (exact RTRL). The encoder gets only
    one-step gradients by design, so it is not compared."""
    cfg = _agent(kind, cell, layer_norm=layer_norm)
    ac = L.ACConfig(lr=0.0, gamma=1.0, lam=1.0)
    s = _double_state(L.initial_state(cfg, seed=4))
    T = 12
    gen = torch.Generator().manual_seed(5)
    obs = torch.randn(T, 1, cfg.obs_size, generator=gen, dtype=torch.float64)
    xs = []
    with torch.no_grad():
        for t in range(T):
            x, _ = L.normalise_obs(ac, s, obs[t])  # record what the learner feeds the encoder
            xs.append(x)
            new, *_ = L.ac_step(
                ac,
                cfg,
                s,
                obs[t],
                torch.zeros(1, dtype=torch.float64),
                torch.tensor([1.0 if t == 0 else 0.0], dtype=torch.float64),
                torch.zeros(1, dtype=torch.float64),
                torch.randn(1, cfg.noise_size, generator=gen, dtype=torch.float64),
            )
            s.update(new)
    p = _double(L.params_of(_double_state(L.initial_state(cfg, seed=4))))
    h0 = torch.cat([A.encode(p, x, layer_norm).h.detach() for x in xs]).unsqueeze(1)  # (T,1,E)
    ys, _ = rtu_math.sequence(
        rtu_math.RTUParams(**A.cell_params(p)),
        h0,
        rtu_math.initial_state(cfg.net.hidden_size, 1, torch.float64),
        cfg.cell.nonlinear,
        cfg.cell.activation,
    )
    v_sum = sum(A.head(p, "critic", ys[t], layer_norm)[0].sum() for t in range(T))
    keys = [k for k in A.critic_param_names(cfg) if not k.startswith("enc.")]
    auto = torch.autograd.grad(v_sum, [p[k] for k in keys])
    for k, a in zip(keys, auto):
        torch.testing.assert_close(s[f"elig_v.{k}"], a, rtol=1e-9, atol=1e-10, msg=k)


def test_first_flag_resets_carry_and_blocks_update():
    cfg = _agent("discrete")
    ac = L.ACConfig()
    s = L.initial_state(cfg, seed=0)
    obs = torch.randn(1, cfg.obs_size)
    one, zero = torch.ones(1), torch.zeros(1)
    with torch.no_grad():
        for _ in range(5):
            new, *_ = L.ac_step(
                ac,
                cfg,
                s,
                torch.randn(1, cfg.obs_size),
                torch.ones(1),
                zero,
                zero,
                torch.zeros(1, 3),
            )
            s.update(new)
        before = {k: v.clone() for k, v in s.items() if k.startswith("params.")}
        new, _, _, delta = L.ac_step(
            ac, cfg, s, obs, torch.tensor([5.0]), one, zero, torch.zeros(1, 3)
        )
    assert float(delta) == 0.0
    for k, v in before.items():
        assert torch.equal(new[k], v), f"{k} changed on a first tick"
    # the state after a first tick depends only on this observation, not on the history
    fresh = L.initial_state(cfg, seed=0)
    fresh.update({k: s[k] for k in s if k.startswith(("params.", "norm."))})
    with torch.no_grad():
        ref, *_ = L.ac_step(ac, cfg, fresh, obs, zero, one, zero, torch.zeros(1, 3))
    torch.testing.assert_close(new["carry.c1"], ref["carry.c1"])
    for k in new:
        if k.startswith("elig_"):
            torch.testing.assert_close(new[k], ref[k], msg=k)


def test_non_finite_update_is_skipped():
    cfg = _agent("continuous")
    ac = L.ACConfig()
    s = L.initial_state(cfg)
    zero = torch.zeros(1)
    with torch.no_grad():
        new, *_ = L.ac_step(
            ac, cfg, s, torch.randn(1, 3), zero, torch.ones(1), zero, torch.zeros(1, 2)
        )
        s.update(new)
        before = {k: v.clone() for k, v in s.items() if k.startswith("params.")}
        new, _, _, delta = L.ac_step(
            ac, cfg, s, torch.randn(1, 3), torch.tensor([math.inf]), zero, zero, torch.zeros(1, 2)
        )
    assert not math.isfinite(float(delta))
    for k, v in before.items():
        assert torch.equal(new[k], v), k


def test_reward_burst_leaves_every_state_tensor_finite_and_rewards_count_afterwards():
    """A burst of 1e38 rewards (a broken reward sensor) must not make the return normaliser
    infinite: that would be checkpointed and silently zero every later reward."""
    cfg = _agent("discrete")
    ac = L.ACConfig()
    s = L.initial_state(cfg, seed=0)
    gen = torch.Generator().manual_seed(0)
    zero, one = torch.zeros(1), torch.ones(1)

    def tick(reward, first=zero):
        new, _, _, delta = L.ac_step(
            ac, cfg, s, torch.randn(1, 3, generator=gen), torch.tensor([reward]), first, zero,
            torch.zeros(1, 3),
        )  # fmt: skip
        s.update(new)
        return float(delta)

    with torch.no_grad():
        tick(0.0, one)
        for _ in range(50):
            tick(1.0)
        for _ in range(20):
            tick(1e38)
        assert all(bool(torch.isfinite(v).all()) for v in s.values())
        deltas = [tick(1.0) for _ in range(20)]
    assert float(s["norm.ret_m2"]) > 0 and math.isfinite(float(s["norm.ret_m2"]))
    # rewards still reach the TD error (an infinite variance would make every delta ~ -v only)
    assert max(abs(d) for d in deltas) > 0 and all(math.isfinite(d) for d in deltas)
    scaled, _ = L.scale_reward(ac, s, torch.tensor([1.0]), one)
    assert float(scaled) > 1e-6


def test_learning_moves_value_toward_td_target():
    """One rewarded transition with a fresh trace: v(S) must move toward R + gamma v(S')."""
    cfg = _agent("discrete")
    ac = L.ACConfig(lr=0.1)
    s = L.initial_state(cfg, seed=1)
    o1, o2 = torch.randn(1, 3), torch.randn(1, 3)
    zero, one = torch.zeros(1), torch.ones(1)
    with torch.no_grad():
        new, _, v1, _ = L.ac_step(ac, cfg, s, o1, zero, one, zero, torch.zeros(1, 3))
        s.update(new)
        snap = {k: v.clone() for k, v in s.items()}
        new, _, _, delta = L.ac_step(
            ac, cfg, s, o2, torch.tensor([1.0]), zero, one, torch.zeros(1, 3)
        )
        assert float(delta) > 0  # terminal with positive reward and v ~ 0
        snap.update({k: v for k, v in new.items() if k.startswith("params.")})
        # re-evaluate v(S_1) with the updated parameters from the same starting carry
        fresh = L.initial_state(cfg, seed=1)
        fresh.update({k: v for k, v in snap.items() if k.startswith(("params.", "norm."))})
        fresh.update({k: s[k] for k in s if k.startswith("norm.")})
        _, _, v1_after, _ = L.ac_step(ac, cfg, fresh, o1, zero, one, zero, torch.zeros(1, 3))
    assert float(v1_after) > float(v1)


@pytest.mark.parametrize("entropy_coef,bound", [(10.0, "max"), (-10.0, "min")])
def test_gaussian_log_std_stays_within_bounds(entropy_coef, bound):
    """An entropy push (or pull) that would run the exploration noise away is stopped at the
    bounds: unbounded, log std reached 77 on Pendulum-P in 20k steps."""
    cfg = _agent("continuous")
    ac = L.ACConfig(entropy_coef=entropy_coef, log_std_min=-2.0, log_std_max=0.5)
    s = L.initial_state(cfg, seed=3)
    gen = torch.Generator().manual_seed(0)
    zero = torch.zeros(1)
    with torch.no_grad():
        for t in range(300):
            obs = torch.randn(1, 3, generator=gen)
            first = torch.ones(1) if t == 0 else zero
            noise = torch.randn(1, cfg.noise_size, generator=gen)
            new, *_ = L.ac_step(ac, cfg, s, obs, torch.randn(1, generator=gen), first, zero, noise)
            s.update(new)
    log_std = s["params.actor.log_std"]
    assert (log_std >= -2.0).all() and (log_std <= 0.5).all()
    # it was pushed all the way: the bound, not the step size, stopped it
    edge = 0.5 if bound == "max" else -2.0
    torch.testing.assert_close(log_std, torch.full_like(log_std, edge))


@pytest.mark.parametrize("reward", [3.0, -3.0])  # delta > 0 and delta < 0
def test_td_scaled_entropy_step_is_the_plain_one_times_abs_delta(reward):
    """The entropy term is additive and ObGD's step size does not depend on it, so from the same
    state the change it makes to log std, td-scaled, is the plain one times |delta|."""
    cfg = _agent("continuous")
    gen = torch.Generator().manual_seed(7)
    zero = torch.zeros(1)
    s = L.initial_state(cfg, seed=2)
    with torch.no_grad():
        for t in range(5):  # a few ticks so that traces and delta are not trivial
            obs, noise = torch.randn(1, 3, generator=gen), torch.randn(1, 2, generator=gen)
            first = torch.ones(1) if t == 0 else zero
            new, *_ = L.ac_step(L.ACConfig(), cfg, s, obs, torch.tensor([0.7]), first, zero, noise)
            s.update(new)
    obs, noise = torch.randn(1, 3, generator=gen), torch.randn(1, 2, generator=gen)

    def log_std_change(entropy_coef, td_scaled):
        ac = L.ACConfig(entropy_coef=entropy_coef, entropy_td_scaled=td_scaled, log_std_max=5.0)
        with torch.no_grad():
            new, _, _, delta = L.ac_step(ac, cfg, s, obs, torch.tensor([reward]), zero, zero, noise)
        return new["params.actor.log_std"] - s["params.actor.log_std"], float(delta)

    base, delta = log_std_change(0.0, False)
    plain, _ = log_std_change(0.5, False)
    scaled, _ = log_std_change(0.5, True)
    assert delta * reward > 0 and abs(delta) > 1e-3 and (plain - base).abs().min() > 1e-4
    torch.testing.assert_close(scaled - base, (plain - base) * abs(delta), rtol=1e-4, atol=1e-7)


def test_bad_config_errors_are_clear():
    with pytest.raises(ValueError, match="action_kind"):
        A.AgentConfig(obs_size=2, action_kind="bogus", action_dims=1, num_actions=2)
    with pytest.raises(ValueError, match="unknown cell"):
        A.AgentConfig(
            obs_size=2,
            action_kind="discrete",
            action_dims=1,
            num_actions=2,
            net=NetConfig(cell="lstm"),
        )
