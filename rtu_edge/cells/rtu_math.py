"""Recurrent Trace Units (RTUs) and their exact RTRL, as plain functions of tensors.

This is the readable reference of the cell and of its real-time recurrent learning (RTRL)
traces. The derivations are in the design note rtu-rtrl.md (sections 1-4); the equations in
the comments below use its notation. n units, input size d, batch B.

    r = exp(-exp(nu_log)),  theta = exp(theta_log),  lam = r * exp(i*theta)
    g = r cos(theta),  phi = r sin(theta),  gamma = sqrt(1 - r^2)
    a_t = lam * h_{t-1} + gamma * (x_t @ w1 + i * x_t @ w2)          # complex, per unit

Real 2x2 form (what this file computes; no complex dtypes anywhere):

    a1 = g*c1 - phi*c2 + gamma*(x@w1)
    a2 = g*c2 + phi*c1 + gamma*(x@w2)

- Linear RTU: the state (c1, c2) is the pre-activation a; y = f(concat[c1, c2]).
- Non-linear RTU: c1 = f(a1), c2 = f(a2) feed back; y = concat[c1, c2].

Parameterisations of (r, theta) (rtu-rtrl.md section 1, the paper's appendix), chosen by the
type of the params tuple (`init_params(..., param=...)`; the functions branch on the type,
a static choice). Always r = exp(-nu) and lam = exp(-nu + i*theta):

    param            learned      nu            theta            type
    "exp-exp"        nu_log,      exp(nu_log)   exp(theta_log)   RTUParams (the default)
                     theta_log
    "exp-direct"     nu_log,      exp(nu_log)   theta            RTUDirectThetaParams
                     theta
    "direct-direct"  nu, theta    nu            theta            RTUDirectParams

The first word says how nu is obtained, the second how theta is. The RTRL traces only change
through the chain-rule factors dnu = d nu / d(nu parameter) (nu, or 1 when nu is learned
directly) and dth = d theta / d(theta parameter) (theta, or 1):

    d lam / d p_nu    = -dnu * lam
    d lam / d p_theta = i * dth * lam
    d gamma / d p_nu  = dnu * r^2 / gamma

The init gives the same r and theta for a seed in all three (ring init, same draws).

Dense projection (the architecture ablation, `init_projection` / `project` /
`project_grads`): the linear RTU's output may go through a learned dense layer,
z = f(concat[c1, c2] @ proj_w + proj_b), with f then applied after the projection instead of
directly to h (rtu.py composes it; the recurrence and its traces are unchanged). The
projection's own gradient is immediate: z_t depends on proj_w, proj_b only through step t.

Export rules (this code is exported to ONNX opset 18 inside the on-device learning step):
real arithmetic only, elementwise ops and `x @ W` with weights in (in, out) layout,
broadcasts with units on the last axis, no data-dependent control flow (Python `if`s below
branch only on static flags: `nonlinear`, `activation`, `done is None`, the params type),
no in-place ops, episode resets by masks. Every tensor created here takes the dtype of the
inputs, so the same code runs in float32 (device) and float64 (tests).

Numerical hazard: gamma = sqrt(1 - r^2) goes to 0 as r -> 1 (nu = exp(nu_log) -> 0), and
d gamma / d nu_log = nu * r^2 / gamma divides by it. Analytically that ratio tends to
sqrt(nu / 2) -> 0, but 1 - r^2 loses relative precision as r -> 1, and once r rounds to
exactly 1 (nu_log below about -17.4 in float32, -37.6 in float64) gamma is 0 and the
nu_log trace becomes inf/NaN. `init_params` keeps r well below that; a learner that drives
nu_log that far down needs to clip it. With param="direct-direct" nothing keeps r < 1: nu
itself is learned, r = exp(-nu) < 1 only while nu > 0, and nu <= 0 makes gamma 0 or NaN
(the learners skip non-finite updates but do not clip nu).
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
    _check_sizes,
    _keep_mask,
    _mask,
    _scale,
    _shape_of,
)

ACTIVATIONS = ("relu", "tanh", "identity")


class RTUParams(NamedTuple):
    """Learnable parameters of one RTU layer (n units, input size d); param="exp-exp"."""

    nu_log: Tensor  # (n,)  r = exp(-exp(nu_log))
    theta_log: Tensor  # (n,)  theta = exp(theta_log)
    w1: Tensor  # (d, n) input weights of the real part, (in, out) layout
    w2: Tensor  # (d, n) input weights of the imaginary part


class RTUDirectThetaParams(NamedTuple):
    """param="exp-direct": r = exp(-exp(nu_log)), theta learned directly."""

    nu_log: Tensor  # (n,)  r = exp(-exp(nu_log))
    theta: Tensor  # (n,)
    w1: Tensor  # (d, n)
    w2: Tensor  # (d, n)


class RTUDirectParams(NamedTuple):
    """param="direct-direct": r = exp(-nu), theta learned directly (nu must stay > 0)."""

    nu: Tensor  # (n,)  r = exp(-nu)
    theta: Tensor  # (n,)
    w1: Tensor  # (d, n)
    w2: Tensor  # (d, n)


AnyRTUParams = RTUParams | RTUDirectThetaParams | RTUDirectParams

# The `param` option: its value -> the params type (first two fields: the nu and theta params).
PARAMETERISATIONS: dict[str, type] = {
    "exp-exp": RTUParams,
    "exp-direct": RTUDirectThetaParams,
    "direct-direct": RTUDirectParams,
}
DEFAULT_PARAM = "exp-exp"


class RTUProjection(NamedTuple):
    """The optional dense projection of the linear RTU's output: z = f(y @ proj_w + proj_b)."""

    proj_w: Tensor  # (2n, m), (in, out) layout; m = 2n by default
    proj_b: Tensor  # (m,)


