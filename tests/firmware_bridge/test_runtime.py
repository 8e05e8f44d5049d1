"""StepRunner (IOBinding ping-pong) against plain session.run, on a small learn-like graph."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from firmware_bridge.runtime import (
    StepRunner,
    StepRunnerError,
    carried_names,
    make_session,
    reference_step,
)

D, N = 3, 4
F32 = TensorProto.FLOAT


def _learn_like_model(elem=F32):
    """Carried w (D,N), e (D,N), h (1,N); constant k (1,N); per-step x (1,D), r (1,).

    Outputs w.next, e.next, h.next, y (1,N), v (1,): a toy TD-style update whose state depends
    on every earlier step, so a swapped A/B buffer shows up at once.
    """
    vi = helper.make_tensor_value_info
    inputs = [
        vi("w", elem, [D, N]),
        vi("e", elem, [D, N]),
        vi("h", elem, [1, N]),
        vi("k", elem, [1, N]),
        vi("x", elem, [1, D]),
        vi("r", elem, [1]),
    ]
    outputs = [
        vi("w.next", elem, [D, N]),
        vi("e.next", elem, [D, N]),
        vi("h.next", elem, [1, N]),
        vi("y", elem, [1, N]),
        vi("v", elem, [1]),
    ]
    consts = [
        helper.make_tensor("half", elem, [], [0.5]),
        helper.make_tensor("lam", elem, [], [0.9]),
        helper.make_tensor("lr", elem, [], [0.01]),
        helper.make_tensor("axes1", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Mul", ["h", "half"], ["hh"]),
        helper.make_node("Add", ["xw", "hh"], ["pre"]),
        helper.make_node("Add", ["pre", "k"], ["pre2"]),
        helper.make_node("Tanh", ["pre2"], ["h.next"]),
        helper.make_node("Identity", ["h.next"], ["y"]),
        helper.make_node("ReduceSum", ["h.next", "axes1"], ["hs"], keepdims=0),
        helper.make_node("Add", ["hs", "r"], ["v"]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node("Mul", ["xt", "h.next"], ["outer"]),
        helper.make_node("Mul", ["e", "lam"], ["decay"]),
        helper.make_node("Add", ["decay", "outer"], ["e.next"]),
        helper.make_node("Mul", ["e.next", "v"], ["g"]),
        helper.make_node("Mul", ["g", "lr"], ["step"]),
        helper.make_node("Sub", ["w", "step"], ["w.next"]),
    ]
    graph = helper.make_graph(nodes, "learn_like", inputs, outputs, consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return model


@pytest.fixture(scope="module")
def session():
    return make_session(_learn_like_model().SerializeToString())


def _state(rng, dtype=np.float32):
    return {
        "w": rng.normal(size=(D, N)).astype(dtype),
        "e": np.zeros((D, N), dtype),
        "h": np.zeros((1, N), dtype),
        "k": rng.normal(size=(1, N)).astype(dtype),
    }


def _inputs(rng, steps, dtype=np.float32):
    return [
        {"x": rng.normal(size=(1, D)).astype(dtype), "r": rng.normal(size=(1,)).astype(dtype)}
        for _ in range(steps)
    ]


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_kinds_of_inputs(session):
    runner = StepRunner(session, _state(np.random.default_rng(0)))
    assert carried_names(session) == ["w", "e", "h"]
    assert runner.carried_names == ("w", "e", "h")
    assert runner.constant_names == ("k",)
    assert runner.step_input_names == ("x", "r")
    assert runner.output_names == ("y", "v")


def test_equals_reference_exactly_over_50_steps(session):
    rng = np.random.default_rng(1)
    state = _state(rng)
    runner = StepRunner(session, state)
    ref_state = dict(state)
    for inputs in _inputs(rng, 50):
        out = runner.step(**inputs)
        ref_out, ref_state = reference_step(session, ref_state, inputs)
        _assert_same(out, ref_out)
        _assert_same(runner.state(), ref_state)
    assert runner.steps == 50
    # the state really moved (a frozen state would also "match" a broken reference)
    assert not np.array_equal(runner.state()["w"], state["w"])


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7])
def test_ping_pong_after_odd_and_even_steps(session, steps):
    rng = np.random.default_rng(steps)
    state = _state(rng)
    runner = StepRunner(session, state)
    ref_state = dict(state)
    for inputs in _inputs(rng, steps):
        runner.step(**inputs)
        _, ref_state = reference_step(session, ref_state, inputs)
    _assert_same(runner.state(), ref_state)
    # and the next step starts from that state, whichever buffer set holds it
    nxt = _inputs(rng, 1)[0]
    out = runner.step(**nxt)
    ref_out, ref_state = reference_step(session, ref_state, nxt)
    _assert_same(out, ref_out)
    _assert_same(runner.state(), ref_state)


@pytest.mark.parametrize("warmup", [4, 5])
def test_state_load_state_round_trip(session, warmup):
    rng = np.random.default_rng(10)
    runner = StepRunner(session, _state(rng))
    for inputs in _inputs(rng, warmup):
        runner.step(**inputs)
    snapshot = runner.state()
    later = _inputs(rng, 6)
    first_run = [runner.step(**i) for i in later]
    after_first = runner.state()
    runner.load_state(snapshot)
    _assert_same(runner.state(), snapshot)
    second_run = [runner.step(**i) for i in later]
    for a, b in zip(first_run, second_run, strict=True):
        _assert_same(a, b)
    _assert_same(runner.state(), after_first)
    # state() returns copies: mutating them does not touch the runner
    snap2 = runner.state()
    snap2["w"][...] = 123.0
    assert not np.array_equal(runner.state()["w"], snap2["w"])


def test_constant_inputs_bound_once_and_updatable(session):
    rng = np.random.default_rng(3)
    state = _state(rng)
    runner = StepRunner(session, state)
    inputs = _inputs(rng, 3)
    ref_state = dict(state)
    runner.step(**inputs[0])
    _, ref_state = reference_step(session, ref_state, inputs[0])
    _assert_same(runner.state(), ref_state)  # k is reported, unchanged

    new_k = rng.normal(size=(1, N)).astype(np.float32)
    runner.load_state({"k": new_k}, partial=True)
    ref_state["k"] = new_k
    for i in inputs[1:]:
        out = runner.step(**i)
        ref_out, ref_state = reference_step(session, ref_state, i)
        _assert_same(out, ref_out)
    np.testing.assert_array_equal(runner.state()["k"], new_k)


def test_missing_extra_and_mismatched_state_named(session):
    state = _state(np.random.default_rng(0))
    with pytest.raises(StepRunnerError, match=r"lacks carried tensors 'e'"):
        StepRunner(session, {k: v for k, v in state.items() if k != "e"})
    with pytest.raises(StepRunnerError, match=r"does not read: 'bogus'"):
        StepRunner(session, {**state, "bogus": np.zeros(1, np.float32)})
    with pytest.raises(StepRunnerError, match=r"'w' has shape \[4, 3\], the graph wants \[3, 4\]"):
        StepRunner(session, {**state, "w": np.zeros((N, D), np.float32)})
    with pytest.raises(StepRunnerError, match=r"'h' has dtype float64, the graph wants float32"):
        StepRunner(session, {**state, "h": np.zeros((1, N), np.float64)})


def test_load_state_checks_before_writing(session):
    rng = np.random.default_rng(4)
    runner = StepRunner(session, _state(rng))
    runner.step(**_inputs(rng, 1)[0])
    before = runner.state()
    bad = {**before, "e": np.zeros((1, 1), np.float32)}
    with pytest.raises(StepRunnerError, match="'e' has shape"):
        runner.load_state(bad)
    with pytest.raises(StepRunnerError, match="missing 'k'"):
        runner.load_state({k: v for k, v in before.items() if k != "k"})
    with pytest.raises(StepRunnerError, match="unknown names 'x'"):
        runner.load_state({"x": np.zeros((1, D), np.float32)}, partial=True)
    _assert_same(runner.state(), before)


def test_step_input_checks(session):
    rng = np.random.default_rng(5)
    runner = StepRunner(session, _state(rng))
    x = np.ones((1, D), np.float32)
    with pytest.raises(StepRunnerError, match="missing per-step inputs 'r'"):
        runner.step(x=x)
    with pytest.raises(StepRunnerError, match="unknown per-step inputs 'obs'"):
        runner.step(x=x, r=np.zeros(1, np.float32), obs=x)
    with pytest.raises(StepRunnerError, match=r"'x' has shape \[1, 2\]"):
        runner.step(x=np.ones((1, 2), np.float32), r=np.zeros(1, np.float32))
    assert runner.steps == 0
    # same element count, other shape, python scalar, float64: accepted and cast
    out = runner.step(x=np.ones(D), r=0.25)
    state = _state(np.random.default_rng(5))
    ref_out, _ = reference_step(
        session, state, {"x": np.ones((1, D), np.float32), "r": np.full(1, 0.25, np.float32)}
    )
    _assert_same(out, ref_out)


def test_outputs_are_copies(session):
    rng = np.random.default_rng(6)
    runner = StepRunner(session, _state(rng))
    ins = _inputs(rng, 2)
    out1 = runner.step(**ins[0])
    keep = out1["y"].copy()
    runner.step(**ins[1])
    np.testing.assert_array_equal(out1["y"], keep)


def test_reset_prefix(session):
    rng = np.random.default_rng(7)
    runner = StepRunner(session, _state(rng))
    for i in _inputs(rng, 3):
        runner.step(**i)
    assert runner.reset("h") == ["h"]
    assert not runner.state()["h"].any()
    assert runner.state()["w"].any()
    assert runner.reset("nope.") == []


def test_float64_graph_matches_reference():
    session = make_session(_learn_like_model(TensorProto.DOUBLE).SerializeToString())
    rng = np.random.default_rng(8)
    state = _state(rng, np.float64)
    runner = StepRunner(session, state)
    ref_state = dict(state)
    for inputs in _inputs(rng, 20, np.float64):
        out = runner.step(**inputs)
        ref_out, ref_state = reference_step(session, ref_state, inputs)
        _assert_same(out, ref_out)
    _assert_same(runner.state(), ref_state)


# ---- views: inputs bound to part of a carried buffer (contract.view_inputs) -------------------

VIEWS = {"w": ("flat", 0, (D, N)), "b": ("flat", D * N, (N,))}


def _packed_model():
    """Carried flat (D*N + N,) holding w (D, N) then b (N,), which the graph also reads by name
    (views); per-step x (1, D). y = x @ w + b; flat.next = 0.5 * flat + [x^T y | y] flattened,
    so the parameters move every step and a stale copy of w or b shows in y at once."""
    vi = helper.make_tensor_value_info
    size = D * N + N
    inputs = [
        vi("flat", F32, [size]),
        vi("w", F32, [D, N]),
        vi("b", F32, [N]),
        vi("x", F32, [1, D]),
    ]
    outputs = [vi("flat.next", F32, [size]), vi("y", F32, [1, N])]
    consts = [
        helper.make_tensor("half", F32, [], [0.5]),
        helper.make_tensor("minus1", TensorProto.INT64, [1], [-1]),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
        helper.make_node("Mul", ["xt", "y"], ["outer"]),
        helper.make_node("Reshape", ["outer", "minus1"], ["g_w"]),
        helper.make_node("Reshape", ["y", "minus1"], ["g_b"]),
        helper.make_node("Concat", ["g_w", "g_b"], ["g"], axis=0),
        helper.make_node("Mul", ["flat", "half"], ["decayed"]),
        helper.make_node("Add", ["decayed", "g"], ["flat.next"]),
    ]
    graph = helper.make_graph(nodes, "packed", inputs, outputs, consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return make_session(model.SerializeToString())


@pytest.mark.parametrize("steps", [1, 2, 5, 8])
def test_views_follow_the_carried_buffer(steps):
    session = _packed_model()
    rng = np.random.default_rng(20 + steps)
    state = {"flat": rng.normal(size=D * N + N).astype(np.float32)}
    runner = StepRunner(session, state, views=VIEWS)
    assert runner.view_names == ("w", "b")
    assert runner.step_input_names == ("x",)
    assert runner.state_names == ("flat",)  # a view is not state
    ref = dict(state)
    w0, b0 = state["flat"][: D * N].reshape(D, N), state["flat"][D * N :]
    for inputs in _inputs(rng, steps):
        inputs = {"x": inputs["x"]}
        out = runner.step(**inputs)
        ref_out, ref = reference_step(session, ref, inputs, views=VIEWS)
        _assert_same(out, ref_out)
        _assert_same(runner.state(), ref)
    # w and b copied once (what a format-4 runtime would bind) would give another y by now
    stale = inputs["x"] @ w0 + b0
    assert (steps == 1) == np.allclose(out["y"], stale, rtol=1e-6, atol=1e-6)
    # load_state moves the views along with the buffer
    fresh = {"flat": rng.normal(size=D * N + N).astype(np.float32)}
    runner.load_state(fresh)
    x = _inputs(rng, 1)[0]["x"]
    out = runner.step(x=x)
    want, _ = reference_step(session, fresh, {"x": x}, views=VIEWS)
    _assert_same(out, want)


def test_views_that_do_not_fit_are_refused():
    session = _packed_model()
    flat = np.zeros(D * N + N, np.float32)
    with pytest.raises(
        StepRunnerError, match=r"view 'b' as \[4\] at \[13:17\] of 'flat' \(float32\[16\]\)"
    ):
        StepRunner(session, {"flat": flat}, views={**VIEWS, "b": ("flat", D * N + 1, (N,))})
    with pytest.raises(StepRunnerError, match=r"views 'w' must be graph inputs"):
        StepRunner(session, {"flat": flat, "w": np.zeros((D, N), np.float32)}, views=VIEWS)
    with pytest.raises(StepRunnerError, match=r"views of tensors not in state: 'other'"):
        StepRunner(session, {"flat": flat}, views={**VIEWS, "b": ("other", 0, (N,))})
    with pytest.raises(StepRunnerError, match=r"input float32\[3, 4\]"):
        StepRunner(session, {"flat": flat}, views={**VIEWS, "w": ("flat", 0, (N, D))})


def test_a_view_is_not_state_and_load_state_says_so():
    session = _packed_model()
    runner = StepRunner(session, {"flat": np.ones(D * N + N, np.float32)}, views=VIEWS)
    with pytest.raises(StepRunnerError, match=r"'w' are views of a buffer .* load the buffer"):
        runner.load_state({"w": np.zeros((D, N), np.float32)}, partial=True)


def test_a_view_of_a_constant_follows_load_state():
    """A graph that reads a buffer without writing it back: its views point into the constant,
    so loading a new buffer moves them too."""
    vi = helper.make_tensor_value_info
    inputs = [vi("flat", F32, [D * N + N]), vi("w", F32, [D, N]), vi("x", F32, [1, D])]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "const_view", inputs, [vi("y", F32, [1, N])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    session = make_session(model.SerializeToString())
    views = {"w": VIEWS["w"]}
    runner = StepRunner(session, {"flat": np.zeros(D * N + N, np.float32)}, views=views)
    assert runner.constant_names == ("flat",) and runner.view_names == ("w",)
    x = np.ones((1, D), np.float32)
    assert not runner.step(x=x)["y"].any()
    new = np.arange(D * N + N, dtype=np.float32)
    runner.load_state({"flat": new}, partial=True)
    np.testing.assert_array_equal(runner.step(x=x)["y"], x @ new[: D * N].reshape(D, N))
