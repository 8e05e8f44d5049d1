"""TD(lambda) prediction with exact RTRL: learn v(S_t), the discounted sum of a cumulant.

The learner of the paper's animal-learning benchmark (Elelimy et al. 2024, section on trace
conditioning; /work/shared/design/rtu-rtrl.md section 5): one value head on the RTU, trained
online with accumulating eligibility traces whose recurrent part comes from the RTRL traces.
Like `ac.py`, the learn step is a pure function of tensors: ``rtu-edge train`` calls it in
PyTorch and ``rtu-edge export`` traces the same function into ``learn.onnx``.

One call is one tick. Inputs: the observation S_t, the cumulant C_t of the transition that led
to it (declared with source "reward": the robot loop fills it from the same channel), and the
``first`` / ``terminal`` flags with the meanings of ac.py (a time-limit truncation is not
terminal: the learner bootstraps from v(S_t), and the next tick is ``first``).

Per tick, in order:

1. optionally normalise S_t with running statistics (`TDConfig.normalise_obs`, ac.py's
   normaliser); the cumulant is never scaled, so v predicts the return on its own scale;
2. encoder -> cell with RTRL traces -> value head "critic": v(S_t);
3. TD error of the previous transition: delta = C_t + gamma (1 - terminal) v(S_t) - v(S_{t-1}),
   0 on a first tick;
4. update every parameter with the eligibility trace z, which holds grad v up to S_{t-1}:
   Adam on the gradient -delta z (the benchmark's own choice), or SGD: theta += lr delta z.
   Nothing moves on a first tick (Adam's moments and step count included), and the whole
   update is skipped when anything is non-finite;
5. z = gamma lambda (1 - first) z + grad v(S_t), with grad v(S_t) at the pre-update parameters.

It does not act. Both graphs still emit an ``action`` output, because the bundle contract has
every graph declare exactly one (firmware_bridge/contract.py): a constant zero action of shape
(1, action_dims). On the robot, the robot's own controller acts: in prediction mode the MCU
ignores the action the host sends back (a protocol change for a real prediction mode is future
work). In training, `Learner.behaviour = "random"` makes rtu_edge/train.py drive a control
environment with uniformly random actions instead, so the cumulant is the environment's reward
under the uniform random behaviour policy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from firmware_bridge.contract import StepInput, StepOutput
from rtu_edge import agent as A
from rtu_edge.cells import state_from_dict, state_to_dict
from rtu_edge.learners.ac import _variance, normalise_obs, params_of
from rtu_edge.learners.base import Learner
from rtu_edge.ops import plus_eps

State = dict[str, Tensor]
OPTIMIZERS = ("adam", "sgd")


@dataclass
class TDConfig:
    """Hyperparameters of TD(lambda). Defaults follow the animal-learning benchmark."""

    # Discount of the predicted return. 0.9 (a horizon of about 10 ticks) is the benchmark's
    # discount for trace conditioning with an inter-stimulus interval of 10 (it sets gamma
    # to about 1 - 1/ISI); set it to the horizon your cumulant needs.
    gamma: float = 0.9
    lam: float = 0.9  # eligibility-trace decay lambda (the benchmark's 0.9)
    optimizer: str = "adam"  # "adam" (Adam on -delta z, as the benchmark) | "sgd" (w += lr delta z)
    lr: float = 1e-3  # step size (for Adam; SGD did well with 1e-2 on classic/CartPole-P)
    adam_beta1: float = 0.9  # Adam's first-moment decay
    adam_beta2: float = 0.999  # Adam's second-moment decay
    adam_eps: float = 1e-8  # Adam's denominator floor
    # Running mean/variance normalisation of the observation (ac.py's normaliser). Off by
    # default: the benchmark's observations are binary and already on a unit scale, and a
    # normaliser would rescale a rare cue to several standard deviations while its statistics
    # are still moving. Turn it on for raw sensor readings (e.g. MuJoCo velocities).
    normalise_obs: bool = False
    obs_clip: float = 1e3  # raw observations are clipped to +-obs_clip before anything else
    # The normaliser's settings, used only with normalise_obs (named as in ACConfig, whose
    # normaliser functions read them):
    norm_clip: float = 5.0  # normalised observations are clipped to +-norm_clip stds
    stats_clip: float = 10.0  # after warm-up, a sample moves the statistics by <= this many stds
    stats_warmup: float = 100.0  # samples before stats_clip applies
    eps: float = 1e-8  # variance floor of the normaliser

    def __post_init__(self) -> None:
        _check_optimizer(self.optimizer)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"learner.optimizer must be one of {OPTIMIZERS}, got {name!r}")


# ---- state layout ------------------------------------------------------------------------


def initial_state(agent: A.AgentConfig, cfg: TDConfig | None = None, seed: int = 0) -> State:
    """Every tensor the learn step carries from tick to tick, by its bundle name."""
    cfg = cfg or TDConfig()
    _check_optimizer(cfg.optimizer)  # again: `--set learner.optimizer=...` bypasses __init__
    params = A.init_params(agent, seed, heads=("critic",))
    s: State = {f"params.{k}": v for k, v in params.items()}
    for k in A.critic_param_names(agent):
        s[f"elig.{k}"] = torch.zeros_like(params[k])
    if cfg.optimizer == "adam":
        for k in A.critic_param_names(agent):
            s[f"opt.m.{k}"] = torch.zeros_like(params[k])  # first moment
            s[f"opt.v.{k}"] = torch.zeros_like(params[k])  # second moment
        s["opt.t"] = torch.zeros(1)  # updates taken so far (bias correction)
    if cfg.normalise_obs:
        d = agent.obs_size
        s["norm.obs_count"] = torch.zeros(1)
        s["norm.obs_mean"] = torch.zeros(1, d)
        s["norm.obs_m2"] = torch.zeros(1, d)
    cell = agent.cell
    s.update(state_to_dict("carry", cell.initial_state(1)))
    s.update(state_to_dict("trace", cell.initial_traces(1)))
    s["carry.v_prev"] = torch.zeros(1)  # v(S_{t-1}), computed on the previous tick
    return {k: v.contiguous() for k, v in s.items()}


def _features(cfg: TDConfig, s: State, obs: Tensor, learn: bool) -> tuple[Tensor, State]:
    """The encoder's input: clipped, and normalised when asked (statistics updated when learning,
    read as they are when acting)."""
    if not cfg.normalise_obs:
        return torch.clamp(obs, -cfg.obs_clip, cfg.obs_clip), {}
    if learn:
        return normalise_obs(cfg, s, obs)
    obs = torch.clamp(obs, -cfg.obs_clip, cfg.obs_clip)
    count, mean, m2 = s["norm.obs_count"], s["norm.obs_mean"], s["norm.obs_m2"]
    x = (obs - mean) / torch.sqrt(plus_eps(_variance(count, m2), cfg.eps))
    return torch.clamp(x, -cfg.norm_clip, cfg.norm_clip), {}


def _update(cfg, s: State, p, names, delta: Tensor, z: dict, do: Tensor, dtype, new: State):
    """theta moves along delta * z (z = grad v(S_{t-1}) or the eligibility trace) where ``do``:
    Adam on the gradient g = -delta z, or SGD theta += lr delta z. Writes into ``new``."""
    if cfg.optimizer == "sgd":
        for k in names:
            w = p[k]
            new[f"params.{k}"] = torch.where(do, w + (cfg.lr * delta) * z[k], w)
    else:  # Adam on the gradient g = -delta z
        b1, b2 = cfg.adam_beta1, cfg.adam_beta2
        t = s["opt.t"] + do.to(dtype)
        t_c = torch.clamp(t, min=1.0)  # no bias correction by 1 - b^0 = 0 before the first update
        step = cfg.lr / (1.0 - torch.pow(b1, t_c))
        v_corr = 1.0 / (1.0 - torch.pow(b2, t_c))
        for k in names:
            w, m_old, v_old = p[k], s[f"opt.m.{k}"], s[f"opt.v.{k}"]
            g = -delta * z[k]
            m = b1 * m_old + (1.0 - b1) * g
            v = b2 * v_old + (1.0 - b2) * (g * g)
            w_new = w - step * m / plus_eps(torch.sqrt(v * v_corr), cfg.adam_eps)
            new[f"params.{k}"] = torch.where(do, w_new, w)
            new[f"opt.m.{k}"] = torch.where(do, m, m_old)
            new[f"opt.v.{k}"] = torch.where(do, v, v_old)
        new["opt.t"] = t


# ---- the learn step -------------------------------------------------------------------------


def td_step(
    cfg: TDConfig,
    agent: A.AgentConfig,
    s: State,
    obs: Tensor,
    cumulant: Tensor,
    first: Tensor,
    terminal: Tensor,
) -> tuple[State, Tensor, Tensor]:
    """One TD(lambda) tick. Returns (new state, v(S_t), td_error).

    Shapes: obs (1, obs_size); cumulant, first, terminal (1,).
    """
    keep = 1.0 - first  # (1,): 0 on the first tick of an episode
    p = params_of(s)
    names = A.critic_param_names(agent)

    # 1-2. forward: features, cell with RTRL traces (reset by the `first` mask inside), head
    x, new = _features(cfg, s, obs, learn=True)
    ln = agent.net.layer_norm
    cell = agent.cell
    h0 = A.encode(p, x, ln)
    state = state_from_dict(cell.State, "carry", s)
    traces = state_from_dict(cell.Traces, "trace", s)
    y, state, traces = cell.rtrl_step(h0.h, state, traces, first, A.cell_params(p))
    value_out, v_hid = A.head(p, "critic", y, ln)
    value = value_out.reshape(1)

    # 3. TD error of the previous transition (masked out on the first tick)
    delta = (cumulant + cfg.gamma * value * (1.0 - terminal) - s["carry.v_prev"]) * keep

    # 4. update with the trace up to S_{t-1}; skipped on a first tick and when non-finite
    z = {k: s[f"elig.{k}"] for k in names}
    z_l1 = sum(t.abs().sum() for t in z.values())
    ok = torch.isfinite(delta * z_l1 * value).all()
    do = torch.logical_and(ok, keep > 0)  # (1,) bool
    _update(cfg, s, p, names, delta, z, do, value.dtype, new)

    # 5. eligibility trace: z = gamma * lambda * z + grad v(S_t), zeroed on the first tick
    g_head, g_y = A.head_backward(p, "critic", y, v_hid, torch.ones_like(value_out))
    g_v = A.trunk_backward(agent, p, g_y, x, h0, state, traces)
    g_v.update(g_head)
    decay = (cfg.gamma * cfg.lam) * keep
    for k in names:
        new[f"elig.{k}"] = decay * z[k] + g_v[k]

    new.update(state_to_dict("carry", state))
    new.update(state_to_dict("trace", traces))
    new["carry.v_prev"] = value * 1.0
    # the TD error as reported: NaN when the update was skipped, so the host counts it as bad
    return new, value, torch.where(ok, delta, torch.full_like(delta, float("nan")))


def _no_action(agent: A.AgentConfig, like: Tensor) -> Tensor:
    """The constant zero action both graphs emit: the contract wants one; nobody acts on it."""
    return torch.zeros(1, agent.action_dims, dtype=like.dtype)


def learn_step(
    cfg: TDConfig, agent: A.AgentConfig, s: State, inputs: dict[str, Tensor]
) -> tuple[State, dict[str, Tensor]]:
    """`td_step` with the declared inputs and outputs by name (what export and train call)."""
    new, value, delta = td_step(
        cfg, agent, s, inputs["obs"], inputs["cumulant"], inputs["first"], inputs["terminal"]
    )
    return new, {"action": _no_action(agent, value), "prediction": value, "td_error": delta}


def act_step(
    cfg: TDConfig, agent: A.AgentConfig, s: State, inputs: dict[str, Tensor]
) -> tuple[State, dict[str, Tensor]]:
    """One tick without learning: v(S_t) and the new cell state (no RTRL traces, statistics
    read as they are)."""
    p = params_of(s)
    x, _ = _features(cfg, s, inputs["obs"], learn=False)
    ln = agent.net.layer_norm
    cell = agent.cell
    h0 = A.encode(p, x, ln).h
    state = state_from_dict(cell.State, "carry", s)
    y, state = cell.step_forward(h0, state, inputs["first"], A.cell_params(p))
    value = A.head(p, "critic", y, ln)[0].reshape(1)
    outputs = {"action": _no_action(agent, value), "prediction": value}
    return state_to_dict("carry", state), outputs


# ---- what the learner declares (export and the robot loop are driven by this) ------------------


def step_inputs(agent: A.AgentConfig) -> tuple[StepInput, ...]:
    return (
        StepInput("obs", "obs", (1, agent.obs_size), "raw observation S_t"),
        StepInput("cumulant", "reward", (1,), "C_t, cumulant of the transition into S_t"),
        StepInput("first", "first", (1,), "S_t starts an episode: reset, no TD update"),
        StepInput("terminal", "terminal", (1,), "S_t is terminal: v(S_t) = 0"),
    )


def learn_outputs(agent: A.AgentConfig) -> tuple[StepOutput, ...]:
    return (
        StepOutput("action", "action", (1, agent.action_dims), "zeros: td does not act"),
        StepOutput("prediction", "check", (1,), "v(S_t)"),
        StepOutput(
            "td_error", "check", (1,), "TD error of the previous transition; NaN: update skipped"
        ),
    )


def act_inputs(agent: A.AgentConfig) -> tuple[StepInput, ...]:
    return step_inputs(agent)[0:1] + step_inputs(agent)[2:3]  # obs, first


def act_outputs(agent: A.AgentConfig) -> tuple[StepOutput, ...]:
    return (
        StepOutput("action", "action", (1, agent.action_dims), "zeros: td does not act"),
        StepOutput("prediction", "report", (1,), "v(S_t)"),
    )


def act_state_names(agent: A.AgentConfig, s: State) -> list[str]:
    """The tensors the act graph reads: parameters, obs statistics (if any), cell state."""
    names = [k for k in s if k.startswith(("params.", "norm."))]
    names += [f"carry.{k}" for k in agent.cell.State._fields]
    return names


def noise(agent: A.AgentConfig) -> None:
    return None  # no exploration: the learn step takes no noise input


LEARNER = Learner(
    name="td",
    description="TD(lambda) prediction of the cumulant's return with Adam or SGD (no actions)",
    Config=TDConfig,
    heads=("critic",),
    initial_state=initial_state,
    learn_step=learn_step,
    act_step=act_step,
    step_inputs=step_inputs,
    learn_outputs=learn_outputs,
    act_inputs=act_inputs,
    act_outputs=act_outputs,
    act_state_names=act_state_names,
    noise=noise,
    behaviour="random",
)