class RTUState(NamedTuple):
    """Recurrent state h = c1 + i*c2: pre-activation (linear RTU) or post-activation."""

    c1: Tensor  # (B, n) real parts
    c2: Tensor  # (B, n) imaginary parts


class LinearTraces(NamedTuple):
    """Lean complex RTRL traces of the linear RTU, stored as real and imaginary parts.

    E = e_re + i*e_im = dh/dw1 (and dh/dw2 = i*E, so w2 needs no trace of its own);
    Tnu = dh/dnu_log, Tth = dh/dtheta_log (or dh/dnu, dh/dtheta: the nu and theta parameters
    of the parameterisation in use). Unit k depends only on its own parameters, so entry
    [b, i, k] is d h_k / d w1[i, k] for batch element b.
    """

    e_re: Tensor  # (B, d, n)
    e_im: Tensor  # (B, d, n)
    nu_re: Tensor  # (B, n)
    nu_im: Tensor  # (B, n)
    th_re: Tensor  # (B, n)
    th_im: Tensor  # (B, n)


class NonlinearTraces(NamedTuple):
    """Per-component real RTRL traces of the non-linear RTU: `<param>_<j>` = d c_j / d param.

    f' differs between the real and imaginary parts, so the lean complex form does not
    apply: four real (d, n) traces and four real (n,) traces per batch element. nu_* and
    th_* are w.r.t. the nu and theta parameters of the parameterisation in use.
    """

    w1_1: Tensor  # (B, d, n) dc1/dw1
    w1_2: Tensor  # (B, d, n) dc2/dw1
    w2_1: Tensor  # (B, d, n) dc1/dw2
    w2_2: Tensor  # (B, d, n) dc2/dw2
    nu_1: Tensor  # (B, n) dc1/dnu_log
    nu_2: Tensor  # (B, n) dc2/dnu_log
    th_1: Tensor  # (B, n) dc1/dtheta_log
    th_2: Tensor  # (B, n) dc2/dtheta_log


Traces = LinearTraces | NonlinearTraces  # either kind, chosen by `nonlinear`


class _Coeffs(NamedTuple):
    """Per-unit quantities derived from the parameters, each (n,)."""

    nu: Tensor  # exp(nu_log), or nu
    theta: Tensor  # exp(theta_log), or theta
    dnu: Tensor  # d nu / d p_nu: nu (p_nu = nu_log) or 1 (p_nu = nu)
    dth: Tensor  # d theta / d p_theta: theta (p_theta = theta_log) or 1 (p_theta = theta)
    g: Tensor  # r cos(theta) = Re(lam)
    phi: Tensor  # r sin(theta) = Im(lam)
    gamma: Tensor  # sqrt(1 - r^2), input normalisation
    dgamma: Tensor  # d gamma / d p_nu = dnu * r^2 / gamma


# --------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------


