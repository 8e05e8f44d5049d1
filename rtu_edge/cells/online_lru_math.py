"""The online LRU (Zucchet et al., NeurIPS 2023) and its exact RTRL, as plain functions of tensors.

The baseline of rtu-rtrl.md section 6: a diagonal complex linear recurrence with a free input
normalisation gamma and a complex n x n output projection, trained by real-time recurrent
learning. n units, input size d, batch B. Same conventions as rtu_math.

    r = exp(-exp(nu_log)),  theta = exp(theta_log),  lam = r * exp(i*theta)
    gamma = exp(gamma_log)                          # free, one per unit (RTU: sqrt(1 - r^2))
    B = B_re + i*B_im   (d, n),   C = C_re + i*C_im   (n, n), both (in, out) layout
    h_t = lam * h_{t-1} + gamma * (x_t @ B)          # complex, per unit
    y_t = Re(h_t @ C) = h_re @ C_re - h_im @ C_im    # (B, n) real

The paper writes y = Re(C' h) with C' (n_out x n_in); here C = C'^T so that the output is
`x @ W` like every other weight. Output width n, no bias, no skip term (see lru_math for
the T-BPTT LRU, which has an optional one).

Real form (what this file computes), g = r cos(theta) = Re(lam), phi = r sin(theta) = Im(lam):

    u1 = x @ B_re,  u2 = x @ B_im
    h_re' = g*h_re - phi*h_im + gamma*u1
    h_im' = g*h_im + phi*h_re + gamma*u2

RTRL traces (complex, elementwise per unit k; unit k depends only on its own parameters,
and on column k of B and row k of C):

    L_t = lam * L_{t-1} + h_{t-1}                  # L = dh/dlam (h is holomorphic in lam)
    G_t = lam * G_{t-1} + gamma * (x_t @ B)        # G = dh/dgamma_log
    E_t = lam * E_{t-1} + gamma * x_t[:, None]     # E[i,k] = dh_k/dB_re[i,k]; dh/dB_im = i*E

    dh/dnu_log    = (d lam/d nu_log)    * L = -nu * lam * L
    dh/dtheta_log = (d lam/d theta_log) * L = i * theta * lam * L

so nu_log and theta_log share the one complex trace L (a "lean" form: the RTU cannot do
this because its gamma depends on nu_log). C needs no trace: y depends on C only through
the current h_t. Gradients, with D = dL/dh_re + i*dL/dh_im the complex cotangent of h_t:

    dL/dh_re = dL/dy @ C_re^T,  dL/dh_im = -dL/dy @ C_im^T
    dL/dp = Re(conj(D) * dh/dp)  for every real parameter p of the recurrence
    dL/dC_re = h_re^T @ dL/dy,  dL/dC_im = -h_im^T @ dL/dy

Authors' defect (rtu-rtrl.md section 6): their B trace adds gamma_log * x_t where the
recurrence uses gamma = exp(gamma_log) * B x_t; that makes their B gradient the exact one
times gamma_log / gamma per unit (negative at init, since gamma < 1), i.e. wrong sign and
scale. Here E_t adds gamma * x_t, the exact chain rule; the tests check it against autograd
and show the authors' form fails.

Export rules as in rtu_math: real arithmetic only, `x @ W` with (in, out) weights,
broadcasts with units on the last axis, no data-dependent control flow, no in-place ops,
episode resets by masks, every tensor in the inputs' dtype (float32 device, float64 tests).
Products with a transposed weight are written as broadcast-and-reduce, so no transposed
weight appears in the graph.

Architecture ablation (rtu-rtrl.md section 6: the paper runs the same five placements of
the non-linearity f for the RTU and for the online LRU). Three options, accepted as keywords
by every public function that takes options (init_params, initial_traces, step,
step_forward, grads, input_grad, sequence; output_size and param_count take `projection`),
so one `**options` dict can be passed to all of them:

- `projection` (default True): y = Re(h @ C) as above. False: no C; y = concat[h_re, h_im]
  (B, 2n), ordered like the RTU's output. init_params(..., projection=False) returns
  `OnlineLRUNoProjParams` (no C_re, C_im; the other draws are unchanged) and the functions
  branch on that type (static), checking `projection` against it when given.
- `activation` f in {identity (default), relu, tanh}: with nonlinear=False it is applied to
  the output, y = f(Re(h @ C)) or f(concat[h_re, h_im]) (f never feeds back, so the traces
  are unchanged; its f' enters only the cotangent of h).
- `nonlinear` (default False): True puts f inside the recurrence, per component,
  h_re' = f(a_re), h_im' = f(a_im) with a the right-hand sides above; the output is then
  Re(h @ C) or concat[h_re, h_im] without a further f. f' differs between the parts, so the
  lean complex traces no longer apply: `OnlineLRUNonlinearTraces` keeps, for every
  parameter p, P_1 = dh_re/dp, P_2 = dh_im/dp with (s1, s2) the immediate derivative of
  (a_re, a_im):

      P_1,t = f'(a_re,t) * (g*P_1,t-1 - phi*P_2,t-1 + s1)
      P_2,t = f'(a_im,t) * (g*P_2,t-1 + phi*P_1,t-1 + s2)

      nu_log:     (s1, s2) = -nu * (Re(lam h), Im(lam h))
      theta_log:  (s1, s2) = theta * (-Im(lam h), Re(lam h))
      gamma_log:  (s1, s2) = gamma * (u1, u2)
      B_re[i, k]: (s1, s2) = (gamma x_i, 0);   B_im[i, k]: (s1, s2) = (0, gamma x_i)

  with h = h_{t-1}; dL/dp = dL/dh_re * P_1 + dL/dh_im * P_2, and the output's cotangent
  dL/dh is taken w.r.t. the post-activation state.

    placement (paper)                      options
    linear recurrence                      projection=False, activation=identity
    linear recurrence + nonlinear output   projection=False, activation=relu (or tanh)
    nonlinear recurrence                   projection=False, nonlinear=True, activation=relu
    linear recurrence + nonlinear proj.    activation=relu (y = f(Re(h @ C)))
    linear recurrence + linear projection  the defaults (y = Re(h @ C): C is the projection)

(nonlinear=True with the projection kept, y = Re(f-recurrence h @ C), is allowed too; it is
not one of the paper's five.) `init_params` also takes r_min, r_max, max_phase for the ring
init (defaults 0, 1, 2*pi as in rtu_math).
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
    _scale,
    _shape_of,
)
from rtu_edge.cells.rtu_math import ACTIVATIONS, _act, _act_grad_from_post, _act_grad_from_pre

# Run-time options (passed to every function); init-only ones are init_params keywords.
OPTIONS: dict[str, object] = {"activation": "identity", "nonlinear": False, "projection": True}


class OnlineLRUParams(NamedTuple):
    """Learnable parameters of one online LRU layer (n units, input size d)."""

    nu_log: Tensor  # (n,)  r = exp(-exp(nu_log))
    theta_log: Tensor  # (n,)  theta = exp(theta_log)
    gamma_log: Tensor  # (n,)  gamma = exp(gamma_log), input normalisation
    B_re: Tensor  # (d, n) input weights, real part, (in, out) layout
    B_im: Tensor  # (d, n) input weights, imaginary part
    C_re: Tensor  # (n, n) output projection, real part, (in, out) layout
    C_im: Tensor  # (n, n) output projection, imaginary part


class OnlineLRUNoProjParams(NamedTuple):
    """projection=False: the recurrence's parameters only; y = concat[h_re, h_im]."""

    nu_log: Tensor  # (n,)
    theta_log: Tensor  # (n,)
    gamma_log: Tensor  # (n,)
    B_re: Tensor  # (d, n)
    B_im: Tensor  # (d, n)


