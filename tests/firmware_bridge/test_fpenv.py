"""Flushing subnormal floats on the thread that runs the graph (firmware_bridge/fpenv.py).

These check what the flags do, not how fast anything runs: a step graph that decays a trace
leaves subnormal floats in its state unless the flags are set, and `rtu-edge run` sets them
for its loop and puts the caller's thread back as it was.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from firmware_bridge import fpenv
from firmware_bridge.runtime import StepRunner, make_session

onnx = pytest.importorskip("onnx")
supported = pytest.mark.skipif(fpenv.mechanism() is None, reason="no flush-to-zero support here")


def _decay_graph() -> bytes:
    """z.next = 0.5 * z + x: a trace decaying towards zero when x is 0."""
    from onnx import TensorProto, helper

    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    out = helper.make_tensor_value_info("z.next", TensorProto.FLOAT, [1, 8])
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    nodes = [
        helper.make_node("Mul", ["z", "half"], ["zh"]),
        helper.make_node("Add", ["zh", "x"], ["z.next"]),
    ]
    graph = helper.make_graph(nodes, "decay", [z, x], [out], [half])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model.SerializeToString()


def _decayed_state(runner: StepRunner) -> dict:
    runner.load_state({"z": np.full((1, 8), 1e-30, np.float32)})
    for _ in range(30):  # 1e-30 / 2**30 ~ 1e-39: subnormal, far from zero
        runner.step(x=np.zeros((1, 8), np.float32))
    return runner.state()


def test_not_flushed_by_default():
    assert not fpenv.denormals_flushed()


@supported
def test_flush_sets_and_restores_the_flags():
    with fpenv.flush_denormals() as fp:
        assert fp.active and fp.requested and fp.mechanism
        assert fpenv.denormals_flushed()
        assert "flushed" in fp.describe()
    assert not fpenv.denormals_flushed()
    keep = fpenv.flush_denormals(False)
    assert not keep.active and "kept" in keep.describe()
    keep.restore()


@supported
def test_flags_belong_to_the_thread_that_set_them():
    seen = []
    fp = None

    def worker():
        nonlocal fp
        fp = fpenv.flush_denormals()
        seen.append(fpenv.denormals_flushed())
        fp.restore()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [True]
    assert not fpenv.denormals_flushed()  # this thread was never changed by the worker


@supported
def test_onnxruntime_on_the_calling_thread_honours_the_flags():
    session = make_session(_decay_graph())
    runner = StepRunner(session, {"z": np.zeros((1, 8), np.float32)})
    assert fpenv.subnormal_count(_decayed_state(runner)) == 8  # what a robot at rest accumulates
    with fpenv.flush_denormals():  # set after the session exists (see fpenv.py)
        flushed = _decayed_state(runner)
    assert fpenv.subnormal_count(flushed) == 0
    assert np.all(flushed["z"] == 0.0)


def test_subnormal_count_ignores_zero_normal_and_integer_values():
    tiny = np.finfo(np.float32).tiny
    state = {
        "a": np.array([0.0, tiny, -tiny, 1.0, tiny / 4, -tiny / 8], np.float32),
        "b": np.array([1, 0, 2], np.int64),
    }
    assert fpenv.subnormal_count(state) == 2


def test_an_unsupported_platform_changes_nothing(monkeypatch):
    monkeypatch.setattr(fpenv, "_layout", lambda: None)
    assert fpenv.mechanism() is None
    with fpenv.flush_denormals() as fp:
        assert not fp.active and fp.mechanism is None
        assert "no flush-to-zero support" in fp.describe()
        assert not fpenv.denormals_flushed()
