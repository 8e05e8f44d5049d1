#!/usr/bin/env bash
# A/B of the exported step graphs of two commits, in one process:
#
#   benchmarks/bench_ab.sh BASE [OUT] [rtu-edge bench options...]
#
# 1. exports the `rtu-edge bench` sizes demo and paper (export/bench_sizes.py: the `ac`
#    learner's initial state, the bundles `rtu-edge bench` itself times) with the code of
#    commit BASE (`git archive` into OUT/base-src, no worktree) into OUT/before, and with this
#    checkout's working tree into OUT/after;
# 2. times all four bundles interleaved in one `rtu-edge bench` run (before and after of
#    each size next to each other), which prints each bundle's times and its ORT p50 / p99 over
#    the first bundle of the same agent (so each after over its before); the report goes to
#    OUT/ab.json. The torch eager column needs `rtu-edge bench --sizes` (run it at both
#    commits for torch / ORT).
#
# PYTHON (default: python) needs the [train] extra for the export; OUT defaults to
# /tmp/rtu-edge-ab; SIZES (default "demo paper") picks the sizes. A base commit that cannot
# load the other's bundle format is fine: each side exports its own. Example (issue 8):
#
#   PYTHON=.venv/bin/python benchmarks/bench_ab.sh 45c139e /tmp/ab --steps 3000 --rounds 30
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
BASE=${1:?usage: benchmarks/bench_ab.sh BASE [OUT] [bench options...]}
OUT=${2:-/tmp/rtu-edge-ab}
shift $(($# >= 2 ? 2 : 1))
PYTHON=${PYTHON:-python}
SIZES=${SIZES:-demo paper}

mkdir -p "$OUT/base-src"
OUT=$(cd "$OUT" && pwd)  # absolute: the exports run from other directories
case $PYTHON in */*) PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON") ;; esac
git -C "$REPO" archive "$BASE" | tar -x -C "$OUT/base-src"

export_sizes() {  # SRC DEST: export SIZES with the code in SRC
    # Run from SRC: `python -` puts the working directory ahead of PYTHONPATH on sys.path, so
    # from this checkout both sides would export this checkout's code. The script checks where
    # its packages came from.
    (cd "$1" && PYTHONPATH="$1" "$PYTHON" - "$1" "$2" $SIZES) <<'EOF'
import os
import sys

import export
import rtu_edge
from export.bench_sizes import build_size

src = os.path.realpath(sys.argv[1])
for module in (export, rtu_edge):
    where = os.path.realpath(module.__file__)
    if not where.startswith(src + os.sep):
        sys.exit(f"bench_ab.sh: {module.__name__} came from {where}, not from {src}")
for name in sys.argv[3:]:
    print(build_size(name, sys.argv[2]).bundle)
EOF
}
export_sizes "$OUT/base-src" "$OUT/before"
export_sizes "$REPO" "$OUT/after"

bundles=()
for size in $SIZES; do
    bundles+=("$OUT/before/$size-bundle" "$OUT/after/$size-bundle")
done
cd "$REPO"
PYTHONPATH="$REPO" "$PYTHON" cli.py bench "${bundles[@]}" --json "$OUT/ab.json" "$@"
