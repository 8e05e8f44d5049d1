"""One conformance test over `CELLS`: every cell, through the module API the agent uses.

For every online (RTRL) cell and option set, in float64 with episode resets inside the sequence:
- the per-step RTRL gradients, summed, equal autograd BPTT through `forward` to 1e-10;
- `input_grad` equals autograd's one-step gradient w.r.t. x_t (state held fixed);
- `rtrl_step` and `step_forward` produce the outputs of `forward`;
- passing the parameters by name (`params=`) gives the same numbers as the module's own.
A negative control shows the comparison can fail.

For every T-BPTT cell (no RTRL: gru, lru), the gradient of a loss over a window from a detached
start state, with resets inside, computed by the td learner's T-BPTT routine
(`td.window_outputs`), equals plain autograd through `forward` (and through `step_forward`
tick by tick) over the window to 1e-10; a window one step shorter differs (negative control).
"""

from __future__ import annotations

import pytest
import torch

from rtu_edge.cells import CELLS, make_cell
from rtu_edge.config import cell_options

F64 = torch.float64

# Option sets checked for each cell besides its defaults (the paper's ablations as options).
OPTION_VARIANTS: dict[str, list[dict]] = {
    "rtu": [
        {"activation": "tanh"},
        {"activation": "identity"},
        # (r, theta) parameterisations (rtu_math.PARAMETERISATIONS)
        {"param": "exp-direct"},
        {"param": "direct-direct"},
        {"param": "direct-direct", "activation": "tanh"},
        # linear recurrence + nonlinear / linear projection
        {"projection": True},
        {"projection": True, "activation": "identity"},
        {"projection": True, "activation": "tanh", "param": "exp-direct"},
        {"projection": True, "activation": "identity", "param": "direct-direct"},
    ],
    "rtu-nonlinear": [
        {"activation": "tanh"},
        {"activation": "identity"},
        {"param": "exp-direct"},
        {"param": "direct-direct"},
        {"param": "exp-direct", "activation": "tanh"},
    ],
    "online-lru": [
        # the architecture ablation (online_lru_math): no C, f on the output, f inside
        {"projection": False},
        {"projection": False, "activation": "relu"},
        {"projection": False, "activation": "tanh"},
        {"projection": False, "nonlinear": True, "activation": "relu"},
        {"projection": False, "nonlinear": True, "activation": "tanh"},
        {"activation": "relu"},
        {"activation": "tanh"},
        {"nonlinear": True, "activation": "tanh"},
    ],
    "block-rnn": [{"activation": "relu"}, {"activation": "identity"}],
    "mlp": [{"activation": "tanh"}, {"activation": "identity"}],
    "lru": [{"skip": True}],
}


def test_every_cell_is_covered():
    assert set(OPTION_VARIANTS) <= set(CELLS)


def _cases():
    for name in CELLS:
        yield pytest.param(name, {}, id=f"{name}")
        for opts in OPTION_VARIANTS.get(name, []):
            label = ",".join(f"{k}={v}" for k, v in opts.items())
            yield pytest.param(name, opts, id=f"{name}[{label}]")


