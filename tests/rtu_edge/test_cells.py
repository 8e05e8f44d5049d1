"""RTU cell and exact RTRL: traces against autograd BPTT, semantics, init, export."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from rtu_edge.cells import (
    CELLS,
    RTU,
    LinearTraces,
    NonlinearTraces,
    RTUParams,
    RTUState,
    recurrent_param_count,
)
from rtu_edge.cells import rtu_math as m

F64 = torch.float64
KEYS = ("nu_log", "theta_log", "w1", "w2")
SIZES = [(1, 1), (3, 5), (7, 16)]


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _problem(d, n, batch, steps, dtype=F64, seed=0):
    """Random params, inputs, resets (some forced mid-sequence) and output cotangents."""
    gen = torch.Generator().manual_seed(seed)
    p = m.init_params(d, n, generator=gen, dtype=dtype)
    xs = torch.randn(steps, batch, d, generator=gen, dtype=F64).to(dtype)
    dones = (torch.rand(steps, batch, generator=gen) < 0.1).to(dtype)
    dones[steps // 2, 0] = 1.0  # a reset inside the sequence for row 0 ...
    dones[steps // 3, :] = 1.0  # ... and one for every row at once
    cs = torch.randn(steps, batch, 2 * n, generator=gen, dtype=F64).to(dtype)
    return p, xs, dones, cs


def _bptt_grads(p, xs, dones, cs, nonlinear, activation):
    """Oracle: autograd of loss = sum_t sum(C_t * y_t) through the unrolled sequence."""
    leaves = RTUParams(*(t.detach().clone().requires_grad_() for t in p))
    state = m.initial_state(p.w1.shape[1], xs.shape[1], dtype=xs.dtype)
    ys, _ = m.sequence(leaves, xs, state, nonlinear, activation, dones=dones)
    (ys * cs).sum().backward()
    return ys.detach(), {k: getattr(leaves, k).grad for k in KEYS}


def _rtrl_grads(p, xs, dones, cs, nonlinear, activation, authors_theta_grad=False):
    """RTRL: sum over t of grads(p, C_t, state_t, traces_t) after each step."""
    steps, batch, d = xs.shape
    n = p.w1.shape[1]
    state = m.initial_state(n, batch, dtype=xs.dtype)
    traces = m.initial_traces(d, n, batch, nonlinear, dtype=xs.dtype)
    total = {k: torch.zeros_like(getattr(p, k)) for k in KEYS}
    ys = []
    for t in range(steps):
        y, state, traces = m.step(p, xs[t], state, traces, dones[t], nonlinear, activation)
        g = m.grads(p, cs[t], state, traces, nonlinear, activation, authors_theta_grad)
        total = {k: total[k] + g[k] for k in KEYS}
        ys.append(y)
    return torch.stack(ys), total


def _rel_err(a, b):
    """max |a - b| relative to the scale of b (the oracle)."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def _complex_reference(p, xs, nonlinear, activation):
    """Independent forward in complex arithmetic (section 1 of rtu-rtrl.md)."""
    act = {"relu": torch.relu, "tanh": torch.tanh, "identity": lambda a: a}[activation]
    nu, theta = torch.exp(p.nu_log), torch.exp(p.theta_log)
    r = torch.exp(-nu)
    lam = torch.polar(r, theta)
    gamma = torch.sqrt(1 - r**2)
    h = torch.zeros(xs.shape[1], p.w1.shape[1], dtype=torch.complex128)
    ys = []
    for x in xs:
        a = lam * h + gamma * torch.complex(x @ p.w1, x @ p.w2)
        if nonlinear:
            h = torch.complex(act(a.real), act(a.imag))
            ys.append(torch.cat([h.real, h.imag], -1))
        else:
            h = a
            ys.append(act(torch.cat([h.real, h.imag], -1)))
    return torch.stack(ys)


# --------------------------------------------------------------------------------------
# RTRL == BPTT
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,n", SIZES)
@pytest.mark.parametrize("activation", m.ACTIVATIONS)
@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear", "nonlinear"])
def test_rtrl_equals_bptt_float64(nonlinear, activation, d, n):
    p, xs, dones, cs = _problem(d, n, batch=4, steps=30, seed=d * 100 + n)
    ys_bptt, g_bptt = _bptt_grads(p, xs, dones, cs, nonlinear, activation)
    ys_rtrl, g_rtrl = _rtrl_grads(p, xs, dones, cs, nonlinear, activation)
    torch.testing.assert_close(ys_rtrl, ys_bptt, rtol=0, atol=1e-13)
    for k in KEYS:
        assert g_bptt[k].abs().max() > 0, f"{k}: oracle gradient is all zero, test is vacuous"
        err = _rel_err(g_rtrl[k], g_bptt[k])
        assert err <= 1e-10, f"{k}: RTRL vs BPTT relative error {err:.3g}"


