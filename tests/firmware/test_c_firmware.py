"""The C side: build firmware/ with gcc, run its unit tests, compare it with the Python codec,
and run the POSIX firmware against a real `rtu-edge run` over a pseudo-terminal."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as p
from firmware_bridge.host import HandshakeError, LinkConfig, RobotConnection, WatchdogLatched
from firmware_bridge.protocol import Frame, Parser, Sizes

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
CARTPOLE_P = Sizes(obs_size=2, action_size=1)

pytestmark = [
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not found: C side not built"),
    pytest.mark.skipif(shutil.which("make") is None, reason="make not found: C side not built"),
]
SOME = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> Path:
    """`make -C firmware` into a fresh directory (gcc -std=c99 -Wall -Wextra -Werror -pedantic)."""
    out = tmp_path_factory.mktemp("firmware-build")
    r = subprocess.run(
        ["make", "-C", str(FIRMWARE), f"BUILD={out}", "all"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_c_unit_tests_pass(build):
    r = subprocess.run([str(build / "rtu_edge_unit_tests")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("ok ("), r.stdout


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not found")
def test_arduino_sketch_compiles_as_cpp_against_a_stub_core(build):
    r = subprocess.run(
        ["make", "-C", str(FIRMWARE), f"BUILD={build}", "arduino-check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("ok: 2 HELLO frames, 1 accepted") == 2, r.stdout
    sketch = build / "rtu_edge_mcu"
    assert (sketch / "rtu_edge_mcu.ino").exists() and (sketch / "src" / "mcu_loop.c").exists()


# ------------------------------------------------------------------------- C vs Python codec


class Tool:
    """rtu_edge_test_tool as a long-lived process: one request line, one answer line."""

    def __init__(self, exe: Path):
        self.proc = subprocess.Popen(
            [str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().rstrip("\n")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def tool(build):
    t = Tool(build / "rtu_edge_test_tool")
    yield t
    t.close()


def _hex(b: bytes) -> str:
    return b.hex() or "-"


@SOME
@given(st.binary(max_size=700))
def test_crc_and_cobs_agree_with_python(tool, data):
    assert tool.ask(f"crc {_hex(data)}") == f"{zlib.crc32(data):08x}"
    enc = p.cobs_encode(data)
    assert tool.ask(f"cobs {_hex(data)}") == _hex(enc)
    assert tool.ask(f"uncobs {_hex(enc)}") == _hex(data)


@SOME
@given(st.binary(min_size=1, max_size=300))
def test_cobs_decode_of_arbitrary_bytes_agrees_with_python(tool, data):
    try:
        want = _hex(p.cobs_decode(data))
    except p.CobsError:
        want = "error cobs"
    assert tool.ask(f"uncobs {_hex(data)}") == want


# Python's BadFrame reasons for the C reasons (header_length is part of Python's bad_length).
_REASON = {
    "cobs": "cobs",
    "too_short": "short",
    "crc": "crc",
    "header_length": "bad_length",
    "unknown_id": "unknown_msg",
    "bad_length": "bad_length",
    "too_long": "oversize",
}


def _c_items(answer: str) -> list[tuple]:
    items = []
    for part in answer.split(" | ")[:-1]:
        kind, *rest = part.split(" ")
        if kind == "frame":
            payload = "" if rest[2] == "-" else rest[2]
            items.append(("frame", int(rest[0]), int(rest[1]), payload))
        else:
            items.append(("error", _REASON[rest[0]]))
    return items


def _py_items(stream: bytes, sizes: Sizes | None) -> list[tuple]:
    out = []
    for item in Parser(sizes).feed(stream):
        if isinstance(item, Frame):
            out.append(("frame", item.msg_id, item.seq, item.payload.hex()))
        else:
            out.append(("error", item.reason))
    return out


@st.composite
def streams(draw):
    """Golden frames back to back, with byte flips, cuts, garbage and odd frames mixed in."""
    parts = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["golden", "golden", "garbage", "cut", "raw", "long"]))
        if kind == "garbage":
            parts.append(draw(st.binary(min_size=1, max_size=40)))
            continue
        if kind == "long":  # no delimiter within MAX_ENCODED_FRAME
            parts.append(b"\x5a" * draw(st.integers(p.MAX_ENCODED_FRAME - 2, 1100)) + b"\x00")
            continue
        if kind == "raw":  # a valid CRC around any id and payload, header length maybe lying
            body = bytes([draw(st.integers(0, 255))]) + draw(st.binary(min_size=2, max_size=2))
            payload = draw(st.binary(max_size=40))
            length = draw(st.sampled_from([len(payload), draw(st.integers(0, 65535))]))
            body += length.to_bytes(2, "little") + payload
            parts.append(p.cobs_encode(body + zlib.crc32(body).to_bytes(4, "little")) + b"\x00")
            continue
        wire = bytearray(draw(st.sampled_from(p.GOLDEN_FRAMES)).encoded())
        if kind == "cut":
            wire = wire[: draw(st.integers(0, len(wire) - 1))]
        for _ in range(draw(st.integers(0, 2)) if wire else 0):
            wire[draw(st.integers(0, len(wire) - 1))] ^= draw(st.integers(1, 255))
        parts.append(bytes(wire))
    return b"".join(parts)


@SOME
@given(streams(), st.sampled_from([None, Sizes(4, 1), CARTPOLE_P]))
# found by this test: a PREDICTION with no value (the C parser took it; it needs at least one)
@example(stream=b'\x02\x06\x01\x02\x02\x01\x01\x05\xcf"\xb5T\x00', sizes=None)
def test_c_parser_gives_the_python_parsers_frames_and_reasons(tool, stream, sizes):
    obs, act = (sizes.obs_size, sizes.action_size) if sizes else (0, 0)
    answer = tool.ask(f"parse {obs} {act} {_hex(stream)}")
    assert _c_items(answer) == _py_items(stream, sizes), answer


def test_cartpole_plant_matches_gymnasium_step_by_step(tool):
    gym = pytest.importorskip("gymnasium")
    env = gym.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    rng = random.Random(7)
    for _ in range(20):
        state = [rng.uniform(-0.05, 0.05) for _ in range(4)]
        actions = "".join(rng.choice("01") for _ in range(60))
        answer = tool.ask("cartpole " + " ".join(repr(v) for v in state) + " " + actions)
        env.state = np.array(state, dtype=np.float64)
        env.steps_beyond_terminated = None
        for a, c_step in zip(actions, answer.split(" | "), strict=True):
            *c_state, c_terminal = c_step.split(" ")
            _, _, terminated, _, _ = env.step(int(a))
            np.testing.assert_allclose(
                [float(v) for v in c_state], env.state, rtol=1e-9, atol=1e-12
            )
            assert bool(int(c_terminal)) == terminated
            if terminated:
                break
    env.close()


# ------------------------------------------------------------------------- the POSIX firmware


class Firmware:
    """rtu_edge_posix in its own process, reachable through a symlink."""

    def __init__(self, build: Path, tmp: Path, *args: str):
        self.link = tmp / "mcu.tty"
        self.stats_path = tmp / "mcu-stats.json"
        cmd = [str(build / "rtu_edge_posix"), "--link", str(self.link)]
        cmd += ["--stats-json", str(self.stats_path), *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        deadline = time.monotonic() + 10
        while not self.link.exists():
            assert self.proc.poll() is None, self.proc.stdout.read()
            assert time.monotonic() < deadline, "rtu_edge_posix did not start"
            time.sleep(0.02)
        self.output = ""

    def stop(self) -> dict:
        self.proc.terminate()
        self.output, _ = self.proc.communicate(timeout=10)
        assert self.proc.returncode == 0, self.output
        assert not self.link.exists()  # it removed its symlink
        return json.loads(self.stats_path.read_text())


def _connection(port: Path, **kw) -> RobotConnection:
    args = dict(
        obs_size=2,
        action_size=1,
        schema_hash=p.SCHEMA_HASH,
        action_low=[0.0],
        action_high=[1.0],
        safe_action=[0.0],
        num_actions=2,
    )
    args.update(kw)
    return RobotConnection(LinkConfig(port=str(port), handshake_timeout_s=2.0), **args)


def test_posix_firmware_refuses_mismatches_trips_its_watchdog_and_counts_garbage(build, tmp_path):
    fw = Firmware(build, tmp_path, "--watchdog-ms", "500", "--seed", "1")
    try:
        with _connection(fw.link, schema_hash=0x12345678) as conn:
            with pytest.raises(HandshakeError, match=f"0x12345678.*0x{p.SCHEMA_HASH:08x}"):
                conn.connect()
        with _connection(fw.link, obs_size=3) as conn:
            with pytest.raises(HandshakeError, match="obs_size: host 3, MCU 2"):
                conn.connect()
        with _connection(fw.link) as conn:
            hello = conn.connect()
            assert (hello.obs_size, hello.num_actions, hello.watchdog_ms) == (2, 2, 500)
            firsts = 0
            for _ in range(50):
                o = conn.observe()
                assert o is not None and o.finite
                firsts += o.first
                conn.act([1.0], o.seq)
            assert firsts >= 1
            # the host stops answering: safe action, latch, then HEARTBEAT while latched
            time.sleep(0.8)
            with pytest.raises(WatchdogLatched):
                for _ in range(5):  # the unanswered OBS may come first, then STATUS(WATCHDOG)
                    conn.observe(timeout=1.0)
            assert conn.mcu_status["watchdog_trips"] == 1
            # garbage on the line is counted in STATUS.frame_errors, nothing breaks
            before = conn.mcu_status["frame_errors"]
            conn.link.write(b"\x13\x37\x42\x00\x05\x11\x00")
            conn.arm()  # re-arming clears the latch
            o = conn.observe()
            assert o.first
            conn.link.send("STATUS_REQ")
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                got = [f for f in conn.link.recv(0.1) if f.msg_id == p.MsgId.STATUS]
                if got:
                    break
            assert got and got[-1].fields["frame_errors"] == before + 2
            assert got[-1].fields["armed"] == 1 and got[-1].fields["watchdog_latched"] == 0
    finally:
        stats = fw.stop()
    assert stats["handshakes_refused"] == 2 and stats["watchdog_trips"] == 1
    assert stats["err_cobs"] == 2 and stats["err_crc"] == 0  # the two garbage chunks
    assert stats["frame_errors"] == 2 and stats["stops"] >= 1


def _tiny_bundle(root, **train_options):
    """Train a tiny CartPole-P run (hidden size 8) in ROOT/run and export it to ROOT/bundle."""
    pytest.importorskip("torch")
    from export.bundle import ExportConfig, export_run
    from rtu_edge.config import NetConfig
    from rtu_edge.train import TrainConfig, train

    cfg = TrainConfig(out=str(root / "run"), net=NetConfig(hidden_size=8), **train_options)
    train(cfg, progress=False)
    export_run(
        ExportConfig(run_dir=str(root / "run"), out=str(root / "bundle"), parity_steps=200),
        log=lambda m: None,
    )
    return root / "bundle"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny CartPole-P run (the default env: obs 2, discrete 2), exported."""
    return _tiny_bundle(tmp_path_factory.mktemp("c-firmware-bundle"), steps=800)


