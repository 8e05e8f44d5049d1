"""One conformance test over `CELLS`: every cell, through the module API the agent uses.

For every online (RTRL) cell and option set, in float64 with episode resets inside the sequence:
- the per-step RTRL gradients, summed, equal autograd BPTT through `forward` to 1e-10;
- `input_grad` equals autograd's one-step gradient w.r.t. x_t (state held fixed);
- `rtrl_step` and `step_forward` produce the outputs of `forward`;
- passing the parameters by name (`params=`) gives the same numbers as the module's own.
A negative control shows the comparison can fail.
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