def init_params(
    input_size: int,
    hidden_size: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    param: str = DEFAULT_PARAM,
) -> AnyRTUParams:
    """Ring initialisation of the eigenvalues and LeCun-normal input weights.

    u1, u2 ~ U[0, 1]; r = sqrt(u1) (nu = -0.5 log u1, nu_log = log(nu)); theta = 2*pi*u2
    (theta_log = log(theta)); w1, w2 ~ N(0, 1/d). Draws are made in float64 and then cast,
    so a seed gives the same cell in float32 and float64, and (up to rounding) the same r
    and theta under every `param` (see PARAMETERISATIONS; it picks the returned type). u1
    is kept in [1e-12, 1 - 1e-6] and u2 in [1e-6, 1) so r stays strictly inside (0, 1)
    after rounding to float32 and theta_log stays finite.
    """
    d, n = _check_sizes(input_size, hidden_size)
    kind = _check_param(param)
    f64 = torch.float64
    u1 = torch.rand(n, generator=generator, dtype=f64).clamp(1e-12, 1.0 - 1e-6)
    u2 = torch.rand(n, generator=generator, dtype=f64).clamp_min(1e-6)
    nu = -0.5 * torch.log(u1)
    theta = 2.0 * math.pi * u2
    if kind is RTUDirectParams:
        nu_p, theta_p = nu, theta
    elif kind is RTUDirectThetaParams:
        nu_p, theta_p = torch.log(nu), theta
    else:
        nu_p, theta_p = torch.log(nu), torch.log(theta)  # nu_log, theta_log
    std = 1.0 / math.sqrt(d)
    w1 = torch.randn(d, n, generator=generator, dtype=f64) * std
    w2 = torch.randn(d, n, generator=generator, dtype=f64) * std
    return kind(nu_p.to(dtype), theta_p.to(dtype), w1.to(dtype), w2.to(dtype))


def init_projection(
    hidden_size: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    out_size: int | None = None,
) -> RTUProjection:
    """The dense projection of the 2n outputs: proj_w ~ N(0, 1/(2n)) (LeCun), proj_b = 0.

    out_size defaults to 2n (the cell's output width is unchanged). Drawn in float64 and cast;
    rtu.py draws it after `init_params`, so a seed gives the same recurrence with and without.
    """
    n = _check_positive_int(hidden_size, "hidden_size")
    m = 2 * n if out_size is None else _check_positive_int(out_size, "out_size")
    w = torch.randn(2 * n, m, generator=generator, dtype=torch.float64) / math.sqrt(2 * n)
    return RTUProjection(w.to(dtype), torch.zeros(m, dtype=dtype))


def initial_state(
    hidden_size: int, batch_size: int, dtype: torch.dtype = torch.float32
) -> RTUState:
    """Zero state, c1 and c2 of shape (B, n)."""
    n = _check_positive_int(hidden_size, "hidden_size")
    b = _check_positive_int(batch_size, "batch_size")
    return RTUState(torch.zeros(b, n, dtype=dtype), torch.zeros(b, n, dtype=dtype))


def initial_traces(
    input_size: int,
    hidden_size: int,
    batch_size: int,
    nonlinear: bool,
    dtype: torch.dtype = torch.float32,
) -> Traces:
    """Zero RTRL traces: `LinearTraces` (lean complex) or `NonlinearTraces` (per component)."""
    d, n = _check_sizes(input_size, hidden_size)
    b = _check_positive_int(batch_size, "batch_size")

    def big() -> Tensor:
        return torch.zeros(b, d, n, dtype=dtype)

    def small() -> Tensor:
        return torch.zeros(b, n, dtype=dtype)

    if nonlinear:
        return NonlinearTraces(big(), big(), big(), big(), small(), small(), small(), small())
    return LinearTraces(big(), big(), small(), small(), small(), small())


# --------------------------------------------------------------------------------------
# Forward step with trace update
# --------------------------------------------------------------------------------------


