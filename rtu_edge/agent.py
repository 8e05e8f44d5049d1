"""The agent: observation encoder -> cell -> heads (actor and critic, or one value head).

Everything here is a pure function of a flat ``dict[str, Tensor]`` of parameters, with the
backward pass of the small dense layers written by hand. That is deliberate: the learn step
that uses these functions must export to a plain ONNX graph, and autograd does not export.
``tests/rtu_edge/test_agent_learner.py`` checks every hand-written gradient against autograd.

Shapes: batch is always 1 on the learn path (streaming RL). Weights are stored in
(in, out) layout and applied as ``x @ W`` (see docs/onnx-runtime facts: the transposed layout
costs 10-100x in onnxruntime).

    obs_norm (1, obs) -> enc:    h0 = tanh(obs_norm @ enc.w + enc.b)          (1, E)
    h0                -> cell:   y  = cell step with RTRL traces (`--cell`)   (1, cell out)
    y                 -> critic: v  = tanh(y @ critic.w1 + critic.b1) @ critic.w2 + critic.b2
    y                 -> actor:  o  = tanh(y @ actor.w1 + actor.b1) @ actor.w2 + actor.b2
        continuous: o is the Gaussian mean, ``actor.log_std`` a state-independent log std
        discrete:   o are the logits of a categorical distribution

With ``AgentConfig.layer_norm`` every tanh above takes LN(pre-activation) instead (LayerNorm
without affine parameters, as in the streaming-RL recipe).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from rtu_edge.cells import CELLS, Cell, make_cell
from rtu_edge.config import NetConfig

Params = dict[str, Tensor]


@dataclass
class AgentConfig:
    """The environment's sizes and the chosen network. Saved with every run and bundle."""

    obs_size: int  # length of the flat observation vector
    action_kind: str  # "discrete" (categorical over num_actions) or "continuous" (Gaussian)
    action_dims: int  # continuous: action vector length; discrete: 1
    num_actions: int  # discrete: number of actions; continuous: 0
    net: NetConfig = field(default_factory=NetConfig)

    def __post_init__(self) -> None:
        if isinstance(self.net, dict):
            self.net = NetConfig(**self.net)
        if self.action_kind not in ("discrete", "continuous"):
            raise ValueError(
                f"action_kind must be 'discrete' or 'continuous', got {self.action_kind!r}"
            )
        if self.net.cell not in CELLS:
            raise ValueError(f"unknown cell {self.net.cell!r}; choose one of {sorted(CELLS)}")
        n = self.net
        # Built once here (not in the step functions, which torch.compile traces).
        self._cell = _cached_cell(
            n.cell, n.encoder_size, n.hidden_size, json.dumps(n.cell_options, sort_keys=True)
        )

    @property
    def policy_outputs(self) -> int:
        """Width of the actor's last layer: action dims (Gaussian mean) or number of logits."""
        return self.num_actions if self.action_kind == "discrete" else self.action_dims

    @property
    def noise_size(self) -> int:
        """Exploration noise per step: one Gumbel per logit, or one normal per action dim."""
        return self.policy_outputs

    @property
    def cell(self) -> Cell:
        """The cell module (its own parameters unused: the step functions pass theirs)."""
        return self._cell

    def new_cell(self, generator: torch.Generator | None = None) -> Cell:
        """A freshly initialised cell (drawing from `generator`)."""
        n = self.net
        return make_cell(
            n.cell, n.encoder_size, n.hidden_size, generator=generator, **n.cell_options
        )

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=64)
def _cached_cell(name: str, input_size: int, hidden_size: int, options_json: str) -> Cell:
    gen = torch.Generator().manual_seed(0)
    return make_cell(name, input_size, hidden_size, generator=gen, **json.loads(options_json))


# Which parameters each learner head updates. The encoder and the cell are shared.
CRITIC_HEAD = ("critic.w1", "critic.b1", "critic.w2", "critic.b2")
ACTOR_HEAD = ("actor.w1", "actor.b1", "actor.w2", "actor.b2")


