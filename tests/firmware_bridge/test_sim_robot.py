"""SimRobot: the simulated MCU, driven over a real pseudo-terminal by RobotConnection or by raw
frames. No assertion depends on timing; waits only bound how long a broken test hangs."""

from __future__ import annotations

import os
import time

import gymnasium as gym
import numpy as np
import pytest

from firmware_bridge import protocol as p
from firmware_bridge.host import LinkConfig, RobotConnection
from firmware_bridge.link import SerialLink
from firmware_bridge.protocol import Frame, Sizes
from firmware_bridge.sim_robot import SimFaults, SimRobot

PATIENT = 10.0
EVENT = dict(p.STATUS_EVENTS)


def make_sim(env=None, **kw) -> SimRobot:
    kw.setdefault("watchdog_s", PATIENT)
    return SimRobot(env or gym.make("CartPole-v1"), action_kind="discrete", safe_action=[0], **kw)


def make_conn(port: str) -> RobotConnection:
    cfg = LinkConfig(port=port, handshake_timeout_s=PATIENT, obs_timeout_s=PATIENT)
    return RobotConnection(
        cfg,
        obs_size=4,
        action_size=1,
        schema_hash=p.SCHEMA_HASH,
        action_low=[0],
        action_high=[1],
        safe_action=[0],
        num_actions=2,
    )


def run_episodes(conn: RobotConnection, steps: int, seed: int = 0):
    """A random policy for `steps` actions; returns the observations and episode returns."""
    rng = np.random.default_rng(seed)
    seen, returns, ep = [], [], 0.0
    o = conn.observe()
    seen.append(o)
    for _ in range(steps):
        conn.act([rng.integers(0, 2)], o.seq)
        o = conn.observe()
        assert o is not None, "observe timed out"
        seen.append(o)
        if not o.first:
            ep += o.reward
        if o.terminal or o.truncated:
            returns.append(ep)
            ep = 0.0
    return seen, returns


def check_episode_flags(seen):
    assert seen[0].first and seen[0].reward == 0.0
    for prev, cur in zip(seen, seen[1:], strict=False):
        assert p.seq_diff(cur.seq, prev.seq) > 0
        ended = prev.terminal or prev.truncated
        assert cur.first == ended, (prev, cur)  # FIRST exactly after an episode end
        if cur.first:
            assert cur.reward == 0.0 and not (cur.terminal or cur.truncated)


