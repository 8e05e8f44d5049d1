"""Streaming actor-critic AC(lambda) with exact RTRL and ObGD-bounded steps.

This file is the single source of truth for on-line learning: ``rtu-edge train`` calls
:func:`ac_step` in PyTorch, and ``rtu-edge export`` traces the very same function into
``learn.onnx``, which the robot runs with onnxruntime. So the step is a pure function of
tensors, with no autograd, no Python branching on values and no state on ``self``.

One call is one control tick. The robot (or the gymnasium loop in rtu_edge/train.py) sends
the observation S_t, the reward R_t of the transition that led to it, and two flags:

* ``first``: S_t starts an episode. State, RTRL traces and eligibility traces are zeroed and no
  TD update happens (there is no previous transition in this episode).
* ``terminal``: S_t is terminal, so its value is 0 when bootstrapping. The action returned on a
  terminal tick is ignored by the robot, which resets and sends ``first`` next.
  A time-limit truncation is simply not terminal: the learner bootstraps from v(S_t).

Per tick, in order (Elsayed, Vasan, Mahmood 2024, "Streaming deep RL finally works", with the
RTU's exact RTRL traces supplying the recurrent gradients):

1. normalise S_t with running statistics; scale R_t by the running std of the discounted return;
2. RTU step with RTRL traces -> features y_t; heads -> v(S_t), policy; sample A_t with the noise;
3. TD error of the previous transition: delta = R_t + gamma (1 - terminal) v(S_t) - v(S_{t-1});
4. ObGD update with the eligibility traces holding grad v and grad log pi up to S_{t-1}:
   step = lr / max(lr * kappa * max(|delta|, 1) * ||z||_1, 1);  w += step * delta * z;
   the actor also takes an entropy step, and any non-finite update is skipped as a whole;
5. decay the eligibility traces and add grad v(S_t) and grad log pi(A_t | S_t).

v(S_{t-1}) is the value computed on the previous tick, i.e. with the parameters before the last
update: the usual one-forward-per-step form of online TD.

The step computes on the packed state (`packing`: parameters and eligibility traces in flat
buffers, so the exported graph has a handful of nodes per step of the update rather than a
handful per parameter tensor); docs/learner.md "The packed form".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from firmware_bridge.contract import NoiseSpec, StepInput, StepOutput
from rtu_edge import agent as A
from rtu_edge import packing as P
from rtu_edge.cells import state_from_dict, state_to_dict
from rtu_edge.learners.base import Learner
from rtu_edge.ops import added, finite, l1_norm, plus_eps, taken_if

State = dict[str, Tensor]


@dataclass
class ACConfig:
    """Hyperparameters of streaming AC(lambda). Defaults follow Elsayed et al. (2024)."""

    gamma: float = 0.99  # discount
    lam: float = 0.8  # eligibility-trace decay lambda, for actor and critic
    lr: float = 1.0  # ObGD step size alpha (ObGD scales it down whenever a step would overshoot)
    kappa_value: float = 2.0  # ObGD overshoot bound for the critic
    kappa_policy: float = 3.0  # ObGD overshoot bound for the actor
    entropy_coef: float = 0.01  # weight of the entropy step of the actor
    # Scale the entropy step by |delta|, as in Elsayed et al.'s update, where the entropy
    # gradient enters with sign(delta) and is then multiplied by delta.
    entropy_td_scaled: bool = True
    obs_clip: float = 1e3  # raw observations are clipped to +-obs_clip before anything else
    norm_clip: float = 5.0  # normalised observations are clipped to +-norm_clip standard deviations
    stats_clip: float = (
        10.0  # after warm-up, a sample moves the normaliser by at most this many stds
    )
    stats_warmup: float = 100.0  # samples before stats_clip applies
    eps: float = 1e-8  # variance floor in normalisers
    # Gaussian policies: the learned log std is kept in [log_std_min, log_std_max] (std 0.007 to
    # 1 action unit). Unbounded, it grows without limit on clipped action spaces (measured on
    # Pendulum-P: log std 77 after 20k steps), turning the policy into random bang-bang control.
    log_std_min: float = -5.0
    log_std_max: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# ---- state layout ------------------------------------------------------------------------


def initial_state(agent: A.AgentConfig, cfg: ACConfig | None = None, seed: int = 0) -> State:
    """Every tensor the learn step carries from tick to tick, by its bundle name."""
    params = A.init_params(agent, seed, heads=("critic", "actor"))
    s: State = {f"params.{k}": v for k, v in params.items()}
    for k in A.critic_param_names(agent):
        s[f"elig_v.{k}"] = torch.zeros_like(params[k])
    for k in A.actor_param_names(agent):
        s[f"elig_pi.{k}"] = torch.zeros_like(params[k])
    d = agent.obs_size
    s.update(
        {
            "norm.obs_count": torch.zeros(1),
            "norm.obs_mean": torch.zeros(1, d),
            "norm.obs_m2": torch.zeros(1, d),
            "norm.ret_trace": torch.zeros(1),
            "norm.ret_count": torch.zeros(1),
            "norm.ret_mean": torch.zeros(1),
            "norm.ret_m2": torch.zeros(1),
        }
    )
    cell = agent.cell
    s.update(state_to_dict("carry", cell.initial_state(1)))
    s.update(state_to_dict("trace", cell.initial_traces(1)))
    s["carry.v_prev"] = torch.zeros(1)
    return {k: v.contiguous() for k, v in s.items()}


def params_of(s: State) -> A.Params:
    """The parameters of a state by tensor (not packed), keyed without the ``params.`` prefix."""
    return {k[len("params.") :]: v for k, v in s.items() if k.startswith("params.")}


# ---- packed layout (the bundle's form of the state) -----------------------------------------

PARAMS, ELIG_V, ELIG_PI = "params.flat", "elig_v.flat", "elig_pi.flat"
ELIG_TRUNK = "elig_trunk.flat"
LOG_STD, ELIG_LOG_STD = "params.actor.log_std", "elig_pi.actor.log_std"


def packing(agent: A.AgentConfig) -> tuple[P.PackedBuffer, ...]:
    """The flat buffers of the learn step: (params.flat, elig_v.flat, elig_trunk.flat,
    elig_pi.flat).

    params.flat is [critic head | trunk (encoder, cell) | actor head]. The traces of the
    critic (z_v) and of the actor (z_pi) are split where they meet the trunk: elig_v.flat is
    z_v over the critic head, elig_pi.flat z_pi over the actor head, and elig_trunk.flat holds
    both over the trunk, z_v's part then z_pi's, so the step reads it as one (2, trunk)
    matrix: the trunk's two trace updates, two norms and its part of the update are each one
    pass over both rows. A Gaussian policy's log std and its trace stay tensors of their own:
    the update clamps the one and not the rest.
    """
    cached = agent.__dict__.get("_ac_packing")
    if cached is not None:
        return cached
    shapes = A.param_shapes(agent)
    trunk = A.trunk_param_names(agent)

    def buf(name: str, group: str, names) -> P.PackedBuffer:
        return P.PackedBuffer.of(name, [(f"{group}.{k}", shapes[k]) for k in names])

    layout = (
        buf(PARAMS, "params", A.CRITIC_HEAD + trunk + A.ACTOR_HEAD),
        buf(ELIG_V, "elig_v", A.CRITIC_HEAD),
        P.PackedBuffer.of(
            ELIG_TRUNK,
            [(f"{g}.{k}", shapes[k]) for g in ("elig_v", "elig_pi") for k in trunk],
        ),
        buf(ELIG_PI, "elig_pi", A.ACTOR_HEAD),
    )
    agent.__dict__["_ac_packing"] = layout
    return layout


def _params(agent: A.AgentConfig, s: State) -> A.Params:
    """The parameters by name (without ``params.``) from a packed or a by-tensor state. A packed
    state may hold them by name too (the exported learn step's views of params.flat, bound by
    the runtime: contract.view_inputs); then those are read, and params.flat is not split."""
    if PARAMS not in s:
        return params_of(s)
    p = {k[len("params.") :]: v for k, v in P.read(packing(agent)[0], s).items()}
    if LOG_STD in s:
        p["actor.log_std"] = s[LOG_STD]
    return p


# ---- running statistics (Welford, as masks so they export) ---------------------------------


def _welford(count: Tensor, mean: Tensor, m2: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    count = count + 1
    delta = x - mean
    mean = mean + delta / count
    m2 = m2 + delta * (x - mean)
    return count, mean, m2


def _variance(count: Tensor, m2: Tensor) -> Tensor:
    """Sample variance, and 1 until there are two samples.

    (Below two samples the division's value, m2 / 0 or m2 / -1, is computed and not selected.)
    """
    return torch.where(count >= 2, m2 / (count - 1), torch.ones_like(m2))


def _std(cfg: ACConfig, count: Tensor, m2: Tensor) -> Tensor:
    return torch.sqrt(plus_eps(_variance(count, m2), cfg.eps))


def normalise_obs(cfg: ACConfig, s: State, obs: Tensor) -> tuple[Tensor, State]:
    """Clip, update the running mean/variance, return the normalised observation.

    After warm-up, the sample fed to the statistics is winsorised to mean +- stats_clip std, so a
    single absurd reading (a sensor glitch of 1e9) cannot poison the normaliser.
    """
    obs = torch.clamp(obs, -cfg.obs_clip, cfg.obs_clip)
    count, mean, m2 = s["norm.obs_count"], s["norm.obs_mean"], s["norm.obs_m2"]
    std = _std(cfg, count, m2)
    bounded = torch.clamp(obs, mean - cfg.stats_clip * std, mean + cfg.stats_clip * std)
    sample = torch.where(count >= cfg.stats_warmup, bounded, obs)
    count, mean, m2 = _welford(count, mean, m2, sample)
    x = (obs - mean) / _std(cfg, count, m2)
    x = torch.clamp(x, -cfg.norm_clip, cfg.norm_clip)
    return x, {"norm.obs_count": count, "norm.obs_mean": mean, "norm.obs_m2": m2}


def scale_reward(cfg: ACConfig, s: State, reward: Tensor, keep: Tensor) -> tuple[Tensor, State]:
    """Divide the reward by the running std of the discounted return (Elsayed et al.)."""
    trace = s["norm.ret_trace"] * cfg.gamma * keep + reward
    count, mean, m2 = _welford(s["norm.ret_count"], s["norm.ret_mean"], s["norm.ret_m2"], trace)
    scaled = reward / _std(cfg, count, m2)
    return scaled, {
        "norm.ret_trace": trace,
        "norm.ret_count": count,
        "norm.ret_mean": mean,
        "norm.ret_m2": m2,
    }


def _keep_if_finite(old: State, upd: State) -> State:
    """`upd` if every tensor in it is finite, else the old values of the same tensors.

    One check on the sum of everything (a non-finite entry, or a sum that overflows, keeps the
    old values): a few graph nodes instead of a finiteness test per tensor. A one-element
    tensor enters the sum as it is (a ReduceSum node fewer each; the same value).
    """
    total = None
    for v in upd.values():
        part = v if v.numel() == 1 else v.sum()
        total = part if total is None else total + part
    ok = finite(total)
    return {k: torch.where(ok, v, old[k]) for k, v in upd.items()}


# ---- ObGD ---------------------------------------------------------------------------------


def obgd_step_size(lr: float, kappa: float, delta: Tensor, z_l1: Tensor) -> Tensor:
    """ObGD: shrink the step so that it cannot overshoot the TD target (Elsayed et al., Alg. 3)."""
    delta_bar = torch.clamp(delta.abs(), min=1.0)
    overshoot = lr * kappa * delta_bar * z_l1
    return lr / torch.clamp(overshoot, min=1.0)


# ---- the learn step -------------------------------------------------------------------------


def ac_step(
    cfg: ACConfig,
    agent: A.AgentConfig,
    s: State,
    obs: Tensor,
    reward: Tensor,
    first: Tensor,
    terminal: Tensor,
    noise: Tensor,
) -> tuple[State, Tensor, Tensor, Tensor]:
    """One streaming AC(lambda) tick. Returns (new state, action, value, td_error).

    Shapes: obs (1, obs_size); reward, first, terminal (1,); noise (1, agent.noise_size).
    The state may be packed (the bundle's form, `packing`) or by tensor (`initial_state`'s
    form); the new state comes back in the same form. The step itself works on the packed one.
    """
    layout = packing(agent)
    if PARAMS not in s:
        new, action, value, delta = ac_step(
            cfg, agent, P.pack(s, layout), obs, reward, first, terminal, noise
        )
        return P.unpack(new, layout), action, value, delta
    keep = 1.0 - first  # (1,): 0 on the first tick of an episode
    p = _params(agent, s)
    new: State = {}

    # 1. normalisers (statistics that would become non-finite, e.g. after a burst of 1e38
    # rewards, keep their old values: an infinite variance would silently zero every later reward)
    x, upd = normalise_obs(cfg, s, obs)
    new.update(_keep_if_finite(s, upd))
    r, upd = scale_reward(cfg, s, reward, keep)
    new.update(_keep_if_finite(s, upd))

    # 2. forward: encoder, cell with RTRL traces (reset by the `first` mask inside), heads
    ln = agent.net.layer_norm
    cell = agent.cell
    h0 = A.encode(p, x, ln)
    state = state_from_dict(cell.State, "carry", s)
    traces = state_from_dict(cell.Traces, "trace", s)
    y, state, traces = cell.rtrl_step(h0.h, state, traces, first, A.cell_params(p))
    value_out, v_hid = A.head(p, "critic", y, ln)
    value = value_out.reshape(1)
    pi_out, pi_hid = A.head(p, "actor", y, ln)
    sample = A.sample_policy(agent, p, pi_out, noise)

    # 3. TD error of the previous transition (masked out on the first tick)
    v_boot = value * (1.0 - terminal)
    delta = (r + cfg.gamma * v_boot - s["carry.v_prev"]) * keep

    # 4. ObGD updates from the eligibility traces: z_v over the critic's parameters, z_pi over
    # the actor's, each the head's buffer and a row of the trunk's (packing). On the first tick
    # delta is 0, so nothing moves.
    continuous = agent.action_kind == "continuous"
    z_v, z_pi = s[ELIG_V], s[ELIG_PI]  # the heads' parts
    z_trunk = s[ELIG_TRUNK].reshape(2, -1)  # rows: z_v's and z_pi's trunk parts
    trunk_l1 = l1_norm(z_trunk, dim=1)  # (2,)
    z_v_l1 = l1_norm(z_v) + trunk_l1[0]
    z_pi_l1 = trunk_l1[1] + l1_norm(z_pi)
    if continuous:  # the log std's trace is a tensor of its own (its parameter is clamped)
        z_pi_l1 = z_pi_l1 + l1_norm(s[ELIG_LOG_STD])
    step_v = obgd_step_size(cfg.lr, cfg.kappa_value, delta, z_v_l1)
    step_pi = obgd_step_size(cfg.lr, cfg.kappa_policy, delta, z_pi_l1)

    # gradients at S_t (pre-update parameters): critic grad v, actor grad log pi and grad entropy,
    # each flat in the layout of its trace (heads by hand, the trunk's in one pass for all three)
    g_v_head, g_y_v = A.head_backward(p, "critic", y, v_hid, torch.ones_like(value_out))
    g_pi_head, g_y_pi = A.head_backward(p, "actor", y, pi_hid, sample.dlogp_dout)
    g_ys = [g_y_v, g_y_pi]
    if not continuous:
        g_h_head, g_y_h = A.head_backward(p, "actor", y, pi_hid, sample.dent_dout)
        g_ys.append(g_y_h)
    # (a Gaussian's entropy depends on log_std only, with gradient 1: no trunk gradient)
    trunk = A.trunk_backward_flat(agent, p, g_ys, x, h0, state, traces)  # (K, trunk size)
    g_v = P.cat_flat([g_v_head[k] for k in A.CRITIC_HEAD])  # as elig_v.flat
    g_pi = P.cat_flat([g_pi_head[k] for k in A.ACTOR_HEAD])  # as elig_pi.flat

    # w += step_v delta z_v + step_pi (delta z_pi + entropy_coef grad H), as scalar coefficients
    # times flat buffers, part by part of params.flat = [critic head | trunk | actor head]: the
    # critic head's from z_v, the trunk's from both rows of elig_trunk, the actor head's from
    # z_pi. The whole update is skipped when anything is non-finite; the host counts it.
    ok = finite(delta * z_v_l1 * z_pi_l1 * value)
    c_v = step_v * delta
    c_pi = step_pi * delta
    if cfg.entropy_td_scaled:
        c_h = step_pi * cfg.entropy_coef * delta.abs()  # delta is 0 on the first tick
    else:
        c_h = step_pi * (cfg.entropy_coef * keep)

    # [c_v, c_pi] as a (1, 2) row: the trunk's part of the update is one (1, 2) @ (2, trunk)
    # product, c_v z_v + c_pi z_pi in one pass over both rows (a sum over the rows' axis would
    # be a strided reduction, 3x slower)
    c_rows = torch.cat([c_v, c_pi]).reshape(1, 2)

    middle = (c_rows @ z_trunk).reshape(-1)  # the trunk's part
    actor = c_pi * z_pi
    if not continuous:  # the entropy's gradient
        g_h = P.cat_flat([g_h_head[k] for k in A.ACTOR_HEAD])
        middle, actor = middle + c_h * trunk[2], actor + c_h * g_h
    dw = torch.cat([c_v * z_v, middle, actor])  # as params.flat

    # applied only when ok. Exported, the adds are an ONNX If's only work: no select pass over
    # params.flat, and dw computed before the If, where the same nodes run faster than inside
    # its branch (8% of the paper-size step; README "Measured")
    if continuous:  # exploration noise stays within bounds (a robot moves with it)
        d_log_std = c_pi * s[ELIG_LOG_STD] + c_h * sample.dent_dlogstd
        old = (s[PARAMS], s[LOG_STD])
        new[PARAMS], log_std = taken_if(ok, added, old, (dw, d_log_std))
        new[LOG_STD] = torch.clamp(log_std, cfg.log_std_min, cfg.log_std_max)
    else:
        (new[PARAMS],) = taken_if(ok, added, (s[PARAMS],), (dw,))

    # 5. eligibility traces: z = gamma * lambda * z + grad at S_t, zeroed on the first tick
    decay = (cfg.gamma * cfg.lam) * keep
    new[ELIG_V] = decay * z_v + g_v
    g_trunk = trunk if trunk.shape[0] == 2 else trunk[:2]  # the critic's and the actor's rows
    # (flat, so the add writes the graph's output itself: a reshape after it would copy)
    new[ELIG_TRUNK] = decay * s[ELIG_TRUNK] + g_trunk.reshape(-1)
    new[ELIG_PI] = decay * z_pi + g_pi
    if continuous:
        new[ELIG_LOG_STD] = decay * s[ELIG_LOG_STD] + sample.dlogp_dlogstd

    new.update(state_to_dict("carry", state))
    new.update(state_to_dict("trace", traces))
    new["carry.v_prev"] = value * 1.0
    # the TD error as reported: NaN when the update was skipped, so the host counts it as bad
    return new, sample.action, value, torch.where(ok, delta, torch.full_like(delta, float("nan")))


def learn_step(
    cfg: ACConfig, agent: A.AgentConfig, s: State, inputs: dict[str, Tensor]
) -> tuple[State, dict[str, Tensor]]:
    """`ac_step` with the declared inputs and outputs by name (what export and train call)."""
    new, action, value, delta = ac_step(
        cfg,
        agent,
        s,
        inputs["obs"],
        inputs["reward"],
        inputs["first"],
        inputs["terminal"],
        inputs["noise"],
    )
    return new, {"action": action, "value": value, "td_error": delta}


OBS_STD, PREP_CELL = "prep.norm.obs_std", "prep.cell."


def act_prepare(cfg: ACConfig, agent: A.AgentConfig, s: State) -> State:
    """The act step's constants: what it derives from the state alone, which a robot running
    the act graph (parameters fixed) computes once instead of on every tick. The observation
    std, and the cell's `act_constants` (an RTU's lam and its gamma-scaled input weights, in
    the stacked form of `rtu_math.step_forward`) as ``prep.cell.<name>``."""
    p = _params(agent, s)
    out = {OBS_STD: _std(cfg, s["norm.obs_count"], s["norm.obs_m2"])}
    consts = agent.cell.act_constants(A.cell_params(p))
    out.update({PREP_CELL + k: v for k, v in consts.items()})
    return out


def cell_consts(prep: State) -> State:
    """The cell's act_constants out of the ``prep.cell.<name>`` entries of ``prep``, by name."""
    return {k[len(PREP_CELL) :]: v for k, v in prep.items() if k.startswith(PREP_CELL)}