AnyOnlineLRUParams = OnlineLRUParams | OnlineLRUNoProjParams


class OnlineLRUState(NamedTuple):
    """Recurrent state h = h_re + i*h_im (the linear recurrence, before the projection)."""

    h_re: Tensor  # (B, n)
    h_im: Tensor  # (B, n)


class OnlineLRUTraces(NamedTuple):
    """Complex RTRL traces, stored as real and imaginary parts.

    L = dh/dlam (serves nu_log and theta_log), G = dh/dgamma_log, E = dh/dB_re
    (dh/dB_im = i*E). Entry [b, i, k] of E is d h_k / d B_re[i, k] for batch element b.
    """

    lam_re: Tensor  # (B, n)
    lam_im: Tensor  # (B, n)
    gam_re: Tensor  # (B, n)
    gam_im: Tensor  # (B, n)
    e_re: Tensor  # (B, d, n)
    e_im: Tensor  # (B, d, n)


class OnlineLRUNonlinearTraces(NamedTuple):
    """nonlinear=True: per-component real traces, `<param>_<j>` = d h_j / d param (j = 1: re,
    2: im); six (B, n) and four (B, d, n) tensors."""

    nu_1: Tensor  # (B, n) dh_re/dnu_log
    nu_2: Tensor  # (B, n) dh_im/dnu_log
    th_1: Tensor  # (B, n) dh_re/dtheta_log
    th_2: Tensor  # (B, n)
    gam_1: Tensor  # (B, n) dh_re/dgamma_log
    gam_2: Tensor  # (B, n)
    B_re_1: Tensor  # (B, d, n) dh_re/dB_re
    B_re_2: Tensor  # (B, d, n) dh_im/dB_re
    B_im_1: Tensor  # (B, d, n) dh_re/dB_im
    B_im_2: Tensor  # (B, d, n) dh_im/dB_im


