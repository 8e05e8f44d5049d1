"""The standard GRU (as torch.nn.GRU), as plain functions of tensors, for truncated BPTT.

The baseline of rtu-rtrl.md section 6, trained by truncated BPTT through `sequence`; no RTRL
traces (exact RTRL for a dense GRU costs O(n^3) memory per step). n units, input size d,
batch B. Gates in torch.nn.GRU's order [r | z | n]:

    gi = x_t @ w_i + b_i,   gh = h_{t-1} @ w_h + b_h        # (B, 3n) each
    r  = sigmoid(gi_r + gh_r)
    z  = sigmoid(gi_z + gh_z)
    c  = tanh(gi_n + r * gh_n)                              # candidate ("n" in torch)
    h_t = (1 - z) * c + z * h_{t-1}
    y_t = h_t

Weights in (in, out) layout: w_i = weight_ih_l0^T (d, 3n), w_h = weight_hh_l0^T (n, 3n),
b_i = bias_ih_l0, b_h = bias_hh_l0 (3n each), so a torch.nn.GRU's weights copy over by a
transpose (the tests check equality in float64).

Export rules as in rtu_math: real arithmetic, `x @ W`, units on the last axis, no
data-dependent control flow, no in-place ops, resets by masks (done[b] = 1 zeroes row b of
the state before the step), dtype of the inputs. Options: none.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from rtu_edge.cells._common import (
    _check_batch_input,
    _check_positive_int,
    _check_sizes,
    _keep_mask,
    _mask,
    _shape_of,
)

OPTIONS: dict[str, object] = {}


class GRUParams(NamedTuple):
    """Learnable parameters (n units, input size d); gate blocks [r | z | n] on the last axis."""

    w_i: Tensor  # (d, 3n)
    w_h: Tensor  # (n, 3n)
    b_i: Tensor  # (3n,)
    b_h: Tensor  # (3n,)


class GRUState(NamedTuple):
    """Hidden state (also the output)."""

    h: Tensor  # (B, n)


def output_size(hidden_size: int) -> int:
    """y = h has n entries."""
    return _check_positive_int(hidden_size, "hidden_size")


def param_count(input_size: int, hidden_size: int) -> int:
    """3n * (d + n + 2): w_i (d*3n), w_h (n*3n), b_i and b_h (3n each)."""
    d, n = _check_sizes(input_size, hidden_size)
    return 3 * n * (d + n + 2)


def init_params(
    input_size: int,
    hidden_size: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> GRUParams:
    """torch.nn.GRU's init: every entry ~ U(-1/sqrt(n), 1/sqrt(n)).

    Drawn in float64 (order w_i, w_h, b_i, b_h) and then cast, so a seed gives the same cell
    in float32 and float64.
    """
    d, n = _check_sizes(input_size, hidden_size)
    k = 1.0 / math.sqrt(n)
    shapes = ((d, 3 * n), (n, 3 * n), (3 * n,), (3 * n,))
    draws = [(torch.rand(s, generator=generator, dtype=torch.float64) * 2 - 1) * k for s in shapes]
    return GRUParams(*(t.to(dtype) for t in draws))


def initial_state(
    hidden_size: int, batch_size: int, dtype: torch.dtype = torch.float32
) -> GRUState:
    """Zero state h (B, n)."""
    n = _check_positive_int(hidden_size, "hidden_size")
    b = _check_positive_int(batch_size, "batch_size")
    return GRUState(torch.zeros(b, n, dtype=dtype))


def step_forward(
    p: GRUParams, x: Tensor, state: GRUState, done: Tensor | None
) -> tuple[Tensor, GRUState]:
    """One step: x (B, d), done (B,) or None -> y (B, n), new state."""
    d, n = _check_params(p)
    b = _check_batch_input(x, d, p.w_i.dtype, "x")
    _check_state(state, b, n, p.w_i.dtype)
    h = state.h
    if done is not None:
        h = _mask(h, _keep_mask(done, b, x.dtype))
    h = _cell(p, n, x, h)
    return h, GRUState(h)


def sequence(
    p: GRUParams, xs: Tensor, state: GRUState, dones: Tensor | None = None
) -> tuple[Tensor, GRUState]:
    """Run over xs (T, B, d) with plain autograd; returns ys (T, B, n), final state.

    dones (T, B) resets the state before step t, as in `step_forward`.
    """
    d, n = _check_params(p)
    if not isinstance(xs, Tensor) or xs.dim() != 3 or xs.shape[2] != d:
        raise ValueError(f"xs must be a tensor of shape (T, B, {d}); got {_shape_of(xs)}")
    if xs.dtype != p.w_i.dtype:
        raise ValueError(f"xs has dtype {xs.dtype} but the parameters are {p.w_i.dtype}")
    t_len, b = xs.shape[0], xs.shape[1]
    _check_state(state, b, n, p.w_i.dtype)
    if dones is not None and (not isinstance(dones, Tensor) or tuple(dones.shape) != (t_len, b)):
        raise ValueError(f"dones must be a tensor of shape ({t_len}, {b}); got {_shape_of(dones)}")
    h = state.h
    ys = []
    for t in range(t_len):
        if dones is not None:
            h = _mask(h, 1 - dones[t].to(xs.dtype))
        h = _cell(p, n, xs[t], h)
        ys.append(h)
    return torch.stack(ys), GRUState(h)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _cell(p: GRUParams, n: int, x: Tensor, h: Tensor) -> Tensor:
    gi = x @ p.w_i + p.b_i
    gh = h @ p.w_h + p.b_h
    r = torch.sigmoid(gi[:, :n] + gh[:, :n])
    z = torch.sigmoid(gi[:, n : 2 * n] + gh[:, n : 2 * n])
    c = torch.tanh(gi[:, 2 * n :] + r * gh[:, 2 * n :])
    return (1 - z) * c + z * h


def _check_params(p: object) -> tuple[int, int]:
    if not isinstance(p, GRUParams):
        raise ValueError(f"p must be a GRUParams; got {type(p).__name__}")
    if not isinstance(p.w_h, Tensor) or p.w_h.dim() != 2:
        raise ValueError(f"w_h must have shape (n, 3n); got {_shape_of(p.w_h)}")
    n = p.w_h.shape[0]
    if not isinstance(p.w_i, Tensor) or p.w_i.dim() != 2:
        raise ValueError(f"w_i must have shape (d, {3 * n}); got {_shape_of(p.w_i)}")
    d = p.w_i.shape[0]
    expected = {"w_i": (d, 3 * n), "w_h": (n, 3 * n), "b_i": (3 * n,), "b_h": (3 * n,)}
    for name, shape in expected.items():
        t = getattr(p, name)
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (d={d}, n={n}); got {_shape_of(t)}")
        if t.dtype != p.w_i.dtype:
            raise ValueError(f"all parameters must share one dtype; {name} is {t.dtype}")
    return d, n


def _check_state(state: object, b: int, n: int, dtype: torch.dtype) -> None:
    if not isinstance(state, GRUState):
        raise ValueError(f"state must be a GRUState(h); got {type(state).__name__}")
    if not isinstance(state.h, Tensor) or tuple(state.h.shape) != (b, n):
        raise ValueError(f"state.h must have shape ({b}, {n}); got {_shape_of(state.h)}")
    if state.h.dtype != dtype:
        raise ValueError(f"state.h has dtype {state.h.dtype} but the parameters are {dtype}")
