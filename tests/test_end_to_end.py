"""The whole chain over a real pseudo-terminal: train -> export -> sim-robot -> run.

No mocks: real torch training, real dynamo export, real onnxruntime, real pty, a simulated
microcontroller in a separate process speaking the wire protocol.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from export.bundle import ExportConfig, export_run
from rtu_edge.config import NetConfig
from rtu_edge.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    train(
        TrainConfig(out=str(root / "run"), steps=800, net=NetConfig(hidden_size=8)), progress=False
    )
    export_run(
        ExportConfig(run_dir=str(root / "run"), out=str(root / "bundle"), parity_steps=200),
        log=lambda m: None,
    )
    return root / "bundle"


def _start_sim_robot(link: Path, seed: int = 3) -> subprocess.Popen:
    """`rtu-edge sim-robot --link LINK` in its own process; returns once LINK points at it."""
    before = os.readlink(link) if link.is_symlink() else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "sim-robot", "--link", str(link), "--seed", str(seed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (link.exists() and os.readlink(link) != before):
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "sim-robot did not start"
        time.sleep(0.05)
    return proc


@pytest.fixture()
def sim_robot(tmp_path):
    """`rtu-edge sim-robot` in its own process, reachable through a symlink."""
    link = tmp_path / "robot.tty"
    proc = _start_sim_robot(link)
    yield link
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    assert "sim-robot:" in out  # it printed its statistics on SIGTERM


def _run(args: list[str], check_torch: bool = False) -> subprocess.CompletedProcess:
    """Run `rtu-edge ...` in a fresh interpreter; optionally report whether torch got imported."""
    code = (
        "import sys\n"
        "from cli import app\n"
        f"sys.argv = ['rtu-edge'] + {args!r}\n"
        "try:\n    app()\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
        "print('TORCH_IMPORTED' if 'torch' in sys.modules else 'TORCH_FREE')\n"
        "sys.exit(code or 0)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def _run_args(bundle, port, ckpt, *extra: str) -> list[str]:
    """`rtu-edge run BUNDLE --port PORT --checkpoint-dir CKPT ...` as an argument list."""
    return ["run", str(bundle), "--port", str(port), "--checkpoint-dir", str(ckpt), *extra]


class _RunProcess:
    """`rtu-edge run` (learning, no step limit) in its own process, for signal tests.

    A thread collects its stderr, so a test can wait for what the loop printed (its first status
    line, a reconnect) instead of guessing how long start-up takes on a loaded machine.
    """

    def __init__(self, bundle, port, ckpt, summary):
        cmd = [sys.executable, "-m", "cli"]
        cmd += _run_args(bundle, port, ckpt, "--summary-json", str(summary))
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := self.proc.stderr.read(1):
            self._err.append(chunk)

    @property
    def err(self) -> str:
        return "".join(self._err)

    def wait_for(self, text: str, after: int = 0, timeout: float = 120.0) -> int:
        """Block until `text` appears in stderr at or after offset `after`; its end offset."""
        deadline = time.monotonic() + timeout
        while (i := self.err.find(text, after)) < 0:
            assert self.proc.poll() is None or self.err.find(text, after) >= 0, self.err
            assert time.monotonic() < deadline, f"{text!r} never printed:\n{self.err}"
            time.sleep(0.05)
        return i + len(text)

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def finish(self, timeout: float = 60.0) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._reader.join(timeout=5)
        return code


def test_learn_on_robot_resume_and_frozen_run_without_torch(bundle, sim_robot, tmp_path):
    ckpt = tmp_path / "ckpt"
    summary = tmp_path / "s1.json"
    r = _run(
        _run_args(bundle, sim_robot, str(ckpt), "--steps", "600", "--summary-json", str(summary))
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "TORCH_FREE" in r.stdout  # the robot path never imports torch
    s = json.loads(summary.read_text())
    assert s["ticks"] == 600 and s["graph"] == "learn"
    assert s["episodes"] >= 3  # CartPole-P episodes are short at first
    assert s["counters"]["bad_updates"] == 0
    assert s["graph_latency_us"]["p50"] > 0
    assert list(ckpt.glob("ckpt-*.json")), "no checkpoint written at exit"

    # a second run resumes from the newest checkpoint and keeps counting ticks
    r = _run(
        _run_args(
            bundle,
            sim_robot,
            str(ckpt),
            "--steps",
            "200",
            "--summary-json",
            str(tmp_path / "s2.json"),
        )
    )
    assert r.returncode == 0, r.stderr
    assert "resumed from ckpt-000000000600" in r.stderr
    meta = sorted(ckpt.glob("ckpt-*.json"))[-1]
    assert "000000000800" in meta.name

    # learned parameters differ from the bundle's: on-robot learning changed something
    import numpy as np

    from firmware_bridge import contract as C
    from firmware_bridge.checkpoints import CheckpointStore

    tensors, _, _ = CheckpointStore(ckpt).load_latest()
    # the checkpoint holds the packed buffers; the manifest's layout names every tensor in them
    packing = C.Manifest.from_json(json.loads((bundle / "manifest.json").read_text())).packing
    with np.load(bundle / "state.npz") as z:
        before = C.unpack_state(dict(z), packing)
    after = C.unpack_state(tensors, packing)
    assert not np.array_equal(after["params.cell.w1"], before["params.cell.w1"])

    # frozen (act graph) run from the checkpoint, also torch-free
    r = _run(
        _run_args(
            bundle,
            sim_robot,
            str(ckpt),
            "--no-learn",
            "--steps",
            "300",
            "--summary-json",
            str(tmp_path / "s3.json"),
        )
    )
    assert r.returncode == 0, r.stderr
    assert "TORCH_FREE" in r.stdout
    s3 = json.loads((tmp_path / "s3.json").read_text())
    assert s3["graph"] == "act" and s3["ticks"] == 300


def test_run_refuses_tampered_bundle_before_touching_the_port(bundle, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    data = bytearray((bad / "learn.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "learn.onnx").write_bytes(bytes(data))
    r = _run(["run", str(bad), "--port", "/dev/does-not-exist", "--steps", "10"])
    assert r.returncode == 2
    assert "learn.onnx" in r.stderr and "re-export" in r.stderr.lower()


def test_run_names_a_missing_port(bundle, tmp_path):
    r = _run(
        [
            "run",
            str(bundle),
            "--port",
            str(tmp_path / "nope"),
            "--steps",
            "10",
            "--checkpoint-dir",
            str(tmp_path / "c"),
        ]
    )
    assert r.returncode == 2
    assert "rtu-edge ports" in r.stderr


def test_checkpoints_of_another_bundle_are_refused(bundle, sim_robot, tmp_path):
    from firmware_bridge.checkpoints import CheckpointStore

    ckpt = tmp_path / "other"
    CheckpointStore(ckpt).save(
        5, {"x": __import__("numpy").zeros(1)}, {"bundle_learn_sha256": "0" * 64}
    )
    r = _run(_run_args(bundle, sim_robot, str(ckpt), "--steps", "10"))
    assert r.returncode == 2
    assert "--fresh" in r.stderr


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX signals")
@pytest.mark.parametrize("sig,reason", [("SIGTERM", "SIGTERM"), ("SIGINT", "Ctrl-C")])
def test_sigterm_and_ctrl_c_send_safe_action_and_checkpoint(
    bundle, sim_robot, tmp_path, sig, reason
):
    import signal

    ckpt = tmp_path / "ck"
    run = _RunProcess(bundle, sim_robot, ckpt, tmp_path / "s.json")
    run.wait_for("ticks/s")  # handlers installed, handshake done, learning on the robot
    run.signal(getattr(signal, sig))
    assert run.finish() == 0, run.err
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["exit"] == reason
    assert s["ticks"] > 0
    assert s["counters"]["link"]["stops"] >= 1  # the MCU was told to disarm and hold safe
    assert list(ckpt.glob("ckpt-*.json"))


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX signals")
def test_frozen_host_trips_the_robot_watchdog_and_recovers(bundle, sim_robot, tmp_path):
    """Fault 17: SIGSTOP the host; the MCU applies the safe action and latches; after SIGCONT
    the host sees the latch, resets its recurrent state, re-handshakes, re-arms, continues."""
    import signal

    summary = tmp_path / "s.json"
    run = _RunProcess(bundle, sim_robot, tmp_path / "ck", summary)
    at = run.wait_for("ticks/s")
    run.signal(signal.SIGSTOP)
    time.sleep(1.5)  # three times the simulated MCU's 0.5 s watchdog
    run.signal(signal.SIGCONT)
    at = run.wait_for("handshaking again", after=at)
    run.wait_for("ticks/s", after=at)  # re-armed and running on
    run.signal(signal.SIGTERM)
    assert run.finish() == 0, run.err
    s = json.loads(summary.read_text())
    assert s["exit"] == "SIGTERM"
    assert s["counters"]["interruptions"] >= 1, run.err
    assert "watchdog" in run.err.lower()


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX signals")
def test_robot_process_killed_and_replaced_at_the_same_path_run_reconnects(bundle, tmp_path):
    """Fault 14 with real processes: a new sim-robot takes over the link path, the old one is
    SIGKILLed (its pty vanishes under the open port: EIO, then termios.error on the flush).
    `rtu-edge run` turns that into a LinkError, reopens the path, and learns on."""
    import signal

    link = tmp_path / "robot.tty"
    first = _start_sim_robot(link)
    summary = tmp_path / "s.json"
    run = _RunProcess(bundle, link, tmp_path / "ck", summary)
    at = run.wait_for("ticks/s")
    replacement = _start_sim_robot(link, seed=4)  # replaces the link: the old one is a pty's
    try:
        first.kill()
        first.wait(10)
        at = run.wait_for("handshaking again", after=at)
        run.wait_for("ticks/s", after=at)  # reconnected to the new robot and running on
        run.signal(signal.SIGTERM)
        assert run.finish() == 0, run.err
    finally:
        replacement.terminate()
        out, _ = replacement.communicate(timeout=10)
    s = json.loads(summary.read_text())
    assert s["exit"] == "SIGTERM" and s["counters"]["link_errors"] >= 1, run.err
    assert "Traceback" not in run.err and "termios" not in run.err
    steps = int(out.split("sim-robot: ")[1].split(" steps")[0])
    assert steps > 0, out  # the new robot was driven