def step(
    p: AnyRTUParams,
    x: Tensor,
    state: RTUState,
    traces: Traces,
    done: Tensor | None,
    nonlinear: bool,
    activation: str,
) -> tuple[Tensor, RTUState, Traces]:
    """One RTU step that also carries the RTRL traces forward.

    x: (B, d). done: (B,) or None; done[b] = 1 means x[b] is the first input of a new
    episode, so row b starts from a zero state and zero traces.
    Returns y (B, 2n) ordered [real parts, imaginary parts], the new state and the new
    traces; pass the returned state and traces to `grads` for this time step. The type of
    `p` chooses the parameterisation; below p_nu, p_theta are its first two fields
    (nu_log, theta_log by default) and dnu, dth the chain-rule factors of the module docstring.
    """
    d, n = _check_params(p)
    b = _check_batch_input(x, d, p.w1.dtype, "x")
    _check_activation(activation)
    _check_state(state, b, n, p.w1.dtype)
    _check_traces(traces, b, d, n, nonlinear, p.w1.dtype)
    co = _reset_into_lam(_coeffs(p), done, b, x.dtype)
    c1, c2 = state
    lh1, lh2, u1, u2 = _recur_terms(p, co, x, c1, c2)
    a1 = lh1 + co.gamma * u1
    a2 = lh2 + co.gamma * u2
    gx = x[:, :, None] * co.gamma  # (B, d, n): gamma_k * x_i, the w1/w2 input term
    g, phi = co.g, co.phi  # (n,), or (B, n) with a reset
    # the same for the (B, d, n) traces
    g3, phi3 = (g, phi) if g.dim() == 1 else (g[:, None, :], phi[:, None, :])

    if not nonlinear:
        tr = traces
        # E_t = lam * E_{t-1} + gamma * x_t[:, None]
        e_re = g3 * tr.e_re - phi3 * tr.e_im + gx
        e_im = g3 * tr.e_im + phi3 * tr.e_re
        # Tnu_t = lam * Tnu_{t-1} + (-dnu * lam) * h_{t-1} + (dnu * r^2 / gamma) * u_t
        #   (p_nu = nu_log: dnu = nu, the paper's form; p_nu = nu: dnu = 1)
        nu_re = g * tr.nu_re - phi * tr.nu_im - co.dnu * lh1 + co.dgamma * u1
        nu_im = g * tr.nu_im + phi * tr.nu_re - co.dnu * lh2 + co.dgamma * u2
        # Tth_t = lam * Tth_{t-1} + (i * dth * lam) * h_{t-1};  i*(lh1 + i*lh2) = -lh2 + i*lh1
        #   (p_theta = theta_log: dth = theta; p_theta = theta: dth = 1)
        th_re = g * tr.th_re - phi * tr.th_im - co.dth * lh2
        th_im = g * tr.th_im + phi * tr.th_re + co.dth * lh1
        y = _act(activation, torch.cat([a1, a2], dim=-1))
        new_traces = LinearTraces(e_re, e_im, nu_re, nu_im, th_re, th_im)
        return y, RTUState(a1, a2), new_traces

    # Non-linear: for every parameter, with (s1, s2) the immediate derivative of (a1, a2),
    #   E1_t = f'(a1_t) * (g*E1_{t-1} - phi*E2_{t-1} + s1)
    #   E2_t = f'(a2_t) * (g*E2_{t-1} + phi*E1_{t-1} + s2)
    tr = traces
    c1_new = _act(activation, a1)
    c2_new = _act(activation, a2)
    fp1 = _act_grad_from_pre(activation, a1)  # (B, n) or None for identity
    fp2 = _act_grad_from_pre(activation, a2)
    fp1_b = None if fp1 is None else fp1[:, None, :]  # (B, 1, n): broadcast over inputs
    fp2_b = None if fp2 is None else fp2[:, None, :]
    # w1: s = (gamma * x_i, 0);  w2: s = (0, gamma * x_i)
    w1_1 = _scale(fp1_b, g3 * tr.w1_1 - phi3 * tr.w1_2 + gx)
    w1_2 = _scale(fp2_b, g3 * tr.w1_2 + phi3 * tr.w1_1)
    w2_1 = _scale(fp1_b, g3 * tr.w2_1 - phi3 * tr.w2_2)
    w2_2 = _scale(fp2_b, g3 * tr.w2_2 + phi3 * tr.w2_1 + gx)
    # p_nu: s = (-dnu * (lam c)_1 + dgamma * u1, -dnu * (lam c)_2 + dgamma * u2)
    nu_1 = _scale(fp1, g * tr.nu_1 - phi * tr.nu_2 - co.dnu * lh1 + co.dgamma * u1)
    nu_2 = _scale(fp2, g * tr.nu_2 + phi * tr.nu_1 - co.dnu * lh2 + co.dgamma * u2)
    # p_theta: s = Re/Im of i * dth * lam * c = (-dth * (lam c)_2, dth * (lam c)_1)
    th_1 = _scale(fp1, g * tr.th_1 - phi * tr.th_2 - co.dth * lh2)
    th_2 = _scale(fp2, g * tr.th_2 + phi * tr.th_1 + co.dth * lh1)
    y = torch.cat([c1_new, c2_new], dim=-1)
    new_traces = NonlinearTraces(w1_1, w1_2, w2_1, w2_2, nu_1, nu_2, th_1, th_2)
    return y, RTUState(c1_new, c2_new), new_traces


# The act step in stacked form: with h = [c1, c2] (B, 2n), the recurrence
#   lam * h_{t-1} = (g c1 - phi c2, g c2 + phi c1) = [g, g] * [c1, c2] + [-phi, phi] * [c2, c1]
# and the input drive gamma * (x W) = x @ [gamma * w1, gamma * w2] are one elementwise
# line and one matmul over 2n columns, instead of a pair of each per half.
ACT_CONSTANTS = ("lam_diag", "lam_cross", "w_in")  # what `step_forward` derives from p


