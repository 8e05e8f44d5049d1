"""The on-robot loop against a simulated MCU on a real pty, with faults switched on."""

from __future__ import annotations

import threading
import time

import gymnasium as gym
import numpy as np
import pytest

from export.bundle import ExportConfig, export_run
from firmware_bridge.host import HandshakeError
from firmware_bridge.robot_loop import RunConfig, RunError, UpdateGuard, format_summary, run
from firmware_bridge.sim_robot import SimFaults, SimRobot
from rtu_edge import envs
from rtu_edge.config import NetConfig
from rtu_edge.train import TrainConfig, train


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    train(
        TrainConfig(out=str(root / "run"), steps=500, net=NetConfig(hidden_size=8)), progress=False
    )
    export_run(
        ExportConfig(run_dir=str(root / "run"), out=str(root / "bundle"), parity_steps=200),
        log=lambda m: None,
    )
    return root / "bundle"


class Tamper(gym.Wrapper):
    """Rewrites what the environment returns: `tamper(n, obs, reward) -> (obs, reward)` on the
    n-th step (from 1), as faulty sensors or a buggy reward signal would."""

    def __init__(self, env, tamper):
        super().__init__(env)
        self.n = 0
        self.tamper = tamper

    def step(self, action):
        obs, r, term, trunc, info = self.env.step(action)
        self.n += 1
        obs, r = self.tamper(self.n, obs, r)
        return obs, r, term, trunc, info


def sensor_glitches(env):
    """Every 50th observation is NaN, every 70th is absurd (1e9)."""

    def tamper(n, obs, r):
        if n % 50 == 0:
            return np.full_like(obs, np.nan), r
        if n % 70 == 0:
            return np.full_like(obs, 1e9), r
        return obs, r

    return Tamper(env, tamper)


def reward_burst(env):
    """Steps 150..169 pay a finite but absurd reward (3e38, near float32's limit)."""
    return Tamper(env, lambda n, obs, r: (obs, 3e38 if 150 <= n < 170 else r))


def _robot(tmp_path, faults=None, wrap=None, **kw) -> SimRobot:
    env = envs.make(envs.DEFAULT_ENV, seed=1)
    if wrap:
        env = wrap(env)
    info = envs.env_info(envs.DEFAULT_ENV)
    robot = SimRobot(
        env,
        action_kind=info.action_kind,
        safe_action=list(info.safe_action),
        seed=2,
        faults=faults,
        link_path=str(tmp_path / "tty"),
        **kw,
    )
    robot.start()
    return robot


def _loop(bundle, tmp_path, log=lambda m: None, **kw) -> dict:
    """`rtu-edge run`'s loop against the robot at tmp_path/tty, quiet, checkpoints in tmp_path/ck."""
    cfg = dict(
        bundle=str(bundle),
        port=str(tmp_path / "tty"),
        checkpoint_dir=str(tmp_path / "ck"),
        status_every_s=0,
    )
    return run(RunConfig(**(cfg | kw)), log=log)


def _last_checkpoint_is_finite(tmp_path) -> bool:
    from firmware_bridge.checkpoints import CheckpointStore

    tensors, _, _ = CheckpointStore(tmp_path / "ck").load_latest()
    return all(np.isfinite(v).all() for v in tensors.values())


def test_loop_survives_noise_drops_reboot_and_sensor_glitches(bundle, tmp_path):
    faults = SimFaults(
        corrupt_prob=0.02,
        drop_prob=0.01,
        garbage_prob=0.02,
        split_writes=True,
        reboot_after_steps=300,
    )
    with _robot(tmp_path, faults=faults, wrap=sensor_glitches) as robot:
        s = _loop(bundle, tmp_path, steps=800, obs_timeout_s=0.3)
    c = s["counters"]
    assert s["ticks"] == 800
    assert c["reboots"] == 1  # detected, state reset, handshake again
    assert c["non_finite_obs"] >= 5  # NaN observations never reached the learner
    assert c["bad_updates"] == 0  # ...and absurd ones were clipped, not learned into NaN
    assert sum(v for k, v in c["link"].items() if "crc" in k or "cobs" in k) > 0
    assert robot.stats.reboots == 1
    # the learned state stayed finite through all of it
    assert _last_checkpoint_is_finite(tmp_path)