def trunk_param_names(cfg: AgentConfig) -> tuple[str, ...]:
    return ("enc.w", "enc.b") + tuple(f"cell.{k}" for k in cfg.cell.param_names)


def critic_param_names(cfg: AgentConfig) -> tuple[str, ...]:
    return trunk_param_names(cfg) + CRITIC_HEAD


def actor_param_names(cfg: AgentConfig) -> tuple[str, ...]:
    extra = ("actor.log_std",) if cfg.action_kind == "continuous" else ()
    return trunk_param_names(cfg) + ACTOR_HEAD + extra


def param_shapes(cfg: AgentConfig, heads: tuple[str, ...] = ("critic", "actor")) -> dict:
    """The shape of every parameter `init_params` makes, by name, in its order (no drawing)."""
    net, y = cfg.net, cfg.cell.output_size
    shapes = {"enc.w": (cfg.obs_size, net.encoder_size), "enc.b": (net.encoder_size,)}
    shapes.update({f"cell.{k}": tuple(v.shape) for k, v in cfg.cell.named_parameters()})
    widths = {"critic": 1, "actor": cfg.policy_outputs}
    for name in heads:
        shapes[f"{name}.w1"] = (y, net.head_size)
        shapes[f"{name}.b1"] = (net.head_size,)
        shapes[f"{name}.w2"] = (net.head_size, widths[name])
        shapes[f"{name}.b2"] = (widths[name],)
    if "actor" in heads and cfg.action_kind == "continuous":
        shapes["actor.log_std"] = (cfg.action_dims,)
    return shapes