def test_authors_theta_grad_is_not_bptt():
    """Negative control: the comparison above does detect a wrong derivative."""
    p, xs, dones, cs = _problem(3, 5, batch=2, steps=20)
    _, g_bptt = _bptt_grads(p, xs, dones, cs, False, "relu")
    _, g_auth = _rtrl_grads(p, xs, dones, cs, False, "relu", authors_theta_grad=True)
    assert _rel_err(g_auth["theta_log"], g_bptt["theta_log"]) > 1e-3
    assert _rel_err(g_auth["w1"], g_bptt["w1"]) <= 1e-10


@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear", "nonlinear"])
def test_authors_theta_grad_differs_by_factor_theta(nonlinear):
    p, xs, dones, cs = _problem(3, 5, batch=2, steps=20)
    _, exact = _rtrl_grads(p, xs, dones, cs, nonlinear, "tanh")
    _, auth = _rtrl_grads(p, xs, dones, cs, nonlinear, "tanh", authors_theta_grad=True)
    theta = torch.exp(p.theta_log)
    torch.testing.assert_close(auth["theta_log"] * theta, exact["theta_log"], rtol=1e-12, atol=0)
    assert not torch.allclose(auth["theta_log"], exact["theta_log"])
    for k in ("nu_log", "w1", "w2"):
        torch.testing.assert_close(auth[k], exact[k], rtol=0, atol=0)


def test_rtrl_float32_close_to_bptt():
    p, xs, dones, cs = _problem(7, 16, batch=3, steps=30, dtype=torch.float32)
    for nonlinear in (False, True):
        _, g_bptt = _bptt_grads(p, xs, dones, cs, nonlinear, "relu")
        _, g_rtrl = _rtrl_grads(p, xs, dones, cs, nonlinear, "relu")
        for k in KEYS:
            assert g_rtrl[k].dtype == torch.float32
            assert _rel_err(g_rtrl[k], g_bptt[k]) <= 1e-4


def test_nonlinear_identity_matches_linear_identity():
    """The per-component traces and the lean complex traces agree where both apply."""
    p, xs, dones, cs = _problem(3, 5, batch=2, steps=20)
    ys_lin, g_lin = _rtrl_grads(p, xs, dones, cs, False, "identity")
    ys_nl, g_nl = _rtrl_grads(p, xs, dones, cs, True, "identity")
    torch.testing.assert_close(ys_nl, ys_lin, rtol=0, atol=1e-14)
    for k in KEYS:
        assert _rel_err(g_nl[k], g_lin[k]) <= 1e-12


# --------------------------------------------------------------------------------------
# Input gradient
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", m.ACTIVATIONS)
@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear", "nonlinear"])
def test_input_grad_equals_one_step_autograd(nonlinear, activation):
    d, n, batch = 7, 16, 3
    gen = torch.Generator().manual_seed(3)
    p = m.init_params(d, n, generator=gen, dtype=F64)
    prev = RTUState(*(torch.randn(batch, n, generator=gen, dtype=F64) for _ in range(2)))
    if nonlinear:  # a reachable post-activation state
        prev = RTUState(*(m._act(activation, c) for c in prev))
    x = torch.randn(batch, d, generator=gen, dtype=F64, requires_grad=True)
    c = torch.randn(batch, 2 * n, generator=gen, dtype=F64)

    ys, state = m.sequence(p, x[None], RTUState(*(t.detach() for t in prev)), nonlinear, activation)
    (gx_auto,) = torch.autograd.grad((ys[0] * c).sum(), x)
    gx = m.input_grad(p, c, RTUState(*(t.detach() for t in state)), nonlinear, activation)
    assert gx.shape == (batch, d)
    assert gx_auto.abs().max() > 0
    assert _rel_err(gx, gx_auto) <= 1e-12