def test_loop_flushes_subnormals_on_its_thread_and_restores_it(bundle, tmp_path, monkeypatch):
    """Every graph step runs with subnormals flushed (a robot at rest must not step slower,
    firmware_bridge/fpenv.py); the caller's thread is as it was afterwards."""
    from firmware_bridge import fpenv, robot_loop

    seen = []
    real_step = robot_loop.UpdateGuard.step

    def step(self, inputs, tick):
        seen.append(fpenv.denormals_flushed())
        return real_step(self, inputs, tick)

    monkeypatch.setattr(robot_loop.UpdateGuard, "step", step)
    with _robot(tmp_path):
        s = _loop(bundle, tmp_path, steps=50)
    expected = fpenv.mechanism() is not None
    assert s["subnormals_flushed"] is expected
    assert len(seen) == 50 and set(seen) == {expected}
    assert not fpenv.denormals_flushed()


def test_wrong_schema_hash_is_refused_naming_both(bundle, tmp_path):
    with _robot(tmp_path, schema_hash=0x12345678):
        with pytest.raises(HandshakeError) as e:
            _loop(bundle, tmp_path, steps=10)
    assert "0x12345678" in str(e.value).lower()


def test_frozen_run_does_not_write_checkpoints(bundle, tmp_path):
    with _robot(tmp_path):
        s = _loop(bundle, tmp_path, steps=200, learn=False)
    assert s["graph"] == "act" and s["ticks"] == 200
    assert not list((tmp_path / "ck").glob("ckpt-*"))


def test_reward_burst_is_absorbed_by_the_learner(bundle, tmp_path):
    """A burst of absurd but finite rewards (3e38, near float32's limit): the learn step keeps
    its normalisers finite and ObGD bounds the update, so nothing is skipped and everything
    saved is finite (before, the return normaliser became infinite)."""
    with _robot(tmp_path, wrap=reward_burst):
        s = _loop(bundle, tmp_path, steps=600, snapshot_every=50)
    c = s["counters"]
    assert c["learn_steps"] == 600 and c["bad_updates"] == 0, c
    assert _last_checkpoint_is_finite(tmp_path)


def test_bad_updates_in_a_row_roll_back_to_the_last_good_state(bundle, tmp_path, monkeypatch):
    """Fault: the learner's state in memory is corrupted (a critic bias turns NaN at tick 150,
    as a bit flip would), so every later update is refused and its check outputs go NaN. The
    loop counts bad updates, rolls back after `max_bad_updates` in a row, and keeps learning
    from the restored state; everything saved at the end is finite. Without the rollback
    (load_state removed) it never recovers and the counts below fail."""
    from firmware_bridge.bundle import load_bundle
    from firmware_bridge.runtime import StepRunner

    real_step = StepRunner.step
    calls = {"n": 0}
    (params,) = [b for b in load_bundle(bundle).manifest.packing if b.name == "params.flat"]
    (b2,) = [t for t in params.tensors if t.name == "params.critic.b2"]

    def corrupting_step(self, **inputs):
        calls["n"] += 1
        if calls["n"] == 150 and "params.flat" in self.carried_names:
            flat = self.state()["params.flat"]
            flat[b2.offset] = np.nan  # params.critic.b2, inside the packed parameters
            self.load_state({"params.flat": flat}, partial=True)
        return real_step(self, **inputs)

    monkeypatch.setattr(StepRunner, "step", corrupting_step)
    with _robot(tmp_path):
        s = _loop(bundle, tmp_path, steps=600, snapshot_every=50, max_bad_updates=10)
    c = s["counters"]
    assert c["bad_updates"] == 10, c
    assert c["rollbacks"] == 1, c
    assert c["learn_steps"] == 590, c  # learning went on after the rollback
    assert _last_checkpoint_is_finite(tmp_path)