def act_step(
    cfg: ACConfig, agent: A.AgentConfig, s: State, inputs: dict[str, Tensor]
) -> tuple[State, dict[str, Tensor]]:
    """One control tick without learning: greedy action, value and the new cell state.

    Uses the normaliser statistics as they are (no update) and no RTRL traces. The parameters
    may be packed (params.flat) or by tensor. The constants of `act_prepare` are read from
    ``s`` when it holds them (the exported act graph) and derived here when not.
    """
    p = _params(agent, s)
    prep = s if OBS_STD in s else act_prepare(cfg, agent, s)
    obs = torch.clamp(inputs["obs"], -cfg.obs_clip, cfg.obs_clip)
    x = (obs - s["norm.obs_mean"]) / prep[OBS_STD]
    x = torch.clamp(x, -cfg.norm_clip, cfg.norm_clip)
    ln = agent.net.layer_norm
    cell = agent.cell
    h0 = A.encode(p, x, ln).h
    state = state_from_dict(cell.State, "carry", s)
    consts = cell_consts(prep)
    y, state = cell.step_forward(h0, state, inputs["first"], A.cell_params(p), consts)
    value_out, _ = A.head(p, "critic", y, ln)
    pi_out, _ = A.head(p, "actor", y, ln)
    outputs = {"action": A.greedy_action(agent, pi_out), "value": value_out.reshape(1)}
    return state_to_dict("carry", state), outputs


