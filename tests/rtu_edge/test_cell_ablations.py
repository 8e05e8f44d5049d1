"""The paper's ablations as cell options: what each option computes, beyond RTRL == BPTT.

The conformance test (test_cell_conformance.py) checks every option set's RTRL against BPTT;
here: the (r, theta) parameterisations agree with each other by the chain rule and share
the init distribution, the refusals are clear, the projection and the online LRU's
placements compute what the docs say, and every entry of ARCHITECTURE_ABLATION builds.
"""

from __future__ import annotations

import pytest
import torch

from rtu_edge.cells import (
    ARCHITECTURE_ABLATION,
    CELLS,
    PARAMETERISATIONS,
    PLACEMENTS,
    RTU,
    make_cell,
    online_lru_math,
    rtu_math,
)
from rtu_edge.config import NetConfig, TrainConfig, apply_overrides, cell_options

F64 = torch.float64
PARAMS = list(PARAMETERISATIONS)


def _problem(d=3, n=5, batch=2, steps=10, width=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(steps, batch, d, generator=g, dtype=F64)
    dones = torch.zeros(steps, batch, dtype=F64)
    dones[steps // 2, 0] = 1.0
    cs = torch.randn(steps, batch, width or 2 * n, generator=g, dtype=F64)
    return xs, dones, cs


def _rtrl_sum(cell, xs, dones, cs):
    state, traces = cell.initial_state(xs.shape[1]), cell.initial_traces(xs.shape[1])
    total, ys = None, []
    for t in range(xs.shape[0]):
        y, state, traces = cell.rtrl_step(xs[t], state, traces, dones[t])
        g = cell.rtrl_grads(cs[t], state, traces)
        total = g if total is None else {k: total[k] + g[k] for k in g}
        ys.append(y)
    return torch.stack(ys), total


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# --------------------------------------------------------------------------------------
# (r, theta) parameterisations
# --------------------------------------------------------------------------------------


def test_parameter_names_follow_the_parameterisation():
    want = {
        "exp-exp": ("nu_log", "theta_log", "w1", "w2"),
        "exp-direct": ("nu_log", "theta", "w1", "w2"),
        "direct-direct": ("nu", "theta", "w1", "w2"),
    }
    for param, names in want.items():
        for cell in ("rtu", "rtu-nonlinear"):
            assert make_cell(cell, 3, 4, param=param).param_names == names
        assert make_cell("rtu", 3, 4, param=param, projection=True).param_names == (
            *names,
            "proj_w",
            "proj_b",
        )
    assert cell_options(CELLS["rtu"])["param"] == "exp-exp"
    assert cell_options(CELLS["rtu-nonlinear"])["param"] == "exp-exp"


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_same_seed_same_r_and_theta_under_every_parameterisation(dtype):
    def r_theta_w(param):
        p = rtu_math.init_params(
            7, 300, generator=torch.Generator().manual_seed(5), dtype=dtype, param=param
        )
        co = rtu_math._coeffs(p)
        return torch.exp(-co.nu), co.theta, p.w1, p.w2

    ref = r_theta_w("exp-exp")
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    for param in PARAMS[1:]:
        got = r_theta_w(param)
        for a, b in zip(got[:2], ref[:2], strict=True):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol)
        assert torch.equal(got[2], ref[2]) and torch.equal(got[3], ref[3])
    r, theta = ref[0].double(), ref[1].double()
    assert (r > 0).all() and (r < 1).all() and (theta > 0).all() and (theta < 7).all()
    assert abs(float((r**2).mean()) - 0.5) < 0.06  # r^2 ~ U[0, 1]
    assert abs(float(theta.mean()) - torch.pi) < 0.4  # theta ~ U[0, 2 pi]


@pytest.mark.parametrize("nonlinear", [False, True], ids=["linear", "nonlinear"])
def test_parameterisations_agree_by_the_chain_rule(nonlinear):
    """Same (r, theta, w1, w2) under the three parameterisations: same outputs, and
    dL/dnu_log = nu * dL/dnu, dL/dtheta_log = theta * dL/dtheta (w1, w2 unchanged)."""
    d, n = 3, 5
    base = RTU(d, n, nonlinear=nonlinear, activation="tanh").double()
    nu_log, theta_log = base.nu_log.detach(), base.theta_log.detach()
    nu, theta = torch.exp(nu_log), torch.exp(theta_log)
    values = {
        "exp-exp": {"nu_log": nu_log, "theta_log": theta_log},
        "exp-direct": {"nu_log": nu_log, "theta": theta},
        "direct-direct": {"nu": nu, "theta": theta},
    }
    xs, dones, cs = _problem(d, n)
    out = {}
    for param, vals in values.items():
        cell = RTU(d, n, nonlinear=nonlinear, activation="tanh", param=param).double()
        with torch.no_grad():
            for k, v in {**vals, "w1": base.w1, "w2": base.w2}.items():
                getattr(cell, k).copy_(v)
        out[param] = _rtrl_sum(cell, xs, dones, cs)
    ys, g = out["exp-exp"]
    for param in PARAMS[1:]:
        torch.testing.assert_close(out[param][0], ys, rtol=1e-13, atol=1e-13)
    g_b, g_c = out["exp-direct"][1], out["direct-direct"][1]
    assert _rel(nu * g_c["nu"], g["nu_log"]) < 1e-12
    assert _rel(g_b["nu_log"], g["nu_log"]) < 1e-12
    assert _rel(theta * g_b["theta"], g["theta_log"]) < 1e-12
    assert _rel(theta * g_c["theta"], g["theta_log"]) < 1e-12
    assert _rel(g_c["nu"], g["nu_log"]) > 1e-3  # the factor nu is really there
    for k in ("w1", "w2"):
        assert _rel(g_b[k], g[k]) < 1e-12 and _rel(g_c[k], g[k]) < 1e-12


def test_authors_theta_grad_only_for_exp_exp():
    make_cell("rtu", 3, 4, authors_theta_grad=True)  # fine: the authors' parameterisation
    for param in PARAMS[1:]:
        for cell in ("rtu", "rtu-nonlinear"):
            with pytest.raises(ValueError, match="only for param='exp-exp'"):
                make_cell(cell, 3, 4, param=param, authors_theta_grad=True)
        p = rtu_math.init_params(3, 4, param=param)
        s, tr = rtu_math.initial_state(4, 1), rtu_math.initial_traces(3, 4, 1, False)
        with pytest.raises(ValueError, match="only for param=.exp-exp."):
            rtu_math.grads(p, torch.zeros(1, 8), s, tr, False, "relu", authors_theta_grad=True)


def test_bad_param_and_projection_are_clear_errors():
    with pytest.raises(ValueError, match="exp-exp.*exp-direct.*direct-direct"):
        make_cell("rtu", 3, 4, param="log-log")
    with pytest.raises(ValueError, match="projection"):
        RTU(3, 4, nonlinear=True, projection=True)
    with pytest.raises(ValueError, match="projection"):
        make_cell("rtu", 3, 4, projection="yes")
    with pytest.raises(ValueError, match="rtu-nonlinear.*projection"):
        make_cell("rtu-nonlinear", 3, 4, projection=True)  # not an option there


def test_overrides_set_the_new_options():
    cfg = TrainConfig(out="x", net=NetConfig(cell="rtu"))
    sets = ["cell.param=direct-direct", "cell.projection=true"]
    apply_overrides(cfg, sets, CELLS["rtu"])
    assert cfg.net.cell_options == {"param": "direct-direct", "projection": True}
    cfg = TrainConfig(out="x", net=NetConfig(cell="online-lru"))
    sets = ["cell.projection=false", "cell.nonlinear=true", "cell.activation=relu"]
    apply_overrides(cfg, sets, CELLS["online-lru"])
    assert cfg.net.cell_options == {"projection": False, "nonlinear": True, "activation": "relu"}


# --------------------------------------------------------------------------------------
# The projection (RTU) and the online LRU's placements
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["identity", "relu", "tanh"])
def test_rtu_projection_is_f_of_a_dense_layer_of_h(activation):
    d, n = 3, 4
    plain = make_cell(
        "rtu", d, n, generator=torch.Generator().manual_seed(2), activation="identity"
    )
    proj = make_cell(
        "rtu",
        d,
        n,
        generator=torch.Generator().manual_seed(2),
        activation=activation,
        projection=True,
    )
    plain, proj = plain.double(), proj.double()
    for k in plain.param_names:  # the projection is drawn last: same recurrence
        assert torch.equal(getattr(plain, k), getattr(proj, k))
    assert proj.recurrent_param_count() == 2 * d * n + 2 * n + (2 * n) ** 2 + 2 * n
    assert proj.output_size == 2 * n
    xs, dones, _ = _problem(d, n)
    with torch.no_grad():
        h, _ = plain(xs, plain.initial_state(2), dones)
        z, _ = proj(xs, proj.initial_state(2), dones)
    f = {"identity": lambda a: a, "relu": torch.relu, "tanh": torch.tanh}[activation]
    torch.testing.assert_close(z, f(h @ proj.proj_w + proj.proj_b), rtol=0, atol=1e-14)


