"""SerialLink and RobotConnection over real pseudo-terminals (no hardware, no pyserial mocks).

No assertion depends on how fast anything runs: waits have generous deadlines and only bound
how long a broken test hangs.
"""

from __future__ import annotations

import errno
import os
import select
import threading
import time
import tty

import gymnasium as gym
import numpy as np
import pytest
import serial

from firmware_bridge import protocol as p
from firmware_bridge.host import (
    HandshakeError,
    LinkConfig,
    LinkError,
    RobotConnection,
    RobotRebooted,
    SessionInterrupted,
    WatchdogLatched,
)
from firmware_bridge.link import SerialLink, _open_error, list_ports
from firmware_bridge.protocol import Frame, Parser, Sizes
from firmware_bridge.sim_robot import SimFaults, SimRobot

SIZES = Sizes(4, 1)
STATUS_FIELDS = [f.name for f in p.BY_NAME["STATUS"].fields]
PATIENT = 10.0  # upper bound for waits that normally take milliseconds


def wait_until(cond, timeout=PATIENT):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def cfg(port, **kw) -> LinkConfig:
    base = dict(
        port=port,
        handshake_timeout_s=PATIENT,
        obs_timeout_s=PATIENT,
        stop_timeout_s=PATIENT,
        hello_retry_s=0.1,
    )
    return LinkConfig(**{**base, **kw})


def cartpole_conn(port, **kw) -> RobotConnection:
    return RobotConnection(
        cfg(port, **kw.pop("link", {})),
        obs_size=kw.pop("obs_size", 4),
        action_size=1,
        schema_hash=p.SCHEMA_HASH,
        action_low=[0],
        action_high=[1],
        safe_action=[0],
        num_actions=2,
        **kw,
    )


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, os.ttyname(slave)
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def cartpole_sim():
    sims = []

    def make(**kw):
        kw.setdefault("watchdog_s", PATIENT)
        sim = SimRobot(gym.make("CartPole-v1"), action_kind="discrete", safe_action=[0], **kw)
        sims.append(sim)
        sim.start()
        return sim

    yield make
    for sim in sims:
        sim.close()
        assert sim.error is None, sim.error


def recv_frames(link, n=1, timeout=PATIENT) -> list[Frame]:
    """Collect n valid frames (recv also returns early when only rejected chunks arrived)."""
    out: list[Frame] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += link.recv(deadline - time.monotonic())
    return out


def read_master(master, want: int, timeout=PATIENT) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.05)
        if r:
            out += os.read(master, 4096)
    return out


# ------------------------------------------------------------------------- SerialLink


def test_link_sends_and_receives_frames(pty_pair):
    master, dev = pty_pair
    with SerialLink(dev, sizes=SIZES) as link:
        seq = link.send("STATUS_REQ")
        expected = b"\x00" + p.encode_frame("STATUS_REQ", seq, {})
        assert read_master(master, len(expected)) == expected
        obs = p.GOLDEN_FRAMES[4].encoded()
        os.write(master, obs + obs[:7])  # one frame and the start of the next
        (fr,) = recv_frames(link)
        assert fr.name == "OBS" and fr.fields["obs"].tolist() == [0.0, 1.0, -2.5, 0.25]
        os.write(master, obs[7:])
        assert recv_frames(link)[0].seq == fr.seq
        assert link.counters["rx_frames_ok"] == 2 and link.counters["tx_frames"] == 1


def test_link_discards_a_partial_frame_after_silence(pty_pair):
    master, dev = pty_pair
    with SerialLink(dev, sizes=SIZES, frame_timeout_s=0.02) as link:
        a, b = p.GOLDEN_FRAMES[4].encoded(), p.GOLDEN_FRAMES[6].encoded()
        os.write(master, a[:12])
        assert link.recv(0.3) == []  # the line stays silent for 0.3 s > frame timeout
        assert link.counters["rx_timeouts"] == 1
        os.write(master, b)
        (fr,) = recv_frames(link)
        assert fr.seq == p.GOLDEN_FRAMES[6].seq and fr.fields["flags"] == p.OBS_TERMINAL
        assert link.recent_errors[-1].reason == "timeout"


