"""One conformance test over `LEARNERS` x every online cell: train, export, parity, load, run.

Every exportable (learner, cell) pair must give a bundle that passes the export parity check
(teacher-forced, every output of both graphs against torch) and loads on the robot side with
the contract's checks, running a few steps with the StepRunner. T-BPTT cells are refused by the
streaming learners with a message that names the RTRL cells.
"""

from __future__ import annotations

import numpy as np
import pytest

from export.bundle import ExportConfig, export_run
from firmware_bridge.bundle import load_bundle
from firmware_bridge.contract import sample_noise
from rtu_edge.cells import CELLS, make_cell
from rtu_edge.config import NetConfig
from rtu_edge.learners import LEARNERS
from rtu_edge.train import TrainConfig, train

ONLINE = [name for name in CELLS if make_cell(name, 2, 4).online]
OFFLINE = [name for name in CELLS if name not in ONLINE]


@pytest.mark.parametrize("cell", ONLINE)
@pytest.mark.parametrize("algo", list(LEARNERS))
def test_every_online_cell_exports_with_parity(tmp_path, algo, cell):
    run = tmp_path / "run"
    net = NetConfig(cell=cell, hidden_size=4, encoder_size=8, head_size=8)
    summary = train(
        TrainConfig(out=str(run), steps=300, algo=algo, net=net, compile="no"), progress=False
    )
    assert summary["non_finite_updates"] == 0
    manifest = export_run(
        ExportConfig(run_dir=str(run), out=str(tmp_path / "bundle"), parity_steps=200),
        log=lambda m: None,
    )
    assert manifest["parity"]["ok"], manifest["parity"]
    # a learner that trains off the robot (ppo) exports the streaming learner it converts to
    exported_as = algo if LEARNERS[algo].streaming else "ac"
    assert manifest["cell"] == cell and manifest["learner"] == exported_as
    # act_prepare.onnx exactly when the act step has constants to prepare: ac's observation
    # std always, a cell's act_constants (the RTU's) for td too (td normalises nothing here)
    has_consts = bool(make_cell(cell, 2, 4).act_constants())
    prepared = (tmp_path / "bundle" / "act_prepare.onnx").exists()
    assert prepared == (exported_as == "ac" or has_consts), (algo, cell)
    b = load_bundle(tmp_path / "bundle")
    for graph in ("learn", "act"):
        spec = b.manifest.graphs[graph]
        runner = b.runner(graph)
        rng = np.random.default_rng(0)
        for t in range(5):
            values = {
                "obs": rng.standard_normal((1, b.manifest.observation_size)).astype(np.float32),
                "reward": np.array([0.5], np.float32),
                "first": np.array([1.0 if t == 0 else 0.0], np.float32),
                "terminal": np.zeros(1, np.float32),
            }
            if b.manifest.noise is not None:
                values["noise"] = sample_noise(b.manifest.noise, rng)
            out = runner.step(**{s.name: values[s.source] for s in spec.step_inputs})
            for o in spec.step_outputs:
                assert np.isfinite(out[o.name]).all(), (graph, o.name)


@pytest.mark.parametrize("cell", OFFLINE)
def test_streaming_learners_refuse_t_bptt_cells(tmp_path, cell):
    with pytest.raises(ValueError, match="no exact RTRL"):
        train(
            TrainConfig(out=str(tmp_path / "r"), steps=10, net=NetConfig(cell=cell)),
            progress=False,
        )
