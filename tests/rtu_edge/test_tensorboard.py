"""`rtu-edge train --tensorboard`: the metrics.csv rows also as TensorBoard scalars in RUN/tb/."""

from __future__ import annotations

import csv
import sys

import pytest
from typer.testing import CliRunner

from cli import app
from rtu_edge.run_dir import METRICS_HEADER

TRAIN = ["train", "--env", "classic/CartPole-P", "--hidden-size", "4", "--compile", "no"]


def _scalars(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((run / "tb").glob("events.out.tfevents.*"))
    assert events, f"no event file in {run / 'tb'}"
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tensorboard_holds_the_metrics_rows(tmp_path):
    pytest.importorskip(
        "tensorboard", reason="tensorboard is optional (pip install tensorboard); not installed"
    )
    run = tmp_path / "run"
    r = CliRunner().invoke(app, [*TRAIN, "--steps", "400", "--out", str(run), "--tensorboard"])
    assert r.exit_code == 0, r.output
    scalars, rows = _scalars(run), _rows(run)
    assert rows and sorted(scalars) == sorted(METRICS_HEADER[1:])
    got = scalars["episode_return"]
    assert [s for s, _ in got] == [int(row["step"]) for row in rows]
    assert [v for _, v in got] == pytest.approx([float(row["episode_return"]) for row in rows])
    assert [v for _, v in scalars["episode_length"]] == [float(r["episode_length"]) for r in rows]
    # resumed: the new rows go on in the same directory (the config keeps tensorboard on)
    r = CliRunner().invoke(app, ["train", "--out", str(run), "--resume", "--steps", "700"])
    assert r.exit_code == 0, r.output
    scalars, rows = _scalars(run), _rows(run)
    steps = sorted({s for s, _ in scalars["episode_return"]})
    assert steps == [int(row["step"]) for row in rows] and steps[-1] > 400


def test_tensorboard_from_the_td_tbptt_loop(tmp_path):
    pytest.importorskip(
        "tensorboard", reason="tensorboard is optional (pip install tensorboard); not installed"
    )
    run = tmp_path / "td"
    args = ["train", "--algo", "td", "--cell", "gru", "--env", "classic/CartPole-P"]
    args += ["--hidden-size", "4", "--steps", "300", "--compile", "no", "--out", str(run)]
    r = CliRunner().invoke(app, [*args, "--tensorboard"])
    assert r.exit_code == 0, r.output
    rows = _rows(run)
    assert rows and len(_scalars(run)["episode_return"]) == len(rows)


def test_tensorboard_missing_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails
    run = tmp_path / "run"
    r = CliRunner().invoke(app, [*TRAIN, "--steps", "50", "--out", str(run), "--tensorboard"])
    assert r.exit_code == 1 and "pip install tensorboard" in r.output, r.output
    assert "Traceback" not in r.output and not run.exists()