AnyOnlineLRUTraces = OnlineLRUTraces | OnlineLRUNonlinearTraces


class _Coeffs(NamedTuple):
    """Per-unit quantities derived from the parameters, each (n,)."""

    nu: Tensor  # exp(nu_log)
    theta: Tensor  # exp(theta_log)
    g: Tensor  # r cos(theta) = Re(lam)
    phi: Tensor  # r sin(theta) = Im(lam)
    gamma: Tensor  # exp(gamma_log)


# --------------------------------------------------------------------------------------
# Sizes and initialisation
# --------------------------------------------------------------------------------------


def output_size(hidden_size: int, *, projection: bool = True) -> int:
    """Width of y: n with the n x n projection C, 2n (concat[h_re, h_im]) without."""
    n = _check_positive_int(hidden_size, "hidden_size")
    return n if _check_flag(projection, "projection") else 2 * n


def param_count(input_size: int, hidden_size: int, *, projection: bool = True) -> int:
    """nu_log, theta_log, gamma_log (n each) + B_re, B_im (d*n each) + C_re, C_im (n*n each,
    only with the projection)."""
    d, n = _check_sizes(input_size, hidden_size)
    return 3 * n + 2 * d * n + (2 * n * n if _check_flag(projection, "projection") else 0)


def init_params(
    input_size: int,
    hidden_size: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    activation: str = "identity",
    nonlinear: bool = False,
    projection: bool = True,
    r_min: float = 0.0,
    r_max: float = 1.0,
    max_phase: float = 2 * math.pi,
) -> AnyOnlineLRUParams:
    """Ring init of lam, gamma = sqrt(1 - |lam|^2), B ~ N(0, 1/(2d)), C ~ N(0, 1/n).

    u1, u2 ~ U[0, 1]; r^2 = r_min^2 + u1 * (r_max^2 - r_min^2); nu_log = log(-0.5 log r^2);
    theta_log = log(max_phase * u2); gamma_log = 0.5 * log(1 - r^2). With the defaults
    r = sqrt(u1) and theta = 2*pi*u2, exactly rtu_math's init. B_re, B_im ~ N(0, 1/(2d))
    (so x @ B has unit variance for unit-variance x), C_re, C_im ~ N(0, 1/n) (the authors'
    choice). Draws are made in float64 (order u1, u2, B_re, B_im, C_re, C_im) and then cast,
    so a seed gives the same cell in float32 and float64. r^2 is kept in [1e-12, 1 - 1e-6]
    and u2 >= 1e-6 so nu_log, theta_log and gamma_log are finite and r < 1 in float32.

    projection=False skips C (an `OnlineLRUNoProjParams`; the other draws are the same).
    activation and nonlinear do not change the draws; they are checked and accepted so that
    one options dict fits every function.
    """
    d, n = _check_sizes(input_size, hidden_size)
    r_min, r_max, max_phase = _check_ring(r_min, r_max, max_phase)
    _check_options(None, activation, nonlinear, projection)
    f64 = torch.float64
    u1 = torch.rand(n, generator=generator, dtype=f64)
    u2 = torch.rand(n, generator=generator, dtype=f64).clamp_min(1e-6)
    r2 = (r_min**2 + u1 * (r_max**2 - r_min**2)).clamp(1e-12, 1.0 - 1e-6)
    nu_log = torch.log(-0.5 * torch.log(r2))
    theta_log = torch.log(max_phase * u2)
    gamma_log = 0.5 * torch.log(1.0 - r2)
    b_std = 1.0 / math.sqrt(2 * d)
    B_re = torch.randn(d, n, generator=generator, dtype=f64) * b_std
    B_im = torch.randn(d, n, generator=generator, dtype=f64) * b_std
    if not projection:
        p = (nu_log, theta_log, gamma_log, B_re, B_im)
        return OnlineLRUNoProjParams(*(t.to(dtype) for t in p))
    c_std = 1.0 / math.sqrt(n)
    C_re = torch.randn(n, n, generator=generator, dtype=f64) * c_std
    C_im = torch.randn(n, n, generator=generator, dtype=f64) * c_std
    p = (nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im)
    return OnlineLRUParams(*(t.to(dtype) for t in p))


