"""benchmarks/bench_ab.sh: each side's bundles come from that side's code.

It once exported both sides with the working tree (`python -` from the repository root puts
the checkout ahead of PYTHONPATH), so its A/B compared a graph with itself. The script now
exports each side from its own source tree and exits if `export` or `rtu_edge` came from
anywhere else; this runs it end to end on the tiny size against HEAD.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _git_head() -> bool:
    if shutil.which("git") is None:
        return False
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "HEAD"], capture_output=True
    )
    return done.returncode == 0


@pytest.mark.skipif(not _git_head(), reason="needs git and a checkout with a HEAD commit")
def test_bench_ab_exports_each_side_from_its_own_tree(tmp_path):
    out = tmp_path / "ab"
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHON": sys.executable,
        "SIZES": "tiny",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks/bench_ab.sh"), "HEAD", str(out)]
        + ["--steps", "40", "--warmup", "20", "--rounds", "2", "--cases", "moving"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "came from" not in done.stderr
    # the base side was exported by the archived tree, which holds its own copy of the code
    assert (out / "base-src/export/bench_sizes.py").is_file()
    for side in ("before", "after"):
        assert (out / side / "tiny-bundle/manifest.json").is_file()
    report = json.loads((out / "ab.json").read_text())
    assert "before/tiny-bundle" in json.dumps(report) and "after/tiny-bundle" in json.dumps(report)