TICKS = 3000


def test_rtu_edge_run_learns_against_the_c_firmware(build, bundle, tmp_path):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["env_id"] == "classic/CartPole-P"
    # a generous watchdog: a loaded CI machine must not trip it; the test is about the link
    fw = Firmware(build, tmp_path, "--seed", "5", "--watchdog-ms", "2000")
    summary = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "cli", "run", str(bundle), "--port", str(fw.link)]
    cmd += ["--steps", str(TICKS), "--fresh", "--checkpoint-dir", str(tmp_path / "ckpt")]
    cmd += ["--summary-json", str(summary)]
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    finally:
        mcu = fw.stop()
    assert r.returncode == 0, r.stderr + r.stdout
    s = json.loads(summary.read_text())
    c, link = s["counters"], s["counters"]["link"]
    print(f"\nrtu-edge run: {s['ticks']} ticks, {s['episodes']} episodes; firmware: {mcu}")
    assert s["ticks"] == TICKS and s["graph"] == "learn"
    assert c["learn_steps"] > 0 and c["bad_updates"] == 0 and c["rollbacks"] == 0
    assert c["timeouts"] == 0 and c["link_errors"] == 0 and c["reboots"] == 0
    assert s["episodes"] >= 3
    # zero frame errors in both directions
    host_errors = {
        k: v for k, v in link.items() if k.startswith("rx_") and k not in _RX_OK and v != 0
    }
    assert host_errors == {}, link
    assert mcu["frame_errors"] == 0 and mcu["frames_ok"] >= TICKS
    assert mcu["watchdog_trips"] == 0 and mcu["tx_dropped_bytes"] == 0
    # every tick's action was accepted once: applied, or answering an episode's last OBS
    assert mcu["actions_applied"] + mcu["actions_ended"] == TICKS
    assert mcu["episodes"] - s["episodes"] in (0, 1)  # its OBS after the last tick may end one