def test_robot_killed_and_restarted_at_the_same_path_run_reconnects(bundle, tmp_path):
    """Fault 14 as it happens: the MCU's process dies (its pty vanishes under the open port, the
    link path disappears) and a new one comes up at the same path. Every port error is a
    LinkError, so the loop's reconnect path reopens the path with backoff and runs on."""
    first = _robot(tmp_path)
    box: dict = {}

    def kill_and_restart():
        deadline = time.monotonic() + 60
        while first.stats.steps < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        first.close()
        time.sleep(0.3)  # the host finds no device at the path for a while
        box["second"] = _robot(tmp_path, boot_id=0x5EC0D)

    swapper = threading.Thread(target=kill_and_restart, daemon=True)
    swapper.start()
    logs: list[str] = []
    try:
        s = run(
            RunConfig(
                bundle=str(bundle),
                port=str(tmp_path / "tty"),
                checkpoint_dir=str(tmp_path / "ck"),
                status_every_s=0,
                steps=400,
                reconnect_backoff_s=0.1,
                reconnect_tries=8,
            ),
            log=logs.append,
        )
    finally:
        swapper.join(30)
        first.close()
        if "second" in box:
            box["second"].close()
    c = s["counters"]
    assert s["ticks"] == 400 and s["exit"] == "steps"
    assert c["link_errors"] >= 1, logs
    assert box["second"].stats.steps > 0  # the new robot at the same path was driven
    assert any("reconnect attempt" in m for m in logs), logs  # the path was missing: backoff
    assert c["link"]["connects"] >= 2


class _ScriptedRunner:
    """A StepRunner stand-in: each step's `kind` says what the graph did to the state."""

    def __init__(self):
        self.w = np.zeros(3, np.float32)

    def state(self):
        return {"params.w": self.w.copy(), "norm.count": np.array(len(self.w), np.int64)}

    def load_state(self, state):
        self.w = state["params.w"].copy()

    def step(self, kind):
        if kind == "good":
            self.w += 1
        elif kind == "poison":  # parameters went NaN, yet the TD error looks fine
            self.w[0] = np.nan
        td = np.float32(np.nan if kind == "bad" else 0.5)
        return {"td_error": np.array([td]), "value": np.zeros(1, np.float32)}


def test_last_good_snapshot_is_only_taken_of_a_finite_state():
    counts = dict.fromkeys(("learn_steps", "bad_updates", "rollbacks"), 0)
    runner = _ScriptedRunner()
    guard = UpdateGuard(
        runner,
        learn=True,
        max_bad=3,
        snapshot_every=1,
        counts=counts,
        checked=["td_error", "value"],
    )
    for tick, kind in enumerate(["good", "good", "poison", "good", "bad", "bad", "bad"]):
        _, rolled_back = guard.step({"kind": kind}, tick)
    assert rolled_back and counts["rollbacks"] == 1
    np.testing.assert_array_equal(runner.w, [2, 2, 2])  # the last finite snapshot
    assert counts["snapshots_refused"] == 2  # after the poison, and the good step after it


@pytest.mark.parametrize("where", ["file in the way", "under a file"])
def test_unusable_checkpoint_dir_is_refused_before_connecting(bundle, tmp_path, where):
    blocker = tmp_path / "ck"
    blocker.write_text("not a directory")
    ckpt = blocker if where == "file in the way" else blocker / "deeper"
    with _robot(tmp_path) as robot:
        with pytest.raises(RunError, match=r"cannot be written.*--checkpoint-dir.*--no-learn"):
            _loop(bundle, tmp_path, steps=10, checkpoint_dir=str(ckpt))
        assert robot.stats.hellos == 0  # the port was never touched
    assert blocker.read_text() == "not a directory"


def test_frozen_run_with_a_file_in_the_way_finishes_with_a_warning(bundle, tmp_path):
    (tmp_path / "ck").write_text("not a directory")
    logs: list[str] = []
    with _robot(tmp_path):
        s = _loop(bundle, tmp_path, steps=50, learn=False, log=logs.append)
    assert s["ticks"] == 50 and s["exit"] == "steps"
    assert any("WARNING" in m and "last_act_run.json" in m for m in logs), logs
    assert (tmp_path / "ck").read_text() == "not a directory"


