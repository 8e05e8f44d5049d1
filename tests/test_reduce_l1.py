"""benchmarks/reduce_l1.py: both forms of the L1 norm agree with numpy and are timed per shape."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def reduce_l1(load_benchmark):
    return load_benchmark("reduce_l1")


def test_times_every_shape_with_both_forms(reduce_l1, capsys):
    reduce_l1.main(["--calls", "3", "--rounds", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("onnxruntime ") and "ReduceL1" in lines[1]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["2x2000", "2x26112", "2000", "25030"]
    assert all(len(r) == 4 and float(r[2]) > 0 and float(r[3]) > 0 for r in rows)


def test_each_graph_computes_the_norm(reduce_l1):
    import numpy as np

    z = np.arange(-6, 6, dtype=np.float32).reshape(2, 6)
    for kind in reduce_l1.KINDS:
        got = reduce_l1.l1_session(kind, (2, 6), 1).run(None, {"z": z})[0]
        np.testing.assert_array_equal(got, np.abs(z).sum(1))


@pytest.mark.parametrize("args", [["--calls", "0"], ["--rounds", "0"]])
def test_bad_counts_are_refused(reduce_l1, args, capsys):
    with pytest.raises(SystemExit):
        reduce_l1.main(args)
    assert "must be at least 1" in capsys.readouterr().err