def initial_state(
    hidden_size: int, batch_size: int, dtype: torch.dtype = torch.float32
) -> OnlineLRUState:
    """Zero state, h_re and h_im of shape (B, n)."""
    n = _check_positive_int(hidden_size, "hidden_size")
    b = _check_positive_int(batch_size, "batch_size")
    return OnlineLRUState(torch.zeros(b, n, dtype=dtype), torch.zeros(b, n, dtype=dtype))


def initial_traces(
    input_size: int,
    hidden_size: int,
    batch_size: int,
    dtype: torch.dtype = torch.float32,
    *,
    activation: str = "identity",
    nonlinear: bool = False,
    projection: bool | None = None,
) -> AnyOnlineLRUTraces:
    """Zero RTRL traces: `OnlineLRUTraces` (four (B, n) and two (B, d, n) tensors), or
    `OnlineLRUNonlinearTraces` for nonlinear=True (six (B, n) and four (B, d, n))."""
    d, n = _check_sizes(input_size, hidden_size)
    b = _check_positive_int(batch_size, "batch_size")
    _check_options(None, activation, nonlinear, projection)
    if nonlinear:
        small = [torch.zeros(b, n, dtype=dtype) for _ in range(6)]
        big = [torch.zeros(b, d, n, dtype=dtype) for _ in range(4)]
        return OnlineLRUNonlinearTraces(*small, *big)
    small = [torch.zeros(b, n, dtype=dtype) for _ in range(4)]
    big = [torch.zeros(b, d, n, dtype=dtype) for _ in range(2)]
    return OnlineLRUTraces(*small, *big)


# --------------------------------------------------------------------------------------
# Forward step with trace update
# --------------------------------------------------------------------------------------


def step(
    p: AnyOnlineLRUParams,
    x: Tensor,
    state: OnlineLRUState,
    traces: AnyOnlineLRUTraces,
    done: Tensor | None,
    *,
    activation: str = "identity",
    nonlinear: bool = False,
    projection: bool | None = None,
) -> tuple[Tensor, OnlineLRUState, AnyOnlineLRUTraces]:
    """One step that also carries the RTRL traces forward.

    x: (B, d). done: (B,) or None; done[b] = 1 means x[b] is the first input of a new
    episode, so the state and the traces of row b are multiplied by (1 - done) first.
    Returns y (B, n) (or (B, 2n) without the projection), the new state and the new
    traces; pass the returned state and traces to `grads` for this time step.
    """
    d, n = _check_params(p)
    _check_options(p, activation, nonlinear, projection)
    b = _check_batch_input(x, d, p.B_re.dtype, "x")
    _check_state(state, b, n, p.B_re.dtype)
    _check_traces(traces, b, d, n, p.B_re.dtype, nonlinear)
    if done is not None:
        keep = _keep_mask(done, b, x.dtype)
        state = OnlineLRUState(*(_mask(t, keep) for t in state))
        traces = type(traces)(*(_mask(t, keep) for t in traces))

    co = _coeffs(p)
    h_re, h_im = state
    g, phi, tr = co.g, co.phi, traces
    if not nonlinear:
        new_state, u1, u2 = _recur(p, co, x, h_re, h_im)
        # L_t = lam * L_{t-1} + h_{t-1}
        lam_re = g * tr.lam_re - phi * tr.lam_im + h_re
        lam_im = g * tr.lam_im + phi * tr.lam_re + h_im
        # G_t = lam * G_{t-1} + gamma * u_t   (gamma = exp(gamma_log): d(gamma u)/d gamma_log)
        gam_re = g * tr.gam_re - phi * tr.gam_im + co.gamma * u1
        gam_im = g * tr.gam_im + phi * tr.gam_re + co.gamma * u2
        # E_t = lam * E_{t-1} + gamma * x_t[:, None]   (real drive: gamma x_i is real)
        e_re = g * tr.e_re - phi * tr.e_im + x[:, :, None] * co.gamma
        e_im = g * tr.e_im + phi * tr.e_re
        y = _output(p, new_state, activation, nonlinear)
        return y, new_state, OnlineLRUTraces(lam_re, lam_im, gam_re, gam_im, e_re, e_im)

    # Non-linear recurrence: for every parameter, with (s1, s2) the immediate derivative of
    # (a_re, a_im) (table in the module docstring),
    #   P_1,t = f'(a_re,t) * (g*P_1,t-1 - phi*P_2,t-1 + s1)
    #   P_2,t = f'(a_im,t) * (g*P_2,t-1 + phi*P_1,t-1 + s2)
    pre, u1, u2 = _recur(p, co, x, h_re, h_im)
    lh1 = g * h_re - phi * h_im  # lam * h_{t-1}
    lh2 = g * h_im + phi * h_re
    new_state = OnlineLRUState(_act(activation, pre.h_re), _act(activation, pre.h_im))
    fp1 = _act_grad_from_pre(activation, pre.h_re)  # (B, n) or None for identity
    fp2 = _act_grad_from_pre(activation, pre.h_im)
    fp1_b = None if fp1 is None else fp1[:, None, :]  # (B, 1, n): broadcast over inputs
    fp2_b = None if fp2 is None else fp2[:, None, :]
    gx = x[:, :, None] * co.gamma  # (B, d, n): gamma_k * x_i
    # nu_log: s = -nu * lam h
    nu_1 = _scale(fp1, g * tr.nu_1 - phi * tr.nu_2 - co.nu * lh1)
    nu_2 = _scale(fp2, g * tr.nu_2 + phi * tr.nu_1 - co.nu * lh2)
    # theta_log: s = Re/Im of i * theta * lam h = (-theta * (lam h)_2, theta * (lam h)_1)
    th_1 = _scale(fp1, g * tr.th_1 - phi * tr.th_2 - co.theta * lh2)
    th_2 = _scale(fp2, g * tr.th_2 + phi * tr.th_1 + co.theta * lh1)
    # gamma_log: s = gamma * u
    gam_1 = _scale(fp1, g * tr.gam_1 - phi * tr.gam_2 + co.gamma * u1)
    gam_2 = _scale(fp2, g * tr.gam_2 + phi * tr.gam_1 + co.gamma * u2)
    # B_re: s = (gamma * x_i, 0);  B_im: s = (0, gamma * x_i)
    B_re_1 = _scale(fp1_b, g * tr.B_re_1 - phi * tr.B_re_2 + gx)
    B_re_2 = _scale(fp2_b, g * tr.B_re_2 + phi * tr.B_re_1)
    B_im_1 = _scale(fp1_b, g * tr.B_im_1 - phi * tr.B_im_2)
    B_im_2 = _scale(fp2_b, g * tr.B_im_2 + phi * tr.B_im_1 + gx)
    y = _output(p, new_state, activation, nonlinear)
    new_traces = OnlineLRUNonlinearTraces(
        nu_1, nu_2, th_1, th_2, gam_1, gam_2, B_re_1, B_re_2, B_im_1, B_im_2
    )
    return y, new_state, new_traces