def test_checkpoint_dir_lost_during_the_run_still_reports_the_summary(bundle, tmp_path):
    """The directory goes away and a file takes its place mid-run (a remount, an operator):
    the final checkpoint and the summary file fail with warnings; the summary is returned."""
    import shutil

    ck = tmp_path / "ck"
    logs: list[str] = []
    with _robot(tmp_path) as robot:

        def sabotage():
            deadline = time.monotonic() + 60
            while robot.stats.steps < 50 and time.monotonic() < deadline:
                time.sleep(0.01)
            shutil.rmtree(ck)
            ck.write_text("in the way")

        t = threading.Thread(target=sabotage, daemon=True)
        t.start()
        s = _loop(bundle, tmp_path, steps=300, checkpoint_every_s=1e9, log=logs.append)
        t.join(30)
    assert s["ticks"] == 300
    assert s["counters"]["checkpoint_failures"] == 1
    assert any("WARNING: checkpoint failed" in m for m in logs), logs
    assert any("WARNING: could not write last_learn_run.json" in m for m in logs), logs


def test_cli_run_exit_code_and_summary_with_an_unusable_checkpoint_dir(bundle, tmp_path):
    from typer.testing import CliRunner

    from cli import app

    (tmp_path / "ck").write_text("not a directory")
    args = ["run", str(bundle), "--port", str(tmp_path / "tty"), "--steps", "30"]
    args += ["--checkpoint-dir", str(tmp_path / "ck")]
    with _robot(tmp_path):
        frozen = CliRunner().invoke(app, [*args, "--no-learn"])
        learning = CliRunner().invoke(app, args)
    assert frozen.exit_code == 0, frozen.output
    assert "act run ended (steps): 30 ticks" in frozen.output and "WARNING" in frozen.output
    assert learning.exit_code == 2 and isinstance(learning.exception, SystemExit)
    assert "error: checkpoint directory" in learning.output and "Traceback" not in learning.output


def test_cli_run_checkpoint_every_writes_checkpoints_during_the_run(bundle, tmp_path):
    """`run --checkpoint-every 0.1`: periodic checkpoints while the run goes on, not only the
    one at exit (the CLI used to fix the period at 30 s)."""
    import json

    from typer.testing import CliRunner

    from cli import app

    args = ["run", str(bundle), "--port", str(tmp_path / "tty"), "--steps", "300"]
    args += ["--checkpoint-dir", str(tmp_path / "ck"), "--checkpoint-every", "0.1"]
    with _robot(tmp_path, faults=SimFaults(delay_s=0.003)):  # >= 0.9 s for 300 ticks
        r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "ck").glob("ckpt-*.json"))]
    periodic = [x for x in records if x["meta"]["reason"] == "periodic"]
    assert periodic and all(x["step"] < 300 for x in periodic), records
    assert records[-1]["meta"]["reason"] == "exit" and records[-1]["step"] == 300
    checkpoints = int(r.output.split("checkpoints ")[1].split()[0])
    assert checkpoints >= 4, r.output  # several periodic ones (3 kept on disk) and the last


def test_shutdown_sends_no_action_the_mcu_would_reject(bundle, tmp_path):
    """At exit the last OBS was answered by the last tick: the shutdown safe action used to be a
    second ACTION for it, which the MCU rejects (stale). Now STOP alone holds the robot safe."""
    with _robot(tmp_path) as robot:
        s = _loop(bundle, tmp_path, steps=100)
        assert robot.stats.stops == 1 and not robot.armed
    assert s["ticks"] == 100
    assert robot.stats.actions_rejected == 0, robot.stats
    assert robot.applied_action.tolist() == list(envs.env_info(envs.DEFAULT_ENV).safe_action)
    assert s["counters"]["link"]["safe_actions_skipped"] == 1