def _cell(name, opts, d=3, n=4, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return make_cell(name, d, n, generator=gen, **opts).double()


def _problem(cell, batch=3, steps=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(steps, batch, cell.input_size, generator=g, dtype=F64)
    dones = torch.zeros(steps, batch, dtype=F64)
    dones[0] = 1.0
    dones[steps // 2, 0] = 1.0  # resets inside the sequence, in some rows only
    dones[steps - 2, 2] = 1.0
    cs = torch.randn(steps, batch, cell.output_size, generator=g, dtype=F64)
    return xs, dones, cs


def _rel(a, b) -> float:
    return float((a - b).abs().max() / max(float(b.abs().max()), 1e-12))


def _rtrl_total(cell, xs, dones, cs, params=None, perturb=False):
    state, traces = cell.initial_state(xs.shape[1]), cell.initial_traces(xs.shape[1])
    total, ys = None, []
    for t in range(xs.shape[0]):
        y, state, traces = cell.rtrl_step(xs[t], state, traces, dones[t], params)
        if perturb and t == 3:
            traces = type(traces)(*(tr * 1.01 for tr in traces))
        ys.append(y)
        g = cell.rtrl_grads(cs[t], state, traces, params)
        total = g if total is None else {k: total[k] + g[k] for k in g}
    return torch.stack(ys), total


@pytest.mark.parametrize("name,opts", list(_cases()))
def test_rtrl_gradients_equal_bptt(name, opts):
    cell = _cell(name, opts)
    if not cell.online:
        pytest.skip(f"{name} is trained by T-BPTT (see the T-BPTT conformance test)")
    xs, dones, cs = _problem(cell)
    ys, _ = cell(xs, cell.initial_state(xs.shape[1]), dones)
    (ys * cs).sum().backward()
    ys_rtrl, total = _rtrl_total(cell, xs, dones, cs)
    torch.testing.assert_close(ys_rtrl, ys.detach(), rtol=0, atol=1e-12)
    assert set(total) == set(cell.param_names)
    for k, p in cell.named_parameters():
        assert total[k].shape == p.shape
        assert _rel(total[k], p.grad) <= 1e-10, (k, _rel(total[k], p.grad))


@pytest.mark.parametrize("name,opts", list(_cases()))
def test_params_by_name_match_the_module(name, opts):
    cell = _cell(name, opts)
    if not cell.online:
        pytest.skip("no RTRL")
    xs, dones, cs = _problem(cell, steps=6)
    ys_a, g_a = _rtrl_total(cell, xs, dones, cs)
    ys_b, g_b = _rtrl_total(cell, xs, dones, cs, params=cell.param_dict())
    torch.testing.assert_close(ys_a, ys_b, rtol=0, atol=0)
    for k in g_a:
        torch.testing.assert_close(g_a[k], g_b[k], rtol=0, atol=0)


@pytest.mark.parametrize("name,opts", list(_cases()))
def test_input_grad_equals_one_step_autograd(name, opts):
    cell = _cell(name, opts)
    if not cell.online:
        pytest.skip("no RTRL")
    xs, dones, cs = _problem(cell, steps=4)
    state, traces = cell.initial_state(3), cell.initial_traces(3)
    for t in range(3):  # a non-zero state to start the checked step from
        _, state, traces = cell.rtrl_step(xs[t], state, traces, dones[t])
    x = xs[3].clone().requires_grad_(True)
    y, new_state = cell.step_forward(x, state, dones[3])
    (y * cs[3]).sum().backward()
    _, s2, tr2 = cell.rtrl_step(xs[3], state, traces, dones[3])
    g = cell.input_grad(cs[3], s2, tr2)
    assert _rel(g, x.grad) <= 1e-10


@pytest.mark.parametrize("name,opts", list(_cases()))
def test_step_forward_matches_forward(name, opts):
    cell = _cell(name, opts)
    xs, dones, _ = _problem(cell, steps=8)
    with torch.no_grad():
        ys, _ = cell(xs, cell.initial_state(3), dones)
        state = cell.initial_state(3)
        for t in range(xs.shape[0]):
            y, state = cell.step_forward(xs[t], state, dones[t])
            torch.testing.assert_close(y, ys[t], rtol=0, atol=1e-12)


def test_negative_control_a_wrong_trace_is_caught():
    cell = _cell("rtu", {})
    xs, dones, cs = _problem(cell)
    ys, _ = cell(xs, cell.initial_state(3), dones)
    (ys * cs).sum().backward()
    _, total = _rtrl_total(cell, xs, dones, cs, perturb=True)
    assert max(_rel(total[k], p.grad) for k, p in cell.named_parameters()) > 1e-4


@pytest.mark.parametrize("name", list(CELLS))
def test_factory_options_are_documented_defaults(name):
    """Every factory takes (input_size, hidden_size, generator=..., **options) and rejects
    unknown options with a ValueError naming the cell."""
    opts = cell_options(CELLS[name])
    cell = make_cell(name, 3, 4, **opts)
    assert cell.output_size > 0 and cell.recurrent_param_count() > 0
    with pytest.raises(ValueError, match=name):
        make_cell(name, 3, 4, no_such_option=1)


def _offline_cases():
    return [c for c in _cases() if not _cell(*c.values).online]


def _window_problem(cell, prefix=5, T=7):
    """A sequence of prefix + T steps (resets inside the window, in some rows), and the start
    state of the window: the state after the prefix, detached (what T-BPTT stores)."""
    xs, dones, cs = _problem(cell, steps=prefix + T, seed=2)
    dones[prefix + 2, 1] = 1.0
    with torch.no_grad():
        _, state0 = cell(xs[:prefix], cell.initial_state(xs.shape[1]), dones[:prefix])
    return xs[prefix:], dones[prefix:], cs[prefix:], type(state0)(*(s.detach() for s in state0))


def _window_grads(cell, xs, dones, cs, state0):
    """The learner's T-BPTT routine (td.window_outputs: `functional_call` of `cell.forward`
    with the parameters by name) over a window: gradients of sum(ys * cs)."""
    from rtu_edge.learners.td import window_outputs

    leaves = {k: v.requires_grad_(True) for k, v in cell.param_dict().items()}
    ys, _ = window_outputs(cell, leaves, xs, state0, dones)
    names = list(leaves)
    return dict(zip(names, torch.autograd.grad((ys * cs).sum(), [leaves[k] for k in names])))


@pytest.mark.parametrize("name,opts", _offline_cases())
def test_tbptt_window_gradients_equal_autograd_over_the_window(name, opts):
    """T-BPTT cells: the window gradient from a detached start state, with resets inside, equals
    plain autograd through `forward` over the window (the module's own parameters)."""
    cell = _cell(name, opts)
    xs, dones, cs, state0 = _window_problem(cell)
    got = _window_grads(cell, xs, dones, cs, state0)
    ys, _ = cell(xs, state0, dones)
    (ys * cs).sum().backward()
    assert set(got) == set(cell.param_names)
    for k, p in cell.named_parameters():
        assert _rel(got[k], p.grad) <= 1e-10, (k, _rel(got[k], p.grad))
    # and through the one-step path (`step_forward`, tick by tick), an independent unrolling
    state, loss = state0, 0.0
    for t in range(xs.shape[0]):
        y, state = cell.step_forward(xs[t], state, dones[t])
        loss = loss + (y * cs[t]).sum()
    names, params = zip(*cell.named_parameters())
    for k, g in zip(names, torch.autograd.grad(loss, params)):
        assert _rel(got[k], g) <= 1e-10, (k, _rel(got[k], g))


@pytest.mark.parametrize("name,opts", _offline_cases())
def test_negative_control_a_window_one_step_shorter_differs(name, opts):
    """The same loss (outputs of the last T - 1 steps) through a window one step shorter (from
    the detached state one step later) misses the credit through the first step."""
    cell = _cell(name, opts)
    xs, dones, cs, state0 = _window_problem(cell)
    cs = cs.clone()
    cs[0] = 0.0  # the loss reads the last T - 1 outputs only
    ys, _ = cell(xs, state0, dones)
    (ys * cs).sum().backward()
    with torch.no_grad():
        _, state1 = cell(xs[:1], state0, dones[:1])
    short = _window_grads(cell, xs[1:], dones[1:], cs[1:], state1)
    assert max(_rel(short[k], p.grad) for k, p in cell.named_parameters()) > 1e-4