_RX_OK = ("rx_bytes_in", "rx_frames_ok", "rx_reads")


def test_posix_firmware_reboot_is_seen_and_survived_by_the_host(build, tmp_path):
    from firmware_bridge.host import RobotRebooted

    fw = Firmware(build, tmp_path, "--reboot-after-steps", "20", "--boot-id", "0x1234")
    try:
        with _connection(fw.link) as conn:
            assert conn.connect().boot_id == 0x1234
            with pytest.raises(RobotRebooted, match="0x00001234 ->"):
                for _ in range(100):
                    o = conn.observe()
                    if o is not None:
                        conn.act([0.0], o.seq)
            hello = conn.connect()  # handshake and arm the new boot
            assert hello.boot_id != 0x1234
            o = conn.observe()
            assert o is not None and o.first
            conn.act([1.0], o.seq)
            assert conn.observe() is not None
    finally:
        stats = fw.stop()
    assert stats["reboots"] == 1 and stats["arms"] == 2 and stats["frame_errors"] == 0


@pytest.fixture(scope="module")
def td_bundle(tmp_path_factory):
    """A tiny td (prediction-mode) CartPole-P run, exported: its graphs answer with a
    prediction, not an action."""
    return _tiny_bundle(
        tmp_path_factory.mktemp("c-firmware-td-bundle"),
        algo="td",
        env="classic/CartPole-P",
        steps=300,
    )


