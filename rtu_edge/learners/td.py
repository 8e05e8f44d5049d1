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

Cells without exact RTRL (gru, lru; or any cell with ``learner.mode=tbptt``) learn by truncated
BPTT instead: the same TD(lambda), with grad v(S_t) taken by autograd through a window of the
last ``truncation`` observations (`tbptt_step`, section "T-BPTT" below), with its own training
loop (`train_td`).

It does not act. Both graphs declare no ``action`` output and one ``prediction`` output of use
"prediction" (firmware_bridge/contract.py): on the robot, the host answers each OBS with a
PREDICTION message (docs/protocol.md) and the robot's own controller acts. In training, `Learner.behaviour = "random"` makes rtu_edge/train.py drive a control
environment with uniformly random actions instead, so the cumulant is the environment's reward
under the uniform random behaviour policy.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call

from firmware_bridge.contract import StepInput, StepOutput
from rtu_edge import agent as A
from rtu_edge import packing as P
from rtu_edge.cells import state_from_dict, state_to_dict
from rtu_edge.learners.ac import (
    OBS_STD,
    PREP_CELL,
    _std,
    cell_consts,
    normalise_obs,
    params_of,
)
from rtu_edge.learners.base import Learner
from rtu_edge.learners.base import uses_rtrl as base_uses_rtrl
from rtu_edge.ops import finite, l1_norm, plus_eps, scalars, taken_if

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
    # "auto": eligibility traces from exact RTRL for cells that have it, truncated BPTT for the
    # others (gru, lru); "rtrl": an error for T-BPTT cells; "tbptt": truncated BPTT for any cell
    # (the paper's baseline: grad v through the last `truncation` observations, in the same
    # TD(lambda) eligibility trace; lam=0 makes it the TD(0) semi-gradient).
    mode: str = "auto"
    truncation: int = 16  # T-BPTT: grad v(S_{t-1}) flows back through its last T observations

    def __post_init__(self) -> None:
        _check_optimizer(self.optimizer)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_optimizer(name: str) -> None:
    if name not in OPTIMIZERS:
        raise ValueError(f"learner.optimizer must be one of {OPTIMIZERS}, got {name!r}")


def uses_rtrl(cfg: TDConfig, agent: A.AgentConfig) -> bool:
    """Whether the update uses RTRL traces (True) or truncated BPTT (False)."""
    return base_uses_rtrl(cfg.mode, agent.cell, agent.net.cell)


# ---- state layout ------------------------------------------------------------------------


def initial_state(agent: A.AgentConfig, cfg: TDConfig | None = None, seed: int = 0) -> State:
    """Every tensor the learn step carries from tick to tick, by its bundle name."""
    cfg = cfg or TDConfig()
    _check_optimizer(cfg.optimizer)  # again: `--set learner.optimizer=...` bypasses __init__
    rtrl = uses_rtrl(cfg, agent)
    params = A.init_params(agent, seed, heads=("critic",))
    s: State = {f"params.{k}": v for k, v in params.items()}
    for k in A.critic_param_names(agent):  # the eligibility trace z (RTRL and T-BPTT alike)
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
    if rtrl:
        s.update(state_to_dict("trace", cell.initial_traces(1)))
        s["carry.v_prev"] = torch.zeros(1)  # v(S_{t-1}), computed on the previous tick
    # T-BPTT: the window of the last observations lives in the training loop (`Window`), not
    # in the checkpoint; a resumed run starts a fresh episode and so an empty window.
    return {k: v.contiguous() for k, v in s.items()}


# ---- packed layout (the bundle's form of the state; the training loop steps it too) ------------

FLAT = "flat"  # the one "parameter" `_update` moves on packed state: the buffers are <group>.flat
PARAMS, ELIG, OPT_M, OPT_V = (f"{g}.{FLAT}" for g in ("params", "elig", "opt.m", "opt.v"))


def packing(agent: A.AgentConfig) -> tuple[P.PackedBuffer, ...]:
    """The flat buffers of the learn step: the parameters, their eligibility trace and Adam's
    two moments, each over every parameter in the same order (`A.critic_param_names`), so
    that the trace decay, the norm and the update are each a few operations on whole buffers
    instead of a few per tensor. The values are the same element for element (the norm only
    decides whether the update is finite). (SGD has no moments: export and the training loop
    pack only the buffers whose tensors the state holds.)"""
    cached = agent.__dict__.get("_td_packing")
    if cached is not None:
        return cached
    shapes = A.param_shapes(agent, heads=("critic",))
    names = A.critic_param_names(agent)
    layout = tuple(
        P.PackedBuffer.of(buf, [(f"{group}.{k}", shapes[k]) for k in names])
        for buf, group in ((PARAMS, "params"), (ELIG, "elig"), (OPT_M, "opt.m"), (OPT_V, "opt.v"))
    )
    agent.__dict__["_td_packing"] = layout
    return layout