def act_constants(p: AnyRTUParams) -> dict[str, Tensor]:
    """What `step_forward` computes from the parameters alone, in its stacked form:
    lam_diag = [g, g] and lam_cross = [-phi, phi] (2n,), w_in = [gamma * w1, gamma * w2]
    (d, 2n). Constant while the parameters are, so an act step can take them precomputed."""
    co = _coeffs(p)
    return {
        "lam_diag": torch.cat([co.g, co.g]),
        "lam_cross": torch.cat([-co.phi, co.phi]),
        "w_in": torch.cat([co.gamma * p.w1, co.gamma * p.w2], dim=1),
    }


def step_forward(
    p: AnyRTUParams,
    x: Tensor,
    state: RTUState,
    done: Tensor | None,
    nonlinear: bool,
    activation: str,
    consts: dict[str, Tensor] | None = None,
) -> tuple[Tensor, RTUState]:
    """One step without traces (the act step): `step`'s y and new state, and nothing else.

    x (B, d), done (B,) or None (a row with done = 1 starts from h_{t-1} = 0, as in `step`).
    ``consts``: `act_constants(p)` computed beforehand (the same values), or None to compute
    them here. Returns y (B, 2n) ordered [real parts, imaginary parts] and the new state.
    The same as `step` up to rounding: gamma is folded into the input weights
    (x @ (gamma * w) rather than gamma * (x @ w)); nothing else differs.
    """
    d, n = _check_params(p)
    b = _check_batch_input(x, d, p.w1.dtype, "x")
    _check_activation(activation)
    _check_state(state, b, n, p.w1.dtype)
    c = act_constants(p) if consts is None else consts
    if set(c) != set(ACT_CONSTANTS):
        raise ValueError(f"consts must hold {ACT_CONSTANTS} (act_constants); got {sorted(c)}")
    h = torch.cat([state.c1, state.c2], dim=-1)
    lh = c["lam_diag"] * h + c["lam_cross"] * torch.cat([state.c2, state.c1], dim=-1)
    if done is not None:  # the reset: lam * h_{t-1} -> 0 in the rows that start an episode
        lh = _keep_mask(done, b, x.dtype)[:, None] * lh
    a = lh + x @ c["w_in"]
    y = _act(activation, a)
    c1, c2 = torch.split(y if nonlinear else a, n, dim=-1)
    return y, RTUState(c1, c2)


# --------------------------------------------------------------------------------------
# Gradients from traces
# --------------------------------------------------------------------------------------


def grads(
    p: AnyRTUParams,
    dL_dy: Tensor,
    state: RTUState,
    traces: Traces,
    nonlinear: bool,
    activation: str,
    authors_theta_grad: bool = False,
    rows: bool = False,
) -> dict[str, Tensor]:
    """Exact gradient of sum(dL_dy * y_t) w.r.t. the parameters, through all past steps.

    rows=True: dL_dy (K, 2n) holds K cotangents of a batch of one (state and traces of batch
    1), and each is taken on its own: every gradient gets a leading axis of K instead of the
    batch sum (the learner's critic, actor and entropy gradients in one pass).

    `state` and `traces` are those returned by `step` for this time step; dL_dy is (B, 2n).
    Returns {"nu_log": (n,), "theta_log": (n,), "w1": (d, n), "w2": (d, n)} (keyed by the
    fields of p: "theta" / "nu" under the other parameterisations), summed over the batch
    (the cotangent already carries any 1/B of the loss). Summing these over the steps of a
    sequence with fixed parameters equals full BPTT.

    authors_theta_grad=True reproduces the authors' code, whose theta_log gradient lacks the
    chain-rule factor theta (it is the gradient for a directly learned theta). It exists only
    for param="exp-exp" (an `RTUParams` p); any other parameterisation is a ValueError.
    """
    d, n = _check_params(p)
    if authors_theta_grad and not isinstance(p, RTUParams):
        raise ValueError(
            "authors_theta_grad reproduces the authors' theta_log gradient and exists only for "
            f"param='exp-exp'; p is a {type(p).__name__} ({_param_name(p)!r}), whose theta "
            "gradient has no such defect"
        )
    _check_activation(activation)
    b = _check_batch_input(dL_dy, 2 * n, p.w1.dtype, "dL_dy")
    b = 1 if rows else b
    _check_state(state, b, n, p.w1.dtype)
    _check_traces(traces, b, d, n, nonlinear, p.w1.dtype)

    if nonlinear:
        delta = dL_dy  # f' is already inside the traces
    else:
        # Linear RTU: y = f(h) with h the state, so delta = dL/dy * f'(h).
        fp = _act_grad_from_pre(activation, torch.cat([state.c1, state.c2], dim=-1))
        delta = _scale(fp, dL_dy)
    d1, d2 = delta[:, :n], delta[:, n:]  # complex cotangent D = d1 + i*d2, (B, n)
    d1_b, d2_b = d1[:, None, :], d2[:, None, :]  # (B, 1, n)

    if nonlinear:
        tr = traces
        # dL/dp = dL/dc1 * dc1/dp + dL/dc2 * dc2/dp
        g_w1 = d1_b * tr.w1_1 + d2_b * tr.w1_2
        g_w2 = d1_b * tr.w2_1 + d2_b * tr.w2_2
        g_nu = d1 * tr.nu_1 + d2 * tr.nu_2
        g_th = d1 * tr.th_1 + d2 * tr.th_2
    else:
        tr = traces
        # dL/dw1 = Re(conj(D) E);  dL/dw2 = Re(conj(D) i E) = -Im(conj(D) E)
        g_w1 = d1_b * tr.e_re + d2_b * tr.e_im
        g_w2 = d2_b * tr.e_re - d1_b * tr.e_im
        # dL/dp_nu = Re(conj(D) Tnu);  dL/dp_theta = Re(conj(D) Tth)
        g_nu = d1 * tr.nu_re + d2 * tr.nu_im
        g_th = d1 * tr.th_re + d2 * tr.th_im

    if not rows:  # the batch sum (with rows, the leading axis is the cotangent's)
        g_nu, g_th, g_w1, g_w2 = g_nu.sum(0), g_th.sum(0), g_w1.sum(0), g_w2.sum(0)
    if authors_theta_grad:
        g_th = g_th / torch.exp(p.theta_log)
    nu_key, th_key = type(p)._fields[:2]
    return {nu_key: g_nu, th_key: g_th, "w1": g_w1, "w2": g_w2}