def step_forward(
    p: AnyOnlineLRUParams,
    x: Tensor,
    state: OnlineLRUState,
    done: Tensor | None,
    *,
    activation: str = "identity",
    nonlinear: bool = False,
    projection: bool | None = None,
) -> tuple[Tensor, OnlineLRUState]:
    """`step` without traces: y and the new state."""
    d, n = _check_params(p)
    _check_options(p, activation, nonlinear, projection)
    b = _check_batch_input(x, d, p.B_re.dtype, "x")
    _check_state(state, b, n, p.B_re.dtype)
    if done is not None:
        keep = _keep_mask(done, b, x.dtype)
        state = OnlineLRUState(*(_mask(t, keep) for t in state))
    new_state = _advance(p, _coeffs(p), x, state, activation, nonlinear)
    return _output(p, new_state, activation, nonlinear), new_state


# --------------------------------------------------------------------------------------
# Gradients from traces
# --------------------------------------------------------------------------------------


def grads(
    p: AnyOnlineLRUParams,
    dL_dy: Tensor,
    state: OnlineLRUState,
    traces: AnyOnlineLRUTraces,
    *,
    activation: str = "identity",
    nonlinear: bool = False,
    projection: bool | None = None,
) -> dict[str, Tensor]:
    """Exact gradient of sum(dL_dy * y_t) w.r.t. the parameters, through all past steps.

    `state` and `traces` are those returned by `step` for this time step; dL_dy is (B, n)
    (or (B, 2n) without the projection). Returns a dict keyed by the fields of p, each
    shaped like its parameter and summed over the batch. Summing these over the steps of a
    sequence with fixed parameters equals full BPTT.
    """
    d, n = _check_params(p)
    _check_options(p, activation, nonlinear, projection)
    b = _check_batch_input(dL_dy, _width(p, n), p.B_re.dtype, "dL_dy")
    _check_state(state, b, n, p.B_re.dtype)
    _check_traces(traces, b, d, n, p.B_re.dtype, nonlinear)

    co = _coeffs(p)
    delta = _output_cotangent(p, state, dL_dy, activation, nonlinear)  # dL/d(Re(hC)) or dL/dh
    d1, d2 = _state_cotangent(p, delta)  # D = d1 + i*d2, (B, n): cotangent of h_t
    tr = traces
    d1_b, d2_b = d1[:, None, :], d2[:, None, :]  # (B, 1, n)
    if not nonlinear:
        # lam * L = m1 + i*m2
        m1 = co.g * tr.lam_re - co.phi * tr.lam_im
        m2 = co.g * tr.lam_im + co.phi * tr.lam_re
        # Re(conj(D) * (-nu * lam * L)) and Re(conj(D) * i * theta * lam * L)
        g_nu = -co.nu * (d1 * m1 + d2 * m2)
        g_th = co.theta * (d2 * m1 - d1 * m2)
        g_gam = d1 * tr.gam_re + d2 * tr.gam_im
        # dL/dB_re = Re(conj(D) E);  dL/dB_im = Re(conj(D) i E) = -Im(conj(D) E)
        g_bre = d1_b * tr.e_re + d2_b * tr.e_im
        g_bim = d2_b * tr.e_re - d1_b * tr.e_im
    else:
        # dL/dp = dL/dh_re * P_1 + dL/dh_im * P_2
        g_nu = d1 * tr.nu_1 + d2 * tr.nu_2
        g_th = d1 * tr.th_1 + d2 * tr.th_2
        g_gam = d1 * tr.gam_1 + d2 * tr.gam_2
        g_bre = d1_b * tr.B_re_1 + d2_b * tr.B_re_2
        g_bim = d1_b * tr.B_im_1 + d2_b * tr.B_im_2
    out = {
        "nu_log": g_nu.sum(0),
        "theta_log": g_th.sum(0),
        "gamma_log": g_gam.sum(0),
        "B_re": g_bre.sum(0),
        "B_im": g_bim.sum(0),
    }
    if isinstance(p, OnlineLRUParams):
        # y = f(h_re @ C_re - h_im @ C_im): outer products of the current state with delta
        out["C_re"] = (state.h_re[:, :, None] * delta[:, None, :]).sum(0)
        out["C_im"] = (-(state.h_im[:, :, None] * delta[:, None, :])).sum(0)
    return out


