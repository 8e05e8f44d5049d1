"""benchmarks/study/summarize.py on a real (tiny) sweep: the tables, and the committed summary
keeping the sweeps whose run directories are gone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rtu_edge.sweep import load_spec, run_sweep

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "study" / "summarize.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """runs/<sweep>: one td sweep of 2 seeds x 150 steps on the trace-conditioning stream."""
    root = tmp_path_factory.mktemp("study")
    spec = root / "tiny.toml"
    spec.write_text(
        f'out = "{root / "runs" / "tiny"}"\nsteps = 150\nworkers = 2\n'
        'envs = ["animal/trace-conditioning"]\ncells = ["rtu"]\nalgos = ["td"]\nseeds = [0, 1]\n'
        'extra = ["--hidden-size", "4", "--compile", "no"]\n'
    )
    index = run_sweep(load_spec(spec), log=lambda m: None)
    assert [r["status"] for r in index["runs"]] == ["done", "done"]
    return root / "runs"


def _summarize(runs: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--runs", str(runs), "--json", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_sweep_is_summarized_over_its_seeds(runs, tmp_path):
    out = tmp_path / "study.json"
    done = _summarize(runs, out)
    assert done.returncode == 0, done.stderr
    assert "### tiny (150 steps)" in done.stdout
    (table,) = json.loads(out.read_text())["sweeps"]
    (group,) = table["groups"]
    assert group["seeds"] == [0, 1] and group["cell"] == "rtu" and group["hidden_size"] == 4
    values = group["values"]["msre"]
    assert len(values) == 2 and group["msre"] == pytest.approx(sum(values) / 2)


def test_sweeps_without_run_directories_are_kept_and_can_be_dropped(runs, tmp_path):
    out = tmp_path / "study.json"
    old = {"sweep": "0_earlier", "spec": {"steps": 10}, "groups": []}
    stale = {"sweep": "tiny", "spec": {"steps": 10}, "groups": []}  # replaced by the fresh one
    out.write_text(json.dumps({"command": "earlier", "sweeps": [old, stale]}))
    done = _summarize(runs, out)
    assert done.returncode == 0, done.stderr
    assert "kept from" in done.stdout and "0_earlier" in done.stdout
    sweeps = json.loads(out.read_text())["sweeps"]
    assert [s["sweep"] for s in sweeps] == ["0_earlier", "tiny"]
    assert sweeps[1]["spec"]["steps"] == 150 and sweeps[1]["groups"]
    before = out.read_text()
    done = _summarize(runs, out, "--drop", "0_erlier")  # a typo: refused, nothing written
    assert done.returncode != 0 and "not in" in done.stderr and out.read_text() == before
    done = _summarize(runs, out, "--drop", "0_earlier")
    assert done.returncode == 0, done.stderr
    assert [s["sweep"] for s in json.loads(out.read_text())["sweeps"]] == ["tiny"]


def test_a_damaged_summary_file_is_a_one_line_error_and_is_left_alone(runs, tmp_path):
    out = tmp_path / "study.json"
    out.write_text("{not json")
    done = _summarize(runs, out)
    assert done.returncode != 0
    assert "is not a study summary" in done.stderr and "Traceback" not in done.stderr
    assert out.read_text() == "{not json"


FIGURES = ROOT / "benchmarks" / "study" / "figures.py"


def test_figures_are_drawn_from_the_committed_summary(tmp_path):
    """figures.py redraws items 3 and 6 from benchmarks/results/study.json alone (no run dirs),
    and names the sweep to run when the summary lacks one."""
    done = subprocess.run(
        [sys.executable, str(FIGURES), "--out", str(tmp_path), "--only", "3", "6"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("3_patterning_cells_by_seed.png", "6_popgym_return.png"):
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"command": "-", "sweeps": []}))
    done = subprocess.run(
        [sys.executable, str(FIGURES), "--json", str(empty), "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "has no sweep '1_trace_rtrl'" in done.stderr and "run.sh 1_trace_rtrl" in done.stderr
    done = subprocess.run(
        [sys.executable, str(FIGURES), "--json", str(empty), "--out", str(empty)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0 and "is a file" in done.stderr and "Traceback" not in done.stderr


def test_paired_differences_match_the_per_seed_values():
    """paired.py's mean difference is the mean over shared seeds of (group - base), recomputed
    here from study.json; a bad group name is a one-line error listing the groups."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "study"))
    import paired

    study = json.loads((ROOT / "benchmarks" / "results" / "study.json").read_text())
    sweep = next(s for s in study["sweeps"] if s["sweep"] == "3_patterning_cells")
    rows = paired.paired(sweep, "msre", "rtu")
    by = {g["cell"]: dict(zip(g["seeds"], g["values"]["msre"])) for g in sweep["groups"]}
    assert {r["group"] for r in rows} == set(by) - {"rtu"}
    for r in rows:
        shared = sorted(set(by[r["group"]]) & set(by["rtu"]))
        want = sum(by[r["group"]][s] - by["rtu"][s] for s in shared) / len(shared)
        assert r["seeds"] == len(shared) and r["mean_diff"] == pytest.approx(want)
        assert r["ci95"][0] <= r["mean_diff"] <= r["ci95"][1]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "study" / "paired.py"), "3_patterning_cells",
         "--base", "nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "no group 'nope'" in done.stderr
    assert "Traceback" not in done.stderr
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "study" / "paired.py"), "3_patterning_cells",
         "--metric", "nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and "no metric 'nope'" in done.stderr
    assert "Traceback" not in done.stderr