# ---- what the learner declares (export and the robot loop are driven by this) ------------------


def step_inputs(agent: A.AgentConfig) -> tuple[StepInput, ...]:
    return (
        StepInput("obs", "obs", (1, agent.obs_size), "raw observation S_t"),
        StepInput("reward", "reward", (1,), "R_t, reward of the transition into S_t"),
        StepInput("first", "first", (1,), "S_t starts an episode: reset, no TD update"),
        StepInput("terminal", "terminal", (1,), "S_t is terminal: v(S_t) = 0"),
        StepInput("noise", "noise", (1, agent.noise_size), "exploration noise for A_t"),
    )


def learn_outputs(agent: A.AgentConfig) -> tuple[StepOutput, ...]:
    return (
        StepOutput("action", "action", (1, agent.action_dims), "A_t (discrete: index as float)"),
        StepOutput("value", "check", (1,), "v(S_t)"),
        StepOutput(
            "td_error", "check", (1,), "TD error of the previous transition; NaN: update skipped"
        ),
    )


def act_inputs(agent: A.AgentConfig) -> tuple[StepInput, ...]:
    return step_inputs(agent)[0:1] + step_inputs(agent)[2:3]  # obs, first


def act_outputs(agent: A.AgentConfig) -> tuple[StepOutput, ...]:
    return (
        StepOutput("action", "action", (1, agent.action_dims), "greedy action"),
        StepOutput("value", "report", (1,), "v(S_t)"),
    )


