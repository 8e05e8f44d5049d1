"""A memoryless baseline with the RTRL cell interface: one dense layer, no recurrence.

    pre_t = x_t @ w + b            # (B, n), w in (in, out) layout
    y_t   = f(pre_t)               # f in {relu (default), tanh, identity}

It lets a learner swap the recurrent cell for "no memory" without changing anything else.
n units, input size d, batch B. Same conventions as rtu_math.

State: nothing is carried between steps, so the state is a genuinely empty NamedTuple
(`MLPState()`); the batch size comes from x.

Traces: dy_t/dw and dy_t/db depend only on the current step, but `grads` sees only the
state and traces (not x_t), so the "traces" hold what the immediate gradient needs: the
current input x_t and pre-activation pre_t. They carry no history -- `step` overwrites them
and never reads the old ones (the episode mask is therefore a no-op, though `done` is still
checked). Gradients:

    delta = dL/dy * f'(pre_t)
    dL/dw = x_t^T @ delta,  dL/db = sum_b delta,  dL/dx_t = delta @ w^T

relu's derivative at the kink (pre = 0) is 0, as in torch autograd.

Default activation: relu, the RTU's default, so swapping "rtu" for "mlp" changes only the
memory and not the non-linearity.

Export rules as in rtu_math (real arithmetic, `x @ W`, units on the last axis, no
data-dependent control flow, no in-place ops, dtype of the inputs). Options: `activation`,
accepted as a keyword by init_params, initial_traces, step, step_forward, grads, input_grad
and sequence.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from rtu_edge.cells._common import (
    _act,
    _act_grad_from_pre,
    _check_batch_input,
    _check_positive_int,
    _check_sizes,
    _scale,
    _shape_of,
)

ACTIVATIONS = ("relu", "tanh", "identity")
OPTIONS: dict[str, object] = {"activation": "relu"}


class MLPParams(NamedTuple):
    """Learnable parameters (n units, input size d)."""

    w: Tensor  # (d, n), (in, out) layout
    b: Tensor  # (n,)


class MLPState(NamedTuple):
    """No recurrent state: an empty tuple."""


class MLPTraces(NamedTuple):
    """The current step's input and pre-activation (no history; see the module docstring)."""

    x: Tensor  # (B, d)
    pre: Tensor  # (B, n)


# --------------------------------------------------------------------------------------
# Sizes and initialisation
# --------------------------------------------------------------------------------------


def output_size(hidden_size: int) -> int:
    """y has n entries."""
    return _check_positive_int(hidden_size, "hidden_size")


def param_count(input_size: int, hidden_size: int) -> int:
    """w (d*n) + b (n)."""
    d, n = _check_sizes(input_size, hidden_size)
    return d * n + n


def init_params(
    input_size: int,
    hidden_size: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    activation: str = "relu",
) -> MLPParams:
    """w ~ N(0, 1/d) (LeCun normal, as the RTU's input weights), b = 0.

    Drawn in float64 and then cast, so a seed gives the same layer in float32 and float64.
    """
    d, n = _check_sizes(input_size, hidden_size)
    _check_activation(activation)
    w = torch.randn(d, n, generator=generator, dtype=torch.float64) / math.sqrt(d)
    return MLPParams(w.to(dtype), torch.zeros(n, dtype=dtype))


def initial_state(
    hidden_size: int, batch_size: int, dtype: torch.dtype = torch.float32
) -> MLPState:
    """The empty state (sizes are checked, nothing is allocated)."""
    _check_positive_int(hidden_size, "hidden_size")
    _check_positive_int(batch_size, "batch_size")
    return MLPState()


def initial_traces(
    input_size: int,
    hidden_size: int,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    *,
    activation: str = "relu",
) -> MLPTraces:
    """Zero x (B, d) and pre (B, n)."""
    d, n = _check_sizes(input_size, hidden_size)
    b = _check_positive_int(batch_size, "batch_size")
    _check_activation(activation)
    return MLPTraces(torch.zeros(b, d, dtype=dtype), torch.zeros(b, n, dtype=dtype))


# --------------------------------------------------------------------------------------
# Forward step
# --------------------------------------------------------------------------------------


def step(
    p: MLPParams,
    x: Tensor,
    state: MLPState,
    traces: MLPTraces,
    done: Tensor | None,
    *,
    activation: str = "relu",
) -> tuple[Tensor, MLPState, MLPTraces]:
    """y (B, n) = f(x @ w + b), the empty state, and the new traces (x, pre).

    done: (B,) or None, checked for shape; there is no state to reset and the traces are
    rebuilt from x_t, so it has no effect.
    """
    d, n = _check_params(p)
    _check_activation(activation)
    b = _check_batch_input(x, d, p.w.dtype, "x")
    _check_state(state)
    _check_traces(traces, b, d, n, p.w.dtype)
    if done is not None:
        _check_done(done, b)
    pre = x @ p.w + p.b
    return _act(activation, pre), MLPState(), MLPTraces(x, pre)


