"""benchmarks/same_values.py: equal for two exports of one step, unequal when a value moves."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from export.bench_sizes import build_size


@pytest.fixture(scope="module")
def same_values(load_benchmark):
    return load_benchmark("same_values")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("same")
    a = build_size("tiny", root / "a").bundle
    b = build_size("tiny", root / "b").bundle  # a second export of the same state
    return a, b


@pytest.mark.parametrize("graph", ["learn", "act"])
def test_two_exports_of_one_step_are_the_same(same_values, bundles, graph, capsys):
    assert (
        same_values.main([str(bundles[0]), str(bundles[1]), "--ticks", "480", "--graph", graph])
        == 0
    )
    out = capsys.readouterr().out
    assert out.strip().endswith("0 differ"), out
    if graph == "learn":  # the inf rewards at ticks 250, 251 and 460 skip three updates
        assert "(3 skipped updates)" in out, out


def test_a_changed_value_is_found(same_values, bundles, tmp_path, capsys):
    changed = tmp_path / "changed"
    shutil.copytree(bundles[1], changed)
    # another initial state: the same graphs, every parameter nudged (the manifest's hash of
    # state.npz is rewritten with it, so the bundle still loads)
    with np.load(changed / "state.npz") as z:
        state = {k: z[k] for k in z.files}
    state = {k: (v * np.float32(1.001) if k.startswith("params.") else v) for k, v in state.items()}
    np.savez(changed / "state.npz", **state)
    manifest = json.loads((changed / "manifest.json").read_text())
    manifest["files"]["state.npz"] = hashlib.sha256(
        (changed / "state.npz").read_bytes()
    ).hexdigest()
    (changed / "manifest.json").write_text(json.dumps(manifest))
    assert same_values.main([str(bundles[0]), str(changed), "--ticks", "50"]) == 1
    out = capsys.readouterr().out
    assert "differs" in out
    # how far apart: a nudge of 0.1% moves the value by more than float32 rounding would
    largest = out.strip().splitlines()[-1]
    assert largest.startswith("largest |diff| per output: "), out
    diffs = dict(part.rsplit(" ", 1) for part in largest.split(": ", 1)[1].split(", "))
    assert 1e-6 < float(diffs["value"]) < 1, largest


def test_largest_diff_counts_only_entries_that_differ(same_values):
    a = np.array([1.0, np.nan, np.inf, 2.0], np.float32)
    assert same_values._largest_diff(a, a.copy()) == 0.0  # NaN == NaN, inf == inf
    assert same_values._largest_diff(a, np.array([1.5, np.nan, np.inf, 2.0], np.float32)) == 0.5
    assert same_values._largest_diff(a, np.array([1.0, 0.0, np.inf, 2.0], np.float32)) == np.inf


def test_bad_arguments_are_one_line_refusals(same_values, bundles, tmp_path):
    not_a_bundle = tmp_path / "empty"
    not_a_bundle.mkdir()
    with pytest.raises(SystemExit, match="^same_values.py: ") as e:
        same_values.main([str(bundles[0]), str(not_a_bundle)])
    assert "manifest" in str(e.value)  # the loader's own message says what is missing
    with pytest.raises(SystemExit, match="^same_values.py: "):
        same_values.main([str(bundles[0]), str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as e:
        same_values.main([str(bundles[0]), str(bundles[1]), "--ticks", "0"])
    assert e.value.code == 2  # argparse's usage error


def test_td_bundles_are_filled_by_declared_source(same_values, tmp_path, capsys):
    """td's cumulant is declared with source "reward": it gets the reward's 3e38 and inf ticks,
    so td's skipped updates are exercised too (by name alone it would get plain noise)."""
    a = build_size("td-demo", tmp_path / "a").bundle
    b = build_size("td-demo", tmp_path / "b").bundle
    assert same_values.main([str(a), str(b), "--ticks", "480"]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("0 differ") and "(6 skipped updates)" in out, out