def test_online_lru_placements_compute_what_the_docstring_says():
    d, n = 3, 4
    xs, dones, _ = _problem(d, n)

    def run(**opts):
        cell = make_cell(
            "online-lru", d, n, generator=torch.Generator().manual_seed(3), **opts
        ).double()
        with torch.no_grad():
            ys, _ = cell(xs, cell.initial_state(2), dones)
        return cell, ys

    base, y_c = run()  # y = Re(h C)
    bare, y_h = run(projection=False)  # y = [h_re, h_im]
    assert base.output_size == n and bare.output_size == 2 * n
    assert bare.param_names == ("nu_log", "theta_log", "gamma_log", "B_re", "B_im")
    for k in bare.param_names:  # same draws for the recurrence with and without C
        assert torch.equal(getattr(bare, k), getattr(base, k))
    h_re, h_im = y_h[..., :n], y_h[..., n:]
    torch.testing.assert_close(y_c, h_re @ base.C_re - h_im @ base.C_im, rtol=0, atol=1e-14)
    _, y = run(projection=False, activation="relu")
    torch.testing.assert_close(y, torch.relu(y_h), rtol=0, atol=0)
    _, y = run(activation="tanh")
    torch.testing.assert_close(y, torch.tanh(y_c), rtol=0, atol=0)
    # f inside with f = identity is the linear recurrence (other traces, same gradients)
    lin = run(projection=False)[0]
    nl = run(projection=False, nonlinear=True)[0]
    _, _, cs = _problem(d, n, width=2 * n)
    ys_a, g_a = _rtrl_sum(lin, xs, dones, cs)
    ys_b, g_b = _rtrl_sum(nl, xs, dones, cs)
    assert type(nl.initial_traces(1)) is online_lru_math.OnlineLRUNonlinearTraces
    torch.testing.assert_close(ys_b, ys_a, rtol=0, atol=1e-14)
    for k in g_a:
        assert _rel(g_b[k], g_a[k]) < 1e-12, k
    # f inside with relu: the state that feeds back is non-negative
    cell, _ = run(projection=False, nonlinear=True, activation="relu")
    state = cell.initial_state(2)
    for t in range(xs.shape[0]):
        _, state = cell.step_forward(xs[t], state, dones[t])
    assert (state.h_re >= 0).all() and (state.h_im >= 0).all()
    assert online_lru_math.param_count(64, 82, projection=False) == 3 * 82 + 2 * 64 * 82


