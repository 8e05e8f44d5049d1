"""benchmarks/profile_step.py: per-op and per-node report of a bundle; bad paths are refused."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def profile_step(load_benchmark):
    return load_benchmark("profile_step")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    from export.bench_sizes import build_size

    return build_size("tiny", tmp_path_factory.mktemp("profile")).bundle


def test_reports_every_op_type_and_the_top_nodes(profile_step, tiny_bundle, capsys):
    profile_step.main([str(tiny_bundle), "--steps", "5", "--warmup", "2", "--top", "3"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[1:3] == ["nodes", "ran;"] and int(out[0].split()[0]) > 100
    assert "op type" in out[2] and any(line.startswith("MatMul") for line in out)
    node_lines = out[out.index(next(x for x in out if x.startswith("node "))) + 1 :]
    assert len(node_lines) == 3 and all("->" in x for x in node_lines)


@pytest.mark.parametrize("where", ["missing", "file"])
def test_a_path_that_is_not_a_bundle_is_refused(profile_step, tmp_path, where, capsys):
    path = tmp_path / "x"
    if where == "file":
        path.write_text("not a bundle")
    with pytest.raises(SystemExit) as e:
        profile_step.main([str(path)])
    assert str(e.value).startswith("error: ") and "rtu-edge export" in str(e.value)