PREDICTION_TICKS = 1500


def test_rtu_edge_run_predicts_while_the_c_firmwares_controller_acts(build, td_bundle, tmp_path):
    """Prediction mode end to end: `rtu-edge run` with a td bundle answers every OBS of the
    POSIX firmware with PREDICTION (0x06), and the firmware's own controller acts on each."""
    fw = Firmware(build, tmp_path, "--seed", "5", "--watchdog-ms", "2000", "--controller", "random")
    summary = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "cli", "run", str(td_bundle), "--port", str(fw.link)]
    cmd += ["--steps", str(PREDICTION_TICKS), "--fresh", "--checkpoint-dir", str(tmp_path / "ck")]
    cmd += ["--summary-json", str(summary)]
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    finally:
        mcu = fw.stop()
    assert r.returncode == 0, r.stderr + r.stdout
    s = json.loads(summary.read_text())
    c, link = s["counters"], s["counters"]["link"]
    assert s["ticks"] == PREDICTION_TICKS and s["graph"] == "learn"
    assert c["learn_steps"] == PREDICTION_TICKS and c["bad_updates"] == 0
    assert c["timeouts"] == 0 and c["link_errors"] == 0 and c["reboots"] == 0
    # one PREDICTION per tick, plus a re-send for each OBS the MCU re-sent because the host was
    # slow (a loaded machine); a re-send that crossed the first answer is stale at the MCU
    assert link["actions_sent"] == 0
    assert link["predictions_sent"] == PREDICTION_TICKS + link["action_resends"]
    # every tick's PREDICTION was accepted once; the controller stepped the plant on each one
    # that did not answer an episode's last OBS (those start the next episode instead)
    assert mcu["predictions_accepted"] == PREDICTION_TICKS, mcu
    assert mcu["predictions_rejected"] <= link["action_resends"], (mcu, link)
    assert mcu["predictions_nonfinite"] == 0 and mcu["actions_applied"] == 0
    assert mcu["actions_rejected"] == mcu["predictions_rejected"]
    assert mcu["steps"] + mcu["episodes"] in (PREDICTION_TICKS, PREDICTION_TICKS + 1)
    assert mcu["episodes"] >= 3 and mcu["frame_errors"] == 0 and mcu["watchdog_trips"] == 0


def test_posix_firmware_without_a_controller_rejects_predictions(build, tmp_path):
    """--controller none: an MCU that takes only ACTIONs; a PREDICTION is rejected and counted
    in STATUS.actions_rejected, the OBS stays unanswered, an ACTION is still served."""
    fw = Firmware(build, tmp_path, "--controller", "none")
    try:
        with _connection(fw.link) as conn:
            conn.connect()
            o = conn.observe()
            conn.predict([0.5], o.seq)
            time.sleep(0.2)
            conn.act([1.0], o.seq)  # the same OBS (re-sent meanwhile): still unanswered
            nxt = conn.observe()
            assert nxt is not None and nxt.seq != o.seq and not nxt.first
    finally:
        stats = fw.stop()
    assert stats["predictions_rejected"] == 1 and stats["predictions_accepted"] == 0
    assert stats["actions_applied"] == 1 and stats["actions_rejected"] >= 1
