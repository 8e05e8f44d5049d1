"""Batched training (`train --seeds`, `train_batch`): K seeds in one process, one vmapped learn
step per tick, each agent's run directory as a single-seed run would write it."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from rtu_edge.config import NetConfig
from rtu_edge.run_dir import seed_dir
from rtu_edge.train import TrainConfig, load_run, resume_config, train, train_batch

ENV = "classic/CartPole-P"  # episodes of 10-50 steps: the K agents end theirs at different ticks
NET = NetConfig(hidden_size=4, encoder_size=8, head_size=8)


def _cfg(out, seed: int, steps: int = 300, **kw) -> TrainConfig:
    return TrainConfig(
        out=str(out), env=ENV, steps=steps, seed=seed, net=NetConfig(**vars(NET)), **kw
    )


def _episodes(run_dir) -> list[list[str]]:
    """metrics.csv rows without the timing columns (step, episode, return, length)."""
    rows = list(csv.reader(open(run_dir / "metrics.csv")))
    return [r[:4] for r in rows]


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    """Three seeds trained as one batch, and each seed trained on its own."""
    root = tmp_path_factory.mktemp("batch")
    seeds = [0, 1, 5]
    summaries = train_batch([_cfg(seed_dir(root / "b", s), s) for s in seeds], progress=False)
    singles = {s: train(_cfg(root / f"single{s}", s), progress=False) for s in seeds}
    return root, seeds, summaries, singles


def test_each_agent_equals_its_single_seed_run(batched):
    root, seeds, summaries, singles = batched
    for s, summary in zip(seeds, summaries):
        one, mine = root / f"single{s}", seed_dir(root / "b", s)
        assert _episodes(mine) == _episodes(one), s  # the same episodes, step for step
        assert len(_episodes(mine)) > 5
        assert summary["episodes"] == singles[s]["episodes"]
        assert summary["final_return"] == singles[s]["final_return"]
        assert summary["batch_size"] == 3 and "batch_size" not in singles[s]
        _, a = load_run(one)
        run, b = load_run(mine)
        assert run.train.seed == s and sorted(a) == sorted(b)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    # the seeds really differ (the batch did not train one agent three times)
    _, a0 = load_run(seed_dir(root / "b", 0))
    _, a1 = load_run(seed_dir(root / "b", 1))
    assert not torch.equal(a0["params.enc.w"], a1["params.enc.w"])


@pytest.mark.slow
def test_batched_run_dirs_are_ordinary_run_dirs(batched, tmp_path):
    """Export reads one, and a single-seed resume continues one."""
    from export.bundle import ExportConfig, export_run

    root, seeds, _, _ = batched
    run = seed_dir(root / "b", seeds[1])
    files = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.csv", "checkpoint.safetensors", "summary.json"} <= files
    manifest = export_run(
        ExportConfig(run_dir=str(run), out=str(tmp_path / "bundle"), parity_steps=200),
        log=lambda m: None,
    )
    assert manifest["parity"]["ok"]
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert train(resume_config(copy, steps=400), progress=False)["steps"] == 400


def test_batched_resume_continues_every_seed(tmp_path):
    seeds = [0, 1]
    cfgs = [_cfg(seed_dir(tmp_path, s), s, steps=150, checkpoint_every=100) for s in seeds]
    train_batch(cfgs, progress=False)
    before = {s: (seed_dir(tmp_path, s) / "metrics.csv").read_text() for s in seeds}
    out = train_batch([resume_config(seed_dir(tmp_path, s), steps=300) for s in seeds], False)
    assert [o["steps"] for o in out] == [300, 300]
    for s in seeds:
        after = (seed_dir(tmp_path, s) / "metrics.csv").read_text()
        assert after.startswith(before[s]) and len(after) > len(before[s])


def test_interrupt_checkpoints_every_agent(tmp_path, monkeypatch):
    import rtu_edge.train as train_mod

    calls = []
    consume = train_mod._Run.consume

    def interrupted(self, *a, **kw):
        calls.append(1)
        if len(calls) == 2 * 120:  # tick 120 of 2 agents
            raise KeyboardInterrupt
        return consume(self, *a, **kw)

    monkeypatch.setattr(train_mod._Run, "consume", interrupted)
    cfgs = [_cfg(seed_dir(tmp_path, s), s, steps=1000) for s in (0, 1)]
    with pytest.raises(KeyboardInterrupt):
        train_batch(cfgs, progress=False)
    from rtu_edge.run_dir import read_progress

    for s in (0, 1):
        assert 0 < int(read_progress(seed_dir(tmp_path, s))["step"]) <= 120


def test_unsupported_combinations_are_refused(tmp_path):
    with pytest.raises(ValueError, match="supports --algo ac, not 'ppo'"):
        train_batch([_cfg(tmp_path / "a", 0, algo="ppo"), _cfg(tmp_path / "b", 1, algo="ppo")])
    with pytest.raises(ValueError, match="supports --algo ac, not 'td'"):
        train_batch([_cfg(tmp_path / "a", 0, algo="td"), _cfg(tmp_path / "b", 1, algo="td")])
    other = _cfg(tmp_path / "b", 1)
    other.net.hidden_size = 8
    with pytest.raises(ValueError, match=r"differ only in seed and out; .* \['net'\]"):
        train_batch([_cfg(tmp_path / "a", 0), other])
    with pytest.raises(ValueError, match="distinct seeds"):
        train_batch([_cfg(tmp_path / "a", 0), _cfg(tmp_path / "b", 0)])
    gru = [_cfg(tmp_path / "a", 0), _cfg(tmp_path / "b", 1)]
    for c in gru:
        c.net.cell = "gru"
    with pytest.raises(ValueError, match="no exact RTRL"):
        train_batch(gru, progress=False)
    assert not (tmp_path / "a").exists()  # refused before any file is written


def test_cli_seeds(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    runner = CliRunner()
    args = ["train", "--out", str(tmp_path), "--env", ENV, "--hidden-size", "4", "--no-progress"]
    r = runner.invoke(app, [*args, "--seeds", "2,3", "--steps", "120"])
    assert r.exit_code == 0, r.output
    for s in (2, 3):
        config = json.loads((tmp_path / f"seed{s}" / "config.json").read_text())
        assert config["train"]["seed"] == s and config["train"]["out"] == str(tmp_path / f"seed{s}")
    r = runner.invoke(app, [*args, "--seeds", "2,3", "--steps", "200", "--resume"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "seed3" / "summary.json").read_text())["steps"] == 200
    for bad, msg in (
        (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
        (["--seeds", "1,1"], "lists a seed twice"),
        (["--seeds", "0,1", "--seed", "2"], "give --seed or --seeds, not both"),
        (["--seeds", "0,1", "--algo", "ppo"], "supports --algo ac"),
    ):
        r = runner.invoke(app, [*args, "--out", str(tmp_path / "x"), *bad])
        assert r.exit_code != 0 and msg in r.output, (bad, r.output)