class Inbox:
    """Raw frames from a SerialLink, kept in order: one read may carry several frames."""

    def __init__(self, link: SerialLink):
        self.link = link
        self.backlog: list[Frame] = []

    def wait(self, name: str, timeout=PATIENT, **match) -> Frame:
        """The next frame called `name` whose fields equal `match` (earlier ones are dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            while self.backlog:
                f = self.backlog.pop(0)
                if f.name == name and all(f.fields[k] == v for k, v in match.items()):
                    return f
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name} frame")
            self.backlog += self.link.recv(deadline - time.monotonic())


# ------------------------------------------------------------------------- whole sessions


def test_full_session_lock_step_flags_and_returns():
    with make_sim(seed=3) as sim, make_conn(sim.device_path) as conn:
        sim.start()
        conn.connect()
        t0 = time.perf_counter()
        seen, returns = run_episodes(conn, 400)
        per_step = (time.perf_counter() - t0) / 400
        check_episode_flags(seen)
        assert len(returns) >= 5 and returns == sim.stats.returns
        assert sim.stats.episodes == len(returns)
        assert sum(1 for o in seen if o.terminal) == len(returns)  # CartPole ends by failing
        assert sim.stats.steps == 400 - len(returns)  # an action answering a terminal OBS
        assert all(o.finite and o.obs.shape == (4,) for o in seen)
        c = conn.counters
        assert c["rx_crc_errors"] == 0 and c["obs_duplicates"] == 0 and c["obs_received"] == 401
        assert sim.error is None
        print(f"\nround trip per lock-step step over the pty: {per_step * 1e6:.0f} us")


def test_truncation_flag():
    env = gym.make("CartPole-v1", max_episode_steps=4)
    with make_sim(env) as sim, make_conn(sim.device_path) as conn:
        sim.start()
        conn.connect()
        o = conn.observe()
        seen = [o]
        for i in range(15):
            conn.act([i % 2], o.seq)  # alternating keeps the pole up for 4 steps
            o = conn.observe()
            seen.append(o)
        check_episode_flags(seen)
        assert [o.truncated for o in seen[:6]] == [False] * 4 + [True, False]
        assert sim.stats.lengths[:3] == [4, 4, 4] and sim.stats.returns[:3] == [4.0] * 3


def test_faults_still_make_progress_and_counters_rise():
    faults = SimFaults(
        drop_prob=0.05,
        corrupt_prob=0.05,
        duplicate_prob=0.05,
        split_writes=True,
        garbage_prob=0.05,
        rx_drop_prob=0.05,
    )
    with make_sim(faults=faults, seed=1) as sim, make_conn(sim.device_path) as conn:
        sim.start()
        conn.connect()
        seen, returns = run_episodes(conn, 200)
        check_episode_flags(seen)
        assert returns == sim.stats.returns  # every OBS arrived exactly once, despite it all
        c, s = conn.counters, sim.stats
        assert s.frames_dropped and s.frames_corrupted and s.frames_duplicated and s.garbage_writes
        assert s.rx_dropped and s.obs_resent
        rejected = c["rx_crc_errors"] + c["rx_cobs_errors"] + c["rx_short_frames"]
        assert rejected > 0 and c["rx_bytes_discarded"] > 0
        assert c["obs_duplicates"] > 0 and c["action_resends"] > 0
        assert s.watchdog_trips == 0 and sim.error is None


# ------------------------------------------------------------------------- MCU behaviour


def _hello_req(inbox: Inbox, **over) -> Frame:
    fields = dict(
        protocol_version=1,
        schema_hash=p.SCHEMA_HASH,
        nonce=1234,
        obs_size=4,
        action_size=1,
        num_actions=2,
        obs_dtype=1,
        action_dtype=1,
    )
    fields.update(over)
    inbox.link.send("HELLO_REQ", **fields)
    return inbox.wait("HELLO", nonce=fields["nonce"])


def test_arming_rules():
    with make_sim(resend_s=PATIENT) as sim, SerialLink(sim.device_path, sizes=Sizes(4, 1)) as link:
        sim.start()
        inbox = Inbox(link)
        # ARM before any handshake: refused
        link.send("ARM", boot_id=sim.boot_id)
        st = inbox.wait("STATUS")
        assert st.fields["event"] == EVENT["ARM_REFUSED"] and not st.fields["armed"]
        # a mismatching handshake is answered accepted=0 and ARM stays refused
        hello = _hello_req(inbox, schema_hash=1)
        assert hello.fields["accepted"] == 0 and hello.fields["nonce"] == 1234
        link.send("ARM", boot_id=sim.boot_id)
        assert inbox.wait("STATUS").fields["event"] == EVENT["ARM_REFUSED"]
        # a good handshake, but ARM with another boot id: refused
        hello = _hello_req(inbox, nonce=77)
        assert hello.fields["accepted"] == 1 and hello.fields["boot_id"] == sim.boot_id
        assert hello.fields["watchdog_ms"] == PATIENT * 1000
        link.send("ARM", boot_id=sim.boot_id ^ 1)
        assert inbox.wait("STATUS").fields["event"] == EVENT["ARM_REFUSED"]
        assert sim.stats.arms_refused == 3 and not sim.armed
        # the right boot id arms and starts an episode
        link.send("ARM", boot_id=sim.boot_id)
        st = inbox.wait("STATUS")
        assert st.fields["event"] == EVENT["ARMED"] and st.fields["armed"] == 1
        obs = inbox.wait("OBS")
        assert obs.fields["flags"] == p.OBS_FIRST and obs.seq == st.seq + 1
        # ARM again while armed: idempotent
        link.send("ARM", boot_id=sim.boot_id)
        assert inbox.wait("STATUS").fields["event"] == EVENT["REPLY"]
        assert sim.stats.arms == 1
        # STOP: safe action, disarmed, confirmed; later ACTIONs are answered with STATUS
        link.send("STOP", reason=0)
        st = inbox.wait("STATUS")
        assert st.fields["event"] == EVENT["STOPPED"] and not st.fields["armed"]
        assert not sim.armed and sim.applied_action.tolist() == [0.0]
        link.send("ACTION", obs_seq=obs.seq, action=[1.0])
        st = inbox.wait("STATUS")
        assert st.fields["event"] == EVENT["REPLY"] and not st.fields["armed"]
        assert sim.stats.actions_ignored == 1 and sim.stats.steps == 0
        link.send("STATUS_REQ")
        assert inbox.wait("STATUS").fields["event"] == EVENT["REPLY"]


def test_discrete_actions_are_rounded_clipped_and_nan_is_safe():
    with make_sim(resend_s=PATIENT) as sim, SerialLink(sim.device_path, sizes=Sizes(4, 1)) as link:
        sim.start()
        inbox = Inbox(link)
        _hello_req(inbox)
        link.send("ARM", boot_id=sim.boot_id)
        obs = inbox.wait("OBS")
        for value, applied in [(0.6, 1.0), (7.0, 1.0), (-3.0, 0.0), (float("nan"), 0.0)]:
            link.send("ACTION", obs_seq=obs.seq, action=[value])
            nxt = inbox.wait("OBS")
            assert nxt.seq != obs.seq and sim.applied_action.tolist() == [applied], value
            if nxt.fields["flags"] & p.OBS_TERMINAL:
                break
            obs = nxt
        # a stale ACTION (old obs_seq) is not applied
        steps = sim.stats.steps
        link.send("ACTION", obs_seq=(obs.seq - 1) % p.SEQ_MODULUS, action=[1.0])
        link.send("STATUS_REQ")
        st = inbox.wait("STATUS")
        assert sim.stats.steps == steps and sim.stats.actions_stale >= 1
        assert st.fields["actions_rejected"] >= 1
        assert sim.stats.actions_nonfinite == 1 and sim.stats.actions_clipped >= 2


def test_link_path_symlink_and_max_steps(tmp_path):
    link_path = tmp_path / "robot"
    sim = make_sim(link_path=link_path)
    try:
        assert os.readlink(link_path) == sim.device_path
        thread = sim.start(max_steps=5)
        with make_conn(str(link_path)) as conn:
            conn.connect()
            o = conn.observe()
            for _ in range(5):
                conn.act([0], o.seq)
                o = conn.observe(timeout=1.0) or o
        thread.join(PATIENT)
        assert not thread.is_alive() and sim.stats.steps == 5
    finally:
        sim.close()
    assert not link_path.exists() and not os.path.lexists(link_path)


def _other_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    return path


def _in_the_way(kind: str, path, tmp_path):
    if kind == "file":
        path.write_text("precious")
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_text("precious")
    elif kind == "symlink elsewhere":
        path.symlink_to(_other_file(tmp_path))
    else:  # a symlink into /dev that is not a pty slave (a real serial device's alias)
        path.symlink_to("/dev/null")


def _snapshot(directory):
    return sorted(
        (str(p.relative_to(directory)), os.readlink(p) if p.is_symlink() else p.read_bytes())
        for p in directory.rglob("*")
        if p.is_symlink() or p.is_file()
    )


@pytest.mark.parametrize("kind", ["file", "directory", "symlink elsewhere", "symlink to a device"])
def test_link_path_in_the_way_is_refused_and_left_untouched(tmp_path, kind):
    path = tmp_path / "robot"
    _in_the_way(kind, path, tmp_path)
    before = _snapshot(tmp_path)
    with pytest.raises(FileExistsError, match="refusing to replace it") as e:
        make_sim(link_path=path)
    assert str(path) in str(e.value) and "another --link" in str(e.value)
    assert _snapshot(tmp_path) == before  # nothing replaced, removed or left behind


def test_stale_link_of_a_killed_sim_robot_is_replaced_and_removed_at_close(tmp_path):
    """A sim-robot that was SIGKILLed leaves its symlink to a pty slave: a restart replaces it."""
    path = tmp_path / "robot"
    old = make_sim(link_path=path)
    stale = old.device_path
    old._closed = True  # as if killed: the pty goes, the symlink stays
    for fd in (old._master, old._slave):
        os.close(fd)
    assert os.readlink(path) == stale
    sim = make_sim(link_path=path)
    assert os.readlink(path) == sim.device_path
    sim.close()
    assert not os.path.lexists(path)
    assert sorted(os.listdir(tmp_path)) == []  # no temp links left


def test_close_leaves_a_path_that_is_no_longer_its_link(tmp_path):
    path = tmp_path / "robot"
    sim = make_sim(link_path=path)
    path.unlink()
    path.write_text("someone else's")
    sim.close()
    assert path.read_text() == "someone else's"


def test_cli_sim_robot_refuses_a_file_at_link(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cli import app

    monkeypatch.setattr(SimRobot, "serve", lambda self, *a, **k: None)  # never wait for a host
    path = tmp_path / "robot.tty"
    path.write_text("precious")
    r = CliRunner().invoke(app, ["sim-robot", "--link", str(path), "--max-steps", "1"])
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit)  # a one-line error, no traceback
    assert "error: cannot create --link" in r.output and "refusing to replace it" in r.output
    assert path.read_text() == "precious" and os.listdir(tmp_path) == ["robot.tty"]


def test_constructor_validation():
    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match="action_kind"):
        SimRobot(env, action_kind="binary", safe_action=[0])
    with pytest.raises(ValueError, match="safe_action"):
        SimRobot(env, action_kind="discrete", safe_action=[0, 1])


def test_status_frame_errors_counts_every_rejected_chunk():
    """STATUS.frame_errors sums every reason (docs/protocol.md section 2), not just CRC/COBS."""
    with make_sim() as sim, SerialLink(sim.device_path, sizes=Sizes(4, 1)) as link:
        sim.start()
        inbox = Inbox(link)
        link.write(b"\x03\x11\x22\x00")  # too short
        link.write(b"\x5a" * (p.MAX_ENCODED_FRAME + 10) + b"\x00")  # too long
        link.write(b"\x05\x11\x00")  # COBS
        link.send("STATUS_REQ")
        st = inbox.wait("STATUS")
        assert st.fields["frame_errors"] == 3 and st.fields["frames_ok"] == 1


def test_watchdog_ms_zero_means_no_watchdog():
    """watchdog_ms = 0 in HELLO: the MCU never trips or latches; it keeps re-sending its OBS."""
    with make_sim(watchdog_s=0) as sim, SerialLink(sim.device_path, sizes=Sizes(4, 1)) as link:
        sim.start()
        inbox = Inbox(link)
        assert _hello_req(inbox).fields["watchdog_ms"] == 0
        link.send("ARM", boot_id=sim.boot_id)
        inbox.wait("OBS")
        time.sleep(0.3)  # no ACTION: with a watchdog this would have latched
        link.send("STATUS_REQ")
        st = inbox.wait("STATUS", event=EVENT["REPLY"])
        assert st.fields["armed"] == 1 and st.fields["watchdog_latched"] == 0
        assert sim.stats.watchdog_trips == 0 and 2 <= sim.stats.obs_resent <= 10


def test_send_safe_answers_only_an_unanswered_obs_and_the_mcu_rejects_nothing():
    """The safe action is an ACTION for the newest OBS, so it is sent only while that OBS is
    unanswered; for an answered one a conforming MCU would reject it (stale), and STOP alone
    makes it apply and hold the safe action."""
    with make_sim(seed=4) as sim, make_conn(sim.device_path) as conn:
        sim.start()
        conn.connect()
        o = conn.observe()
        conn.act([1], o.seq)
        o = conn.observe()  # not answered yet
        applied = sim.stats.actions_applied
        assert conn.send_safe() is True  # answers it: applied by the MCU
        assert conn.send_safe() is False  # answered now: nothing is sent
        o = conn.observe()
        conn.act([1], o.seq)
        assert conn.send_safe() is False
        c = conn.counters
        assert c["safe_actions_sent"] == 1 and c["safe_actions_skipped"] == 2
        conn.close()  # STOP(SHUTDOWN), confirmed: every earlier frame was handled
        assert sim.stats.stops == 1 and not sim.armed
        assert sim.applied_action.tolist() == [0.0]
        assert sim.stats.actions_applied >= applied + 1
        assert sim.stats.actions_rejected == 0, sim.stats


def test_after_a_host_stall_the_queued_duplicates_are_answered_once_at_most():
    """The host pauses between reading an OBS and answering it (GC, a slow disk, a busy core):
    the MCU re-sends that OBS every resend_s and the copies queue up. Once answered, the host
    reads them as duplicates of an answered OBS. It used to re-send its ACTION for each copy,
    and the MCU rejected every one but none; now it drains the queue and answers once at most."""
    with make_sim(seed=5, resend_s=0.01) as sim, make_conn(sim.device_path) as conn:
        sim.start()
        conn.connect()
        o = conn.observe()
        time.sleep(0.3)  # the host stalls: ~30 re-sends of o pile up
        conn.act([1], o.seq)
        nxt = conn.observe()
        assert nxt is not None and nxt.seq != o.seq
        for _ in range(5):  # the lock-step goes on normally
            conn.act([1], nxt.seq)
            nxt = conn.observe()
        c = conn.counters
        queued = sim.stats.obs_resent
        assert queued >= 10 and c["obs_duplicates"] >= 10, (queued, c)
        assert c["action_resends"] <= 1, c
        assert c["action_resends"] + c["action_resends_suppressed"] >= 10, c
        conn.close()  # STOP confirmed: every ACTION before it was handled
        assert sim.stats.actions_rejected <= 1, sim.stats
