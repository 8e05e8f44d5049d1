"""The other cells' math (online LRU, block RNN, MLP, GRU, LRU): RTRL against autograd BPTT,
forward semantics, resets, the authors' online-LRU defect, torch.nn.GRU parity, errors."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from rtu_edge.cells import block_rnn_math, gru_math, lru_math, mlp_math, online_lru_math

F64 = torch.float64
F32 = torch.float32
T_LEN, BATCH = 12, 3
TOL = 1e-10

# (id, module, options): every RTRL cell with every option value.
RTRL_CASES = [
    ("online_lru", online_lru_math, {}),
    # the architecture ablation: no projection C, f on the output, f inside the recurrence
    ("online_lru-noproj", online_lru_math, {"projection": False}),
    ("online_lru-noproj-relu", online_lru_math, {"projection": False, "activation": "relu"}),
    ("online_lru-proj-tanh", online_lru_math, {"activation": "tanh"}),
    (
        "online_lru-nonlinear-relu",
        online_lru_math,
        {"projection": False, "nonlinear": True, "activation": "relu"},
    ),
    ("online_lru-nonlinear-tanh-proj", online_lru_math, {"nonlinear": True, "activation": "tanh"}),
    ("block_rnn-tanh", block_rnn_math, {"activation": "tanh"}),
    ("block_rnn-relu", block_rnn_math, {"activation": "relu"}),
    ("block_rnn-identity", block_rnn_math, {"activation": "identity"}),
    ("mlp-relu", mlp_math, {"activation": "relu"}),
    ("mlp-tanh", mlp_math, {"activation": "tanh"}),
    ("mlp-identity", mlp_math, {"activation": "identity"}),
]
RTRL_IDS = [c[0] for c in RTRL_CASES]
SIZES = [(3, 6), (1, 2), (5, 4)]  # (d, n); n even for the block RNN
TBPTT_CASES = [
    ("gru", gru_math, {}),
    ("lru", lru_math, {"skip": False}),
    ("lru-skip", lru_math, {"skip": True}),
]
# options that init_params takes and the params type then carries
INIT_ONLY = ("skip", "projection")


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _problem(mod, opts, d, n, dtype=F64, seed=0, jitter=0.1):
    """Params (init jittered so nothing sits at a special init value, e.g. b = 0), inputs,
    resets inside the sequence (row 0 alone, then every row) and output cotangents."""
    gen = torch.Generator().manual_seed(seed)
    p = mod.init_params(d, n, generator=gen, dtype=dtype, **opts)
    p = type(p)(*(t + jitter * torch.randn(t.shape, generator=gen, dtype=F64).to(dtype) for t in p))
    xs = torch.randn(T_LEN, BATCH, d, generator=gen, dtype=F64).to(dtype)
    dones = torch.zeros(T_LEN, BATCH, dtype=dtype)
    dones[5, 0] = 1.0
    dones[8, :] = 1.0
    cs = torch.randn(T_LEN, BATCH, _out(mod, n, opts), generator=gen, dtype=F64).to(dtype)
    return p, xs, dones, cs


def _out(mod, n, opts):
    """output_size with the options it takes (the online LRU's width depends on projection)."""
    kw = inspect.signature(mod.output_size).parameters
    return mod.output_size(n, **{k: v for k, v in opts.items() if k in kw})


def _run_opts(opts):
    return {k: v for k, v in opts.items() if k not in INIT_ONLY}


def _bptt(mod, opts, p, xs, dones, cs, state=None):
    """Oracle: autograd of sum_t sum(cs_t * y_t) through `sequence`."""
    leaves = type(p)(*(t.detach().clone().requires_grad_() for t in p))
    n = _hidden(mod, p)
    if state is None:
        state = mod.initial_state(n, xs.shape[1], dtype=xs.dtype)
    ys, _ = mod.sequence(leaves, xs, state, dones, **_run_opts(opts))
    (ys * cs).sum().backward()
    return ys.detach(), {k: getattr(leaves, k).grad for k in p._fields}


def _rtrl(mod, opts, p, xs, dones, cs, tamper=None):
    """Sum over t of grads(p, cs_t, state_t, traces_t); tamper(t, traces) may alter traces."""
    steps, batch, d = xs.shape
    n = _hidden(mod, p)
    state = mod.initial_state(n, batch, dtype=xs.dtype)
    traces = mod.initial_traces(d, n, batch, dtype=xs.dtype, **opts)
    total = {k: torch.zeros_like(t) for k, t in zip(p._fields, p, strict=True)}
    ys = []
    for t in range(steps):
        done = None if dones is None else dones[t]
        y, state, traces = mod.step(p, xs[t], state, traces, done, **opts)
        if tamper is not None:
            traces = tamper(t, traces)
        g = mod.grads(p, cs[t], state, traces, **opts)
        assert set(g) == set(p._fields)
        total = {k: total[k] + g[k] for k in total}
        ys.append(y)
    return torch.stack(ys), total


def _hidden(mod, p):
    if mod is block_rnn_math:
        return 2 * p.a11.shape[0]
    if mod is mlp_math:
        return p.w.shape[1]
    if mod is gru_math:
        return p.w_h.shape[0]
    return p.nu_log.shape[0]


def _rel_err(a, b):
    """max |a - b| relative to the scale of b (the oracle)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _max_rel_err(got, want):
    return max(_rel_err(got[k], want[k]) for k in want)


# --------------------------------------------------------------------------------------
# RTRL = BPTT (the main test), forward semantics
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,n", SIZES)
@pytest.mark.parametrize("case", RTRL_CASES, ids=RTRL_IDS)
def test_rtrl_equals_bptt_float64(case, d, n):
    _, mod, opts = case
    p, xs, dones, cs = _problem(mod, opts, d, n)
    ys_bptt, g_bptt = _bptt(mod, opts, p, xs, dones, cs)
    ys_rtrl, g_rtrl = _rtrl(mod, opts, p, xs, dones, cs)
    torch.testing.assert_close(ys_rtrl, ys_bptt, rtol=1e-13, atol=1e-13)  # step == sequence
    for k in p._fields:
        assert g_rtrl[k].shape == getattr(p, k).shape
        assert g_rtrl[k].dtype == F64
        assert g_bptt[k].abs().max() > 0, k  # the oracle is not trivially zero
        assert _rel_err(g_rtrl[k], g_bptt[k]) < TOL, k


@pytest.mark.parametrize("case", RTRL_CASES, ids=RTRL_IDS)
def test_negative_control_every_trace_field_matters(case):
    """Corrupting any one trace field at one step (1e-3 - trace: flips signs, so relu's
    f'(pre) changes too) breaks the agreement by far more than TOL, so the test above can
    fail and no trace field is dead weight (except the MLP's pre-activation under identity,
    where f' = 1 and `pre` is genuinely unused)."""
    _, mod, opts = case
    p, xs, dones, cs = _problem(mod, opts, 3, 6)
    _, g_bptt = _bptt(mod, opts, p, xs, dones, cs)
    fields = mod.initial_traces(3, 6, BATCH, dtype=F64, **opts)._fields
    assert fields
    if mod is mlp_math and opts["activation"] == "identity":
        fields = ("x",)
    for name in fields:

        def tamper(t, traces, name=name):
            return traces._replace(**{name: 1e-3 - getattr(traces, name)}) if t == 6 else traces

        _, g_bad = _rtrl(mod, opts, p, xs, dones, cs, tamper=tamper)
        assert _max_rel_err(g_bad, g_bptt) > 1e-6, name


@pytest.mark.parametrize("case", RTRL_CASES, ids=RTRL_IDS)
def test_input_grad_equals_one_step_autograd(case):
    _, mod, opts = case
    d, n = 3, 6
    p, xs, dones, cs = _problem(mod, opts, d, n)
    state = mod.initial_state(n, BATCH, dtype=F64)
    traces = mod.initial_traces(d, n, BATCH, dtype=F64, **opts)
    for t in range(T_LEN):
        x = xs[t].clone().requires_grad_()
        y, _ = mod.step_forward(p, x, state, dones[t], **opts)  # state held fixed
        (gx,) = torch.autograd.grad((cs[t] * y).sum(), x)
        _, state, traces = mod.step(p, xs[t], state, traces, dones[t], **opts)
        got = mod.input_grad(p, cs[t], state, traces, **opts)
        assert got.shape == (BATCH, d)
        assert _rel_err(got, gx) < TOL, t


@pytest.mark.parametrize("case", RTRL_CASES, ids=RTRL_IDS)
def test_step_forward_equals_step(case):
    _, mod, opts = case
    d, n = 3, 6
    p, xs, dones, _ = _problem(mod, opts, d, n)
    s_a = s_b = mod.initial_state(n, BATCH, dtype=F64)
    traces = mod.initial_traces(d, n, BATCH, dtype=F64, **opts)
    for t in range(T_LEN):
        y_a, s_a = mod.step_forward(p, xs[t], s_a, dones[t], **opts)
        y_b, s_b, traces = mod.step(p, xs[t], s_b, traces, dones[t], **opts)
        assert torch.equal(y_a, y_b)
        assert all(torch.equal(a, b) for a, b in zip(s_a, s_b, strict=True))
    assert y_a.shape == (BATCH, _out(mod, n, opts))


@pytest.mark.parametrize("case", RTRL_CASES, ids=RTRL_IDS)
def test_done_restarts_state_and_traces(case):
    """A row reset at t0 behaves from t0 on exactly like a fresh single-row run from t0:
    same outputs, and (cotangents of the other rows zeroed) the same summed gradient, so the
    traces were reset too. Without the reset the gradient differs."""
    _, mod, opts = case
    d, n, t0 = 3, 6, 5
    p, xs, dones, cs = _problem(mod, opts, d, n)
    dones = torch.zeros_like(dones)
    dones[t0, 0] = 1.0
    cs = cs.clone()
    cs[:t0] = 0.0
    cs[:, 1:] = 0.0
    ys, g = _rtrl(mod, opts, p, xs, dones, cs)
    ys_fresh, g_fresh = _rtrl(mod, opts, p, xs[t0:, :1], None, cs[t0:, :1])
    torch.testing.assert_close(ys[t0:, :1], ys_fresh, rtol=1e-13, atol=1e-13)
    assert _max_rel_err(g, g_fresh) < TOL
    # Sequence path: same reset semantics.
    ys_seq, _ = mod.sequence(p, xs, mod.initial_state(n, BATCH, dtype=F64), dones, **opts)
    torch.testing.assert_close(ys_seq[t0:, :1], ys_fresh, rtol=1e-13, atol=1e-13)
    if mod is not mlp_math:  # the memoryless cell has nothing to reset
        _, g_noreset = _rtrl(mod, opts, p, xs, None, cs)
        assert _max_rel_err(g_noreset, g_fresh) > 1e-6


@pytest.mark.parametrize(
    "case", RTRL_CASES + TBPTT_CASES, ids=RTRL_IDS + [c[0] for c in TBPTT_CASES]
)
def test_float32_runs(case):
    _, mod, opts = case
    d, n = 3, 6
    p, xs, dones, cs = _problem(mod, opts, d, n, dtype=F32)
    run = _run_opts(opts)
    assert all(t.dtype == F32 for t in p)
    state = mod.initial_state(n, BATCH, dtype=F32)
    ys, final = mod.sequence(p, xs, state, dones, **run)
    assert ys.dtype == F32 and ys.shape == (T_LEN, BATCH, _out(mod, n, opts))
    assert torch.isfinite(ys).all()
    y, s = mod.step_forward(p, xs[0], state, dones[0], **run)
    assert y.dtype == F32 and all(t.dtype == F32 for t in s)
    if not hasattr(mod, "step"):
        return
    ys_rtrl, g = _rtrl(mod, opts, p, xs, dones, cs)
    torch.testing.assert_close(ys_rtrl, ys, rtol=1e-5, atol=1e-5)
    assert all(v.dtype == F32 and torch.isfinite(v).all() for v in g.values())
    # float32 RTRL stays close to float64 BPTT of the same (cast) problem.
    p64 = type(p)(*(t.double() for t in p))
    _, g_ref = _bptt(mod, opts, p64, xs.double(), dones.double(), cs.double())
    assert _max_rel_err({k: v.double() for k, v in g.items()}, g_ref) < 1e-4
    traces = mod.initial_traces(d, n, BATCH, dtype=F32, **opts)
    _, state, traces = mod.step(p, xs[0], state, traces, dones[0], **opts)
    gx = mod.input_grad(p, cs[0], state, traces, **opts)
    assert gx.dtype == F32 and gx.shape == (BATCH, d)


@pytest.mark.parametrize(
    "case", RTRL_CASES + TBPTT_CASES, ids=RTRL_IDS + [c[0] for c in TBPTT_CASES]
)
def test_param_count_output_size_and_seeded_init(case):
    _, mod, opts = case
    d, n = 5, 8
    init_opts = {k: v for k, v in opts.items() if k in INIT_ONLY}
    p = mod.init_params(d, n, generator=torch.Generator().manual_seed(3), dtype=F64, **opts)
    assert sum(t.numel() for t in p) == mod.param_count(d, n, **init_opts)
    p32 = mod.init_params(d, n, generator=torch.Generator().manual_seed(3), dtype=F32, **opts)
    assert all(torch.equal(a.float(), b) for a, b in zip(p, p32, strict=True))
    ys, _ = mod.sequence(p, torch.randn(2, 1, d, dtype=F64), mod.initial_state(n, 1, F64))
    assert ys.shape[-1] == _out(mod, n, opts)


def test_parameter_budgets_of_the_paper():
    """rtu-rtrl.md section 6: about 24k recurrent parameters with a 64-wide encoder."""
    assert online_lru_math.param_count(64, 82) == 3 * 82 + 2 * 64 * 82 + 2 * 82 * 82 == 24190
    assert gru_math.param_count(64, 64) == 3 * 64 * (64 + 64 + 2) == 24960
    assert block_rnn_math.param_count(64, 6) == 64 * 6 + 3 * 6
    assert mlp_math.param_count(64, 10) == 650
    assert lru_math.param_count(64, 82) == 24190
    assert lru_math.param_count(64, 82, skip=True) == 24190 + 64 * 82


# --------------------------------------------------------------------------------------
# Online LRU: complex reference and the authors' defect
# --------------------------------------------------------------------------------------


def _olru_complex_rtrl(p, xs, dones, cs, variant="exact"):
    """Independent RTRL in complex arithmetic (rtu-rtrl.md section 6), with the paper's C'.

    variant "authors_b_trace": the authors' B trace, E = lam*E + gamma_log * x (their code
    uses gamma_log where the recurrence has gamma = exp(gamma_log)).
    variant "gamma_log_factor": the gamma_log gradient formed as Re(conj(D) e) * gamma_log
    with e = dh/dgamma (the defect as it is sometimes described), instead of * gamma.
    """
    c128 = torch.complex128
    nu, theta, gamma = torch.exp(p.nu_log), torch.exp(p.theta_log), torch.exp(p.gamma_log)
    lam = torch.polar(torch.exp(-nu), theta)
    Bc = torch.complex(p.B_re, p.B_im)
    C_paper = torch.complex(p.C_re, p.C_im).T  # (n_out, n_in): y = Re(C' h)
    steps, batch, d = xs.shape
    n = p.nu_log.shape[0]
    h = torch.zeros(batch, n, dtype=c128)
    L = torch.zeros(batch, n, dtype=c128)  # dh/dlam
    e_g = torch.zeros(batch, n, dtype=c128)  # dh/dgamma
    E = torch.zeros(batch, d, n, dtype=c128)  # dh/dB_re
    total = {k: torch.zeros_like(t) for k, t in zip(p._fields, p, strict=True)}
    ys = []
    b_coef = p.gamma_log if variant == "authors_b_trace" else gamma
    for t in range(steps):
        keep = (1 - dones[t])[:, None]
        h, L, e_g, E = h * keep, L * keep, e_g * keep, E * keep[:, :, None]
        x = xs[t].to(c128)
        u = x @ Bc
        L = lam * L + h
        e_g = lam * e_g + u
        E = lam * E + b_coef * x[:, :, None]
        h = lam * h + gamma * u
        y = (h @ C_paper.T).real
        ys.append(y)
        g = cs[t].to(c128)
        conj_D = g @ C_paper  # conj of the cotangent of h: dL/dh_re - i dL/dh_im
        gam_factor = p.gamma_log if variant == "gamma_log_factor" else gamma
        step_g = {
            "nu_log": (conj_D * (-nu * lam) * L).real.sum(0),
            "theta_log": (conj_D * (1j * theta * lam) * L).real.sum(0),
            "gamma_log": (conj_D * e_g).real.sum(0) * gam_factor,
            "B_re": (conj_D[:, None, :] * E).real.sum(0),
            "B_im": (conj_D[:, None, :] * 1j * E).real.sum(0),
            "C_re": h.real.T @ cs[t],
            "C_im": -(h.imag.T @ cs[t]),
        }
        total = {k: total[k] + step_g[k] for k in total}
    return torch.stack(ys), total


def test_online_lru_matches_complex_reference():
    mod, opts = online_lru_math, {}
    p, xs, dones, cs = _problem(mod, opts, 3, 6)
    ys_ref, g_ref = _olru_complex_rtrl(p, xs, dones, cs)
    ys, g = _rtrl(mod, opts, p, xs, dones, cs)
    _, g_bptt = _bptt(mod, opts, p, xs, dones, cs)
    torch.testing.assert_close(ys, ys_ref, rtol=1e-13, atol=1e-13)
    assert _max_rel_err(g_ref, g_bptt) < TOL  # the reference itself is exact
    assert _max_rel_err(g, g_ref) < TOL


def test_online_lru_authors_b_trace_is_not_bptt():
    """The authors' B trace (gamma_log * x where gamma * x is meant) gives a wrong B gradient:
    exactly the true one times gamma_log / gamma per unit -- negative at init, so the sign
    is flipped -- while the other parameters are unaffected."""
    mod, opts = online_lru_math, {}
    p, xs, dones, cs = _problem(mod, opts, 3, 6, jitter=0.0)  # the init: gamma < 1
    assert (p.gamma_log < 0).all()
    _, g_bptt = _bptt(mod, opts, p, xs, dones, cs)
    _, g_auth = _olru_complex_rtrl(p, xs, dones, cs, variant="authors_b_trace")
    for k in ("B_re", "B_im"):
        assert _rel_err(g_auth[k], g_bptt[k]) > 0.5, k
        factor = p.gamma_log / torch.exp(p.gamma_log)
        assert _rel_err(g_auth[k], g_bptt[k] * factor) < TOL, k
    for k in ("nu_log", "theta_log", "gamma_log", "C_re", "C_im"):
        assert _rel_err(g_auth[k], g_bptt[k]) < TOL, k


def test_online_lru_gamma_log_factor_is_not_bptt():
    mod, opts = online_lru_math, {}
    p, xs, dones, cs = _problem(mod, opts, 3, 6, jitter=0.0)
    _, g_bptt = _bptt(mod, opts, p, xs, dones, cs)
    _, g_bad = _olru_complex_rtrl(p, xs, dones, cs, variant="gamma_log_factor")
    assert _rel_err(g_bad["gamma_log"], g_bptt["gamma_log"]) > 0.5


def test_online_lru_init():
    gen = torch.Generator().manual_seed(0)
    d, n = 40, 2000
    p = online_lru_math.init_params(d, n, generator=gen, dtype=F64)
    r = torch.exp(-torch.exp(p.nu_log))
    assert (r > 0).all() and (r < 1).all()
    torch.testing.assert_close(p.gamma_log, 0.5 * torch.log(1 - r**2))
    theta = torch.exp(p.theta_log)
    assert theta.min() > 0 and theta.max() < 2 * math.pi
    assert abs(float((r**2).mean()) - 0.5) < 0.03  # r^2 ~ U[0, 1]: r = sqrt(u1)
    assert abs(float(p.B_re.std()) - 1 / math.sqrt(2 * d)) < 0.01 / math.sqrt(d)
    assert abs(float(p.C_im[:, :50].std()) - 1 / math.sqrt(n)) < 0.05 / math.sqrt(n)
    q = online_lru_math.init_params(2, 500, dtype=F32, r_min=0.9, r_max=0.999, max_phase=0.5)
    rq = torch.exp(-torch.exp(q.nu_log.double()))
    assert rq.min() >= 0.9 - 1e-6 and rq.max() <= 0.999 + 1e-6
    assert torch.exp(q.theta_log).max() <= 0.5 + 1e-6
    assert torch.isfinite(q.gamma_log).all() and (torch.exp(q.gamma_log) > 0).all()


def test_online_lru_projection_layout():
    """y = Re(h @ C) with C = C_re + i*C_im in (in, out) layout."""
    mod = online_lru_math
    p = mod.init_params(2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    state = mod.OnlineLRUState(torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64))
    x = torch.zeros(4, 2, dtype=F64)
    y, s = mod.step_forward(p, x, state, None)
    h = torch.complex(s.h_re, s.h_im)
    torch.testing.assert_close(y, (h @ torch.complex(p.C_re, p.C_im)).real)


# --------------------------------------------------------------------------------------
# Block RNN and MLP specifics
# --------------------------------------------------------------------------------------


def test_block_rnn_init_is_ring_rotation_and_layout():
    mod = block_rnn_math
    p = mod.init_params(4, 2000, generator=torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(p.a11, p.a22)
    torch.testing.assert_close(p.a12, -p.a21)
    r = torch.sqrt(p.a11**2 + p.a21**2)
    assert (r < 1).all() and abs(float((r**2).mean()) - 0.5) < 0.05
    assert (p.b1 == 0).all() and (p.b2 == 0).all()
    # Block k couples unit k with unit m + k: y[:, :m] is h1, y[:, m:] is h2.
    q = mod.init_params(1, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    q = q._replace(w1=torch.zeros(1, 2, dtype=F64), w2=torch.zeros(1, 2, dtype=F64))
    q = q._replace(
        a11=torch.tensor([0.5, 0.0], dtype=F64), a21=torch.tensor([0.25, 0.0], dtype=F64)
    )
    state = mod.BlockRNNState(torch.tensor([[1.0, 0.0]], dtype=F64), torch.zeros(1, 2, dtype=F64))
    y, _ = mod.step_forward(q, torch.zeros(1, 1, dtype=F64), state, None, activation="identity")
    torch.testing.assert_close(y, torch.tensor([[0.5, 0.0, 0.25, 0.0]], dtype=F64))


def test_mlp_state_is_empty_and_batch_comes_from_x():
    mod = mlp_math
    p = mod.init_params(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    state = mod.initial_state(4, 5, dtype=F64)
    assert state == () and isinstance(state, mod.MLPState) and mod.MLPState._fields == ()
    xs = torch.randn(6, 5, 3, dtype=F64)
    ys, final = mod.sequence(p, xs, state)
    assert ys.shape == (6, 5, 4) and final == ()
    torch.testing.assert_close(ys, torch.relu(xs @ p.w + p.b))
    traces = mod.initial_traces(3, 4, 5, dtype=F64)
    y, s, tr = mod.step(p, xs[0], state, traces, torch.ones(5, dtype=F64))
    torch.testing.assert_close(y, ys[0])  # done has nothing to reset
    assert s == () and torch.equal(tr.x, xs[0])


# --------------------------------------------------------------------------------------
# GRU and LRU (truncated BPTT cells)
# --------------------------------------------------------------------------------------


def _torch_gru(p, d, n):
    gru = torch.nn.GRU(d, n, dtype=F64)
    cell = torch.nn.GRUCell(d, n, dtype=F64)
    with torch.no_grad():
        for mod_ in (gru, cell):
            sfx = "_l0" if mod_ is gru else ""
            getattr(mod_, "weight_ih" + sfx).copy_(p.w_i.T)
            getattr(mod_, "weight_hh" + sfx).copy_(p.w_h.T)
            getattr(mod_, "bias_ih" + sfx).copy_(p.b_i)
            getattr(mod_, "bias_hh" + sfx).copy_(p.b_h)
    return gru, cell


@pytest.mark.parametrize("d,n", SIZES)
def test_gru_equals_torch_gru_float64(d, n):
    p, xs, dones, _ = _problem(gru_math, {}, d, n)
    gru, cell = _torch_gru(p, d, n)
    h0 = torch.randn(BATCH, n, dtype=F64)
    ys, final = gru_math.sequence(p, xs, gru_math.GRUState(h0))
    with torch.no_grad():
        ys_t, h_t = gru(xs, h0[None])
    torch.testing.assert_close(ys, ys_t, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(final.h, h_t[0], rtol=1e-13, atol=1e-13)
    # With resets: torch.nn.GRUCell on the masked state, step by step.
    ys_r, _ = gru_math.sequence(p, xs, gru_math.GRUState(h0), dones)
    h = h0
    s = gru_math.GRUState(h0)
    with torch.no_grad():
        for t in range(T_LEN):
            h = cell(xs[t], h * (1 - dones[t])[:, None])
            y, s = gru_math.step_forward(p, xs[t], s, dones[t])
            torch.testing.assert_close(ys_r[t], h, rtol=1e-13, atol=1e-13)
            torch.testing.assert_close(y, h, rtol=1e-13, atol=1e-13)


def test_gru_init_matches_torch_range():
    n = 50
    p = gru_math.init_params(7, n, generator=torch.Generator().manual_seed(0), dtype=F64)
    k = 1 / math.sqrt(n)
    for t in p:
        assert t.abs().max() <= k and t.abs().max() > 0.9 * k


@pytest.mark.parametrize("skip", [False, True])
def test_lru_sequence_step_forward_and_online_lru_agree(skip):
    d, n = 3, 6
    gen_a, gen_b = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    p = lru_math.init_params(d, n, generator=gen_a, dtype=F64, skip=skip)
    q = online_lru_math.init_params(d, n, generator=gen_b, dtype=F64)
    assert isinstance(p, lru_math.LRUSkipParams if skip else lru_math.LRUParams)
    assert all(torch.equal(a, b) for a, b in zip(p[:7], q, strict=True))  # same seed, same cell
    _, xs, dones, _ = _problem(online_lru_math, {}, d, n)
    state = lru_math.initial_state(n, BATCH, dtype=F64)
    ys, final = lru_math.sequence(p, xs, state, dones, skip=skip)
    ys_o, final_o = online_lru_math.sequence(q, xs, state, dones)
    skip_term = xs @ p.D if skip else 0.0
    torch.testing.assert_close(ys, ys_o + skip_term, rtol=1e-13, atol=1e-13)
    assert all(torch.equal(a, b) for a, b in zip(final, final_o, strict=True))
    s = state
    for t in range(T_LEN):
        y, s = lru_math.step_forward(p, xs[t], s, dones[t])
        torch.testing.assert_close(y, ys[t], rtol=1e-13, atol=1e-13)
    # BPTT through the sequence reaches every parameter.
    leaves = type(p)(*(t.clone().requires_grad_() for t in p))
    ys_g, _ = lru_math.sequence(leaves, xs, state, dones)
    ys_g.sum().backward()
    assert all(t.grad is not None and t.grad.abs().max() > 0 for t in leaves)


# --------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", RTRL_CASES, ids=RTRL_IDS)
def test_rtrl_cells_bad_input_raises_value_error(case):
    _, mod, opts = case
    d, n = 3, 6
    p, xs, dones, cs = _problem(mod, opts, d, n)
    st = mod.initial_state(n, BATCH, dtype=F64)
    tr = mod.initial_traces(d, n, BATCH, dtype=F64, **opts)
    x = xs[0]
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \(B, 3\)"):
        mod.step(p, torch.zeros(BATCH, d + 1, dtype=F64), st, tr, None, **opts)
    with pytest.raises(ValueError, match="dtype"):
        mod.step(p, x.float(), st, tr, None, **opts)
    with pytest.raises(ValueError, match="done"):
        mod.step(p, x, st, tr, torch.zeros(BATCH + 1), **opts)
    with pytest.raises(ValueError, match="done"):
        mod.step_forward(p, x, st, torch.zeros(BATCH, 1), **opts)
    with pytest.raises(ValueError, match="state"):
        mod.step(p, x, (torch.zeros(BATCH, n),), tr, None, **opts)
    with pytest.raises(ValueError, match="traces"):
        mod.step(p, x, st, tuple(tr), None, **opts)
    with pytest.raises(ValueError, match="traces"):
        bad = tr._replace(**{tr._fields[0]: getattr(tr, tr._fields[0])[:, :1]})
        mod.grads(p, cs[0], st, bad, **opts)
    with pytest.raises(ValueError, match="dL_dy"):
        mod.grads(p, cs[0][:, :-1], st, tr, **opts)
    with pytest.raises(ValueError, match="dL_dy"):
        mod.input_grad(p, cs[0].float(), st, tr, **opts)
    with pytest.raises(ValueError, match="xs"):
        mod.sequence(p, x, st, **opts)
    with pytest.raises(ValueError, match="dones"):
        mod.sequence(p, xs, st, dones[:-1], **opts)
    with pytest.raises(ValueError, match="one dtype"):
        mod.step(p._replace(**{p._fields[-1]: getattr(p, p._fields[-1]).float()}), x, st, tr, None)
    with pytest.raises(ValueError, match="shape"):
        mod.step(p._replace(**{p._fields[0]: getattr(p, p._fields[0])[:1]}), x, st, tr, None)
    with pytest.raises(ValueError, match="must be an|must be a "):
        mod.step(tuple(p), x, st, tr, None, **opts)
    with pytest.raises(ValueError, match="hidden_size"):
        mod.init_params(d, 0)
    with pytest.raises(ValueError, match="batch_size"):
        mod.initial_traces(d, n, 0, **opts)
    with pytest.raises(ValueError, match="input_size"):
        mod.param_count(True, n)
    if "activation" in opts:
        with pytest.raises(ValueError, match="activation"):
            mod.step(p, x, st, tr, None, activation="gelu")
        with pytest.raises(ValueError, match="activation"):
            mod.init_params(d, n, activation="sigmoid")


def test_specific_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="even"):
        block_rnn_math.init_params(3, 5)
    with pytest.raises(ValueError, match="even"):
        block_rnn_math.initial_state(5, 1)
    with pytest.raises(ValueError, match="r_min"):
        online_lru_math.init_params(3, 4, r_min=0.5, r_max=0.4)
    with pytest.raises(ValueError, match="max_phase"):
        online_lru_math.init_params(3, 4, max_phase=0.0)
    p = lru_math.init_params(3, 4, dtype=F64)
    st = lru_math.initial_state(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="skip"):
        lru_math.sequence(p, torch.zeros(2, 2, 3, dtype=F64), st, skip=True)
    with pytest.raises(ValueError, match="skip"):
        lru_math.init_params(3, 4, skip=1)
    with pytest.raises(ValueError, match="D must"):
        q = lru_math.init_params(3, 4, dtype=F64, skip=True)
        lru_math.step_forward(q._replace(D=q.D[:, :2]), torch.zeros(2, 3, dtype=F64), st, None)
    g = gru_math.init_params(3, 4, dtype=F64)
    gs = gru_math.initial_state(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="x must"):
        gru_math.step_forward(g, torch.zeros(2, 4, dtype=F64), gs, None)
    with pytest.raises(ValueError, match="state.h"):
        gru_math.step_forward(
            g, torch.zeros(2, 3, dtype=F64), gru_math.GRUState(torch.zeros(3, 4)), None
        )
    with pytest.raises(ValueError, match="w_i"):
        gru_math.sequence(g._replace(w_i=g.w_i[:, :5]), torch.zeros(1, 2, 3, dtype=F64), gs)
    with pytest.raises(ValueError, match="done"):
        gru_math.step_forward(g, torch.zeros(2, 3, dtype=F64), gs, torch.zeros(3))
    with pytest.raises(ValueError, match="state"):
        mlp_math.step_forward(mlp_math.init_params(3, 4), torch.zeros(2, 3), (), None)
