"""A vanilla block-diagonal RNN with unconstrained real 2x2 blocks and its exact RTRL.

The baseline of rtu-rtrl.md section 6: like the non-linear RTU, but each 2x2 recurrent block
is a free real matrix instead of a scaled rotation, and there is a bias. n units (n even),
m = n/2 blocks, input size d, batch B. Same conventions as rtu_math.

Layout: block k couples unit k and unit m + k, so the state is stored as two halves
(h1, h2), each (B, m), and y = concat[h1, h2] (B, n) -- the same [first, second component]
order as the RTU's [real, imag]. The block-diagonal A of the usual form
h_t = f(A h_{t-1} + x_t @ W + b) is stored as four vectors, and W, b as their halves:

    A_k = [[a11_k, a12_k], [a21_k, a22_k]],   W = [w1 | w2] (d, n),   b = [b1 | b2] (n,)

    p1 = a11*h1 + a12*h2 + x_t @ w1 + b1            # (B, m) pre-activations
    p2 = a21*h1 + a22*h2 + x_t @ w2 + b2
    h1_t = f(p1),  h2_t = f(p2),  f in {tanh (default), relu, identity}

RTRL: h_k depends only on block k's own parameters (a11_k .. a22_k, b1_k, b2_k and columns
k of w1 and w2), so the exact sensitivities cost O(n d) per batch element. For any such
parameter q, with J1 = dh1/dq, J2 = dh2/dq and (s1, s2) the immediate derivative of
(p1, p2) w.r.t. q:

    J1_t = f'(p1_t) * (a11*J1_{t-1} + a12*J2_{t-1} + s1)
    J2_t = f'(p2_t) * (a21*J1_{t-1} + a22*J2_{t-1} + s2)

    q:       a11       a12       a21       a22       b1     b2     w1[i,k]   w2[i,k]
    (s1,s2): (h1, 0)   (h2, 0)   (0, h1)   (0, h2)   (1,0)  (0,1)  (x_i, 0)  (0, x_i)

with h = h_{t-1} (after the episode mask). Gradient: dL/dq = dL/dh1 * J1 + dL/dh2 * J2,
dL/dh = dL/dy split in halves (f' is already inside the traces).

Export rules as in rtu_math: real arithmetic only, `x @ W` with (in, out) weights,
broadcasts with units on the last axis, no data-dependent control flow (Python `if`s branch
only on the static `activation`), no in-place ops, resets by masks, every tensor in the
inputs' dtype.

Options: `activation` (default "tanh"), accepted as a keyword by every public function that
takes options (init_params, initial_traces, step, step_forward, grads, input_grad,
sequence) so one `**options` dict can be passed to all of them.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from rtu_edge.cells._common import (
    _act,
    _act_grad_from_post,
    _act_grad_from_pre,
    _check_batch_input,
    _check_positive_int,
    _keep_mask,
    _mask,
    _scale,
    _shape_of,
)

ACTIVATIONS = ("tanh", "relu", "identity")
OPTIONS: dict[str, object] = {"activation": "tanh"}


class BlockRNNParams(NamedTuple):
    """Learnable parameters (m = n/2 blocks, input size d)."""

    a11: Tensor  # (m,) block k: [[a11, a12], [a21, a22]]
    a12: Tensor  # (m,)
    a21: Tensor  # (m,)
    a22: Tensor  # (m,)
    w1: Tensor  # (d, m) input weights of the first components (units 0..m-1)
    w2: Tensor  # (d, m) input weights of the second components (units m..n-1)
    b1: Tensor  # (m,)
    b2: Tensor  # (m,)


class BlockRNNState(NamedTuple):
    """Post-activation state: first and second component of every block."""

    h1: Tensor  # (B, m)
    h2: Tensor  # (B, m)


class BlockRNNTraces(NamedTuple):
    """Per-component real RTRL traces: `<param>_<j>` = d h_j / d param (own block only)."""

    a11_1: Tensor  # (B, m)
    a11_2: Tensor  # (B, m)
    a12_1: Tensor  # (B, m)
    a12_2: Tensor  # (B, m)
    a21_1: Tensor  # (B, m)
    a21_2: Tensor  # (B, m)
    a22_1: Tensor  # (B, m)
    a22_2: Tensor  # (B, m)
    b1_1: Tensor  # (B, m)
    b1_2: Tensor  # (B, m)
    b2_1: Tensor  # (B, m)
    b2_2: Tensor  # (B, m)
    w1_1: Tensor  # (B, d, m) [b, i, k] = d h1_k / d w1[i, k]
    w1_2: Tensor  # (B, d, m)
    w2_1: Tensor  # (B, d, m)
    w2_2: Tensor  # (B, d, m)


_PARAM_NAMES = BlockRNNParams._fields


# --------------------------------------------------------------------------------------
# Sizes and initialisation
# --------------------------------------------------------------------------------------


def output_size(hidden_size: int) -> int:
    """y = concat[h1, h2] has n entries."""
    _check_hidden(hidden_size)
    return hidden_size


def param_count(input_size: int, hidden_size: int) -> int:
    """A: 4 * n/2, W: d*n, b: n, so d*n + 3n."""
    d = _check_positive_int(input_size, "input_size")
    n = _check_hidden(hidden_size)
    return d * n + 3 * n


def init_params(
    input_size: int,
    hidden_size: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    activation: str = "tanh",
) -> BlockRNNParams:
    """Blocks start as ring-initialised scaled rotations; W LeCun normal; b zero.

    u1, u2 ~ U[0, 1]; r = sqrt(u1), theta = 2*pi*u2 (the RTU/LRU ring init), and
    A_k = r * [[cos theta, -sin theta], [sin theta, cos theta]], so at init the block's
    linear part has the eigenvalues r*exp(+-i*theta) of an RTU unit and spectral radius < 1;
    the four entries are then learned freely. w1, w2 ~ N(0, 1/d), b1 = b2 = 0. Draws
    (u1, u2, w1, w2) are made in float64 and then cast, so a seed gives the same cell in
    float32 and float64. hidden_size must be even.
    """
    d = _check_positive_int(input_size, "input_size")
    n = _check_hidden(hidden_size)
    _check_activation(activation)
    m = n // 2
    f64 = torch.float64
    u1 = torch.rand(m, generator=generator, dtype=f64)
    u2 = torch.rand(m, generator=generator, dtype=f64)
    r, theta = torch.sqrt(u1), 2.0 * math.pi * u2
    c, s = r * torch.cos(theta), r * torch.sin(theta)
    std = 1.0 / math.sqrt(d)
    w1 = torch.randn(d, m, generator=generator, dtype=f64) * std
    w2 = torch.randn(d, m, generator=generator, dtype=f64) * std
    zero = torch.zeros(m, dtype=f64)
    p = (c, -s, s, c, w1, w2, zero, zero.clone())
    return BlockRNNParams(*(t.to(dtype) for t in p))


def initial_state(
    hidden_size: int, batch_size: int, dtype: torch.dtype = torch.float32
) -> BlockRNNState:
    """Zero state, h1 and h2 of shape (B, n/2)."""
    m = _check_hidden(hidden_size) // 2
    b = _check_positive_int(batch_size, "batch_size")
    return BlockRNNState(torch.zeros(b, m, dtype=dtype), torch.zeros(b, m, dtype=dtype))


def initial_traces(
    input_size: int,
    hidden_size: int,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    *,
    activation: str = "tanh",
) -> BlockRNNTraces:
    """Zero RTRL traces: twelve (B, m) and four (B, d, m) tensors (m = n/2)."""
    d = _check_positive_int(input_size, "input_size")
    m = _check_hidden(hidden_size) // 2
    b = _check_positive_int(batch_size, "batch_size")
    _check_activation(activation)
    small = [torch.zeros(b, m, dtype=dtype) for _ in range(12)]
    big = [torch.zeros(b, d, m, dtype=dtype) for _ in range(4)]
    return BlockRNNTraces(*small, *big)


# --------------------------------------------------------------------------------------
# Forward step with trace update
# --------------------------------------------------------------------------------------


def step(
    p: BlockRNNParams,
    x: Tensor,
    state: BlockRNNState,
    traces: BlockRNNTraces,
    done: Tensor | None,
    *,
    activation: str = "tanh",
) -> tuple[Tensor, BlockRNNState, BlockRNNTraces]:
    """One step that also carries the RTRL traces forward.

    x: (B, d). done: (B,) or None; done[b] = 1 means x[b] is the first input of a new
    episode, so the state and the traces of row b are multiplied by (1 - done) first.
    Returns y (B, n) = concat[h1, h2], the new state and the new traces; pass the returned
    state and traces to `grads` for this time step.
    """
    d, m = _check_params(p)
    _check_activation(activation)
    b = _check_batch_input(x, d, p.w1.dtype, "x")
    _check_state(state, b, m, p.w1.dtype)
    _check_traces(traces, b, d, m, p.w1.dtype)
    if done is not None:
        keep = _keep_mask(done, b, x.dtype)
        state = BlockRNNState(*(_mask(t, keep) for t in state))
        traces = BlockRNNTraces(*(_mask(t, keep) for t in traces))

    h1, h2 = state
    p1, p2 = _pre(p, x, h1, h2)
    fp1 = _act_grad_from_pre(activation, p1)  # (B, m) or None for identity
    fp2 = _act_grad_from_pre(activation, p2)
    fp1_b = None if fp1 is None else fp1[:, None, :]  # (B, 1, m): broadcast over inputs
    fp2_b = None if fp2 is None else fp2[:, None, :]
    xb = x[:, :, None]  # (B, d, 1): x_i, the w1/w2 immediate term
    tr = traces

    def prop(j1, j2, s1, s2, f1, f2):
        return _propagate(p, j1, j2, s1, s2, f1, f2)

    new = (
        *prop(tr.a11_1, tr.a11_2, h1, None, fp1, fp2),
        *prop(tr.a12_1, tr.a12_2, h2, None, fp1, fp2),
        *prop(tr.a21_1, tr.a21_2, None, h1, fp1, fp2),
        *prop(tr.a22_1, tr.a22_2, None, h2, fp1, fp2),
        *prop(tr.b1_1, tr.b1_2, 1.0, None, fp1, fp2),
        *prop(tr.b2_1, tr.b2_2, None, 1.0, fp1, fp2),
        *prop(tr.w1_1, tr.w1_2, xb, None, fp1_b, fp2_b),
        *prop(tr.w2_1, tr.w2_2, None, xb, fp1_b, fp2_b),
    )
    c1, c2 = _act(activation, p1), _act(activation, p2)
    return torch.cat([c1, c2], dim=-1), BlockRNNState(c1, c2), BlockRNNTraces(*new)


def step_forward(
    p: BlockRNNParams,
    x: Tensor,
    state: BlockRNNState,
    done: Tensor | None,
    *,
    activation: str = "tanh",
) -> tuple[Tensor, BlockRNNState]:
    """`step` without traces: y (B, n) and the new state."""
    d, m = _check_params(p)
    _check_activation(activation)
    b = _check_batch_input(x, d, p.w1.dtype, "x")
    _check_state(state, b, m, p.w1.dtype)
    if done is not None:
        keep = _keep_mask(done, b, x.dtype)
        state = BlockRNNState(*(_mask(t, keep) for t in state))
    p1, p2 = _pre(p, x, state.h1, state.h2)
    c1, c2 = _act(activation, p1), _act(activation, p2)
    return torch.cat([c1, c2], dim=-1), BlockRNNState(c1, c2)


# --------------------------------------------------------------------------------------
# Gradients from traces
# --------------------------------------------------------------------------------------


def grads(
    p: BlockRNNParams,
    dL_dy: Tensor,
    state: BlockRNNState,
    traces: BlockRNNTraces,
    *,
    activation: str = "tanh",
) -> dict[str, Tensor]:
    """Exact gradient of sum(dL_dy * y_t) w.r.t. the parameters, through all past steps.

    `state` and `traces` are those returned by `step` for this time step; dL_dy is (B, n).
    Returns a dict keyed by the BlockRNNParams fields, shaped like the parameters, summed
    over the batch.
    """
    d, m = _check_params(p)
    _check_activation(activation)
    b = _check_batch_input(dL_dy, 2 * m, p.w1.dtype, "dL_dy")
    _check_state(state, b, m, p.w1.dtype)
    _check_traces(traces, b, d, m, p.w1.dtype)
    d1, d2 = dL_dy[:, :m], dL_dy[:, m:]
    d1_b, d2_b = d1[:, None, :], d2[:, None, :]  # (B, 1, m)
    tr = traces._asdict()
    out = {}
    for name in _PARAM_NAMES:
        j1, j2 = tr[f"{name}_1"], tr[f"{name}_2"]
        if name.startswith("w"):
            out[name] = (d1_b * j1 + d2_b * j2).sum(0)
        else:
            out[name] = (d1 * j1 + d2 * j2).sum(0)
    return out


def input_grad(
    p: BlockRNNParams,
    dL_dy: Tensor,
    state: BlockRNNState,
    traces: BlockRNNTraces,
    *,
    activation: str = "tanh",
) -> Tensor:
    """One-step gradient of sum(dL_dy * y_t) w.r.t. x_t, (B, d): no temporal credit.

    dL/dx_t[i] = sum_k (dL/dh1_k f'(p1_k) w1[i,k] + dL/dh2_k f'(p2_k) w2[i,k]), with f'
    recovered from the post-activation state returned by `step`: tanh -> 1 - h^2,
    relu -> (h > 0) (0 at the kink, as autograd), identity -> 1. `traces` is checked only.
    """
    d, m = _check_params(p)
    _check_activation(activation)
    b = _check_batch_input(dL_dy, 2 * m, p.w1.dtype, "dL_dy")
    _check_state(state, b, m, p.w1.dtype)
    _check_traces(traces, b, d, m, p.w1.dtype)
    g1 = _scale(_act_grad_from_post(activation, state.h1), dL_dy[:, :m])[:, None, :]
    g2 = _scale(_act_grad_from_post(activation, state.h2), dL_dy[:, m:])[:, None, :]
    return (g1 * p.w1 + g2 * p.w2).sum(-1)


# --------------------------------------------------------------------------------------
# Unrolled forward (the BPTT oracle)
# --------------------------------------------------------------------------------------


def sequence(
    p: BlockRNNParams,
    xs: Tensor,
    state: BlockRNNState,
    dones: Tensor | None = None,
    *,
    activation: str = "tanh",
) -> tuple[Tensor, BlockRNNState]:
    """Run the cell over xs (T, B, d) with plain autograd; returns ys (T, B, n), final state.

    Same semantics as repeated `step` calls (dones (T, B) resets the state before step t).
    """
    d, m = _check_params(p)
    _check_activation(activation)
    t_len, b = _check_sequence(xs, dones, d, p.w1.dtype)
    _check_state(state, b, m, p.w1.dtype)
    h1, h2 = state
    ys = []
    for t in range(t_len):
        if dones is not None:
            keep = 1 - dones[t].to(xs.dtype)
            h1, h2 = _mask(h1, keep), _mask(h2, keep)
        p1, p2 = _pre(p, xs[t], h1, h2)
        h1, h2 = _act(activation, p1), _act(activation, p2)
        ys.append(torch.cat([h1, h2], dim=-1))
    return torch.stack(ys), BlockRNNState(h1, h2)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _pre(p: BlockRNNParams, x: Tensor, h1: Tensor, h2: Tensor) -> tuple[Tensor, Tensor]:
    """Pre-activations (p1, p2) = A h_{t-1} + x @ W + b, split by component, each (B, m)."""
    p1 = p.a11 * h1 + p.a12 * h2 + x @ p.w1 + p.b1
    p2 = p.a21 * h1 + p.a22 * h2 + x @ p.w2 + p.b2
    return p1, p2


def _propagate(
    p: BlockRNNParams,
    j1: Tensor,
    j2: Tensor,
    s1: Tensor | float | None,
    s2: Tensor | float | None,
    f1: Tensor | None,
    f2: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """J_t = f'(p_t) * (A_k J_{t-1} + s), per component; None means 0 (s) or 1 (f')."""
    q1 = p.a11 * j1 + p.a12 * j2
    q2 = p.a21 * j1 + p.a22 * j2
    if s1 is not None:
        q1 = q1 + s1
    if s2 is not None:
        q2 = q2 + s2
    return _scale(f1, q1), _scale(f2, q2)


def _check_hidden(hidden_size: object) -> int:
    n = _check_positive_int(hidden_size, "hidden_size")
    if n % 2:
        raise ValueError(f"hidden_size must be even (n/2 blocks of 2 units); got {n}")
    return n


def _check_activation(activation: object) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")


def _check_params(p: object) -> tuple[int, int]:
    if not isinstance(p, BlockRNNParams):
        raise ValueError(f"p must be a BlockRNNParams; got {type(p).__name__}")
    if not isinstance(p.w1, Tensor) or p.w1.dim() != 2:
        raise ValueError(f"w1 must have shape (d, n/2); got {_shape_of(p.w1)}")
    d, m = p.w1.shape
    for name in _PARAM_NAMES:
        t = getattr(p, name)
        shape = (d, m) if name.startswith("w") else (m,)
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (d={d}, n/2={m}); got {_shape_of(t)}")
        if t.dtype != p.w1.dtype:
            raise ValueError(f"all parameters must share one dtype; {name} is {t.dtype}")
    return d, m


def _check_sequence(xs: object, dones: object, d: int, dtype: torch.dtype) -> tuple[int, int]:
    if not isinstance(xs, Tensor) or xs.dim() != 3 or xs.shape[2] != d:
        raise ValueError(f"xs must be a tensor of shape (T, B, {d}); got {_shape_of(xs)}")
    if xs.dtype != dtype:
        raise ValueError(f"xs has dtype {xs.dtype} but the parameters are {dtype}")
    t_len, b = xs.shape[0], xs.shape[1]
    if dones is not None and (not isinstance(dones, Tensor) or tuple(dones.shape) != (t_len, b)):
        raise ValueError(f"dones must be a tensor of shape ({t_len}, {b}); got {_shape_of(dones)}")
    return t_len, b


def _check_state(state: object, b: int, m: int, dtype: torch.dtype) -> None:
    if not isinstance(state, BlockRNNState):
        raise ValueError(f"state must be a BlockRNNState(h1, h2); got {type(state).__name__}")
    for name, t in zip(BlockRNNState._fields, state, strict=True):
        if not isinstance(t, Tensor) or tuple(t.shape) != (b, m):
            raise ValueError(f"state.{name} must have shape ({b}, {m}); got {_shape_of(t)}")
        if t.dtype != dtype:
            raise ValueError(f"state.{name} has dtype {t.dtype} but the parameters are {dtype}")


def _check_traces(traces: object, b: int, d: int, m: int, dtype: torch.dtype) -> None:
    if not isinstance(traces, BlockRNNTraces):
        raise ValueError(
            f"traces must be BlockRNNTraces (see initial_traces); got {type(traces).__name__}"
        )
    for name, t in zip(BlockRNNTraces._fields, traces, strict=True):
        shape = (b, d, m) if name.startswith("w") else (b, m)
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"traces.{name} must have shape {shape}; got {_shape_of(t)}")
        if t.dtype != dtype:
            raise ValueError(f"traces.{name} has dtype {t.dtype} but the parameters are {dtype}")
