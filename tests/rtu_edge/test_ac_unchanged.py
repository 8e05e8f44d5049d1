"""`ac` moved behind the Learner and Cell interfaces without changing its numbers.

The reference (data/ac_golden_1406f03.json) was written by data/make_ac_golden_1406f03.py with
the code at commit 1406f03, before the move: every finished episode (step, return, length) and
the sum of |x| of every checkpointed tensor after 3000 steps, for three agents (discrete /
linear RTU, discrete / non-linear RTU, continuous / linear RTU with LayerNorm). Tensor names
changed in the move (params.rtu.* -> params.cell.*, RTRL traces carry.* -> trace.*); nothing
else may.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from rtu_edge.config import NetConfig
from rtu_edge.train import TrainConfig, load_run, train

GOLDEN = json.loads((Path(__file__).parent / "data" / "ac_golden_1406f03.json").read_text())
STATE_OF_THE_CELL = ("carry.c1", "carry.c2", "carry.v_prev")


def _new_name(old: str) -> str:
    for group in ("params", "elig_v", "elig_pi"):
        old = old.replace(f"{group}.rtu.", f"{group}.cell.")
    if old.startswith("carry.") and old not in STATE_OF_THE_CELL:
        old = "trace." + old[len("carry.") :]
    return old


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_same_seed_same_numbers_as_before_the_move(tmp_path, case):
    ref = GOLDEN[case]
    kw = dict(ref["config"])
    net = NetConfig(cell=kw.pop("cell"), layer_norm=kw.pop("layer_norm", False))
    train(TrainConfig(out=str(tmp_path), compile="no", net=net, **kw), progress=False)
    with open(tmp_path / "metrics.csv") as f:
        rows = [
            [int(r["step"]), float(r["episode_return"]), int(r["episode_length"])]
            for r in csv.DictReader(f)
        ]
    assert rows == ref["episodes"]
    _, state = load_run(tmp_path)
    want = {_new_name(k): v for k, v in ref["state_abs_sum"].items()}
    assert set(state) == set(want)
    for k, v in want.items():
        got = float(state[k].double().abs().sum())
        assert got == pytest.approx(v, rel=1e-6, abs=1e-12), k
    assert all(bool(torch.isfinite(t).all()) for t in state.values())