def test_link_garbage_is_counted_not_raised(pty_pair):
    master, dev = pty_pair
    with SerialLink(dev, sizes=SIZES) as link:
        os.write(master, b"boot v1.2\r\n\x00\xff\xfe\x00" + p.GOLDEN_FRAMES[5].encoded())
        (fr,) = recv_frames(link)
        assert fr.name == "ACTION"
        assert link.counters["rx_bytes_discarded"] == 13


def test_second_exclusive_open_fails_with_clear_message(pty_pair):
    _, dev = pty_pair
    with SerialLink(dev):
        with pytest.raises(LinkError) as e:
            SerialLink(dev).open()
    msg = str(e.value)
    assert "busy" in msg and "another process" in msg and dev in msg


def test_missing_port_says_what_to_do():
    with pytest.raises(LinkError) as e:
        SerialLink("/dev/rtu-edge-no-such-port").open()
    msg = str(e.value)
    assert "not found" in msg and "rtu-edge ports" in msg and "/dev/serial/by-id" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_says_dialout(tmp_path, pty_pair):
    _, dev = pty_pair
    os.chmod(dev, 0o000)
    with pytest.raises(LinkError, match="dialout"):
        SerialLink(dev).open()


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.EACCES, ["dialout", "udev"]),
        (errno.ENOENT, ["rtu-edge ports", "/dev/serial/by-id"]),
        (errno.EBUSY, ["another process", "fuser"]),
        (errno.EAGAIN, ["another process"]),
    ],
)
def test_open_error_messages(code, words):
    err = serial.SerialException(code, f"could not open port /dev/ttyX: [Errno {code}]")
    msg = str(_open_error("/dev/ttyX", 115200, err))
    for w in words:
        assert w in msg


@pytest.mark.parametrize(
    "url", ["socket://127.0.0.1:9", "rfc2217://host:2217", "spy://socket://x:1"]
)
def test_network_urls_are_refused(url):
    with pytest.raises(LinkError, match="allow_network"):
        SerialLink(url).open()


def test_network_url_allowed_when_asked():
    # Port 9 on localhost is closed: the refusal is gone, the connection itself fails.
    with pytest.raises(LinkError) as e:
        SerialLink("socket://127.0.0.1:9", allow_network=True).open()
    assert "allow_network" not in str(e.value)


def test_list_ports_shape():
    ports = list_ports()
    assert isinstance(ports, list)
    assert all(isinstance(d, str) and isinstance(desc, str) for d, desc in ports)


# ------------------------------------------------------------------------- RobotConnection


def test_connect_observe_act_stop(cartpole_sim):
    sim = cartpole_sim()
    conn = cartpole_conn(sim.device_path)
    with conn:
        hello = conn.connect()
        assert hello.boot_id == sim.boot_id and hello.accepted
        assert (hello.obs_size, hello.action_size, hello.num_actions) == (4, 1, 2)
        o = conn.observe()
        assert o.first and o.reward == 0.0 and o.obs.dtype == np.float32 and o.finite
        for i in range(20):
            sent = conn.act(np.array([i % 2], np.float32), o.seq)
            assert sent.tolist() == [float(i % 2)]
            nxt = conn.observe()
            assert p.seq_diff(nxt.seq, o.seq) > 0
            o = nxt
        assert sim.armed
    assert sim.stats.stops == 1 and not sim.armed  # close() disarmed the MCU
    assert conn.counters["stops_unconfirmed"] == 0


def test_wrong_obs_size_is_refused_at_handshake(cartpole_sim):
    sim = cartpole_sim()
    conn = cartpole_conn(sim.device_path, obs_size=5)
    with conn, pytest.raises(HandshakeError) as e:
        conn.connect()
    assert "obs_size: host 5, MCU 4" in str(e.value)
    assert sim.stats.arms == 0 and sim.stats.handshakes_refused >= 1


def test_wrong_schema_hash_is_refused_naming_both(cartpole_sim):
    sim = cartpole_sim(schema_hash=0xDEADBEEF)
    conn = cartpole_conn(sim.device_path)
    with conn, pytest.raises(HandshakeError) as e:
        conn.connect()
    assert f"host 0x{p.SCHEMA_HASH:08x}, MCU 0xdeadbeef" in str(e.value)
    assert not sim.armed and sim.stats.arms == 0


def test_wrong_protocol_version_is_refused(cartpole_sim):
    sim = cartpole_sim(protocol_version=2)
    with cartpole_conn(sim.device_path) as conn, pytest.raises(HandshakeError, match="MCU 2"):
        conn.connect()


