"""Recurrent PPO with exact RTRL ("RealTimePPO", Elelimy et al. 2024), or truncated BPTT.

PPO learns from rollouts, not tick by tick, so it trains on the workstation only: torch
autograd does the heads, the encoder and the loss, and it has its own training loop
(:func:`train_ppo`, which ``rtu_edge.train.train`` dispatches to). A trained ppo run exports
as an ordinary streaming ``ac`` bundle (:func:`to_streaming_state`), so the robot keeps
learning with AC(lambda) from the PPO-trained weights. rtu-rtrl.md section 5 and
docs/learner.md ("PPO") describe the method; this file reads top to bottom:

1. config; 2. state (parameters, normaliser, Adam moments); 3. rollout; 4. GAE;
5. the loss and its gradient (RTRL or T-BPTT); 6. the update (epochs x minibatches, Adam);
7. the training loop; 8. conversion to ``ac`` for export; 9. the Learner record.

RTRL cells (``cell.online``, mode "rtrl"): for every step the rollout stores the carry BEFORE
the step (cell state c_{t-1} and RTRL traces E_{t-1}), the normalised observation, the
``first`` flag, the action, its log-probability, the value and the reward. The update re-runs
ONE cell step per sample from its stored carry with the current parameters:

    y_t, c_t, E_t = cell.rtrl_step(h0_t, c_{t-1}, E_{t-1}, first_t, theta)   (autograd on)

The loss is backpropagated by autograd to dL/dy_t and to the heads and the encoder (one-step
credit, through y_t -> h0_t, the same as ac's ``input_grad``). The cell's own gradient is NOT
autograd's (that would be the newest link only): it is ``cell.rtrl_grads(dL/dy_t, c_t, E_t)``,
i.e. dL/dy_t times the traces E_t built from the stored E_{t-1} ("stale gradient": only the
newest link uses the current parameters). We chose this over an equivalent custom
autograd.Function because it calls the cell API exactly as the streaming learner does, adds
no new gradient code, and is checked against BPTT through ``cell.forward``: with fresh
carries (lr 0) the two agree to 1e-10 in float64 (tests/rtu_edge/test_ppo.py).

T-BPTT (gru, lru; or any cell with ``--set learner.mode=tbptt``): the rollout stores the
hidden states; the update cuts the rollout into sequences of ``truncation`` steps, each
starting from its stored (detached) hidden state, and backpropagates through
``cell.forward(xs, state, dones)``.

Switches (the paper's ablations): ``fresh_gradients`` recomputes the stored carries after
every epoch by a sequential scan with the current parameters; ``fresh_targets`` recomputes
values, advantages and returns after every epoch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from rtu_edge import agent as A
from rtu_edge.cells import state_to_dict
from rtu_edge.learners import ac
from rtu_edge.learners.base import Learner
from rtu_edge.learners.base import uses_rtrl as base_uses_rtrl

State = dict[str, Tensor]
ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, as in CleanRL


# ---- 1. config ----------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    """Hyperparameters of recurrent PPO. Defaults: rtu-rtrl.md section 5 (the paper's PPO)."""

    rollout: int = 2048  # environment steps per rollout (one environment)
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE lambda
    epochs: int = 4  # passes over each rollout
    minibatches: int = 32  # minibatches per epoch: 2048 / 32 = 64 single steps each, shuffled
    clip: float = 0.2  # surrogate clip epsilon: ratio kept in [1 - clip, 1 + clip]
    clip_value: bool = True  # clip the value loss around the rollout's value by +-clip
    vf_coef: float = 0.5  # weight of the value loss
    ent_coef: float = 0.0  # weight of the entropy bonus
    lr: float = 1e-4  # Adam step size (the paper sweeps it)
    adam_eps: float = 1e-5  # Adam epsilon
    max_grad_norm: float = 0.5  # global gradient-norm clip
    norm_adv: bool = True  # normalise advantages per minibatch (mean 0, std 1)
    # Recompute the stored carries after every epoch by a sequential scan with the current
    # parameters (the paper's "fresh gradients"); False: the stale carries of the rollout.
    fresh_gradients: bool = False
    # Recompute values, advantages and returns after every epoch with the current critic.
    fresh_targets: bool = False
    # "auto": RTRL for cells with exact RTRL, T-BPTT for the others (gru, lru);
    # "rtrl": RTRL (an error for T-BPTT cells); "tbptt": truncated BPTT for any cell.
    mode: str = "auto"
    truncation: int = 16  # T: sequence length of T-BPTT
    # Treat a time-limit truncation as termination (the authors' code). False: bootstrap from
    # the value of the final observation, as the streaming learner does.
    time_limit_as_terminal: bool = False
    # Divide rewards by the running std of the discounted return (ac's scaler, norm.ret_*).
    scale_rewards: bool = True
    # Orthogonal init of the dense layers (gain sqrt 2 hidden, 0.01 actor out, 1 critic out;
    # section 5). False: the agent's sparse init (as ac). The cell keeps its own init.
    orthogonal_init: bool = True
    # Observation normaliser, the same as ac's (ac.normalise_obs), so export carries it over.
    obs_clip: float = 1e3  # raw observations are clipped to +-obs_clip
    norm_clip: float = 5.0  # normalised observations are clipped to +-norm_clip
    stats_clip: float = 10.0  # after warm-up, a sample moves the normaliser by <= this many stds
    stats_warmup: float = 100.0  # samples before stats_clip applies
    eps: float = 1e-8  # variance floor of the normalisers

    def to_dict(self) -> dict:
        return asdict(self)


def uses_rtrl(cfg: PPOConfig, agent: A.AgentConfig) -> bool:
    """Whether the update uses RTRL traces (True) or truncated BPTT (False)."""
    return base_uses_rtrl(cfg.mode, agent.cell, agent.net.cell)


# ---- 2. state: what the checkpoint holds --------------------------------------------------------


def _init_params(agent: A.AgentConfig, seed: int, orthogonal: bool) -> A.Params:
    p = A.init_params(agent, seed, heads=("critic", "actor"))
    if not orthogonal:
        return p
    g = torch.Generator().manual_seed(seed + 104_729)
    gains = {"enc.w": 2**0.5, "critic.w1": 2**0.5, "critic.w2": 1.0}
    gains.update({"actor.w1": 2**0.5, "actor.w2": 0.01})
    for k, gain in gains.items():
        p[k] = torch.nn.init.orthogonal_(torch.empty_like(p[k]), gain, generator=g).contiguous()
    return p


def initial_state(agent: A.AgentConfig, cfg: PPOConfig | None = None, seed: int = 0) -> State:
    """Every tensor a ppo run checkpoints, by name: ``params.*`` (the agent, the same names as
    ac), ``norm.*`` (ac's normaliser and reward scaler), ``carry.*`` (the cell state of the
    running episode, for act_step) and ``opt.*`` (Adam: step count and moments)."""
    cfg = cfg or PPOConfig()
    params = _init_params(agent, seed, cfg.orthogonal_init)
    s: State = {f"params.{k}": v for k, v in params.items()}
    d = agent.obs_size  # ac's normaliser and reward scaler, by ac's names (ac.initial_state)
    s.update({"norm.obs_count": torch.zeros(1), "norm.obs_mean": torch.zeros(1, d)})
    s["norm.obs_m2"] = torch.zeros(1, d)
    for k in ("ret_trace", "ret_count", "ret_mean", "ret_m2"):
        s[f"norm.{k}"] = torch.zeros(1)
    s.update(state_to_dict("carry", agent.cell.initial_state(1)))
    s["opt.step"] = torch.zeros(1)
    for k, v in params.items():
        s[f"opt.m.{k}"] = torch.zeros_like(v)
        s[f"opt.v.{k}"] = torch.zeros_like(v)
    return {k: v.contiguous() for k, v in s.items()}


params_of = ac.params_of


# ---- 3. rollout ---------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One rollout of n steps. Step t: the agent saw S_t, took A_t, got R_{t+1} and S_{t+1}."""

    x: Tensor  # (n, obs) S_t, normalised when it arrived
    first: Tensor  # (n,) 1 where S_t starts an episode (the cell resets before the step)
    action: Tensor  # (n, action_dims) A_t as sampled (before clipping to the actuator)
    logp: Tensor  # (n,) log pi_old(A_t | S_t)
    value: Tensor  # (n,) v_old(S_t), computed while acting
    reward: Tensor  # (n,) R_{t+1}, scaled when scale_rewards
    terminated: Tensor  # (n,) S_{t+1} is terminal: its value is 0
    ended: Tensor  # (n,) the episode ended at S_{t+1} (terminal or time limit): GAE stops
    next_x: Tensor  # (n, obs) S_{t+1} (at an episode end: the final observation)
    carry: tuple  # cell State; each field (n + 1, ...): carry[t] before step t, [n] after the last
    traces: tuple | None  # RTRL Traces; each field (n, ...): before step t (RTRL only)
    adv: Tensor | None = None  # (n,) GAE advantages
    ret: Tensor | None = None  # (n,) value targets: adv + value

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class EnvLoop:
    """The running environment between rollouts: an episode continues across a rollout end."""

    env: object
    x: Tensor  # the current observation S_t, normalised
    first: float  # S_t starts an episode
    carry: tuple  # cell state before step t
    traces: tuple | None  # RTRL traces before step t
    step: int = 0  # environment steps so far
    episode: int = 0  # finished episodes so far
    ep_return: float = 0.0
    ep_len: int = 0
    finished: list = field(default_factory=list)  # (step, episode, return, length) to log


def _dtype(s: State) -> torch.dtype:
    return s["params.enc.w"].dtype


def _normalise(cfg: PPOConfig, s: State, obs) -> Tensor:
    """ac's normaliser: updates ``norm.obs_*`` in ``s`` and returns the normalised (1, obs)."""
    x, upd = ac.normalise_obs(cfg, s, torch.as_tensor(obs, dtype=_dtype(s)).reshape(1, -1))
    s.update(upd)
    return x


def start_loop(cfg: PPOConfig, agent: A.AgentConfig, s: State, env, rtrl: bool) -> EnvLoop:
    obs, _ = env.reset()
    dt = _dtype(s)
    carry = type(agent.cell.initial_state(1))(*(t.to(dt) for t in agent.cell.initial_state(1)))
    traces = None
    if rtrl:
        traces = type(agent.cell.initial_traces(1))(
            *(t.to(dt) for t in agent.cell.initial_traces(1))
        )
    return EnvLoop(env, _normalise(cfg, s, obs), 1.0, carry, traces)


def log_prob_entropy(agent: A.AgentConfig, p: A.Params, pi_out: Tensor, action: Tensor):
    """log pi(action) and the entropy, over any leading dims: Gaussian or categorical."""
    if agent.action_kind == "continuous":
        log_std = p["actor.log_std"].expand_as(pi_out)
        z = (action - pi_out) * torch.exp(-log_std)
        logp = (-0.5 * z * z - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        entropy = (log_std + 0.5 + 0.5 * math.log(2 * math.pi)).sum(-1)
        return logp, entropy
    logits = torch.log_softmax(pi_out, dim=-1)
    logp = logits.gather(-1, action.long()).squeeze(-1)
    entropy = -(torch.exp(logits) * logits).sum(-1)
    return logp, entropy


def heads(agent: A.AgentConfig, p: A.Params, y: Tensor) -> tuple[Tensor, Tensor]:
    """(value (...,), actor output (..., k)) for features y (..., cell out)."""
    ln = agent.net.layer_norm
    v, _ = A.head(p, "critic", y, ln)
    pi_out, _ = A.head(p, "actor", y, ln)
    return v.squeeze(-1), pi_out


def _cat(tuples: list) -> tuple:
    return type(tuples[0])(*(torch.cat(fs) for fs in zip(*tuples)))


@torch.no_grad()
def collect_rollout(cfg, agent, s: State, loop: EnvLoop, n: int, gen, spec, noise_spec) -> Rollout:
    """Run the policy for n steps from where `loop` stands; updates `s` (normaliser, carry)."""
    from rtu_edge.train import env_action, sample_noise

    p, cell, cp = params_of(s), agent.cell, A.cell_params(params_of(s))
    dt = _dtype(s)
    rec: dict[str, list] = {k: [] for k in Rollout.__dataclass_fields__ if k not in ("adv", "ret")}
    for _ in range(n):
        first = torch.tensor([loop.first], dtype=dt)
        rec["x"].append(loop.x)
        rec["first"].append(first)
        rec["carry"].append(loop.carry)
        h0 = A.encode(p, loop.x, agent.net.layer_norm).h
        if loop.traces is not None:
            rec["traces"].append(loop.traces)
            y, loop.carry, loop.traces = cell.rtrl_step(h0, loop.carry, loop.traces, first, cp)
        else:
            y, loop.carry = cell.step_forward(h0, loop.carry, first, cp)
        value, pi_out = heads(agent, p, y)
        noise = sample_noise(noise_spec, gen).to(dt)
        action = A.sample_policy(agent, p, pi_out, noise).action
        logp, _ = log_prob_entropy(agent, p, pi_out, action)
        obs, r, term, trunc, _ = loop.env.step(env_action(spec, action))
        loop.ep_return += float(r)
        loop.ep_len += 1
        loop.step += 1
        reward = torch.tensor([float(r)], dtype=dt)
        if cfg.scale_rewards:
            reward, upd = ac.scale_reward(cfg, s, reward, 1.0 - first)
            s.update(upd)
        ended = bool(term or trunc)
        terminated = bool(term or (trunc and cfg.time_limit_as_terminal))
        next_x = _normalise(cfg, s, obs)  # every observation is normalised once, on arrival
        for k, v in (
            ("action", action),
            ("logp", logp),
            ("value", value),
            ("reward", reward),
            ("terminated", torch.tensor([float(terminated)], dtype=dt)),
            ("ended", torch.tensor([float(ended)], dtype=dt)),
            ("next_x", next_x),
        ):
            rec[k].append(v)
        if ended:
            loop.episode += 1
            loop.finished.append((loop.step, loop.episode, loop.ep_return, loop.ep_len))
            loop.ep_return, loop.ep_len = 0.0, 0
            obs, _ = loop.env.reset()
            loop.x, loop.first = _normalise(cfg, s, obs), 1.0
        else:
            loop.x, loop.first = next_x, 0.0
    rec["carry"].append(loop.carry)
    s.update(state_to_dict("carry", loop.carry))
    traces = rec.pop("traces")
    traces = _cat(traces) if traces else None
    carry = _cat(rec.pop("carry"))
    return Rollout(**{k: torch.cat(v) for k, v in rec.items()}, carry=carry, traces=traces)


@torch.no_grad()
def rescan_carries(agent: A.AgentConfig, p: A.Params, ro: Rollout) -> None:
    """fresh_gradients: recompute the stored carries (and traces) by a sequential scan with the
    current parameters, from the carry the rollout started with."""
    cell, cp = agent.cell, A.cell_params(p)
    h0 = A.encode(p, ro.x, agent.net.layer_norm).h
    carry = type(ro.carry)(*(f[:1] for f in ro.carry))
    traces = None if ro.traces is None else type(ro.traces)(*(f[:1] for f in ro.traces))
    carries, all_traces = [carry], [traces]
    for t in range(len(ro)):
        if traces is None:
            _, carry = cell.step_forward(h0[t : t + 1], carry, ro.first[t : t + 1], cp)
        else:
            _, carry, traces = cell.rtrl_step(h0[t : t + 1], carry, traces, ro.first[t : t + 1], cp)
        carries.append(carry)
        all_traces.append(traces)
    ro.carry = _cat(carries)
    if ro.traces is not None:
        ro.traces = _cat(all_traces[:-1])


# ---- 4. GAE -------------------------------------------------------------------------------------


def gae(
    reward: Tensor,
    value: Tensor,
    next_value: Tensor,
    terminated: Tensor,
    ended: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation; returns (advantages, returns = advantages + value).

    delta_t = R_{t+1} + gamma (1 - terminated_t) v(S_{t+1}) - v(S_t)
    A_t     = delta_t + gamma lam (1 - ended_t) A_{t+1}

    A time-limit end is ``ended`` but not ``terminated``: it bootstraps from v(S_{t+1}) (the
    final observation) and stops the recursion. The rollout's last step bootstraps from the
    value of the next observation (next_value[-1]).
    """
    adv = torch.zeros_like(reward)
    last = torch.zeros((), dtype=reward.dtype)
    for t in reversed(range(reward.shape[0])):
        delta = reward[t] + gamma * (1 - terminated[t]) * next_value[t] - value[t]
        last = delta + gamma * lam * (1 - ended[t]) * last
        adv[t] = last
    return adv, adv + value


@torch.no_grad()
def values_of(agent: A.AgentConfig, p: A.Params, x: Tensor, carry, first: Tensor) -> Tensor:
    """v(S) for a batch of observations, each one cell step from its carry (no traces)."""
    h0 = A.encode(p, x, agent.net.layer_norm).h
    y, _ = agent.cell.step_forward(h0, carry, first, A.cell_params(p))
    return heads(agent, p, y)[0]


def compute_targets(cfg: PPOConfig, agent: A.AgentConfig, p: A.Params, ro: Rollout, fresh: bool):
    """Fill ro.adv and ro.ret. S_{t+1} is one step from carry[t + 1] in the same episode
    (first = 0); `fresh` also recomputes v(S_t) with the current parameters."""
    n = len(ro)
    carry_next = type(ro.carry)(*(f[1:] for f in ro.carry))
    next_value = values_of(agent, p, ro.next_x, carry_next, torch.zeros(n, dtype=ro.x.dtype))
    value = ro.value
    if fresh:
        value = values_of(agent, p, ro.x, type(ro.carry)(*(f[:-1] for f in ro.carry)), ro.first)
    ro.adv, ro.ret = gae(
        ro.reward, value, next_value, ro.terminated, ro.ended, cfg.gamma, cfg.gae_lambda
    )


# ---- 5. the loss and its gradient ---------------------------------------------------------------


def ppo_loss(cfg: PPOConfig, agent, p, value, pi_out, mb: dict) -> tuple[Tensor, dict]:
    """Clipped surrogate + (clipped) value loss - entropy bonus, as a weighted mean.

    ``mb["weight"]`` is 1 for real samples and 0 for the padding of T-BPTT sequences.
    """
    w = mb["weight"]
    count = w.sum()

    def mean(t: Tensor) -> Tensor:
        return (t * w).sum() / count

    logp, entropy = log_prob_entropy(agent, p, pi_out, mb["action"])
    log_ratio = logp - mb["logp"]
    ratio = torch.exp(log_ratio)
    adv = mb["adv"]
    if cfg.norm_adv and count > 1:
        centred = adv - mean(adv)
        std = torch.sqrt((centred * centred * w).sum() / (count - 1))
        adv = centred / (std + 1e-8)
    pg_loss = mean(
        torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - cfg.clip, 1 + cfg.clip))
    )
    v_loss = (value - mb["ret"]) ** 2
    if cfg.clip_value:
        v_clipped = mb["value"] + torch.clamp(value - mb["value"], -cfg.clip, cfg.clip)
        v_loss = torch.maximum(v_loss, (v_clipped - mb["ret"]) ** 2)
    v_loss = 0.5 * mean(v_loss)
    ent = mean(entropy)
    loss = pg_loss - cfg.ent_coef * ent + cfg.vf_coef * v_loss
    with torch.no_grad():
        stats = {
            "loss": float(loss),
            "pg_loss": float(pg_loss),
            "v_loss": float(v_loss),
            "entropy": float(ent),
            "approx_kl": float(mean((ratio - 1) - log_ratio)),
            "clipfrac": float(mean(((ratio - 1).abs() > cfg.clip).to(w.dtype))),
        }
    return loss, stats


def minibatch_gradients(cfg: PPOConfig, agent: A.AgentConfig, p: A.Params, mb: dict):
    """(gradients by parameter name, loss statistics) of the PPO loss on one minibatch.

    RTRL (``mb["traces"]`` set): one cell step per sample from its stored carry; autograd
    gives dL/dy and the heads' and encoder's gradients, ``cell.rtrl_grads`` the cell's.
    T-BPTT: autograd through ``cell.forward`` over sequences (time-major) from stored states.
    """
    cell = agent.cell
    leaves = {k: v.detach().requires_grad_(True) for k, v in p.items()}
    cp = A.cell_params(leaves)
    h0 = A.encode(leaves, mb["x"], agent.net.layer_norm).h
    rtrl = mb.get("traces") is not None
    if rtrl:
        y, c_t, e_t = cell.rtrl_step(h0, mb["carry"], mb["traces"], mb["first"], cp)
    else:
        y, _ = functional_call(cell, cp, (h0, mb["carry"], mb["first"]))
    value, pi_out = heads(agent, leaves, y)
    loss, stats = ppo_loss(cfg, agent, leaves, value, pi_out, mb)
    names = [k for k in leaves if not (rtrl and k.startswith("cell."))]
    wrt = ([y] if rtrl else []) + [leaves[k] for k in names]
    got = torch.autograd.grad(loss, wrt, allow_unused=True)
    if rtrl:
        g_y, got = got[0], got[1:]
    grads = {k: torch.zeros_like(leaves[k]) if g is None else g for k, g in zip(names, got)}
    if rtrl:
        with torch.no_grad():
            detached = {k: v.detach() for k, v in cp.items()}
            for k, g in cell.rtrl_grads(g_y, c_t, e_t, detached).items():
                grads[f"cell.{k}"] = g
    return {k: grads[k] for k in p}, stats


# ---- 6. the update ------------------------------------------------------------------------------


def _gather(ro: Rollout, idx: Tensor) -> dict:
    """Single steps idx (B,) of the rollout, with their stored carries and traces."""
    mb = {k: getattr(ro, k)[idx] for k in ("x", "first", "action", "logp", "value", "adv", "ret")}
    mb["carry"] = type(ro.carry)(*(f[idx] for f in ro.carry))
    mb["traces"] = type(ro.traces)(*(f[idx] for f in ro.traces))
    mb["weight"] = torch.ones(idx.shape[0], dtype=ro.x.dtype)
    return mb


def _gather_sequences(ro: Rollout, starts: Tensor, length: int) -> dict:
    """Sequences of `length` steps from `starts` (S,), time-major (T, S, ...), padded with
    weight 0 past the rollout's end; each starts from its stored (detached) cell state."""
    n = len(ro)
    idx = starts[None, :] + torch.arange(length)[:, None]  # (T, S)
    valid = idx < n
    idx = idx.clamp(max=n - 1)
    mb = {k: getattr(ro, k)[idx] for k in ("x", "first", "action", "logp", "value", "adv", "ret")}
    mb["carry"] = type(ro.carry)(*(f[starts] for f in ro.carry))
    mb["weight"] = valid.to(ro.x.dtype)
    return mb


def minibatches(cfg: PPOConfig, ro: Rollout, rtrl: bool, gen: torch.Generator):
    """One epoch's shuffled minibatches: rollout / minibatches single steps each (RTRL), or as
    many whole sequences of `truncation` steps (T-BPTT, at least one)."""
    size = max(1, cfg.rollout // cfg.minibatches)
    if rtrl:
        perm = torch.randperm(len(ro), generator=gen)
        for i in range(0, len(ro), size):
            yield _gather(ro, perm[i : i + size])
        return
    starts = torch.arange(0, len(ro), cfg.truncation)
    starts = starts[torch.randperm(len(starts), generator=gen)]
    per = max(1, size // cfg.truncation)
    for i in range(0, len(starts), per):
        yield _gather_sequences(ro, starts[i : i + per], cfg.truncation)


@torch.no_grad()
def clip_grad_norm(grads: dict[str, Tensor], max_norm: float) -> Tensor:
    """Scale all gradients together so that their global L2 norm is at most max_norm."""
    norm = torch.sqrt(sum((g * g).sum() for g in grads.values()))
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for k in grads:
        grads[k] = grads[k] * scale
    return norm


@torch.no_grad()
def adam_step(cfg: PPOConfig, s: State, grads: dict[str, Tensor]) -> None:
    """torch.optim.Adam's update, on the ``params.*`` in `s` with moments ``opt.*``."""
    b1, b2 = ADAM_BETAS
    t = s["opt.step"] + 1
    s["opt.step"] = t
    for k, g in grads.items():
        m = b1 * s[f"opt.m.{k}"] + (1 - b1) * g
        v = b2 * s[f"opt.v.{k}"] + (1 - b2) * g * g
        s[f"opt.m.{k}"], s[f"opt.v.{k}"] = m, v
        denom = torch.sqrt(v) / torch.sqrt(1 - b2**t) + cfg.adam_eps
        s[f"params.{k}"] = s[f"params.{k}"] - (cfg.lr / (1 - b1**t)) * m / denom


def update(cfg: PPOConfig, agent: A.AgentConfig, s: State, ro: Rollout, gen) -> dict:
    """Epochs x shuffled minibatches of clipped-PPO steps; returns the last epoch's mean stats.

    A minibatch whose loss or gradient is not finite moves nothing; ``skipped`` counts them.
    """
    rtrl = ro.traces is not None
    compute_targets(cfg, agent, params_of(s), ro, fresh=False)
    skipped = 0
    for epoch in range(cfg.epochs):
        if epoch > 0 and cfg.fresh_gradients:
            rescan_carries(agent, params_of(s), ro)
        if epoch > 0 and cfg.fresh_targets:
            compute_targets(cfg, agent, params_of(s), ro, fresh=True)
        totals: dict[str, float] = {}
        count = 0
        for mb in minibatches(cfg, ro, rtrl, gen):
            grads, stats = minibatch_gradients(cfg, agent, params_of(s), mb)
            norm = clip_grad_norm(grads, cfg.max_grad_norm)
            if not (math.isfinite(stats["loss"]) and math.isfinite(float(norm))):
                skipped += 1
                continue
            adam_step(cfg, s, grads)
            stats["grad_norm"] = float(norm)
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            count += 1
    out = {k: v / max(count, 1) for k, v in totals.items()}
    out["skipped"] = skipped
    return out


# ---- 7. the training loop -----------------------------------------------------------------------


def _open_run(cfg, learner: Learner, agent, run_dir: Path, gen):
    """(state, step, episode, kept metrics rows, metrics file): fresh, or resumed as train() does."""
    from firmware_bridge.atomic import atomic_write_bytes
    from rtu_edge import run_dir as rd

    if not cfg.resume:
        if run_dir.exists() and any(run_dir.iterdir()) and not cfg.overwrite:
            raise FileExistsError(
                f"{run_dir} already holds files; choose another --out, pass --overwrite, "
                "or continue it with --resume"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        f = open(run_dir / rd.METRICS, "w", newline="")
        csv.writer(f).writerow(rd.METRICS_HEADER)
        return learner.initial_state(agent, cfg.learner, cfg.seed), 0, 0, [], f
    run, state = rd.load_run(run_dir)
    if run.agent != agent:
        raise ValueError(f"{run_dir} holds a different agent ({run.agent}); cannot resume")
    meta = rd.read_progress(run_dir)
    step, episode = int(meta.get("step", 0)), int(meta.get("episode", 0))
    if "noise_rng" in meta:
        gen.set_state(torch.tensor(list(bytes.fromhex(meta["noise_rng"])), dtype=torch.uint8))
    if step >= cfg.steps:
        raise ValueError(f"{run_dir} already reached step {step}; pass a larger --steps")
    metrics = run_dir / rd.METRICS
    rows = list(csv.reader(io.StringIO(metrics.read_text()))) if metrics.exists() else []
    kept = [r for r in rows[1:] if r and int(r[0]) <= step]
    text = io.StringIO()
    csv.writer(text).writerows([rd.METRICS_HEADER, *kept])
    atomic_write_bytes(metrics, text.getvalue().encode())
    return state, step, episode, kept, open(metrics, "a", newline="")


def train_ppo(cfg, progress: bool = True) -> dict:
    """Train with PPO; writes the same run directory as ``rtu_edge.train.train`` (config.json,
    metrics.csv per finished episode, checkpoint.safetensors, summary.json, learning curve).

    Rollouts of ``learner.rollout`` steps (the last one shorter, to end at ``steps``), each
    followed by an update. Checkpoints after an update every ``checkpoint_every`` steps, at the
    end, and on SIGINT / SIGTERM (then the partial rollout is discarded: ``--resume`` starts a
    fresh rollout and episode from the last parameters).
    """
    from firmware_bridge.atomic import atomic_write_json
    from rtu_edge import envs as envs_mod
    from rtu_edge import run_dir as rd
    from rtu_edge.learners import get_learner
    from rtu_edge.plots import write_learning_curve
    from rtu_edge.train import _signals_interrupt, action_spec, agent_config_for

    pc: PPOConfig = cfg.learner
    if pc.rollout < 1 or pc.epochs < 1 or pc.minibatches < 1 or pc.truncation < 1:
        raise ValueError("learner.rollout, epochs, minibatches and truncation must be positive")
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} is a file; choose a directory for the run")
    torch.set_num_threads(1)
    learner = get_learner(cfg.algo)
    info = envs_mod.env_info(cfg.env)
    agent = agent_config_for(cfg)
    rtrl = uses_rtrl(pc, agent)
    spec, noise_spec = action_spec(info), learner.noise(agent)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    s, step, episode, kept, metrics_file = _open_run(cfg, learner, agent, run_dir, gen)
    metrics_f = writer = rd.MetricsLog(
        metrics_file, run_dir, cfg.tensorboard, resume_step=step if cfg.resume else None
    )
    rd.write_config(run_dir, cfg, asdict(info))
    env = envs_mod.make(cfg.env, seed=cfg.seed + 7919 * episode)
    loop = start_loop(pc, agent, s, env, rtrl)
    loop.step, loop.episode, start_step = step, episode, step
    returns = [(int(r[0]), float(r[2])) for r in kept]
    recent: deque[float] = deque((r for _, r in returns[-20:]), maxlen=20)
    bad_updates = skipped_checkpoints = updates = 0
    stats: dict = {}
    ro = None
    log = print

    def checkpoint() -> None:
        nonlocal skipped_checkpoints
        try:
            rd.save_checkpoint(run_dir, s, {"step": loop.step, "episode": loop.episode}, gen)
        except rd.RunDirError as e:
            skipped_checkpoints += 1
            log(f"WARNING: {e}")

    bar = contextlib.nullcontext()
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        bar = Progress(
            TextColumn(f"train {cfg.env} {cfg.net.cell} ppo"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[sps]:>6.0f} steps/s  recent return {task.fields[ret]}"),
        )
        task = bar.add_task("train", total=cfg.steps, completed=step, sps=0.0, ret="-")
        log = bar.console.print
    t0 = time.perf_counter()
    try:
        with bar, _signals_interrupt():
            while loop.step < cfg.steps:
                n = min(pc.rollout, cfg.steps - loop.step)
                ro = collect_rollout(pc, agent, s, loop, n, gen, spec, noise_spec)
                stats = update(pc, agent, s, ro, gen)
                updates += 1
                bad_updates += stats["skipped"]
                elapsed = time.perf_counter() - t0
                for st, ep, ret, length in loop.finished:
                    sps = (st - start_step) / elapsed
                    writer.writerow([st, ep, f"{ret:.6g}", length, f"{sps:.1f}", f"{elapsed:.2f}"])
                    returns.append((st, ret))
                    recent.append(ret)
                loop.finished.clear()
                metrics_f.flush()
                if loop.step // cfg.checkpoint_every > (loop.step - n) // cfg.checkpoint_every:
                    checkpoint()
                if progress:
                    ret = f"{sum(recent) / len(recent):.1f}" if recent else "-"
                    sps = (loop.step - start_step) / elapsed
                    bar.update(task, completed=loop.step, sps=sps, ret=ret)
    except KeyboardInterrupt:
        checkpoint()  # `rtu-edge train --out RUN --resume` continues
        raise
    finally:
        metrics_f.close()
        env.close()
    elapsed = time.perf_counter() - t0
    checkpoint()

    tail = [r for st, r in returns if st >= 0.9 * cfg.steps] or [r for _, r in returns[-1:]]
    head = returns[: max(1, len(returns) // 10)]
    summary = {
        "env": cfg.env,
        "cell": cfg.net.cell,
        "algo": cfg.algo,
        "steps": cfg.steps,
        "episodes": loop.episode,
        "final_return": float(np.mean(tail)) if tail else None,
        "first_return": float(np.mean([r for _, r in head])) if returns else None,
        "steps_per_second": (cfg.steps - start_step) / elapsed,
        "recurrent_params": agent.cell.recurrent_param_count(),
        "flops_per_step": flops_per_step(pc, agent, s, ro, gen) if ro is not None else None,
        "non_finite_updates": bad_updates,
        "skipped_checkpoints": skipped_checkpoints,
        "wall_time_s": elapsed,
        "gradient": "rtrl" if rtrl else f"tbptt{pc.truncation}",
        "updates": updates,
        "last_update": {k: v for k, v in stats.items() if k != "skipped"},
    }
    atomic_write_json(run_dir / rd.SUMMARY, summary)
    if returns:
        write_learning_curve(
            run_dir / "learning_curve.png",
            returns,
            title=f"{cfg.env} {cfg.net.cell} ppo seed {cfg.seed}",
        )
    return summary


def flops_per_step(cfg: PPOConfig, agent, s: State, ro: Rollout, gen) -> int:
    """FLOPs per environment step, counted op by op: one acting step, plus ``epochs`` times one
    minibatch's gradient and Adam step divided by its size (the fresh_gradients scan and the
    targets are not counted)."""
    from rtu_edge.flops import count_flops

    p = params_of(s)
    rtrl = ro.traces is not None
    one = _gather(ro, torch.zeros(1, dtype=torch.long)) if rtrl else None

    def act() -> None:
        h0 = A.encode(p, ro.x[:1], agent.net.layer_norm).h
        carry = type(ro.carry)(*(f[:1] for f in ro.carry))
        if rtrl:
            y, _, _ = agent.cell.rtrl_step(h0, carry, one["traces"], ro.first[:1], A.cell_params(p))
        else:
            y, _ = agent.cell.step_forward(h0, carry, ro.first[:1], A.cell_params(p))
        heads(agent, p, y)

    with torch.no_grad():
        acting = count_flops(act)
    mb = next(minibatches(cfg, ro, rtrl, torch.Generator().manual_seed(0)))
    scratch = dict(s)

    def learn() -> None:
        grads, _ = minibatch_gradients(cfg, agent, p, mb)
        clip_grad_norm(grads, cfg.max_grad_norm)
        adam_step(cfg, scratch, grads)

    size = float(mb["weight"].sum())
    return int(acting + round(cfg.epochs * count_flops(learn) / size))


# ---- 8. export: a ppo run as a streaming ac state -----------------------------------------------


def to_streaming_state(cfg: PPOConfig, agent: A.AgentConfig, s: State):
    """The trained ppo state as an ``ac`` learner's: returns ("ac", ACConfig, ac state).

    For a cell without RTRL (gru, lru) the state is what ac's act step reads (parameters, the
    observation normaliser, a zero cell state): export writes an act-only bundle of it.
    ``params.*`` (the same names) and the observation normaliser (``norm.obs_*``) carry over;
    eligibility traces, RTRL traces, carries, the previous value and the reward scaler start
    fresh (the robot's reward stream starts anew). The ACConfig takes ppo's discount and
    normaliser settings and ac's defaults otherwise. Adam moments are dropped.
    """
    keep = ("obs_clip", "norm_clip", "stats_clip", "stats_warmup", "eps")
    ac_cfg = ac.ACConfig(gamma=cfg.gamma, **{k: getattr(cfg, k) for k in keep})
    if not agent.cell.online:  # truncated BPTT: no learning on the robot, an act-only bundle
        out = ac.act_only_state(agent, s)
        return "ac", ac_cfg, out
    out = ac.initial_state(agent, ac_cfg, seed=0)
    names = [k for k in out if k.startswith("params.")]
    missing = sorted(set(names) ^ {k for k in s if k.startswith("params.")})
    if missing:
        raise ValueError(f"the ppo checkpoint and ac disagree on parameters {missing[:5]}")
    for k in names + ["norm.obs_count", "norm.obs_mean", "norm.obs_m2"]:
        out[k] = s[k].detach().to(out[k].dtype).clone().contiguous()
    return "ac", ac_cfg, out


# ---- 9. what the learner declares ---------------------------------------------------------------


def learn_step(cfg, agent, s, inputs):
    raise NotImplementedError(
        "ppo learns from rollouts on the workstation (train_ppo), not one tick at a time; "
        "`rtu-edge export` turns a ppo run into a streaming ac bundle"
    )


LEARNER = Learner(
    name="ppo",
    description="recurrent PPO with RTRL (stale gradients) or T-BPTT; exports as an ac bundle",
    Config=PPOConfig,
    heads=("critic", "actor"),
    initial_state=initial_state,
    learn_step=learn_step,
    # acting reads params.*, norm.obs_* and carry.*, which a ppo state holds under ac's names;
    # the learn-step declarations are those of the ac bundle a ppo run exports to.
    act_step=ac.act_step,
    step_inputs=ac.step_inputs,
    learn_outputs=ac.learn_outputs,
    act_inputs=ac.act_inputs,
    act_outputs=ac.act_outputs,
    act_state_names=ac.act_state_names,
    act_prepare=ac.act_prepare,
    noise=ac.noise,
    streaming=False,
    train=train_ppo,
    to_streaming=to_streaming_state,
)


__all__ = [
    "LEARNER",
    "PPOConfig",
    "gae",
    "initial_state",
    "minibatch_gradients",
    "to_streaming_state",
    "train_ppo",
]