def _params(agent: A.AgentConfig, s: State) -> A.Params:
    """The parameters by name (without ``params.``) from a packed or a by-tensor state."""
    if PARAMS not in s:
        return params_of(s)
    return {k[len("params.") :]: v for k, v in P.read(packing(agent)[0], s).items()}


def _features(
    cfg: TDConfig, s: State, obs: Tensor, learn: bool, std: Tensor | None = None
) -> tuple[Tensor, State]:
    """The encoder's input: clipped, and normalised when asked (statistics updated when learning,
    read as they are when acting; ``std``: the observation std computed beforehand)."""
    if not cfg.normalise_obs:
        return torch.clamp(obs, -cfg.obs_clip, cfg.obs_clip), {}
    if learn:
        return normalise_obs(cfg, s, obs)
    obs = torch.clamp(obs, -cfg.obs_clip, cfg.obs_clip)
    if std is None:
        std = _std(cfg, s["norm.obs_count"], s["norm.obs_m2"])
    x = (obs - s["norm.obs_mean"]) / std
    return torch.clamp(x, -cfg.norm_clip, cfg.norm_clip), {}


def _update(cfg, s: State, p, names, delta: Tensor, z: dict, do: Tensor, dtype, new: State):
    """theta moves along delta * z (z = grad v(S_{t-1}) or the eligibility trace) where ``do``:
    Adam on the gradient g = -delta z, or SGD theta += lr delta z. Writes into ``new``.

    Every tensor the update changes moves together or not at all (`taken_if`: exported as one
    ONNX If). The update functions take, in order, the values they replace, then the traces,
    then scalars."""
    n = len(names)
    zs = tuple(z[k] for k in names)
    if cfg.optimizer == "sgd":

        def sgd(*ops):
            ws, zs, (d,) = ops[:n], ops[n : 2 * n], ops[2 * n :]
            return tuple(w + (cfg.lr * d) * zk for w, zk in zip(ws, zs, strict=True))

        moved = taken_if(do, sgd, tuple(p[k] for k in names), (*zs, *scalars(delta)))
        new.update({f"params.{k}": w for k, w in zip(names, moved, strict=True)})
        return
    # Adam on the gradient g = -delta z
    b1, b2 = cfg.adam_beta1, cfg.adam_beta2
    t = s["opt.t"] + do.to(dtype)
    t_c = torch.clamp(t, min=1.0)  # no bias correction by 1 - b^0 = 0 before the first update
    step = cfg.lr / (1.0 - torch.pow(b1, t_c))
    v_corr = 1.0 / (1.0 - torch.pow(b2, t_c))

    def adam(*ops):
        ws, ms, vs, zs = (ops[i * n : (i + 1) * n] for i in range(4))
        d, step, v_corr = ops[4 * n :]
        out_w, out_m, out_v = [], [], []
        for w, m_old, v_old, zk in zip(ws, ms, vs, zs, strict=True):
            g = -d * zk
            m = b1 * m_old + (1.0 - b1) * g
            v = b2 * v_old + (1.0 - b2) * (g * g)
            out_w.append(w - step * m / plus_eps(torch.sqrt(v * v_corr), cfg.adam_eps))
            out_m.append(m)
            out_v.append(v)
        return (*out_w, *out_m, *out_v)

    old = (
        *(p[k] for k in names),
        *(s[f"opt.m.{k}"] for k in names),
        *(s[f"opt.v.{k}"] for k in names),
    )
    moved = taken_if(do, adam, old, (*zs, *scalars(delta, step, v_corr)))
    for i, group in enumerate(("params", "opt.m", "opt.v")):
        new.update({f"{group}.{k}": v for k, v in zip(names, moved[i * n : (i + 1) * n])})
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

    Shapes: obs (1, obs_size); cumulant, first, terminal (1,). The state may be packed (the
    bundle's form, `packing`) or by tensor (`initial_state`'s form); the new state comes back
    in the same form. The step itself works on the packed one.
    """
    layout = packing(agent)
    if PARAMS not in s:
        held = P.held(layout, s)  # (SGD: no moments)
        new, value, delta = td_step(cfg, agent, P.pack(s, held), obs, cumulant, first, terminal)
        return P.unpack(new, held), value, delta
    keep = 1.0 - first  # (1,): 0 on the first tick of an episode
    p = _params(agent, s)
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

    # 4. update with the trace up to S_{t-1}; skipped on a first tick and when non-finite. On
    # the flat buffers: params.flat, opt.m.flat and opt.v.flat move as one tensor "flat"
    # (`_update` names them params.{k}, opt.m.{k}, opt.v.{k}: with k = FLAT, the buffers' names)
    z = s[ELIG]
    ok = finite(delta * l1_norm(z) * value)
    do = torch.logical_and(ok, keep > 0)  # (1,) bool
    _update(cfg, s, {FLAT: s[PARAMS]}, [FLAT], delta, {FLAT: z}, do, value.dtype, new)

    # 5. eligibility trace: z = gamma * lambda * z + grad v(S_t), zeroed on the first tick
    g_head, g_y = A.head_backward(p, "critic", y, v_hid, torch.ones_like(value_out))
    g_v = A.trunk_backward(agent, p, g_y, x, h0, state, traces)
    g_v.update(g_head)
    decay = (cfg.gamma * cfg.lam) * keep
    new[ELIG] = decay * z + P.cat_flat(g_v[k] for k in names)  # as elig.flat

    new.update(state_to_dict("carry", state))
    new.update(state_to_dict("trace", traces))
    new["carry.v_prev"] = value * 1.0
    # the TD error as reported: NaN when the update was skipped, so the host counts it as bad
    return new, value, torch.where(ok, delta, torch.full_like(delta, float("nan")))


# ---- T-BPTT: TD(lambda) with the gradient taken through a window of the last observations ------
#
# A cell without exact RTRL (gru, lru; or any cell with --set learner.mode=tbptt) has no exact
# gradient of v(S_t) from forward-mode traces, so td takes it as the paper's T-BPTT baselines do,
# one tick at a time:
#
# 1. keep the last T + 1 ticks: features x, `first` flags, and the detached cell state before
#    each (the state the online pass carried into it);
# 2. run the cell with autograd over the window (`cell.forward` through `functional_call`) from
#    the detached state before its oldest tick: v over the window, the newest value v(S_t);
# 3. delta = C_t + gamma (1 - terminal) v(S_t) - v(S_{t-1}) (0 on a first tick), with v(S_t)
#    a constant (semi-gradient); g = grad v(S_{t-1}) by autograd, so the gradient of v(S_{t-1})
#    flows back through its last T observations (and stops at a reset inside the window);
# 4. the eligibility trace of the RTRL learner, with g in place of the exact gradient:
#    z = gamma lambda (1 - first_{t-1}) z + g, so with lambda > 0 each update credits the
#    observations of earlier ticks through z as well as through the window; lambda = 0 gives
#    z = g, the TD(0) semi-gradient;
# 5. the update of the RTRL learner: Adam on -delta z, or SGD theta += lr delta z; nothing moves
#    on a first tick or when anything is non-finite (and a non-finite z is not kept).
#
# g is taken at the current parameters, where the RTRL learner's trace holds each gradient at
# the parameters of its own tick; for the small step sizes of the benchmark the two are close.
# The encoder gets its full gradient through the window here (the RTRL learner gives it
# one-step gradients). The carried state after S_t is the window pass's final state (the
# current parameters over the window), detached.


class Window:
    """The last ``T + 1`` ticks of the T-BPTT learner: (x, first, cell state before x)."""

    def __init__(self, truncation: int) -> None:
        if truncation < 1:
            raise ValueError(f"learner.truncation must be at least 1, got {truncation}")
        self.ticks: deque = deque(maxlen=truncation + 1)

    def __len__(self) -> int:
        return len(self.ticks)

    def push(self, x: Tensor, first: Tensor, carry) -> None:
        self.ticks.append((x.detach(), first.detach(), type(carry)(*(c.detach() for c in carry))))

    def tensors(self):
        """(xs (L, 1, d), firsts (L, 1), the cell state before the oldest tick)."""
        xs = torch.stack([t[0] for t in self.ticks])
        firsts = torch.stack([t[1] for t in self.ticks])
        return xs, firsts, self.ticks[0][2]


def window_outputs(cell, params: A.Params, xs: Tensor, carry0, dones: Tensor):
    """(ys, final state) of ``cell.forward`` over a window from ``carry0`` with the parameters
    ``params`` (the cell's own names): the autograd path T-BPTT differentiates."""
    return functional_call(cell, params, (xs, carry0, dones))


def window_values(agent: A.AgentConfig, p: A.Params, xs: Tensor, firsts: Tensor, carry0):
    """(v (L,), final cell state) over a window: encoder, cell from ``carry0``, critic head."""
    ln = agent.net.layer_norm
    h0 = A.encode(p, xs, ln).h
    ys, last = window_outputs(agent.cell, A.cell_params(p), h0, carry0, firsts)
    return A.head(p, "critic", ys, ln)[0].reshape(-1), last


def tbptt_step(
    cfg: TDConfig,
    agent: A.AgentConfig,
    s: State,
    window: Window,
    obs: Tensor,
    cumulant: Tensor,
    first: Tensor,
    terminal: Tensor,
) -> tuple[State, Tensor, Tensor, dict[str, Tensor]]:
    """One T-BPTT TD(lambda) tick (pushes S_t onto ``window``). Returns (new state entries,
    v(S_t), td_error (NaN when the update was skipped), g = grad v(S_{t-1}) by parameter name:
    the window's gradient, before it enters the eligibility trace)."""
    names = A.critic_param_names(agent)
    keep = 1.0 - first
    with torch.no_grad():
        x, new = _features(cfg, s, obs, learn=True)
    window.push(x, first, state_from_dict(agent.cell.State, "carry", s))
    xs, firsts, carry0 = window.tensors()
    leaves = {k: s[f"params.{k}"].detach().requires_grad_(True) for k in names}
    with torch.enable_grad():
        v, last = window_values(agent, leaves, xs, firsts, carry0)
        if len(window) >= 2 and float(keep) > 0:
            got = torch.autograd.grad(v[-2], [leaves[k] for k in names], allow_unused=True)
            v_prev = v[-2].detach()
        else:  # a first tick: no previous state in this episode, nothing to learn
            got, v_prev = [None] * len(names), torch.zeros((), dtype=v.dtype)
    grad = {k: torch.zeros_like(leaves[k]) if g is None else g for k, g in zip(names, got)}
    with torch.no_grad():
        value = v[-1].detach().reshape(1)
        delta = (cumulant + cfg.gamma * value * (1.0 - terminal) - v_prev) * keep
        # z through S_{t-1}: decayed unless S_{t-1} began its episode (or there is none)
        prev_first = firsts[-2] if len(window) >= 2 else torch.ones_like(first)
        decay = (cfg.gamma * cfg.lam) * (1.0 - prev_first)
        z = {k: decay * s[f"elig.{k}"] + grad[k] for k in names}
        z_l1 = sum(t.abs().sum() for t in z.values())
        ok = finite(delta * z_l1 * value)
        do = torch.logical_and(ok, keep > 0)
        p = {k: s[f"params.{k}"] for k in names}
        _update(cfg, s, p, names, delta, z, do, value.dtype, new)
        for k in names:  # a non-finite trace would poison every later update: start it afresh
            new[f"elig.{k}"] = torch.where(ok, z[k], torch.zeros_like(z[k]))
        new.update(state_to_dict("carry", type(last)(*(c.detach() for c in last))))
    return new, value, torch.where(ok, delta, torch.full_like(delta, float("nan"))), grad


def train_td(cfg, progress: bool = True) -> dict | None:
    """td's own loop for T-BPTT; None (the per-tick loop of rtu_edge.train runs) for RTRL.

    The same run directory as ``rtu_edge.train.train``: config.json, metrics.csv per finished
    episode, checkpoint.safetensors (parameters, Adam moments, normaliser, cell state: not the
    window; a resumed run starts a fresh episode), summary.json with first_msre / msre,
    learning curve. Uniformly random actions on a control environment (behaviour "random").
    """
    from firmware_bridge.atomic import atomic_write_json
    from rtu_edge import envs as envs_mod
    from rtu_edge import run_dir as rd
    from rtu_edge.flops import count_flops
    from rtu_edge.learners import get_learner
    from rtu_edge.learners.ppo import _open_run
    from rtu_edge.plots import write_learning_curve
    from rtu_edge.train import (
        _signals_interrupt,
        action_spec,
        agent_config_for,
        env_action,
        msre,
        random_action,
    )

    tc: TDConfig = cfg.learner
    agent = agent_config_for(cfg)
    if uses_rtrl(tc, agent):
        return None
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} is a file; choose a directory for the run")
    window = Window(tc.truncation)
    torch.set_num_threads(1)
    learner = get_learner(cfg.algo)
    info = envs_mod.env_info(cfg.env)
    spec = action_spec(info)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    s, step, episode, kept, metrics_file = _open_run(cfg, learner, agent, run_dir, gen)
    metrics_f = writer = rd.MetricsLog(
        metrics_file, run_dir, cfg.tensorboard, resume_step=step if cfg.resume else None
    )
    rd.write_config(run_dir, cfg, asdict(info))
    env = envs_mod.make(cfg.env, seed=cfg.seed + 7919 * episode)
    start_step = step
    returns = [(int(r[0]), float(r[2])) for r in kept]
    windows = {"first_msre": (0, cfg.steps // 10), "msre": (cfg.steps - cfg.steps // 10, cfg.steps)}
    logs: dict = {k: ([], [], []) for k in windows}
    bad_updates = skipped_checkpoints = 0

    def checkpoint() -> None:
        nonlocal skipped_checkpoints
        try:
            rd.save_checkpoint(run_dir, s, {"step": step, "episode": episode}, gen)
        except rd.RunDirError as e:
            skipped_checkpoints += 1
            print(f"WARNING: {e}")

    obs, _ = env.reset()
    reward, first, terminal, episode_over = 0.0, 1.0, 0.0, False
    ep_return, ep_len = 0.0, 0
    t0 = time.perf_counter()
    try:
        with _signals_interrupt():
            while step < cfg.steps:
                new, value, delta, _ = tbptt_step(
                    tc,
                    agent,
                    s,
                    window,
                    torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1),
                    torch.tensor([reward]),
                    torch.tensor([first]),
                    torch.tensor([terminal]),
                )
                s.update(new)
                bad_updates += not math.isfinite(float(delta))
                for key, (lo, hi) in windows.items():
                    if lo <= step < hi:
                        for column, v in zip(logs[key], (float(value), reward, first)):
                            column.append(v)
                if episode_over:  # the tick on the final observation: learn, then reset
                    episode += 1
                    returns.append((step, ep_return))
                    elapsed = time.perf_counter() - t0
                    sps = (step - start_step) / elapsed
                    row = [step, episode, f"{ep_return:.6g}", ep_len, f"{sps:.1f}"]
                    writer.writerow(row + [f"{elapsed:.2f}"])
                    obs, _ = env.reset()
                    reward, first, terminal, episode_over = 0.0, 1.0, 0.0, False
                    ep_return, ep_len = 0.0, 0
                    continue
                action = random_action(spec, gen)
                obs, r, term, trunc, _ = env.step(env_action(spec, action))
                reward, first, terminal = float(r), 0.0, float(term)
                episode_over = term or trunc
                ep_return += reward
                ep_len += 1
                step += 1
                if step % cfg.checkpoint_every == 0:
                    checkpoint()
                    metrics_f.flush()
    except KeyboardInterrupt:
        checkpoint()  # `rtu-edge train --out RUN --resume` continues
        raise
    finally:
        metrics_f.close()
        env.close()
    elapsed = time.perf_counter() - t0
    checkpoint()

    def one_step() -> None:  # a mid-episode tick with a full window (when the run had one)
        scratch = Window(tc.truncation)
        scratch.ticks.extend(window.ticks)
        x = torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1)
        tbptt_step(tc, agent, s, scratch, x, torch.zeros(1), torch.zeros(1), torch.zeros(1))

    tail = [r for st, r in returns if st >= 0.9 * cfg.steps] or [r for _, r in returns[-1:]]
    head = returns[: max(1, len(returns) // 10)]
    summary = {
        "env": cfg.env,
        "cell": cfg.net.cell,
        "algo": cfg.algo,
        "steps": cfg.steps,
        "episodes": episode,
        "final_return": float(np.mean(tail)) if tail else None,
        "first_return": float(np.mean([r for _, r in head])) if returns else None,
        "steps_per_second": (cfg.steps - start_step) / elapsed,
        "recurrent_params": agent.cell.recurrent_param_count(),
        "flops_per_step": count_flops(one_step),
        "non_finite_updates": bad_updates,
        "skipped_checkpoints": skipped_checkpoints,
        "wall_time_s": elapsed,
        "gradient": f"tbptt{tc.truncation}",
    }
    summary.update({k: msre(*logs[k], tc.gamma) for k in windows})
    atomic_write_json(run_dir / rd.SUMMARY, summary)
    if returns:
        write_learning_curve(
            run_dir / "learning_curve.png",
            returns,
            title=f"{cfg.env} {cfg.net.cell} td tbptt{tc.truncation} seed {cfg.seed}",
        )
    return summary


def learn_step(
    cfg: TDConfig, agent: A.AgentConfig, s: State, inputs: dict[str, Tensor]
) -> tuple[State, dict[str, Tensor]]:
    """`td_step` with the declared inputs and outputs by name (what export and train call)."""
    if "carry.v_prev" not in s:
        raise ValueError(
            "this td state was trained by truncated BPTT (learner.mode=tbptt), which needs a "
            "window of past observations and autograd: it cannot learn one tick at a time (nor "
            "be exported as a learn graph); export a T-BPTT cell (gru, lru) for an act-only bundle"
        )
    new, value, delta = td_step(
        cfg, agent, s, inputs["obs"], inputs["cumulant"], inputs["first"], inputs["terminal"]
    )
    return new, {"prediction": value, "td_error": delta}


def act_prepare(cfg: TDConfig, agent: A.AgentConfig, s: State) -> State:
    """The act step's constants, as ac's (`ac.act_prepare`): the cell's `act_constants` as
    ``prep.cell.<name>`` and, with normalise_obs, the observation std. Computed once per
    loaded state by the bundle's act_prepare.onnx (none when there are none: a GRU without
    normalisation)."""
    p = _params(agent, s)
    out = {PREP_CELL + k: v for k, v in agent.cell.act_constants(A.cell_params(p)).items()}
    if cfg.normalise_obs:
        out[OBS_STD] = _std(cfg, s["norm.obs_count"], s["norm.obs_m2"])
    return out


def act_step(
    cfg: TDConfig, agent: A.AgentConfig, s: State, inputs: dict[str, Tensor]
) -> tuple[State, dict[str, Tensor]]:
    """One tick without learning: v(S_t) and the new cell state (no RTRL traces, statistics
    read as they are). The constants of `act_prepare` are read from ``s`` when it holds them
    (the exported act graph) and derived here when not."""
    p = _params(agent, s)
    held = any(k.startswith(PREP_CELL) or k == OBS_STD for k in s)
    prep = s if held else act_prepare(cfg, agent, s)
    x, _ = _features(cfg, s, inputs["obs"], learn=False, std=prep.get(OBS_STD))
    ln = agent.net.layer_norm
    cell = agent.cell
    h0 = A.encode(p, x, ln).h
    state = state_from_dict(cell.State, "carry", s)
    consts = cell_consts(prep)
    y, state = cell.step_forward(h0, state, inputs["first"], A.cell_params(p), consts)
    value = A.head(p, "critic", y, ln)[0].reshape(1)
    outputs = {"prediction": value}
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
        StepOutput("prediction", "prediction", (1,), "v(S_t), sent to the robot as PREDICTION"),
        StepOutput(
            "td_error", "check", (1,), "TD error of the previous transition; NaN: update skipped"
        ),
    )


def act_inputs(agent: A.AgentConfig) -> tuple[StepInput, ...]:
    return step_inputs(agent)[0:1] + step_inputs(agent)[2:3]  # obs, first


def act_outputs(agent: A.AgentConfig) -> tuple[StepOutput, ...]:
    return (
        StepOutput("prediction", "prediction", (1,), "v(S_t), sent to the robot as PREDICTION"),
    )


def act_state_names(agent: A.AgentConfig, s: State) -> list[str]:
    """The tensors the act graph reads: parameters, obs statistics (if any), cell state. The
    parameters by their own names even when the state is packed (as ac's act graph)."""
    if PARAMS in s:
        names = [t.name for t in packing(agent)[0].tensors]
    else:
        names = [k for k in s if k.startswith("params.")]
    names += [k for k in s if k.startswith("norm.")]
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
    act_prepare=act_prepare,
    step_inputs=step_inputs,
    learn_outputs=learn_outputs,
    act_inputs=act_inputs,
    act_outputs=act_outputs,
    act_state_names=act_state_names,
    noise=noise,
    packing=packing,
    behaviour="random",
    train=train_td,  # T-BPTT only; returns None for RTRL, and the per-tick loop runs
)