def test_silent_port_gives_actionable_error(pty_pair):
    _, dev = pty_pair
    conn = cartpole_conn(dev, link={"handshake_timeout_s": 0.3})
    with conn, pytest.raises(LinkError) as e:
        conn.connect()
    msg = str(e.value)
    assert "no HELLO reply" in msg and "baud" in msg and dev in msg


def test_observe_before_connect_is_a_clear_error(cartpole_sim):
    conn = cartpole_conn("/dev/null")
    with pytest.raises(LinkError, match="connect"):
        conn.observe()


def test_action_clamping_rate_limit_and_nan():
    env = gym.make("Pendulum-v1")  # obs 3, action Box(-2, 2, (1,))
    with SimRobot(env, action_kind="continuous", safe_action=[0.0], watchdog_s=PATIENT) as sim:
        sim.start()
        conn = RobotConnection(
            cfg(sim.device_path),
            obs_size=3,
            action_size=1,
            schema_hash=p.SCHEMA_HASH,
            action_low=[-1.0],
            action_high=[1.0],
            safe_action=[0.0],
            max_delta=[0.5],
        )
        with conn:
            conn.connect()
            o = conn.observe()
            for action, expected in [
                (5.0, 0.5),  # clamped to 1, then rate-limited from the safe action 0
                (5.0, 1.0),
                (np.nan, 0.0),  # NaN -> the safe action, immediately
                (-1e6, -0.5),
                (np.inf, 0.0),
                (-0.25, -0.25),
            ]:
                sent = conn.act(np.array([action]), o.seq)
                assert sent.dtype == np.float32 and sent.tolist() == [expected], action
                o = conn.observe()
                assert sim.applied_action.tolist() == [expected]
            c = conn.counters
            assert c["actions_nonfinite"] == 2 and c["safe_actions_sent"] == 2
            assert c["actions_clamped"] == 3 and c["actions_rate_limited"] >= 2
            with pytest.raises(ValueError, match="action_size"):
                conn.act(np.zeros(2), o.seq)
    with pytest.raises(ValueError, match="safe_action"):
        RobotConnection(cfg("x"), 3, 1, 0, [-1], [1], [2])


def test_watchdog_latches_until_rearmed(cartpole_sim):
    sim = cartpole_sim(watchdog_s=0.5)
    with cartpole_conn(sim.device_path) as conn:
        conn.connect()
        first = conn.observe()
        assert first.first
        # The host "freezes": it never answers. The MCU must trip, apply safe and latch.
        with pytest.raises(WatchdogLatched, match="arm"):
            for _ in range(10):
                conn.observe(timeout=PATIENT)
        assert isinstance(WatchdogLatched("x"), SessionInterrupted)
        assert sim.latched and not sim.armed and sim.stats.watchdog_trips == 1
        assert sim.applied_action.tolist() == [0.0]
        # Still latched after the host "resumes" and acts as if nothing happened.
        with pytest.raises(LinkError, match="not armed"):
            conn.act([1], first.seq)
        conn.link.send("ACTION", obs_seq=first.seq, action=[1.0])
        wait_until(lambda: sim.stats.actions_ignored >= 1)
        time.sleep(0.6)  # longer than the watchdog: nothing may change by itself
        assert sim.latched and sim.stats.steps == 0 and sim.stats.arms == 1
        # Only a deliberate re-arm clears the latch, and the episode restarts.
        sim.watchdog_s = PATIENT  # so that a stall of this test cannot trip it again
        conn.arm()
        o = conn.observe()
        assert o.first and not sim.latched and sim.armed and sim.stats.arms == 2
        assert conn.counters["watchdog_latched"] == 1


def test_reboot_is_detected_and_reconnect_works(cartpole_sim):
    sim = cartpole_sim(faults=SimFaults(reboot_after_steps=5))
    with cartpole_conn(sim.device_path) as conn:
        old = conn.connect().boot_id
        o = conn.observe()
        with pytest.raises(RobotRebooted) as e:
            for _ in range(50):
                conn.act([0], o.seq)
                o = conn.observe()
        assert f"0x{old:08x} -> 0x{sim.boot_id:08x}" in str(e.value)
        assert not conn.armed and not sim.armed
        hello = conn.connect()
        assert hello.boot_id == sim.boot_id != old
        o = conn.observe()
        assert o.first
        for _ in range(5):
            conn.act([1], o.seq)
            o = conn.observe()
        assert sim.stats.reboots == 1 and conn.counters["reboots"] == 1