def act_state_names(agent: A.AgentConfig, s: State) -> list[str]:
    """The tensors the act step reads from the state (act_prepare's inputs included): the
    parameters, the obs statistics, the cell state. (Export drops those the graphs leave unused.)

    The parameters by their own names even when the state is packed: the act graph reads them
    out of params.flat (contract.graph_state) instead of splitting the buffer on every tick.
    """
    if PARAMS in s:
        names = [t.name for t in packing(agent)[0].tensors]
    else:
        names = [k for k in s if k.startswith("params.") and k != LOG_STD]
    names += ["norm.obs_count", "norm.obs_mean", "norm.obs_m2"]
    names += [f"carry.{k}" for k in agent.cell.State._fields]
    return names


def act_only_state(agent: A.AgentConfig, trained: State) -> State:
    """What the act step reads, from a trained state: parameters, the observation normaliser,
    and a zero cell state (for cells without RTRL, which get an act-only bundle)."""
    out = {
        k: v.detach().clone().contiguous() for k, v in trained.items() if k.startswith("params.")
    }
    for k in ("norm.obs_count", "norm.obs_mean", "norm.obs_m2"):
        out[k] = trained[k].detach().clone().contiguous()
    out.update(state_to_dict("carry", agent.cell.initial_state(1)))
    return out


def noise(agent: A.AgentConfig) -> NoiseSpec:
    return NoiseSpec("normal" if agent.action_kind == "continuous" else "gumbel", agent.noise_size)


LEARNER = Learner(
    name="ac",
    description="streaming actor-critic AC(lambda) with ObGD (Elsayed et al. 2024)",
    Config=ACConfig,
    heads=("critic", "actor"),
    initial_state=initial_state,
    learn_step=learn_step,
    act_step=act_step,
    step_inputs=step_inputs,
    learn_outputs=learn_outputs,
    act_inputs=act_inputs,
    act_outputs=act_outputs,
    act_state_names=act_state_names,
    noise=noise,
    packing=packing,
    act_prepare=act_prepare,
)