def sparse_init(fan_in: int, fan_out: int, sparsity: float, generator: torch.Generator) -> Tensor:
    """Uniform(+-1/sqrt(fan_in)) weights with a fraction `sparsity` of each unit's inputs zeroed."""
    bound = 1.0 / math.sqrt(fan_in)
    w = (torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound
    n_zero = int(round(sparsity * fan_in))
    if n_zero > 0 and fan_in > 1:
        n_zero = min(n_zero, fan_in - 1)  # keep at least one input per unit
        for j in range(fan_out):
            idx = torch.randperm(fan_in, generator=generator)[:n_zero]
            w[idx, j] = 0.0
    return w


def init_params(
    cfg: AgentConfig, seed: int = 0, heads: tuple[str, ...] = ("critic", "actor")
) -> Params:
    """Fresh parameters, float32, (in, out) layout: encoder, cell, then the named heads.

    Draw order (the cell first, then encoder and heads) fixes what a seed produces.
    """
    g = torch.Generator().manual_seed(seed)
    net = cfg.net
    cell = cfg.new_cell(generator=g).param_dict()
    y = cfg.cell.output_size
    p: Params = {
        "enc.w": sparse_init(cfg.obs_size, net.encoder_size, net.sparsity, g),
        "enc.b": torch.zeros(net.encoder_size),
    }
    p.update({f"cell.{k}": v for k, v in cell.items()})
    widths = {"critic": 1, "actor": cfg.policy_outputs}
    for name in heads:
        p[f"{name}.w1"] = sparse_init(y, net.head_size, net.sparsity, g)
        p[f"{name}.b1"] = torch.zeros(net.head_size)
        p[f"{name}.w2"] = sparse_init(net.head_size, widths[name], net.sparsity, g)
        p[f"{name}.b2"] = torch.zeros(widths[name])
    if "actor" in heads and cfg.action_kind == "continuous":
        p["actor.log_std"] = torch.zeros(cfg.action_dims)
    return {k: v.contiguous() for k, v in p.items()}


def cell_params(p: Params) -> Params:
    """The cell's parameters out of the agent's, keyed by the cell's own names."""
    return {k[len("cell.") :]: v for k, v in p.items() if k.startswith("cell.")}


# ---- dense layers with hand-written backward ------------------------------------------

LN_EPS = 1e-5  # variance floor of LayerNorm


@dataclass
class Hidden:
    """A tanh layer's output and what its hand-written backward pass needs."""

    h: Tensor  # tanh(a) or, with LayerNorm, tanh(LN(a)); a = x @ W + b; (1, k)
    u: Tensor | None = None  # LN(a) = (a - mean(a)) * inv_std, when layer-normalised
    inv_std: Tensor | None = None  # 1 / sqrt(var(a) + LN_EPS), (1, 1)


def tanh_layer(x: Tensor, w: Tensor, b: Tensor, layer_norm: bool) -> Hidden:
    """h = tanh(x @ w + b), or tanh(LN(x @ w + b)) with LayerNorm (no affine: the streaming-RL
    recipe of Elsayed et al. 2024 normalises every hidden pre-activation this way)."""
    a = x @ w + b
    if not layer_norm:
        return Hidden(torch.tanh(a))
    centred = a - a.mean(-1, keepdim=True)
    inv_std = torch.rsqrt((centred * centred).mean(-1, keepdim=True) + LN_EPS)
    u = centred * inv_std
    return Hidden(torch.tanh(u), u, inv_std)


def tanh_layer_backward(layer: Hidden, g_h: Tensor) -> Tensor:
    """The cotangent of the pre-activation a, given that of h."""
    g_u = g_h * (1 - layer.h * layer.h)
    if layer.u is None:
        return g_u
    # LayerNorm: dL/da = inv_std * (g - mean(g) - u * mean(g * u))
    mean_g = g_u.mean(-1, keepdim=True)
    mean_gu = (g_u * layer.u).mean(-1, keepdim=True)
    return layer.inv_std * (g_u - mean_g - layer.u * mean_gu)


def encode(p: Params, x: Tensor, layer_norm: bool = False) -> Hidden:
    """h0 = tanh(x @ W + b) (LayerNorm before tanh when asked), (1, E)."""
    return tanh_layer(x, p["enc.w"], p["enc.b"], layer_norm)


def encode_backward(p: Params, x: Tensor, h0: Hidden, g_h0: Tensor) -> Params:
    """Gradients of sum(g_h0 * h0) w.r.t. the encoder (one step, no temporal credit)."""
    g_pre = tanh_layer_backward(h0, g_h0)
    return {"enc.w": x.transpose(0, 1) @ g_pre, "enc.b": g_pre.sum(0)}


def head(p: Params, name: str, y: Tensor, layer_norm: bool = False) -> tuple[Tensor, Hidden]:
    """Two-layer head: returns (output (1, k), hidden layer (1, H))."""
    hid = tanh_layer(y, p[f"{name}.w1"], p[f"{name}.b1"], layer_norm)
    return hid.h @ p[f"{name}.w2"] + p[f"{name}.b2"], hid


def head_backward(
    p: Params, name: str, y: Tensor, hid: Hidden, g_out: Tensor
) -> tuple[Params, Tensor]:
    """Gradients of sum(g_out * out) w.r.t. the head's parameters and its input y."""
    g_hid = g_out @ p[f"{name}.w2"].transpose(0, 1)
    g_pre = tanh_layer_backward(hid, g_hid)
    grads = {
        f"{name}.w1": y.transpose(0, 1) @ g_pre,
        f"{name}.b1": g_pre.sum(0),
        f"{name}.w2": hid.h.transpose(0, 1) @ g_out,
        f"{name}.b2": g_out.sum(0),
    }
    return grads, g_pre @ p[f"{name}.w1"].transpose(0, 1)


# ---- policy distributions ---------------------------------------------------------------


@dataclass
class PolicySample:
    """An action drawn with externally supplied noise, and the gradients the learner needs."""

    action: Tensor  # (1, action_dims); discrete: the index as a float
    dlogp_dout: Tensor  # d log pi(action) / d actor output, (1, k)
    dent_dout: Tensor  # d entropy / d actor output, (1, k)
    dlogp_dlogstd: Tensor | None  # continuous only, (k,)
    dent_dlogstd: Tensor | None  # continuous only, (k,)


def sample_policy(cfg: AgentConfig, p: Params, out: Tensor, noise: Tensor) -> PolicySample:
    """Sample from the policy given noise: standard normal (Gaussian) or standard Gumbel (categorical).

    The sample is a deterministic function of (out, noise), so the exported graph is deterministic.
    """
    if cfg.action_kind == "continuous":
        log_std = p["actor.log_std"]
        std = torch.exp(log_std)
        action = out + std * noise  # a = mu + sigma * eps
        # log pi = sum(-0.5 eps^2 - log_std - 0.5 log 2pi), with eps = (a - mu) / sigma
        dlogp_dmu = noise / std
        dlogp_dlogstd = (noise * noise - 1).sum(0)
        # entropy = sum(log_std) + const: independent of the mean
        return PolicySample(
            action=action,
            dlogp_dout=dlogp_dmu,
            dent_dout=torch.zeros_like(out),
            dlogp_dlogstd=dlogp_dlogstd,
            dent_dlogstd=torch.ones_like(log_std),
        )
    # Gumbel-max trick: argmax(logits + g) is a sample from softmax(logits).
    idx = torch.argmax(out + noise, dim=-1, keepdim=True)  # (1, 1) int64
    arange = torch.arange(cfg.num_actions, dtype=idx.dtype)
    onehot = (arange == idx).to(out.dtype)
    logp = torch.log_softmax(out, dim=-1)
    prob = torch.exp(logp)
    entropy = -(prob * logp).sum(-1, keepdim=True)
    return PolicySample(
        action=idx.to(out.dtype),
        dlogp_dout=onehot - prob,  # d log softmax(l)[a] / d l
        dent_dout=-prob * (logp + entropy),  # d (-sum p log p) / d l
        dlogp_dlogstd=None,
        dent_dlogstd=None,
    )


def greedy_action(cfg: AgentConfig, out: Tensor) -> Tensor:
    """The deterministic action of the act graph: the Gaussian mean or the argmax logit."""
    if cfg.action_kind == "continuous":
        return out * 1.0  # a fresh tensor, so the graph never returns an input as an output
    return torch.argmax(out, dim=-1, keepdim=True).to(out.dtype)


def trunk_backward(
    cfg: AgentConfig, p: Params, g_y: Tensor, x: Tensor, h0: Hidden, state, traces
) -> Params:
    """Gradients of sum(g_y * y_t) w.r.t. the cell (exact RTRL) and the encoder (one step)."""
    cp = cell_params(p)
    cell = cfg.cell
    grads = {f"cell.{k}": v for k, v in cell.rtrl_grads(g_y, state, traces, cp).items()}
    g_h0 = cell.input_grad(g_y, state, traces, cp)
    grads.update(encode_backward(p, x, h0, g_h0))
    return grads


def trunk_backward_flat(
    cfg: AgentConfig, p: Params, g_ys: list[Tensor], x: Tensor, h0: Hidden, state, traces
) -> Tensor:
    """`trunk_backward` of each cotangent in `g_ys`, flat: (K, trunk size), row i every trunk
    gradient of cotangent i flattened and concatenated in `trunk_param_names` order (the
    order of the learner's packed buffers).

    A cell that offers `rtrl_backward_rows` takes all cotangents in one pass (one set of
    graph nodes for the critic's, the actor's and the entropy's gradients); the others take
    them one at a time. The numbers are the same either way.
    """
    names = trunk_param_names(cfg)
    cp = cell_params(p)
    both = cfg.cell.rtrl_backward_rows(torch.cat(g_ys), state, traces, cp)
    if both is None:
        out = []
        for g_y in g_ys:
            g = trunk_backward(cfg, p, g_y, x, h0, state, traces)
            out.append(torch.cat([g[k].reshape(-1) for k in names]))
        return torch.stack(out)
    cell_g, g_h0 = both
    k = len(g_ys)
    g_pre = tanh_layer_backward(h0, g_h0)  # (K, E): row i is cotangent i's
    grads = {f"cell.{n}": v for n, v in cell_g.items()}
    # enc.w: x^T @ g_pre of each row (an outer product: one multiply per entry, as the matmul)
    grads["enc.w"] = x.transpose(0, 1)[None] * g_pre[:, None, :]
    grads["enc.b"] = g_pre
    return torch.cat([grads[n].reshape(k, -1) for n in names], dim=1)  # (K, trunk size)