def input_grad(
    p: AnyOnlineLRUParams,
    dL_dy: Tensor,
    state: OnlineLRUState,
    traces: AnyOnlineLRUTraces,
    *,
    activation: str = "identity",
    nonlinear: bool = False,
    projection: bool | None = None,
) -> Tensor:
    """One-step gradient of sum(dL_dy * y_t) w.r.t. x_t, (B, d): no temporal credit.

    dL/dx_t[i] = sum_k Re(conj(D_k) * gamma_k * (B_re[i,k] + i*B_im[i,k])) with D the
    cotangent of the pre-activation a_t: that of h_t, times f'(a_t) under nonlinear=True
    (recovered from the post-activation state: relu -> (h > 0), tanh -> 1 - h^2). The traces
    do not enter; they are checked for shape only.
    """
    d, n = _check_params(p)
    _check_options(p, activation, nonlinear, projection)
    b = _check_batch_input(dL_dy, _width(p, n), p.B_re.dtype, "dL_dy")
    _check_state(state, b, n, p.B_re.dtype)
    _check_traces(traces, b, d, n, p.B_re.dtype, nonlinear)
    gamma = _coeffs(p).gamma
    delta = _output_cotangent(p, state, dL_dy, activation, nonlinear)
    d1, d2 = _state_cotangent(p, delta)
    if nonlinear:
        d1 = _scale(_act_grad_from_post(activation, state.h_re), d1)
        d2 = _scale(_act_grad_from_post(activation, state.h_im), d2)
    gd1 = (gamma * d1)[:, None, :]  # (B, 1, n)
    gd2 = (gamma * d2)[:, None, :]
    return (gd1 * p.B_re + gd2 * p.B_im).sum(-1)


# --------------------------------------------------------------------------------------
# Unrolled forward (the BPTT oracle)
# --------------------------------------------------------------------------------------