def test_run_polls_the_mcu_status_and_reports_its_counters(bundle, tmp_path, capsys):
    """`run` sends STATUS_REQ every mcu_status_every_s between ticks (the lock-step goes on);
    the MCU's counters appear in the live line, the JSON counters and format_summary."""
    from firmware_bridge.link import SerialLink
    from firmware_bridge.protocol import Sizes
    from firmware_bridge.robot_loop import format_summary

    with _robot(tmp_path, faults=SimFaults(delay_s=0.002)) as robot:
        with SerialLink(str(tmp_path / "tty"), sizes=Sizes(2, 1)) as link:
            link.write(b"\x05\x11\x00")  # one chunk the MCU rejects (invalid COBS)
        s = _loop(bundle, tmp_path, steps=300, status_every_s=0.05, mcu_status_every_s=0.05)
        applied, rejected = robot.stats.actions_applied, robot.stats.actions_rejected
    live = capsys.readouterr().err
    c = s["counters"]
    assert s["ticks"] == 300 and c["link"]["status_requests"] >= 5, c["link"]
    assert c["link"]["status_received"] >= c["link"]["status_requests"] - 1, c["link"]
    assert c["timeouts"] == 0 and c["link"]["obs_stale"] == 0  # lock-step undisturbed
    assert "mcu frame errors 1 rejected 0" in live, live[-500:]
    mcu = c["mcu"]  # from the STATUS(STOPPED) at exit: the MCU's final counts
    assert mcu["frame_errors"] == 1 and mcu["watchdog_trips"] == 0, mcu
    assert mcu["actions_applied"] == applied and mcu["actions_rejected"] == rejected == 0
    assert "frame errors 1, actions applied" in format_summary(s)


def test_reboot_whose_boot_hello_is_lost_is_found_by_handshaking_again(bundle, tmp_path):
    """The MCU reboots and its unsolicited boot HELLO is lost on the wire: it waits, disarmed,
    for a HELLO_REQ, and the host sees only silence. After `rehandshake_after_timeouts` silent
    ticks the host handshakes again, finds the new boot id (counted as a reboot) and learns on.
    Before, the host waited out `max_silent_timeouts` and gave up."""
    with _robot(tmp_path, faults=SimFaults(reboot_after_steps=150)) as robot:
        real_boot = robot._boot  # the power-on boot already ran (its HELLO went out)

        def boot_hello_lost():
            # the reboot: the same state change, but the HELLO frame never arrives
            real_send = robot._send
            robot._send = lambda msg, **f: None if msg == "HELLO" else real_send(msg, **f)
            try:
                return real_boot()
            finally:
                robot._send = real_send

        robot._boot = boot_hello_lost
        s = _loop(bundle, tmp_path, steps=400, obs_timeout_s=0.2)
    c = s["counters"]
    assert s["ticks"] == 400 and robot.stats.reboots == 1
    assert c["silent_rehandshakes"] >= 1 and c["reboots"] == 1, c


# ---------------------------------------------------------------- control period (issue 7)


def test_free_running_robot_at_a_period_the_host_meets(bundle, tmp_path):
    """A 20 ms period is far above a tick of this bundle: no overrun, every OBS answered in
    time, so the MCU neither held an action nor saw a late one."""
    with _robot(tmp_path, period_s=0.02) as robot:
        s = _loop(bundle, tmp_path, steps=250, learn=False)
    c = s["counters"]
    assert s["ticks"] == 250 and s["control_period_ms"] == 20
    assert c["overruns"] == 0
    assert 0 < s["tick_p99_over_period"] < 1
    assert robot.stats.actions_late == 0 and robot.stats.steps_held == 0
    assert robot.stats.watchdog_trips == 0 and robot.stats.obs_resent == 0
    assert "control period 20 ms: overruns 0" in format_summary(s)


def test_overruns_and_late_actions_are_counted_and_the_run_completes(bundle, tmp_path, monkeypatch):
    """Every 10th graph step takes 50 ms at a 20 ms period: the host counts an overrun, the
    MCU has sent the next OBS meanwhile, so that ACTION arrives late (counted, not applied) and
    the previous action is held; the run goes on to its last tick."""
    from firmware_bridge import robot_loop

    real_step = robot_loop.UpdateGuard.step

    def slow_step(self, inputs, tick):
        if tick % 10 == 5:
            time.sleep(0.05)
        return real_step(self, inputs, tick)

    monkeypatch.setattr(robot_loop.UpdateGuard, "step", slow_step)
    with _robot(tmp_path, period_s=0.02) as robot:
        s = _loop(bundle, tmp_path, steps=150, learn=False)
    c = s["counters"]
    assert s["ticks"] == 150 and s["exit"] == "steps"
    assert c["overruns"] >= 10
    assert s["tick_p99_over_period"] > 1
    st = robot.stats
    assert st.actions_late >= 5 and st.steps_held >= st.actions_late
    assert st.watchdog_trips == 0 and c["reboots"] == 0 and c["interruptions"] == 0
    assert f"overruns {c['overruns']}" in format_summary(s)