def test_mcu_hang_gives_observe_timeouts(cartpole_sim):
    sim = cartpole_sim(faults=SimFaults(hang_after_steps=3))
    with cartpole_conn(sim.device_path, link={"stop_timeout_s": 0.05}) as conn:
        conn.connect()
        o = conn.observe()
        for _ in range(2):
            conn.act([0], o.seq)
            o = conn.observe()
        conn.act([0], o.seq)  # the third step: the MCU hangs instead of answering
        assert conn.observe(timeout=0.2) is None and sim.hung
        # fault 16: hold still, no learning; the newest OBS was answered, and an MCU rejects a
        # second ACTION for it, so none is sent (the MCU's watchdog applies the safe action)
        assert conn.send_safe() is False
        c = conn.counters
        assert c["obs_timeouts"] == 1 and c["safe_actions_sent"] == 0
        assert c["safe_actions_skipped"] == 1


def test_unplugged_port_raises_link_error(cartpole_sim):
    sim = cartpole_sim()
    with cartpole_conn(sim.device_path, link={"stop_timeout_s": 0.05}) as conn:
        conn.connect()
        conn.observe()
        sim.close()  # the device vanishes
        with pytest.raises(LinkError, match="unplugged"):
            conn.observe(timeout=PATIENT)


# Every operation of an open link on a device that went away (the MCU's process died, the USB
# adapter vanished): pyserial raises SerialException, OSError from ioctl (in_waiting) and
# termios.error from tcflush (reset_input), which is not an OSError. All must be LinkError.
PORT_OPS = {
    "recv": lambda link: link.recv(0.2),
    "recv_nowait": lambda link: link.recv(0),
    "write": lambda link: link.write(b"\x00"),
    "send": lambda link: link.send("STATUS_REQ"),
    "reset_input": lambda link: link.reset_input(),
}


@pytest.mark.parametrize("op", sorted(PORT_OPS))
def test_device_gone_under_an_open_link_is_a_link_error(pty_pair, op):
    master, dev = pty_pair
    link = SerialLink(dev, read_poll_s=0.01)
    link.open()
    os.close(master)  # the other side of the pty is gone: EIO on every operation
    with pytest.raises(LinkError, match="unplugged") as e:
        PORT_OPS[op](link)
    assert dev in str(e.value)
    assert not link.is_open  # closed, so the next open() reopens the device by its path
    link.close()  # still idempotent
    with pytest.raises(LinkError):
        link.open()  # the pty's other side is gone for good: a LinkError too, no traceback


def test_open_of_a_dead_device_is_a_link_error(pty_pair):
    master, dev = pty_pair
    os.close(master)
    with pytest.raises(LinkError, match=dev):
        SerialLink(dev).open()


def test_reconnect_reopens_the_device_now_at_the_same_path(tmp_path, cartpole_sim):
    """The MCU's process dies and a new one comes up behind the same path (a new pty): the
    open link fails with LinkError, and connect() reopens the path instead of reusing the dead
    descriptor (tcflush on it raised termios.error)."""
    path = tmp_path / "robot.tty"
    first = cartpole_sim(link_path=path)
    with cartpole_conn(str(path), link={"stop_timeout_s": 0.05}) as conn:
        conn.connect()
        conn.observe()
        first.close()
        second = cartpole_sim(link_path=path, boot_id=0x0BADCAFE)
        with pytest.raises(LinkError, match="unplugged"):
            conn.observe(timeout=PATIENT)
        assert conn.connect().boot_id == 0x0BADCAFE
        o = conn.observe()
        conn.act([1], o.seq)
        assert conn.observe() is not None and second.stats.steps >= 1
        assert conn.counters["connects"] == 2


def test_reset_input_on_a_dead_open_port_reopens_by_path(tmp_path, cartpole_sim):
    """connect() on a link that still looks open but whose device is gone (nothing read since):
    the failing flush reopens the path in the same call."""
    path = tmp_path / "robot.tty"
    first = cartpole_sim(link_path=path)
    with cartpole_conn(str(path), link={"stop_timeout_s": 0.05}) as conn:
        conn.connect()
        first.close()
        cartpole_sim(link_path=path, boot_id=0x0BADCAFE)
        assert conn.connect().boot_id == 0x0BADCAFE


