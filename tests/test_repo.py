"""The repository keeps its promises: README commands, CI, install split, CLI basics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def _readme_bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_the_readmes_test_command():
    blocks = [b.strip() for b in _readme_bash_blocks()]
    test_cmd = next(b for b in blocks if b.endswith("pytest -q"))
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
    assert any(b.endswith("rtu-edge demo") for b in blocks)


def test_robot_install_has_no_torch_and_train_pins_cpu_torch():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"]).lower()
    assert "torch" not in base and "onnx>" not in base and "gymnasium" not in base
    train = project["optional-dependencies"]["train"]
    assert "torch==2.13.0" in train


def test_readme_cell_example_runs():
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)
    assert set(namespace["grads"]) == {"nu_log", "theta_log", "w1", "w2"}


def test_cli_default_env_matches_registry():
    import cli
    from rtu_edge import envs

    assert cli.DEFAULT_ENV == envs.DEFAULT_ENV


def test_cli_envs_lists_one_line_each():
    from cli import app
    from rtu_edge import envs

    r = CliRunner().invoke(app, ["envs"])
    assert r.exit_code == 0
    lines = r.output.strip().splitlines()
    assert len(lines) == len(envs.list_envs())
    assert any(line.startswith("mujoco/HalfCheetah-P") for line in lines)


def test_cli_train_unknown_env_is_a_clear_error(tmp_path):
    from cli import app

    r = CliRunner().invoke(
        app,
        [
            "train",
            "--env",
            "classic/CartPol-P",
            "--out",
            str(tmp_path / "r"),
            "--steps",
            "10",
            "--no-progress",
        ],
    )
    assert r.exit_code == 1
    assert "classic/CartPole-P" in r.output  # names the close match


def test_cli_train_refuses_to_overwrite_a_run(tmp_path):
    from cli import app

    out = tmp_path / "r"
    out.mkdir()
    (out / "metrics.csv").write_text("precious")
    r = CliRunner().invoke(app, ["train", "--out", str(out), "--steps", "10", "--no-progress"])
    assert r.exit_code == 1 and "--overwrite" in r.output
    assert (out / "metrics.csv").read_text() == "precious"


def test_cli_train_writes_a_run_directory(tmp_path):
    import json

    from cli import app

    out = tmp_path / "r"
    r = CliRunner().invoke(
        app, ["train", "--out", str(out), "--steps", "300", "--no-progress", "--hidden-size", "4"]
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert {"final_return", "steps_per_second", "recurrent_params"} <= set(summary)
    assert summary["recurrent_params"] == 2 * 32 * 4 + 2 * 4
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("step,episode,episode_return")
    assert (out / "checkpoint.safetensors").stat().st_size > 0
    assert (out / "learning_curve.png").read_bytes().startswith(b"\x89PNG")


def test_cli_ports_runs():
    from cli import app

    r = CliRunner().invoke(app, ["ports"])
    assert r.exit_code == 0


def test_cli_help_and_robot_modules_stay_light():
    """`rtu-edge --help` and the robot command's imports pull in neither torch nor gymnasium."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import cli\n"
        "import firmware_bridge.robot_loop, firmware_bridge.bundle, firmware_bridge.link\n"
        "print(sorted(m for m in ('torch', 'gymnasium', 'onnx') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_cli_train_resume(tmp_path):
    import json

    from cli import app

    out = tmp_path / "r"
    runner = CliRunner()
    r = runner.invoke(
        app, ["train", "--out", str(out), "--steps", "200", "--no-progress", "--hidden-size", "4"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app, ["train", "--out", str(out), "--resume", "--steps", "400", "--no-progress"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads((out / "summary.json").read_text())["steps"] == 400
    assert (
        json.loads((out / "config.json").read_text())["train"]["net"]["hidden_size"] == 4
    )  # its own options


def _imports(path: Path) -> set[str]:
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in ("firmware_bridge", "rtu_edge", "export"):  # from pkg import mod
                names.update(f"{node.module}.{a.name}" for a in node.names)
            else:
                names.add(node.module)
    return names


def test_dependencies_point_one_way():
    """cli -> {rtu_edge, export, firmware_bridge}; firmware_bridge imports nothing of rtu_edge
    or export; rtu_edge and export use only the torch-free bottom of firmware_bridge."""
    bottom = {"firmware_bridge.contract", "firmware_bridge.atomic", "firmware_bridge.protocol"}
    problems = []
    for pkg in ("firmware_bridge", "rtu_edge", "export"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for name in _imports(path):
                top = name.split(".")[0]
                if pkg == "firmware_bridge" and top in ("rtu_edge", "export", "cli", "torch"):
                    problems.append(f"{path.relative_to(ROOT)} imports {name}")
                if pkg == "rtu_edge" and (top in ("export", "cli", "cli_demo")):
                    problems.append(f"{path.relative_to(ROOT)} imports {name}")
                if pkg in ("rtu_edge", "export") and top == "firmware_bridge":
                    if name not in bottom:
                        problems.append(f"{path.relative_to(ROOT)} imports {name} (not the bottom)")
    assert problems == []