def step_forward(
    p: MLPParams,
    x: Tensor,
    state: MLPState,
    done: Tensor | None,
    *,
    activation: str = "relu",
) -> tuple[Tensor, MLPState]:
    """`step` without traces: y (B, n) and the empty state."""
    d, _ = _check_params(p)
    _check_activation(activation)
    b = _check_batch_input(x, d, p.w.dtype, "x")
    _check_state(state)
    if done is not None:
        _check_done(done, b)
    return _act(activation, x @ p.w + p.b), MLPState()


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------


def grads(
    p: MLPParams,
    dL_dy: Tensor,
    state: MLPState,
    traces: MLPTraces,
    *,
    activation: str = "relu",
) -> dict[str, Tensor]:
    """Gradient of sum(dL_dy * y_t) w.r.t. w and b (immediate: there is no past), summed
    over the batch. `traces` are those returned by `step` for this time step."""
    d, n = _check_params(p)
    _check_activation(activation)
    b = _check_batch_input(dL_dy, n, p.w.dtype, "dL_dy")
    _check_state(state)
    _check_traces(traces, b, d, n, p.w.dtype)
    delta = _scale(_act_grad_from_pre(activation, traces.pre), dL_dy)
    g_w = (traces.x[:, :, None] * delta[:, None, :]).sum(0)
    return {"w": g_w, "b": delta.sum(0)}


def input_grad(
    p: MLPParams,
    dL_dy: Tensor,
    state: MLPState,
    traces: MLPTraces,
    *,
    activation: str = "relu",
) -> Tensor:
    """Gradient of sum(dL_dy * y_t) w.r.t. x_t, (B, d): delta @ w^T (broadcast-and-reduce)."""
    d, n = _check_params(p)
    _check_activation(activation)
    b = _check_batch_input(dL_dy, n, p.w.dtype, "dL_dy")
    _check_state(state)
    _check_traces(traces, b, d, n, p.w.dtype)
    delta = _scale(_act_grad_from_pre(activation, traces.pre), dL_dy)
    return (delta[:, None, :] * p.w).sum(-1)


# --------------------------------------------------------------------------------------
# Unrolled forward (the BPTT oracle)
# --------------------------------------------------------------------------------------


def sequence(
    p: MLPParams,
    xs: Tensor,
    state: MLPState,
    dones: Tensor | None = None,
    *,
    activation: str = "relu",
) -> tuple[Tensor, MLPState]:
    """ys (T, B, n) = f(xs @ w + b) for all steps at once, and the empty state."""
    d, _ = _check_params(p)
    _check_activation(activation)
    if not isinstance(xs, Tensor) or xs.dim() != 3 or xs.shape[2] != d:
        raise ValueError(f"xs must be a tensor of shape (T, B, {d}); got {_shape_of(xs)}")
    if xs.dtype != p.w.dtype:
        raise ValueError(f"xs has dtype {xs.dtype} but the parameters are {p.w.dtype}")
    _check_state(state)
    t_len, b = xs.shape[0], xs.shape[1]
    if dones is not None and (not isinstance(dones, Tensor) or tuple(dones.shape) != (t_len, b)):
        raise ValueError(f"dones must be a tensor of shape ({t_len}, {b}); got {_shape_of(dones)}")
    return _act(activation, xs @ p.w + p.b), MLPState()


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _check_activation(activation: object) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")


def _check_params(p: object) -> tuple[int, int]:
    if not isinstance(p, MLPParams):
        raise ValueError(f"p must be an MLPParams; got {type(p).__name__}")
    if not isinstance(p.w, Tensor) or p.w.dim() != 2:
        raise ValueError(f"w must have shape (d, n); got {_shape_of(p.w)}")
    d, n = p.w.shape
    if not isinstance(p.b, Tensor) or tuple(p.b.shape) != (n,):
        raise ValueError(f"b must have shape ({n},); got {_shape_of(p.b)}")
    if p.b.dtype != p.w.dtype:
        raise ValueError(f"all parameters must share one dtype; b is {p.b.dtype}")
    return d, n


def _check_done(done: object, b: int) -> None:
    if not isinstance(done, Tensor) or tuple(done.shape) != (b,):
        raise ValueError(
            f"done must be None or a tensor of shape ({b},) (1 = first step of a new "
            f"episode); got {_shape_of(done)}"
        )


def _check_state(state: object) -> None:
    if not isinstance(state, MLPState):
        raise ValueError(f"state must be an MLPState() (empty); got {type(state).__name__}")


def _check_traces(traces: object, b: int, d: int, n: int, dtype: torch.dtype) -> None:
    if not isinstance(traces, MLPTraces):
        raise ValueError(
            f"traces must be MLPTraces (see initial_traces); got {type(traces).__name__}"
        )
    for name, t, shape in (("x", traces.x, (b, d)), ("pre", traces.pre, (b, n))):
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"traces.{name} must have shape {shape}; got {_shape_of(t)}")
        if t.dtype != dtype:
            raise ValueError(f"traces.{name} has dtype {t.dtype} but the parameters are {dtype}")
