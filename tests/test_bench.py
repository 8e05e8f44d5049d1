"""`rtu-edge bench`: the table's columns, the JSON report's keys, the robot install (no torch)
and one-line option errors. Nothing here checks a timing: they depend on the machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli import app
from firmware_bridge.bench import COLUMNS, VERSUS_COLUMNS, case_inputs
from firmware_bridge.bundle import load_bundle

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--steps", "6", "--warmup", "4", "--rounds", "2"]
GRAPHS = ("learn", "act")
CASES = ("moving", "rest", "zero")


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    from export.bench_sizes import build_size

    return build_size("tiny", tmp_path_factory.mktemp("bench")).bundle


def _header_and_rows(text: str) -> tuple[list[str], dict[tuple[str, str], list[list[str]]]]:
    """The header lines and, per (size, graph) block, the case rows split on whitespace."""
    lines = text.splitlines()
    headers = [ln for ln in lines if ln.startswith("case ")]
    blocks: dict = {}
    key = None
    for ln in lines:
        if ": " in ln and ln.split(":")[0].split()[-1] in GRAPHS and not ln.startswith("case"):
            name, graph = ln.split(":")[0].rsplit(" ", 1)
            key = (name, graph)
            blocks[key] = []
        elif key and ln.split() and ln.split()[0] in CASES:
            blocks[key].append(ln.split())
    return headers, blocks


def _check_report(report: dict, names: list[str], paths: list[str]) -> None:
    meta = report["meta"]
    for k in (
        "command",
        "date_utc",
        "platform",
        "machine",
        "cpu",
        "cpus_usable",
        "python",
        "numpy",
        "onnxruntime",
        "torch",
        "steps",
        "warmup",
        "rounds",
        "cases",
        "denormals",
        "units",
    ):
        assert k in meta, k
    assert meta["command"].startswith("rtu-edge bench ")
    assert set(meta["denormals"]) >= {"asked", "flushed", "mechanism", "text"}
    assert [s["name"] for s in report["sizes"]] == names
    for size in report["sizes"]:
        assert size["paths"] == paths
        assert set(size["graphs"]) == set(GRAPHS)
        for g in size["graphs"].values():
            assert set(g["nodes"]) == {"stored", "optimised"}
            assert g["nodes"]["stored"] > 0 and g["nodes"]["optimised"] > 0
            assert g["state_floats"] > 0 and g["state_bytes"] == 4 * g["state_floats"]
            for where in ("cache", "memory"):
                assert set(g["copy_floor_us"][where]) == {"p50", "p99", "n"}
            assert list(g["cases"]) == list(CASES)
            for e in g["cases"].values():
                for p in paths:
                    assert set(e[p]) == {"p50", "p99", "n"} and e[p]["n"] == 6
                    assert e[p]["p50"] > 0
                assert set(e["subnormals_in_state"]) == set(paths)
                assert set(e["ratios"]) == {
                    "ort_over_copy_cache",
                    "ort_over_copy_memory",
                    "torch_over_ort",
                    "ort_over_moving",
                    "torch_over_moving",
                }


def test_bench_sizes_prints_the_table_and_writes_the_json(tmp_path):
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(app, ["bench", "--sizes", "tiny", *FAST, "--json", str(out)])
    assert r.exit_code == 0, r.output
    headers, blocks = _header_and_rows(r.stdout)
    assert len(headers) == 2  # one block per graph
    for h in headers:
        for col in COLUMNS:
            assert col in h
    assert set(blocks) == {("tiny", "learn"), ("tiny", "act")}
    for rows in blocks.values():
        assert [row[0] for row in rows] == list(CASES)
        for row in rows:  # case, 4 times, 4 ratios, subnormals: every cell filled
            assert len(row) == len(COLUMNS) and "-" not in row
    assert "subnormals flushed" in r.stdout or "subnormals kept" in r.stdout
    report = json.loads(out.read_text())
    _check_report(report, ["tiny"], ["ort", "torch"])
    assert report["meta"]["torch"]
    assert "--json" in report["meta"]["command"]


def test_bench_bundle_runs_without_torch(tiny_bundle, tmp_path):
    """The robot install: a bundle timed with onnxruntime and numpy, torch and onnx blocked."""
    out = tmp_path / "robot.json"
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['onnx'] = None\n"
        "from cli import app\n"
        f"args = ['bench', {str(tiny_bundle)!r}, *{FAST!r}, '--cases', 'moving,rest',"
        f" '--json', {str(out)!r}]\n"
        "try:\n"
        "    app(args)\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    headers, blocks = _header_and_rows(r.stdout)
    assert len(headers) == 2
    name = str(tiny_bundle)
    assert set(blocks) == {(name, "learn"), (name, "act")}
    for rows in blocks.values():
        assert [row[0] for row in rows] == ["moving", "rest"]
        for row in rows:  # no torch: its columns are "-"
            assert row[3:6] == ["-", "-", "-"] and len(row) == len(COLUMNS)
    report = json.loads(out.read_text())
    assert report["meta"]["torch"] is None
    assert report["sizes"][0]["paths"] == ["ort"]
    assert list(report["sizes"][0]["graphs"]["learn"]["cases"]) == ["moving", "rest"]


def test_several_bundles_are_timed_together_with_each_over_the_first(tiny_bundle, tmp_path):
    """`rtu-edge bench A B`: both bundles in the same rounds, then the A/B block (B over A)."""
    out = tmp_path / "ab.json"
    args = ["bench", str(tiny_bundle), str(tiny_bundle), *FAST]
    r = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert r.exit_code == 0, r.output
    headers, blocks = _header_and_rows(r.stdout)
    assert len(headers) == 4  # two bundles, two graphs each
    lines = r.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith("versus the first bundle"))
    ab = [ln.split() for ln in lines[at + 1 :] if ln.strip()]
    assert [row[0] for row in ab if row[0].startswith("[")] == ["[0]", "[1]"]
    assert sum(" ".join(row) == " ".join(VERSUS_COLUMNS) for row in ab) == 2
    data = [row for row in ab if row[0] in GRAPHS]
    assert len(data) == 2 * 2 * 3  # bundles x graphs x cases
    for row in data:  # graph, case, nodes, 2 times, 3 ratios: every cell filled
        assert len(row) == 8 and "-" not in row
    assert all(row[5] == "1.00" for row in data[:6])  # the first over itself
    report = json.loads(out.read_text())
    _check_report(report, [str(tiny_bundle)] * 2, ["ort"])
    assert report["meta"]["command"].startswith(f"rtu-edge bench {tiny_bundle} {tiny_bundle} ")
    rows = report["versus_first"]
    assert [(x["index"], x["graph"], x["case"]) for x in rows] == [
        (i, g, c) for i in (0, 1) for g in GRAPHS for c in CASES
    ]
    for x in rows:
        assert set(x) == {
            "index",
            "name",
            "first",
            "graph",
            "case",
            "nodes",
            "p50",
            "p99",
            "p50_over_first",
            "p99_over_first",
            "over_copy_memory",
        }
        assert x["p50_over_first"] > 0 and x["p99_over_first"] > 0
    assert all(x["p50_over_first"] == 1.0 for x in rows if x["index"] == 0)
    assert {x["first"] for x in rows} == {0}  # the same agent: both over the first


def test_one_bundle_has_no_ab_block(tiny_bundle):
    r = CliRunner().invoke(app, ["bench", str(tiny_bundle), *FAST, "--cases", "moving"])
    assert r.exit_code == 0, r.output
    assert "versus the first bundle" not in r.stdout


def test_case_inputs_follow_the_declared_sources(tiny_bundle):
    b = load_bundle(tiny_bundle)
    n, lead = 12, 4
    for case in CASES:
        xs = case_inputs(b, "learn", case, n, lead, seed=3)
        assert len(xs) == n and set(xs[0]) == {"obs", "reward", "first", "terminal", "noise"}
        assert [float(x["first"][0]) for x in xs] == [1.0] + [0.0] * (n - 1)
        assert all(float(x["terminal"][0]) == 0.0 for x in xs)
        moving = xs[:lead]
        assert len({x["obs"].tobytes() for x in moving}) == lead  # a new observation each tick
        held = xs[lead:]
        if case == "moving":
            assert len({x["obs"].tobytes() for x in held}) == n - lead
        else:
            assert len({x["obs"].tobytes() for x in held}) == 1
            assert all(float(x["reward"][0]) == 0.0 for x in held)
        noise = np.stack([x["noise"] for x in held])
        assert (np.all(noise == 0)) == (case == "zero")
        if case == "zero":
            assert all(np.all(x["obs"] == 0) for x in held)
    act = case_inputs(b, "act", "rest", n, lead)
    assert set(act[0]) == {"obs", "first"}


def _refused(args: list[str], *words: str) -> None:
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit), r.exception  # no traceback
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for w in words:
        assert w in lines[0], r.output


@pytest.mark.parametrize(
    "args,words",
    [
        (["--steps", "0"], ("--steps", "at least 1")),
        (["--steps", "4", "--rounds", "5"], ("--rounds",)),
        (["--rounds", "0"], ("--rounds",)),
        (["--warmup", "-1"], ("--warmup",)),
        (["--cases", "resting"], ("--cases", "moving, rest, zero")),
        (["--cases", ","], ("--cases",)),
        (["--sizes", "huge"], ("--sizes", "tiny, demo, paper")),
        (["--sizes", ""], ("--sizes",)),
        (["--denormals", "zero"], ("--denormals", "flush or keep")),
    ],
)
def test_bad_options_are_one_line_errors(args, words):
    _refused(["bench", *args], *words)


def test_bundle_and_sizes_together_and_a_json_directory_are_refused(tmp_path):
    _refused(["bench", str(tmp_path), "--sizes", "tiny"], "BUNDLE", "--sizes")
    _refused(["bench", "--json", str(tmp_path)], "--json", "directory")


def test_a_missing_bundle_is_a_one_line_error(tmp_path):
    _refused(["bench", str(tmp_path / "nope"), *FAST], "BundleError")