def input_grad(
    p: AnyRTUParams,
    dL_dy: Tensor,
    state: RTUState,
    nonlinear: bool,
    activation: str,
    rows: bool = False,
) -> Tensor:
    """One-step gradient of sum(dL_dy * y_t) w.r.t. x_t, (B, d): no temporal credit.

    rows=True: dL_dy (K, 2n) holds K cotangents of a batch of one; returns (K, d), one row each.

    dL/dx_t[i] = sum_k Re(conj(D_k) * gamma_k * (w1[i,k] + i*w2[i,k])) with D the cotangent
    of the pre-activation a_t. `state` is the one returned by `step`. For the non-linear RTU
    f'(a_t) is recovered from the post-activation state: relu -> (c > 0), tanh -> 1 - c^2,
    identity -> 1. At relu's kink (a = 0, so c = 0) the derivative is taken as 0, the same
    convention as torch autograd and as `step`'s traces.
    """
    d, n = _check_params(p)
    _check_activation(activation)
    b = _check_batch_input(dL_dy, 2 * n, p.w1.dtype, "dL_dy")
    _check_state(state, 1 if rows else b, n, p.w1.dtype)

    c = torch.cat([state.c1, state.c2], dim=-1)
    if nonlinear:
        fp = _act_grad_from_post(activation, c)
    else:
        fp = _act_grad_from_pre(activation, c)
    delta = _scale(fp, dL_dy)
    gamma = _coeffs(p).gamma
    gd1 = (gamma * delta[:, :n])[:, None, :]  # (B, 1, n)
    gd2 = (gamma * delta[:, n:])[:, None, :]
    # Broadcast-and-reduce keeps w1/w2 in (d, n) layout (no transposed weight in the graph).
    return (gd1 * p.w1 + gd2 * p.w2).sum(-1)


# --------------------------------------------------------------------------------------
# Dense projection of the output (the architecture ablation)
# --------------------------------------------------------------------------------------


def project(q: RTUProjection, y: Tensor, activation: str) -> Tensor:
    """z = f(y @ proj_w + proj_b) for y (..., 2n) the linear RTU's output taken with f = identity.

    activation identity: "linear recurrence + linear projection"; relu / tanh: "linear
    recurrence + nonlinear projection" (the paper's architecture ablation).
    """
    _check_activation(activation)
    _check_projection(q, y.shape[-1], y.dtype)
    return _act(activation, y @ q.proj_w + q.proj_b)