class ScriptedMCU:
    """A hand-written MCU: handshakes and arms correctly, then `on_action(self, frame)` plays
    whatever misbehaviour a test needs."""

    def __init__(self, master, on_action):
        self.master = master
        self.on_action = on_action
        self.parser = Parser(SIZES)
        self.seq = 0
        self.actions: list[Frame] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def send(self, msg, sizes=SIZES, seq=None, **fields) -> bytes:
        data = p.encode_frame(msg, self.seq if seq is None else seq, fields, sizes)
        os.write(self.master, data)
        if seq is None:
            self.seq += 1
        return data

    def obs(self, n=4, flags=0, reward=0.0, seq=None, value=0.5) -> bytes:
        return self.send("OBS", Sizes(n, 1), seq, flags=flags, reward=reward, obs=[value] * n)

    def run(self):
        while not self.stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.02)
            if not r:
                continue
            for f in self.parser.feed(os.read(self.master, 4096)):
                if not isinstance(f, Frame):
                    continue
                if f.name == "HELLO_REQ":
                    fl = dict(f.fields)
                    fl.update(boot_id=99, control_period_ms=0, watchdog_ms=1000, accepted=1)
                    self.send("HELLO", **fl)
                elif f.name == "ARM":
                    status = dict.fromkeys(STATUS_FIELDS, 0)
                    self.send("STATUS", **{**status, "armed": 1, "event": 1, "boot_id": 99})
                    self.obs(flags=p.OBS_FIRST)
                elif f.name == "ACTION":
                    self.actions.append(f)
                    self.on_action(self, f)


@pytest.fixture
def scripted(pty_pair):
    master, dev = pty_pair
    mcus = []

    def make(on_action):
        mcus.append(ScriptedMCU(master, on_action))
        return dev, mcus[-1]

    yield make
    for mcu in mcus:
        mcu.stop.set()
        mcu.thread.join(2)


def test_repeated_wrong_length_obs_sends_safe_and_asks_for_rehandshake(scripted):
    def on_action(mcu, f):
        if len(mcu.actions) == 1:
            for _ in range(3):
                mcu.obs(5)  # the firmware "changed" its observation size (fault 4)

    dev, mcu = scripted(on_action)
    with cartpole_conn(dev, link={"stop_timeout_s": 0.05}) as conn:
        conn.connect()
        o = conn.observe()
        conn.act([1], o.seq)
        with pytest.raises(LinkError, match="wrong length") as e:
            conn.observe()
        assert not isinstance(e.value, HandshakeError)
        assert conn.counters["rx_bad_length"] == 3
        # the newest good OBS was answered, so no second ACTION for it (an MCU rejects that);
        # the re-handshake's HELLO_REQ makes the MCU apply the safe action and disarm
        assert conn.counters["safe_actions_skipped"] == 1
        assert conn.counters["safe_actions_sent"] == 0 and len(mcu.actions) == 1
        assert not conn.armed


def test_duplicate_stale_skipped_and_nonfinite_observations(scripted):
    def on_action(mcu, f):
        n = len(mcu.actions)
        if n == 1:
            # OBS s, its duplicate, and an older (reordered) OBS, in one write
            s = mcu.seq
            first = p.encode_frame("OBS", s, {"flags": 0, "reward": 1.0, "obs": [0.5] * 4})
            older = p.encode_frame("OBS", s - 1, {"flags": 0, "reward": 1.0, "obs": [9.0] * 4})
            os.write(mcu.master, first + first + older)
            mcu.seq += 1
        elif n == 2:
            mcu.obs(reward=float("nan"))
        elif n == 3:
            mcu.obs(value=1.0)  # two new OBS back to back: the newer one wins
            mcu.obs(value=float("inf"))

    dev, mcu = scripted(on_action)
    with cartpole_conn(dev, link={"stop_timeout_s": 0.05}) as conn:
        conn.connect()
        o = conn.observe()
        conn.act([1], o.seq)
        a = conn.observe()
        assert a.finite and a.reward == 1.0 and a.obs.tolist() == [0.5] * 4
        conn.act([1], a.seq)
        b = conn.observe()  # the duplicate and the stale OBS were skipped
        assert p.seq_diff(b.seq, a.seq) == 1 and not b.finite and np.isnan(b.reward)
        conn.act([0], b.seq)
        c = conn.observe()
        while p.seq_diff(c.seq, b.seq) < 2:  # the two OBS may arrive in one read or two
            c = conn.observe()
        assert not c.finite and np.isinf(c.obs).all()
        k = conn.counters
        assert k["obs_duplicates"] == 1 and k["obs_stale"] == 1 and k["nonfinite_obs"] >= 2
        assert k["seq_duplicates"] == 1 and k["seq_stale"] == 1
        assert k["action_resends"] == 0  # the duplicate came before the OBS was answered