def sequence(
    p: AnyOnlineLRUParams,
    xs: Tensor,
    state: OnlineLRUState,
    dones: Tensor | None = None,
    *,
    activation: str = "identity",
    nonlinear: bool = False,
    projection: bool | None = None,
) -> tuple[Tensor, OnlineLRUState]:
    """Run the cell over xs (T, B, d) with plain autograd; returns ys (T, B, width), final state.

    Same semantics as repeated `step` calls (dones (T, B) resets the state before step t).
    """
    d, n = _check_params(p)
    _check_options(p, activation, nonlinear, projection)
    t_len, b = _check_sequence(xs, dones, d, p.B_re.dtype)
    _check_state(state, b, n, p.B_re.dtype)
    co = _coeffs(p)
    ys = []
    for t in range(t_len):
        if dones is not None:
            keep = 1 - dones[t].to(xs.dtype)
            state = OnlineLRUState(*(_mask(s, keep) for s in state))
        state = _advance(p, co, xs[t], state, activation, nonlinear)
        ys.append(_output(p, state, activation, nonlinear))
    return torch.stack(ys), state


# --------------------------------------------------------------------------------------
# Helpers (lru_math reuses the math ones)
# --------------------------------------------------------------------------------------


def _coeffs(p: AnyOnlineLRUParams) -> _Coeffs:
    nu = torch.exp(p.nu_log)
    r = torch.exp(-nu)
    theta = torch.exp(p.theta_log)
    return _Coeffs(
        nu=nu,
        theta=theta,
        g=r * torch.cos(theta),
        phi=r * torch.sin(theta),
        gamma=torch.exp(p.gamma_log),
    )


def _recur(
    p: AnyOnlineLRUParams, co: _Coeffs, x: Tensor, h_re: Tensor, h_im: Tensor
) -> tuple[OnlineLRUState, Tensor, Tensor]:
    """a_t = lam * h_{t-1} + gamma * (x @ B); returns a_t and the raw drive u = x @ B."""
    u1 = x @ p.B_re
    u2 = x @ p.B_im
    new_re = co.g * h_re - co.phi * h_im + co.gamma * u1
    new_im = co.g * h_im + co.phi * h_re + co.gamma * u2
    return OnlineLRUState(new_re, new_im), u1, u2


def _advance(
    p: AnyOnlineLRUParams,
    co: _Coeffs,
    x: Tensor,
    state: OnlineLRUState,
    activation: str,
    nonlinear: bool,
) -> OnlineLRUState:
    """h_t: a_t (linear recurrence) or f(a_t) per component (nonlinear=True)."""
    a, _, _ = _recur(p, co, x, state.h_re, state.h_im)
    if not nonlinear:
        return a
    return OnlineLRUState(_act(activation, a.h_re), _act(activation, a.h_im))


def _project(p: OnlineLRUParams, state: OnlineLRUState) -> Tensor:
    """y = Re(h @ C) = h_re @ C_re - h_im @ C_im, (B, n)."""
    return state.h_re @ p.C_re - state.h_im @ p.C_im


def _readout(p: AnyOnlineLRUParams, state: OnlineLRUState) -> Tensor:
    """The output before any f: Re(h @ C) (B, n), or concat[h_re, h_im] (B, 2n) without C."""
    if isinstance(p, OnlineLRUParams):
        return _project(p, state)
    return torch.cat([state.h_re, state.h_im], dim=-1)


def _output(
    p: AnyOnlineLRUParams, state: OnlineLRUState, activation: str, nonlinear: bool
) -> Tensor:
    """y_t: the readout, then f unless f is already inside the recurrence."""
    y = _readout(p, state)
    return y if nonlinear else _act(activation, y)


def _output_cotangent(
    p: AnyOnlineLRUParams, state: OnlineLRUState, dL_dy: Tensor, activation: str, nonlinear: bool
) -> Tensor:
    """dL/d(readout): dL_dy times f'(readout) when f is on the output (recomputed from h)."""
    if nonlinear or activation == "identity":
        return dL_dy
    return _scale(_act_grad_from_pre(activation, _readout(p, state)), dL_dy)


def _state_cotangent(p: AnyOnlineLRUParams, delta: Tensor) -> tuple[Tensor, Tensor]:
    """(dL/dh_re, dL/dh_im) from the readout's cotangent delta."""
    if isinstance(p, OnlineLRUParams):
        return _cotangent(p, delta)
    n = p.nu_log.shape[0]
    return delta[:, :n], delta[:, n:]


def _cotangent(p: OnlineLRUParams, dL_dy: Tensor) -> tuple[Tensor, Tensor]:
    """(dL/dh_re, dL/dh_im) = (dL/dy @ C_re^T, -dL/dy @ C_im^T), as broadcast-and-reduce."""
    g = dL_dy[:, None, :]  # (B, 1, n_out)
    return (g * p.C_re).sum(-1), -((g * p.C_im).sum(-1))