@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear", "nonlinear"])
def test_input_grad_relu_kink_is_zero_like_autograd(nonlinear):
    """From a zero state with x = 0 the pre-activation is exactly 0: f'(0) is taken as 0."""
    d, n = 3, 4
    p = m.init_params(d, n, generator=torch.Generator().manual_seed(4), dtype=F64)
    x = torch.zeros(1, d, dtype=F64, requires_grad=True)
    c = torch.ones(1, 2 * n, dtype=F64)
    ys, state = m.sequence(p, x[None], m.initial_state(n, 1, F64), nonlinear, "relu")
    (gx_auto,) = torch.autograd.grad((ys[0] * c).sum(), x)
    gx = m.input_grad(p, c, RTUState(*(t.detach() for t in state)), nonlinear, "relu")
    assert bool((gx_auto == 0).all()) and bool((gx == 0).all())


# --------------------------------------------------------------------------------------
# Forward semantics
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear", "nonlinear"])
def test_step_equals_sequence(nonlinear, dtype):
    p, xs, dones, _ = _problem(3, 5, batch=4, steps=25, dtype=dtype)
    state0 = m.initial_state(5, 4, dtype=dtype)
    ys_seq, final = m.sequence(p, xs, state0, nonlinear, "tanh", dones=dones)
    state, traces = state0, m.initial_traces(3, 5, 4, nonlinear, dtype=dtype)
    for t in range(xs.shape[0]):
        y, state, traces = m.step(p, xs[t], state, traces, dones[t], nonlinear, "tanh")
        assert y.dtype == dtype and y.shape == (4, 10)
        assert all(tr.dtype == dtype for tr in traces)
        torch.testing.assert_close(y, ys_seq[t], rtol=0, atol=0)
    torch.testing.assert_close(state.c1, final.c1, rtol=0, atol=0)


@pytest.mark.parametrize("activation", m.ACTIVATIONS)
@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear", "nonlinear"])
def test_real_form_matches_complex_reference_and_order(nonlinear, activation):
    """y = [real parts, imaginary parts] of the complex recurrence in rtu-rtrl.md."""
    p, xs, _, _ = _problem(3, 5, batch=2, steps=15)
    ys, _ = m.sequence(p, xs, m.initial_state(5, 2, dtype=F64), nonlinear, activation)
    ref = _complex_reference(p, xs, nonlinear, activation)
    torch.testing.assert_close(ys, ref, rtol=1e-12, atol=1e-14)


def test_output_order_first_step():
    """From zero state, y = f([gamma * x@w1, gamma * x@w2]): real half first."""
    p = RTUParams(
        nu_log=torch.tensor([0.0], dtype=F64),
        theta_log=torch.tensor([0.0], dtype=F64),
        w1=torch.tensor([[2.0]], dtype=F64),
        w2=torch.tensor([[-3.0]], dtype=F64),
    )
    gamma = math.sqrt(1 - math.exp(-2.0))
    x = torch.ones(1, 1, dtype=F64)
    y, _, _ = m.step(
        p,
        x,
        m.initial_state(1, 1, F64),
        m.initial_traces(1, 1, 1, False, F64),
        None,
        False,
        "identity",
    )
    torch.testing.assert_close(y, torch.tensor([[2.0 * gamma, -3.0 * gamma]], dtype=F64))


@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear", "nonlinear"])
def test_done_resets_state_and_traces(nonlinear):
    d, n, batch = 3, 5, 2
    gen = torch.Generator().manual_seed(5)
    p = m.init_params(d, n, generator=gen, dtype=F64)
    x = torch.randn(batch, d, generator=gen, dtype=F64)
    dirty_state = RTUState(*(torch.randn(batch, n, generator=gen, dtype=F64) for _ in range(2)))
    zero_tr = m.initial_traces(d, n, batch, nonlinear, F64)
    dirty_tr = type(zero_tr)(*(torch.randn(t.shape, generator=gen, dtype=F64) for t in zero_tr))
    done = torch.tensor([1.0, 0.0], dtype=F64)
    y, s, tr = m.step(p, x, dirty_state, dirty_tr, done, nonlinear, "relu")
    y0, s0, tr0 = m.step(p, x, m.initial_state(n, batch, F64), zero_tr, None, nonlinear, "relu")
    y1, s1, tr1 = m.step(p, x, dirty_state, dirty_tr, None, nonlinear, "relu")
    torch.testing.assert_close(y[0], y0[0], rtol=0, atol=0)  # row 0 restarted
    torch.testing.assert_close(y[1], y1[1], rtol=0, atol=0)  # row 1 carried on
    for a, b0, b1 in zip(tr, tr0, tr1, strict=True):
        torch.testing.assert_close(a[0], b0[0], rtol=0, atol=0)
        torch.testing.assert_close(a[1], b1[1], rtol=0, atol=0)
    # a bool mask means the same
    yb, _, _ = m.step(p, x, dirty_state, dirty_tr, done.bool(), nonlinear, "relu")
    torch.testing.assert_close(yb, y, rtol=0, atol=0)