def test_online_lru_projection_option_must_match_the_params():
    p = online_lru_math.init_params(3, 4, projection=False)
    s = online_lru_math.initial_state(4, 1)
    with pytest.raises(ValueError, match="projection=True but p is a OnlineLRUNoProjParams"):
        online_lru_math.step_forward(p, torch.zeros(1, 3), s, None, projection=True)
    with pytest.raises(ValueError, match="traces must be OnlineLRUNonlinearTraces"):
        tr = online_lru_math.initial_traces(3, 4, 1)
        online_lru_math.step(p, torch.zeros(1, 3), s, tr, None, nonlinear=True)


@pytest.mark.parametrize("family", list(ARCHITECTURE_ABLATION))
def test_every_placement_builds_and_runs(family):
    table = ARCHITECTURE_ABLATION[family]
    assert tuple(table) == PLACEMENTS
    nonlinear_recurrence = {PLACEMENTS[2]}
    for placement, (name, opts) in table.items():
        cell = make_cell(name, 3, 4, **opts)
        x = torch.randn(2, 3)
        y, state, traces = cell.rtrl_step(x, cell.initial_state(2), cell.initial_traces(2))
        assert y.shape == (2, cell.output_size)
        is_nl = isinstance(
            traces, rtu_math.NonlinearTraces | online_lru_math.OnlineLRUNonlinearTraces
        )
        assert is_nl == (placement in nonlinear_recurrence), placement
        has_proj = any(k in cell.param_names for k in ("proj_w", "C_re"))
        assert has_proj == ("projection" in placement), placement