# ---------------------------------------------------------------- blocked writes


def _fill_until_blocked(link: SerialLink) -> int:
    """Write until the kernel's pty buffers are full (nobody reads the master); bytes written.

    Linux moves pty data from the writer's buffer to the reader's line discipline in a work
    queue, so space can reappear just after a write blocked: fill again until the port stays
    blocked across a pause (before, a fill-once made this test pass or fail by timing)."""
    fd = link._port.fileno()
    total, quiet_rounds = 0, 0
    while quiet_rounds < 3:
        before = total
        for chunk in (4096, 64, 1):  # a pty accepts partial writes: fill the last bytes too
            while True:
                try:
                    total += os.write(fd, b"\x55" * chunk)
                except BlockingIOError:
                    break
        quiet_rounds = quiet_rounds + 1 if total == before else 0
        time.sleep(0.05)
    return total


def test_write_to_a_port_nobody_reads_raises_blocked(pty_pair):
    master, dev = pty_pair
    with SerialLink(dev, write_timeout_s=0.3) as link:
        _fill_until_blocked(link)
        t0 = time.monotonic()
        with pytest.raises(LinkError, match="blocked for 0.3s"):
            link.write(b"\x00" * 64)
        assert time.monotonic() - t0 >= 0.25  # it waited, it did not give up at once


def test_write_waits_for_a_slow_reader(pty_pair):
    master, dev = pty_pair
    with SerialLink(dev, write_timeout_s=PATIENT) as link:
        _fill_until_blocked(link)
        drained = threading.Event()

        def drain():
            time.sleep(0.2)
            while not drained.is_set():
                if select.select([master], [], [], 0.05)[0]:
                    os.read(master, 65536)

        t = threading.Thread(target=drain, daemon=True)
        t.start()
        try:
            link.write(b"\x01" * 8192)  # more than was free: must wait for the reader
        finally:
            drained.set()
            t.join()


WRITER = r"""
import sys, time
from firmware_bridge.link import SerialLink
link = SerialLink(sys.argv[1], write_timeout_s=1.0)
link.open()
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    link.write(b"\x02" * 512)
    n += 1
print("wrote", n, flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX signals")
def test_a_paused_writer_is_not_a_blocked_port(pty_pair):
    """A host paused by the OS (SIGSTOP here; a swap or GC stall on a robot) longer than the
    write timeout, in the middle of a write, must not see "blocked": the port was fine.
    pyserial's own write timeout gets this wrong (it compares wall-clock deadlines)."""
    import signal
    import subprocess
    import sys

    master, dev = pty_pair
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, dev, "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stop = threading.Event()

    def drain():  # a reader that keeps up, like a healthy MCU
        while not stop.is_set():
            if select.select([master], [], [], 0.05)[0]:
                try:
                    os.read(master, 65536)
                except OSError:
                    return

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(3):  # the writer spends nearly all its time inside write()
            time.sleep(0.1)
            proc.send_signal(signal.SIGSTOP)
            time.sleep(1.2)  # longer than its 1 s write timeout (which a slow drain never nears)
            proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=PATIENT * 3)
    finally:
        stop.set()
        t.join()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.split()[-2] == "wrote"


def test_an_mcu_from_before_prediction_is_refused_naming_both_hashes(cartpole_sim):
    # the schema hash of the table without PREDICTION (0x06): firmware flashed before issue 5
    old = 0x6D296269
    assert old != p.SCHEMA_HASH
    sim = cartpole_sim(schema_hash=old)
    with cartpole_conn(sim.device_path) as conn, pytest.raises(HandshakeError) as e:
        conn.connect()
    assert f"schema hash: host 0x{p.SCHEMA_HASH:08x}, MCU 0x{old:08x}" in str(e.value)
    assert "reflash the MCU" in str(e.value)
    assert not sim.armed and sim.stats.arms == 0
