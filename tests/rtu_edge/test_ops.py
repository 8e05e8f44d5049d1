"""rtu_edge.ops: each helper means the same in torch and in its exported graph (onnxruntime)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch

from firmware_bridge.runtime import make_session
from rtu_edge.ops import added, finite, l1_norm, plus_eps, taken_if

VALUES = [0.0, -0.0, 1.5, -3e38, 1e-45, math.inf, -math.inf, math.nan]


class _Ops(torch.nn.Module):
    def forward(self, x, v):
        return finite(x), plus_eps(v, 1e-8), l1_norm(v)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    path = tmp_path_factory.mktemp("ops") / "ops.onnx"
    args = (torch.zeros(1), torch.zeros(3))
    torch.onnx.export(_Ops(), args, str(path), dynamo=True, opset_version=18, verbose=False)
    model = onnx.load(str(path))
    return model, make_session(model.SerializeToString())


def test_finite_is_isfinite_for_one_element():
    for v in VALUES:
        x = torch.tensor([v])
        assert bool(finite(x)) == math.isfinite(v), v
        assert finite(x).shape == x.shape
    assert bool(finite(torch.tensor(math.nan))) is False  # 0-d works too


def test_finite_refuses_more_than_one_element():
    with pytest.raises(ValueError, match="one element"):
        finite(torch.zeros(2))


def test_exported_ops_agree_with_torch(session):
    model, sess = session
    ops = [n.op_type for n in model.graph.node]
    assert "IsNaN" not in ops and "IsInf" not in ops  # the cheap form survived export
    assert "ReduceL1" in ops
    assert "Reshape" not in ops  # l1_norm names the axes: no reshape to 1-D before the sum
    v = np.zeros(3, np.float32)  # plus_eps must not be folded away: sqrt(0 + eps) > 0
    for value in VALUES:
        x = np.array([value], np.float32)
        got_finite, got_eps, got_l1 = sess.run(None, {"x": x, "v": v})
        assert bool(got_finite[0]) == math.isfinite(value), value
    assert np.all(got_eps == np.float32(1e-8))
    w = np.array([1.0, -2.0, 0.5], np.float32)
    assert sess.run(None, {"x": x, "v": w})[2] == pytest.approx(3.5)


def test_l1_norm_over_everything_or_one_axis():
    m = torch.tensor([[1.0, -2.0], [3.0, -4.0]])
    assert l1_norm(m).shape == () and float(l1_norm(m)) == 10.0
    assert torch.equal(l1_norm(m, dim=1), torch.tensor([3.0, 7.0]))
    assert float(l1_norm(torch.tensor(-2.5))) == 2.5  # 0-d


def _update(w, z, c):
    return (w + c * z,)


class _Taken(torch.nn.Module):
    def forward(self, w, z, c):  # the step computed before the If, which only adds it
        step = c * z
        return taken_if(finite(step.sum()), added, (w,), (step,))[0]


def test_added_pairs_values_with_their_steps():
    w1, w2, d1, d2 = torch.ones(2), torch.zeros(3), torch.full((2,), 2.0), torch.arange(3.0)
    a, b = added(w1, w2, d1, d2)
    assert torch.equal(a, w1 + d1) and torch.equal(b, w2 + d2)
    with pytest.raises(ValueError, match="k values then k steps, got 3"):
        added(w1, w2, d1)


def test_taken_if_selects_the_update_only_when_ok():
    w, z = torch.arange(4.0), torch.ones(4)
    (moved,) = taken_if(torch.tensor([True]), _update, (w,), (z, torch.tensor(2.0)))
    assert torch.equal(moved, w + 2.0)
    (kept,) = taken_if(torch.tensor([False]), _update, (w,), (z, torch.tensor(math.nan)))
    assert torch.equal(kept, w)  # a NaN update is not applied
    with pytest.raises(ValueError, match="one-element condition"):
        taken_if(torch.ones(2, dtype=torch.bool), _update, (w,), (z, torch.tensor(1.0)))


def test_taken_if_exports_as_an_if_with_the_same_values(tmp_path):
    path = tmp_path / "taken.onnx"
    args = (torch.zeros(5), torch.zeros(5), torch.ones(1))
    torch.onnx.export(_Taken(), args, str(path), dynamo=True, opset_version=18, verbose=False)
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "If" in ops and "Where" not in ops  # no select pass over the buffer
    sess = make_session(model.SerializeToString())
    w = np.arange(5, dtype=np.float32)
    z = np.linspace(-1, 1, 5).astype(np.float32)
    for c in (0.5, -3.0, math.inf, math.nan):
        feed = {"w": w, "z": z, "c": np.array([c], np.float32)}
        torch_out = _Taken()(*(torch.from_numpy(v) for v in feed.values()))
        (got,) = sess.run(None, feed)
        np.testing.assert_array_equal(got, torch_out.numpy())
        np.testing.assert_array_equal(got, w + c * z if math.isfinite(c) else w)