def test_lock_step_robot_reports_no_period(bundle, tmp_path):
    with _robot(tmp_path) as robot:
        s = _loop(bundle, tmp_path, steps=30, learn=False)
    assert s["control_period_ms"] == 0 and s["tick_p99_over_period"] is None
    assert s["counters"]["overruns"] == 0 and robot.stats.actions_late == 0
    assert "control period" not in format_summary(s)


@pytest.fixture(scope="module")
def td_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("td_loop")
    net = NetConfig(hidden_size=8)
    cfg = TrainConfig(
        out=str(root / "run"), algo="td", env="classic/CartPole-P", steps=300, net=net
    )
    train(cfg, progress=False)
    export_run(
        ExportConfig(run_dir=str(root / "run"), out=str(root / "bundle"), parity_steps=200),
        log=lambda m: None,
    )
    return root / "bundle"


def test_td_bundle_predicts_while_the_robots_own_controller_acts(td_bundle, tmp_path):
    with _robot(tmp_path, controller="random") as robot:
        s = _loop(td_bundle, tmp_path, steps=300)
    c, link = s["counters"], s["counters"]["link"]
    assert c["ticks"] == 300 and c["learn_steps"] == 300
    assert link["predictions_sent"] >= 300 and link["actions_sent"] == 0
    assert robot.stats.action_frames == 0  # no ACTION on the wire: the controller acted
    assert robot.stats.predictions_received >= 300 and robot.stats.predictions_rejected == 0
    assert robot.stats.controller_actions >= 300 - robot.stats.episodes - 1
    # an OBS that ends an episode is answered too, but the next one starts with env.reset
    assert robot.stats.steps == robot.stats.controller_actions
    assert robot.stats.actions_applied == 0
    assert len(robot.stats.last_prediction) == 1
    assert np.isfinite(robot.stats.last_prediction).all()


def test_prediction_bundle_without_a_robot_controller_ends_with_the_cause(td_bundle, tmp_path):
    """Fault 41: every PREDICTION is rejected (the robot has no controller), so its watchdog
    trips, the host re-arms, and so on forever with the robot never stepping. After
    `max_latches_without_step` latches in a row the run ends with a RunError naming the cause,
    and still stops the robot and checkpoints."""
    with _robot(tmp_path, watchdog_s=0.2) as robot:
        with pytest.raises(RunError, match="rejects every PREDICTION.*no controller") as e:
            _loop(td_bundle, tmp_path, steps=500, max_latches_without_step=3)
    assert "mcu_plant_t.control" in str(e.value)
    assert robot.stats.watchdog_trips >= 3 and robot.stats.steps == 0
    assert robot.stats.predictions_rejected >= 3 and not robot.armed


def test_latches_with_steps_between_them_do_not_end_the_run(td_bundle, tmp_path):
    """The latch count restarts whenever the robot steps: a robot that accepts answers is never
    given up on (here the host answers every OBS and nothing latches)."""
    with _robot(tmp_path, controller="random") as robot:
        s = _loop(td_bundle, tmp_path, steps=50, max_latches_without_step=1)
    assert s["ticks"] == 50 and robot.stats.watchdog_trips == 0


def test_an_action_bundle_still_sends_actions_to_a_robot_with_a_controller(bundle, tmp_path):
    with _robot(tmp_path, controller="random") as robot:
        s = _loop(bundle, tmp_path, steps=100)
    link = s["counters"]["link"]
    assert link["actions_sent"] >= 100 and link["predictions_sent"] == 0
    assert robot.stats.predictions_received == 0 and robot.stats.controller_actions == 0
    assert robot.stats.actions_applied >= 90
