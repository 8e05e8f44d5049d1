"""The LRU (Orvieto et al., 2023) for truncated BPTT, as plain functions of tensors.

The same recurrence, parameters and init as the online LRU (online_lru_math, whose helpers
this file reuses), trained by truncated BPTT through `sequence` instead of RTRL:

    lam = exp(-exp(nu_log) + i*exp(theta_log)),  gamma = exp(gamma_log)
    h_t = lam * h_{t-1} + gamma * (x_t @ B)                 # complex, per unit
    y_t = Re(h_t @ C) [+ x_t @ D]                           # (B, n)

with B = B_re + i*B_im (d, n), C = C_re + i*C_im (n, n) in (in, out) layout (C is the
transpose of the paper's C), so Re(h @ C) = h_re @ C_re - h_im @ C_im.

Skip term: Orvieto's LRU adds D * x with a diagonal D (input and output widths equal there).
Here the output width n need not equal d, so the optional skip is a dense real
D (d, n), init N(0, 1/d), added as x_t @ D. It is off by default (the paper's online LRU has
none); `init_params(..., skip=True)` returns `LRUSkipParams` (with D) instead of
`LRUParams`, and the functions branch on that type (static, not data-dependent).

Export rules as in rtu_math (real arithmetic, `x @ W`, units on the last axis, no
data-dependent control flow, no in-place ops, resets by masks, dtype of the inputs).
Options: `skip` (default False), accepted as a keyword by init_params, step_forward and
sequence (which check it against the params type); init-only r_min, r_max, max_phase as in
online_lru_math.init_params.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from rtu_edge.cells import online_lru_math as _olru
from rtu_edge.cells.online_lru_math import OnlineLRUParams

OPTIONS: dict[str, object] = {"skip": False}

LRUState = _olru.OnlineLRUState  # (h_re, h_im), each (B, n)


class LRUParams(NamedTuple):
    """Learnable parameters, no skip term (the fields of OnlineLRUParams)."""

    nu_log: Tensor  # (n,)
    theta_log: Tensor  # (n,)
    gamma_log: Tensor  # (n,)
    B_re: Tensor  # (d, n)
    B_im: Tensor  # (d, n)
    C_re: Tensor  # (n, n)
    C_im: Tensor  # (n, n)


class LRUSkipParams(NamedTuple):
    """Learnable parameters with the dense skip term y += x @ D."""

    nu_log: Tensor  # (n,)
    theta_log: Tensor  # (n,)
    gamma_log: Tensor  # (n,)
    B_re: Tensor  # (d, n)
    B_im: Tensor  # (d, n)
    C_re: Tensor  # (n, n)
    C_im: Tensor  # (n, n)
    D: Tensor  # (d, n)


def output_size(hidden_size: int) -> int:
    """y has n entries (C is n x n)."""
    return _olru.output_size(hidden_size)


def param_count(input_size: int, hidden_size: int, *, skip: bool = False) -> int:
    """3n + 2dn + 2n^2, plus d*n for D when skip=True."""
    _check_skip(skip)
    base = _olru.param_count(input_size, hidden_size)  # validates the sizes
    return base + (input_size * hidden_size if skip else 0)


def init_params(
    input_size: int,
    hidden_size: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    skip: bool = False,
    r_min: float = 0.0,
    r_max: float = 1.0,
    max_phase: float = 2 * math.pi,
) -> LRUParams | LRUSkipParams:
    """online_lru_math.init_params (ring init, gamma = sqrt(1 - r^2), B ~ N(0, 1/(2d)),
    C ~ N(0, 1/n)), then D ~ N(0, 1/d) drawn last when skip=True, so a seed gives the same
    recurrence with and without the skip term, and the same as the online LRU."""
    _check_skip(skip)
    base = _olru.init_params(
        input_size,
        hidden_size,
        generator=generator,
        dtype=dtype,
        r_min=r_min,
        r_max=r_max,
        max_phase=max_phase,
    )
    if not skip:
        return LRUParams(*base)
    d, n = input_size, hidden_size
    D = torch.randn(d, n, generator=generator, dtype=torch.float64) / math.sqrt(d)
    return LRUSkipParams(*base, D.to(dtype))


def initial_state(
    hidden_size: int, batch_size: int, dtype: torch.dtype = torch.float32
) -> LRUState:
    """Zero state, h_re and h_im of shape (B, n)."""
    return _olru.initial_state(hidden_size, batch_size, dtype=dtype)


def step_forward(
    p: LRUParams | LRUSkipParams,
    x: Tensor,
    state: LRUState,
    done: Tensor | None,
    *,
    skip: bool | None = None,
) -> tuple[Tensor, LRUState]:
    """One step: x (B, d), done (B,) or None (resets row b first) -> y (B, n), new state."""
    base = _check_params(p, skip)
    y, new_state = _olru.step_forward(base, x, state, done)
    if isinstance(p, LRUSkipParams):
        y = y + x @ p.D
    return y, new_state


def sequence(
    p: LRUParams | LRUSkipParams,
    xs: Tensor,
    state: LRUState,
    dones: Tensor | None = None,
    *,
    skip: bool | None = None,
) -> tuple[Tensor, LRUState]:
    """Run over xs (T, B, d) with plain autograd; returns ys (T, B, n), final state.

    dones (T, B) resets the state before step t, as in `step_forward`.
    """
    base = _check_params(p, skip)
    ys, final = _olru.sequence(base, xs, state, dones)
    if isinstance(p, LRUSkipParams):
        ys = ys + xs @ p.D
    return ys, final


def _check_skip(skip: object) -> None:
    if not isinstance(skip, bool):
        raise ValueError(f"skip must be a bool; got {skip!r}")


def _check_params(p: object, skip: object) -> OnlineLRUParams:
    """Validate p (and skip against its type); return the recurrence's parameters."""
    if not isinstance(p, LRUParams | LRUSkipParams):
        raise ValueError(f"p must be an LRUParams or LRUSkipParams; got {type(p).__name__}")
    if skip is not None:
        _check_skip(skip)
        if skip != isinstance(p, LRUSkipParams):
            raise ValueError(
                f"skip={skip} but p is a {type(p).__name__} (init_params(..., skip=...) "
                "chooses the type)"
            )
    base = OnlineLRUParams(*p[:7])
    d, n = _olru._check_params(base)
    if isinstance(p, LRUSkipParams):
        if not isinstance(p.D, Tensor) or tuple(p.D.shape) != (d, n):
            raise ValueError(f"D must have shape ({d}, {n}); got {_olru._shape_of(p.D)}")
        if p.D.dtype != p.B_re.dtype:
            raise ValueError(f"all parameters must share one dtype; D is {p.D.dtype}")
    return base