def _width(p: AnyOnlineLRUParams, n: int) -> int:
    return n if isinstance(p, OnlineLRUParams) else 2 * n


def _check_ring(r_min: object, r_max: object, max_phase: object) -> tuple[float, float, float]:
    vals = (r_min, r_max, max_phase)
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in vals):
        raise ValueError(f"r_min, r_max, max_phase must be numbers; got {vals!r}")
    if not (0.0 <= r_min < r_max <= 1.0):
        raise ValueError(f"need 0 <= r_min < r_max <= 1; got r_min={r_min}, r_max={r_max}")
    if not max_phase > 0:
        raise ValueError(f"max_phase must be > 0; got {max_phase}")
    return float(r_min), float(r_max), float(max_phase)


def _check_flag(v: object, name: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be true or false; got {v!r}")
    return v


def _check_options(p: object, activation: object, nonlinear: object, projection: object) -> None:
    """Validate the run-time options, and `projection` against the params type when given."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")
    _check_flag(nonlinear, "nonlinear")
    if projection is None:
        return
    _check_flag(projection, "projection")
    if p is not None and projection != isinstance(p, OnlineLRUParams):
        raise ValueError(
            f"projection={projection} but p is a {type(p).__name__} "
            "(init_params(..., projection=...) chooses the type)"
        )


def _check_params(p: object) -> tuple[int, int]:
    if not isinstance(p, AnyOnlineLRUParams):
        raise ValueError(
            f"p must be an OnlineLRUParams or OnlineLRUNoProjParams; got {type(p).__name__}"
        )
    if not isinstance(p.B_re, Tensor) or p.B_re.dim() != 2:
        raise ValueError(f"B_re must have shape (d, n); got {_shape_of(p.B_re)}")
    d, n = p.B_re.shape
    expected = {
        "nu_log": (n,),
        "theta_log": (n,),
        "gamma_log": (n,),
        "B_re": (d, n),
        "B_im": (d, n),
        "C_re": (n, n),
        "C_im": (n, n),
    }
    for name in set(expected) - set(type(p)._fields):
        del expected[name]
    for name, shape in expected.items():
        t = getattr(p, name)
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (d={d}, n={n}); got {_shape_of(t)}")
        if t.dtype != p.B_re.dtype:
            raise ValueError(f"all parameters must share one dtype; {name} is {t.dtype}")
    return d, n


def _check_sequence(xs: object, dones: object, d: int, dtype: torch.dtype) -> tuple[int, int]:
    if not isinstance(xs, Tensor) or xs.dim() != 3 or xs.shape[2] != d:
        raise ValueError(f"xs must be a tensor of shape (T, B, {d}); got {_shape_of(xs)}")
    if xs.dtype != dtype:
        raise ValueError(f"xs has dtype {xs.dtype} but the parameters are {dtype}")
    t_len, b = xs.shape[0], xs.shape[1]
    if dones is not None and (not isinstance(dones, Tensor) or tuple(dones.shape) != (t_len, b)):
        raise ValueError(f"dones must be a tensor of shape ({t_len}, {b}); got {_shape_of(dones)}")
    return t_len, b


def _check_state(state: object, b: int, n: int, dtype: torch.dtype) -> None:
    if not isinstance(state, OnlineLRUState):
        raise ValueError(f"state must be an OnlineLRUState(h_re, h_im); got {type(state).__name__}")
    for name, t in zip(OnlineLRUState._fields, state, strict=True):
        if not isinstance(t, Tensor) or tuple(t.shape) != (b, n):
            raise ValueError(f"state.{name} must have shape ({b}, {n}); got {_shape_of(t)}")
        if t.dtype != dtype:
            raise ValueError(f"state.{name} has dtype {t.dtype} but the parameters are {dtype}")


def _check_traces(
    traces: object, b: int, d: int, n: int, dtype: torch.dtype, nonlinear: bool = False
) -> None:
    kind = OnlineLRUNonlinearTraces if nonlinear else OnlineLRUTraces
    if not isinstance(traces, kind):
        raise ValueError(
            f"traces must be {kind.__name__} for nonlinear={nonlinear} (see initial_traces); "
            f"got {type(traces).__name__}"
        )
    for name, t in zip(kind._fields, traces, strict=True):
        shape = (b, d, n) if name.startswith(("e_", "B_")) else (b, n)
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"traces.{name} must have shape {shape}; got {_shape_of(t)}")
        if t.dtype != dtype:
            raise ValueError(f"traces.{name} has dtype {t.dtype} but the parameters are {dtype}")