# --------------------------------------------------------------------------------------
# Init, memory, registry
# --------------------------------------------------------------------------------------


def test_init_statistics_and_determinism():
    d, n = 16, 4096
    p = m.init_params(d, n, generator=torch.Generator().manual_seed(0), dtype=F64)
    r = torch.exp(-torch.exp(p.nu_log))
    theta = torch.exp(p.theta_log)
    assert bool(((r > 0) & (r < 1)).all())
    assert bool(((theta > 0) & (theta < 2 * math.pi)).all())
    # ring init: r^2 ~ U[0,1], theta ~ U[0, 2pi]; LeCun normal: var 1/d
    assert abs(float((r**2).mean()) - 0.5) < 0.02
    assert abs(float(theta.mean()) - math.pi) < 0.1
    assert abs(float(p.w1.var()) * d - 1) < 0.05
    assert abs(float(p.w2.var()) * d - 1) < 0.05
    assert abs(float(p.w1.mean())) < 0.01
    # same seed, same cell, in either dtype
    p32 = m.init_params(d, n, generator=torch.Generator().manual_seed(0))
    assert p32.w1.dtype == torch.float32
    for a, b in zip(p32, p, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-6, atol=1e-6)
    # float32 rounding keeps r strictly below 1 (gamma > 0)
    r32 = torch.exp(-torch.exp(p32.nu_log))
    assert bool((1 - r32 * r32 > 0).all())


def test_trace_memory():
    d, n, batch = 7, 16, 3
    lin = m.initial_traces(d, n, batch, nonlinear=False)
    nl = m.initial_traces(d, n, batch, nonlinear=True)
    assert isinstance(lin, LinearTraces) and isinstance(nl, NonlinearTraces)
    lin_w = sum(t.numel() for t in (lin.e_re, lin.e_im)) // batch
    nl_w = sum(t.numel() for t in (nl.w1_1, nl.w1_2, nl.w2_1, nl.w2_2)) // batch
    assert lin_w == 2 * d * n  # lean: one complex (d, n) trace serves w1 and w2
    assert nl_w == 4 * d * n
    assert sum(t.numel() for t in lin) // batch == 2 * d * n + 4 * n


def test_registry_and_param_count():
    assert not CELLS["rtu"](3, 4).nonlinear
    cell = CELLS["rtu-nonlinear"](64, 192)
    assert cell.nonlinear
    total = sum(p.numel() for p in cell.parameters())
    assert total == recurrent_param_count(64, 192) == 24_960


# --------------------------------------------------------------------------------------
# The module
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear", "nonlinear"])
def test_module_rtrl_equals_bptt_after_double(nonlinear):
    d, n, batch, steps = 3, 5, 2, 20
    cell = RTU(
        d, n, nonlinear=nonlinear, activation="relu", generator=torch.Generator().manual_seed(1)
    )
    assert dict(cell.named_parameters()).keys() == set(KEYS)
    assert cell.w1.dtype == torch.float32
    cell = cell.double()
    _, xs, dones, cs = _problem(d, n, batch, steps)

    ys, _ = cell(xs, cell.initial_state(batch), dones)
    (ys * cs).sum().backward()

    state, traces = cell.initial_state(batch), cell.initial_traces(batch)
    assert state.c1.dtype == F64 and traces[0].dtype == F64
    total = {k: 0.0 for k in KEYS}
    for t in range(steps):
        y, state, traces = cell.rtrl_step(xs[t], state, traces, dones[t])
        assert not y.requires_grad  # no graph through time
        torch.testing.assert_close(y, ys[t].detach(), rtol=0, atol=1e-13)
        g = cell.rtrl_grads(cs[t], state, traces)
        total = {k: total[k] + g[k] for k in KEYS}
    for k, param in cell.named_parameters():
        assert total[k].shape == param.shape
        assert _rel_err(total[k], param.grad) <= 1e-10