def project_grads(
    q: RTUProjection, y: Tensor, dL_dz: Tensor, activation: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """Backward of `project` at one step: (dL/dy (B, 2n), {"proj_w", "proj_b"} summed over B).

    y (B, 2n) is the projection's input (the RTU state concat[c1, c2]); the pre-activation is
    recomputed. With delta = dL/dz * f'(y @ proj_w + proj_b):
    dL/dproj_w = y^T delta, dL/dproj_b = sum_b delta, dL/dy = delta @ proj_w^T. The gradient
    is immediate (z_t depends on the projection only through step t: no trace); dL/dy is
    the cotangent that `grads` / `input_grad` then take with activation identity.
    """
    _check_activation(activation)
    _check_projection(q, y.shape[-1], y.dtype)
    m = q.proj_w.shape[1]
    b = _check_batch_input(dL_dz, m, y.dtype, "dL_dz")
    _check_batch_input(y, q.proj_w.shape[0], y.dtype, "y")
    if y.shape[0] != b:
        raise ValueError(f"y has batch {y.shape[0]} but dL_dz has batch {b}")
    delta = _scale(_act_grad_from_pre(activation, y @ q.proj_w + q.proj_b), dL_dz)  # (B, m)
    g_w = (y[:, :, None] * delta[:, None, :]).sum(0)  # (2n, m)
    # Broadcast-and-reduce keeps proj_w in (in, out) layout (no transposed weight in the graph).
    dL_dy = (delta[:, None, :] * q.proj_w).sum(-1)  # (B, 2n)
    return dL_dy, {"proj_w": g_w, "proj_b": delta.sum(0)}


# --------------------------------------------------------------------------------------
# Unrolled forward (the BPTT oracle)
# --------------------------------------------------------------------------------------


def sequence(
    p: AnyRTUParams,
    xs: Tensor,
    state: RTUState,
    nonlinear: bool,
    activation: str,
    dones: Tensor | None = None,
) -> tuple[Tensor, RTUState]:
    """Run the cell over xs (T, B, d) with plain autograd; returns ys (T, B, 2n), final state.

    Same semantics as repeated `step` calls (dones (T, B) resets the state before step t),
    without traces: differentiate through it for BPTT / truncated BPTT.
    """
    d, n = _check_params(p)
    _check_activation(activation)
    if not isinstance(xs, Tensor) or xs.dim() != 3 or xs.shape[2] != d:
        raise ValueError(f"xs must be a tensor of shape (T, B, {d}); got {_shape_of(xs)}")
    if xs.dtype != p.w1.dtype:
        raise ValueError(f"xs has dtype {xs.dtype} but the parameters are {p.w1.dtype}")
    t_len, b = xs.shape[0], xs.shape[1]
    _check_state(state, b, n, p.w1.dtype)
    if dones is not None and (not isinstance(dones, Tensor) or tuple(dones.shape) != (t_len, b)):
        raise ValueError(f"dones must be a tensor of shape ({t_len}, {b}); got {_shape_of(dones)}")

    co = _coeffs(p)
    c1, c2 = state
    ys = []
    for t in range(t_len):
        if dones is not None:
            keep = 1 - dones[t].to(xs.dtype)
            c1, c2 = _mask(c1, keep), _mask(c2, keep)
        lh1, lh2, u1, u2 = _recur_terms(p, co, xs[t], c1, c2)
        a1 = lh1 + co.gamma * u1
        a2 = lh2 + co.gamma * u2
        if nonlinear:
            c1, c2 = _act(activation, a1), _act(activation, a2)
            ys.append(torch.cat([c1, c2], dim=-1))
        else:
            c1, c2 = a1, a2
            ys.append(_act(activation, torch.cat([a1, a2], dim=-1)))
    return torch.stack(ys), RTUState(c1, c2)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _coeffs(p: AnyRTUParams) -> _Coeffs:
    if isinstance(p, RTUDirectParams):
        nu, dnu = p.nu, torch.ones_like(p.nu)  # r = exp(-nu)
    else:
        nu = torch.exp(p.nu_log)  # r = exp(-exp(nu_log))
        dnu = nu
    r = torch.exp(-nu)
    if isinstance(p, RTUParams):
        theta = torch.exp(p.theta_log)
        dth = theta
    else:
        theta, dth = p.theta, torch.ones_like(p.theta)
    r2 = r * r
    gamma = torch.sqrt(1 - r2)  # -> 0 as r -> 1: see the module docstring
    return _Coeffs(
        nu=nu,
        theta=theta,
        dnu=dnu,
        dth=dth,
        g=r * torch.cos(theta),
        phi=r * torch.sin(theta),
        gamma=gamma,
        dgamma=dnu * r2 / gamma,
    )


def _reset_into_lam(co: _Coeffs, done: Tensor | None, b: int, dtype: torch.dtype) -> _Coeffs:
    """The episode reset of `step`: row b with done_b = 1 starts from h_{t-1} = 0 and zero
    traces. Both enter a step only multiplied by lam (g, phi), so the reset is
    lam -> (1 - done_b) * lam: (B, n) coefficients rather than a masked copy of the state and
    of every trace (the same values). done None: no reset, (n,) coefficients. (`step_forward`,
    with no traces, multiplies its stacked lam * h_{t-1} by (1 - done_b) instead: one product.)"""
    if done is None:
        return co
    keep = _keep_mask(done, b, dtype)[:, None]
    return co._replace(g=keep * co.g, phi=keep * co.phi)


def _recur_terms(
    p: AnyRTUParams, co: _Coeffs, x: Tensor, c1: Tensor, c2: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """lam * h_{t-1} as (lh1, lh2) and the raw input drive u = (x@w1, x@w2), each (B, n)."""
    lh1 = co.g * c1 - co.phi * c2
    lh2 = co.g * c2 + co.phi * c1
    return lh1, lh2, x @ p.w1, x @ p.w2


def _check_activation(activation: object) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")


def _check_param(param: object) -> type:
    if param not in PARAMETERISATIONS:
        raise ValueError(
            f"param must be one of {tuple(PARAMETERISATIONS)} (how r and theta are "
            f"parameterised, see rtu_math); got {param!r}"
        )
    return PARAMETERISATIONS[param]


def _param_name(p: AnyRTUParams) -> str:
    """The `param` option value of a params tuple."""
    return next(k for k, v in PARAMETERISATIONS.items() if isinstance(p, v))


def _check_params(p: AnyRTUParams) -> tuple[int, int]:
    if not isinstance(p, AnyRTUParams):
        raise ValueError(
            "p must be an RTUParams, RTUDirectThetaParams or RTUDirectParams; "
            f"got {type(p).__name__}"
        )
    if not isinstance(p.w1, Tensor) or p.w1.dim() != 2:
        raise ValueError(f"w1 must have shape (d, n); got {_shape_of(p.w1)}")
    d, n = p.w1.shape
    nu_key, th_key = type(p)._fields[:2]
    expected = {nu_key: (n,), th_key: (n,), "w1": (d, n), "w2": (d, n)}
    for name, shape in expected.items():
        t = getattr(p, name)
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (d={d}, n={n}); got {_shape_of(t)}")
        if t.dtype != p.w1.dtype:
            raise ValueError(f"all parameters must share one dtype; {name} is {t.dtype}")
    return d, n


def _check_projection(q: object, width: int, dtype: torch.dtype) -> None:
    if not isinstance(q, RTUProjection):
        raise ValueError(f"q must be an RTUProjection(proj_w, proj_b); got {type(q).__name__}")
    w, b = q
    if not isinstance(w, Tensor) or w.dim() != 2 or w.shape[0] != width:
        raise ValueError(f"proj_w must have shape ({width}, m); got {_shape_of(w)}")
    if not isinstance(b, Tensor) or tuple(b.shape) != (w.shape[1],):
        raise ValueError(f"proj_b must have shape ({w.shape[1]},); got {_shape_of(b)}")
    if w.dtype != dtype or b.dtype != dtype:
        raise ValueError(f"the projection must have dtype {dtype}; got {w.dtype}, {b.dtype}")


def _check_state(state: object, b: int, n: int, dtype: torch.dtype) -> None:
    if not isinstance(state, RTUState):
        raise ValueError(f"state must be an RTUState(c1, c2); got {type(state).__name__}")
    for name, t in zip(RTUState._fields, state, strict=True):
        if not isinstance(t, Tensor) or tuple(t.shape) != (b, n):
            raise ValueError(f"state.{name} must have shape ({b}, {n}); got {_shape_of(t)}")
        if t.dtype != dtype:
            raise ValueError(f"state.{name} has dtype {t.dtype} but the parameters are {dtype}")


def _check_traces(
    traces: object, b: int, d: int, n: int, nonlinear: bool, dtype: torch.dtype
) -> None:
    kind = NonlinearTraces if nonlinear else LinearTraces
    if not isinstance(traces, kind):
        raise ValueError(
            f"traces must be {kind.__name__} for nonlinear={nonlinear} "
            f"(see initial_traces); got {type(traces).__name__}"
        )
    for name, t in zip(kind._fields, traces, strict=True):
        shape = (b, d, n) if name.startswith(("e_", "w")) else (b, n)
        if not isinstance(t, Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"traces.{name} must have shape {shape}; got {_shape_of(t)}")
        if t.dtype != dtype:
            raise ValueError(f"traces.{name} has dtype {t.dtype} but the parameters are {dtype}")