def test_module_authors_theta_grad_option():
    x = torch.randn(2, 3, dtype=F64)
    c = torch.randn(2, 8, dtype=F64)

    def theta_grad(authors: bool) -> torch.Tensor:
        gen = torch.Generator().manual_seed(2)
        cell = RTU(3, 4, authors_theta_grad=authors, generator=gen).double()
        state, traces = cell.initial_state(2), cell.initial_traces(2)
        for _ in range(3):
            _, state, traces = cell.rtrl_step(x, state, traces)
        return cell.rtrl_grads(c, state, traces)["theta_log"], torch.exp(cell.theta_log.detach())

    exact, theta = theta_grad(False)
    auth, _ = theta_grad(True)
    torch.testing.assert_close(auth * theta, exact, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------


def test_bad_input_raises_value_error():
    d, n, batch = 3, 5, 2
    p = m.init_params(d, n)
    s, tr = m.initial_state(n, batch), m.initial_traces(d, n, batch, False)
    x = torch.zeros(batch, d)
    with pytest.raises(ValueError, match="relu"):
        m.step(p, x, s, tr, None, False, "sigmoid")
    with pytest.raises(ValueError, match="activation"):
        RTU(d, n, activation="gelu")
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        m.step(p, torch.zeros(batch, d + 1), s, tr, None, False, "relu")
    with pytest.raises(ValueError, match="NonlinearTraces"):
        m.step(p, x, s, tr, None, True, "relu")
    with pytest.raises(ValueError, match="done"):
        m.step(p, x, s, tr, torch.zeros(batch + 1), False, "relu")
    with pytest.raises(ValueError, match="dtype"):
        m.step(p, x.double(), s, tr, None, False, "relu")
    with pytest.raises(ValueError, match="state"):
        m.step(p, x, m.initial_state(n + 1, batch), tr, None, False, "relu")
    with pytest.raises(ValueError, match="float64"):
        m.step(p, x, m.initial_state(n, batch, dtype=F64), tr, None, False, "relu")
    with pytest.raises(ValueError, match="dL_dy"):
        m.grads(p, torch.zeros(batch, n), s, tr, False, "relu")
    with pytest.raises(ValueError, match="xs"):
        m.sequence(p, x, s, False, "relu")
    with pytest.raises(ValueError, match="hidden_size"):
        m.init_params(d, 0)


# --------------------------------------------------------------------------------------
# ONNX export of one learning-relevant step
# --------------------------------------------------------------------------------------


class _StepGraph(torch.nn.Module):
    """step + grads + input_grad with parameters as graph inputs (they learn on device)."""

    def __init__(self, nonlinear: bool, activation: str) -> None:
        super().__init__()
        self.nonlinear, self.activation = nonlinear, activation

    def forward(self, nu_log, theta_log, w1, w2, x, c1, c2, done, dL_dy, *traces):
        p = RTUParams(nu_log, theta_log, w1, w2)
        kind = NonlinearTraces if self.nonlinear else LinearTraces
        y, state, new_traces = m.step(
            p, x, RTUState(c1, c2), kind(*traces), done, self.nonlinear, self.activation
        )
        g = m.grads(p, dL_dy, state, new_traces, self.nonlinear, self.activation)
        gx = m.input_grad(p, dL_dy, state, self.nonlinear, self.activation)
        return (y, *state, *new_traces, *(g[k] for k in KEYS), gx)


@pytest.mark.parametrize("nonlinear,activation", [(False, "relu"), (True, "relu"), (True, "tanh")])
def test_onnx_export_step(tmp_path, nonlinear, activation):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    d, n, batch = 8, 32, 1
    gen = torch.Generator().manual_seed(0)
    p = m.init_params(d, n, generator=gen)
    state = RTUState(*(torch.randn(batch, n, generator=gen) for _ in range(2)))
    zeros = m.initial_traces(d, n, batch, nonlinear)
    traces = [torch.randn(t.shape, generator=gen) for t in zeros]
    x = torch.randn(batch, d, generator=gen)
    c = torch.randn(batch, 2 * n, generator=gen)
    module = _StepGraph(nonlinear, activation)
    path = tmp_path / "step.onnx"

    def args_for(done):
        return (*p, x, *state, torch.tensor([done]), c, *traces)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args_for(0.0), str(path), dynamo=True, opset_version=18, external_data=False
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    for done in (0.0, 1.0):  # the reset mask is data, not control flow
        args = args_for(done)
        out = sess.run(None, {k: a.numpy() for k, a in zip(names, args, strict=True)})
        ref = module(*args)
        assert len(out) == len(ref)
        for o, r in zip(out, ref, strict=True):
            r = r.numpy()
            assert o.shape == r.shape
            scale = max(float(abs(r).max()), 1e-6)
            assert float(abs(o - r).max()) / scale <= 1e-5
