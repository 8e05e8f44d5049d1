"""A simulated microcontroller that speaks the real protocol over a pseudo-terminal.

`SimRobot` wraps any gymnasium-style env (flat float32 Box observations; Discrete or Box
actions) and plays the MCU side of docs/protocol.md: HELLO, ARM, lock-step OBS/ACTION (or, with
`period_s`, free-running at a fixed control period: late ACTIONs dropped, the last one held) with
episode flags, OBS re-sends while an ACTION is missing, a watchdog that applies the safe action
and latches until re-armed, STOP, STATUS. `SimFaults` injects what real links do: drops,
corruption, duplicates, split writes, garbage, latency, reboots and hangs.

The host opens `device_path` (or `link_path`) like any serial port. The env is injected, so
nothing here imports gymnasium (or torch).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import select
import stat
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from firmware_bridge import protocol
from firmware_bridge.protocol import (
    OBS_FIRST,
    OBS_TERMINAL,
    OBS_TRUNCATED,
    Frame,
    MsgId,
    Parser,
    SeqTracker,
    Sizes,
)

__all__ = ["SimFaults", "SimRobot", "SimStats"]

_EVENT = {name: value for name, value in protocol.STATUS_EVENTS}
# STATUS.frame_errors: every rejected chunk, whatever the reason (docs/protocol.md, section 2)
_FRAME_ERRORS = (
    "cobs_errors",
    "short_frames",
    "crc_errors",
    "bad_length",
    "unknown_msg",
    "oversize",
    "timeouts",
)


@dataclass
class SimFaults:
    """What can go wrong between the MCU and the host. Every probability is per frame."""

    drop_prob: float = 0.0  # outgoing frame silently lost (noise, a full UART FIFO)
    corrupt_prob: float = 0.0  # one byte of an outgoing frame XOR-ed with a random non-zero value
    duplicate_prob: float = 0.0  # outgoing frame written twice (retransmitting radio, DMA bug)
    split_writes: bool = False  # frames written in random 1..7-byte pieces (USB packetisation)
    garbage_prob: float = 0.0  # 1..24 random bytes (may contain 0x00) before a frame: boot logs
    rx_drop_prob: float = 0.0  # valid incoming frame ignored (loss in the host -> MCU direction)
    delay_s: float = 0.0  # latency added before each write (slow MCU, long control step)
    reboot_after_steps: int | None = None  # after this many env steps, once: new boot id, seq
    #   reset, disarmed, unsolicited HELLO (fault 15); the OBS of that step is never sent
    hang_after_steps: int | None = None  # after this many env steps: stop reading and writing
    #   for good while the port stays open (fault 16)


@dataclass
class SimStats:
    """What the simulated MCU did; read it from any thread."""

    steps: int = 0  # env.step calls
    episodes: int = 0  # episodes that ended (terminated or truncated)
    returns: list[float] = field(default_factory=list)  # return of each ended episode
    lengths: list[int] = field(default_factory=list)  # steps of each ended episode
    episodes_interrupted: int = 0  # episodes abandoned by STOP, a watchdog trip or a reboot
    arms: int = 0
    arms_refused: int = 0
    stops: int = 0
    hellos: int = 0  # HELLO_REQ answered
    handshakes_refused: int = 0  # HELLO_REQ whose values did not match
    watchdog_trips: int = 0
    reboots: int = 0
    safe_applied: int = 0  # times the safe action was applied (disarm, trip, STOP)
    obs_sent: int = 0
    obs_resent: int = 0  # OBS re-sent because its ACTION had not arrived
    actions_applied: int = 0
    actions_stale: int = 0  # obs_seq not the current OBS, or the current OBS already answered
    actions_ignored: int = 0  # arrived while disarmed or latched
    actions_nonfinite: int = 0  # NaN/Inf action: safe action applied instead
    actions_clipped: int = 0  # outside the action space: clipped
    # free-running only (period_s > 0):
    actions_late: int = 0  # answered an OBS after the next one went out: rejected, not applied
    steps_held: int = 0  # periods whose OBS got no ACTION in time: the previous action was held
    frames_sent: int = 0
    frames_dropped: int = 0
    frames_corrupted: int = 0
    frames_duplicated: int = 0
    garbage_writes: int = 0
    rx_frames: int = 0  # valid frames received
    rx_dropped: int = 0  # valid frames ignored by rx_drop_prob
    tx_overflow: int = 0  # bytes dropped because the host did not read (pty buffer full)
    # prediction mode (a `controller`): PREDICTION answers an OBS, the controller acts
    action_frames: int = 0  # ACTION frames received, valid or not
    predictions_received: int = 0  # PREDICTIONs accepted (each let the controller act)
    predictions_rejected: int = 0  # stale, disarmed or latched, or no controller
    controller_actions: int = 0  # env steps with the controller's own action
    last_prediction: list[float] = field(default_factory=list)  # values of the last accepted

    @property
    def actions_rejected(self) -> int:
        """ACTIONs rejected by the rules of docs/protocol.md section 6 (STATUS.actions_rejected):
        stale or already answered, late (free-running), disarmed or latched, non-finite."""
        return (
            self.actions_stale + self.actions_late + self.actions_ignored + self.actions_nonfinite
        )


class SimRobot:
    """The MCU side of the protocol on a pseudo-terminal, stepping an injected env.

    Use `start()` (a daemon thread) or call `serve()` yourself; `close()` (or the context
    manager) stops it and removes the pty and `link_path` (only while it is still our symlink).
    An existing `link_path` is replaced only if it is a symlink to a pty slave, as a killed
    simulated robot leaves behind; anything else raises FileExistsError, untouched.
    """

    def __init__(
        self,
        env,
        *,
        action_kind: str,
        safe_action,
        watchdog_s: float = 0.5,
        resend_s: float | None = None,
        boot_id: int | None = None,
        seed: int = 0,
        faults: SimFaults | None = None,
        link_path: str | os.PathLike | None = None,
        schema_hash: int | None = None,
        protocol_version: int | None = None,
        period_s: float = 0.0,
        controller=None,
    ):
        if action_kind not in ("discrete", "continuous"):
            raise ValueError(f"action_kind must be 'discrete' or 'continuous', not {action_kind!r}")
        self.env = env
        self.action_kind = action_kind
        # no valid ACTION this long after an OBS -> safe + latch; 0: no watchdog (it never trips)
        self.watchdog_s = watchdog_s
        # while its ACTION is missing, the current OBS is re-sent this often (lost frames)
        if resend_s is None:
            resend_s = min(0.05, watchdog_s / 4) if watchdog_s > 0 else 0.05
        self.resend_s = resend_s
        # 0: lock-step (the env steps when the ACTION for the current OBS arrives). > 0:
        # free-running at this period (declared in HELLO.control_period_ms): every period the
        # env steps with the action held and the next OBS goes out, answered or not.
        if not (period_s >= 0 and period_s * 1000 <= 0xFFFF):
            raise ValueError(f"period_s must be in [0, 65.535] seconds, got {period_s}")
        self.period_s = float(period_s)
        # prediction mode: None (the host's ACTIONs act; a PREDICTION is rejected), "random"
        # (seeded uniform actions), "hold" (the safe action) or a callable obs -> env action.
        # A PREDICTION for the current OBS then lets this controller act; an ACTION still
        # overrides it (the host's safe action).
        if not (controller is None or controller in ("random", "hold") or callable(controller)):
            raise ValueError(
                f"controller must be None, 'random', 'hold' or a callable, not {controller!r}"
            )
        self.controller = controller
        self._last_obs = None
        self.faults = faults or SimFaults()
        self.schema_hash = protocol.SCHEMA_HASH if schema_hash is None else schema_hash
        self.protocol_version = (
            protocol.PROTOCOL_VERSION if protocol_version is None else protocol_version
        )
        self.seed = seed
        self._rng = np.random.default_rng(seed)

        self.obs_size = int(np.prod(env.observation_space.shape))
        space = env.action_space
        if action_kind == "discrete":
            self.num_actions = int(space.n)
            self.action_size = 1
            self._low = self._high = None
        else:
            self.num_actions = 0
            self.action_size = int(np.prod(space.shape))
            self._low = np.asarray(space.low, dtype=np.float64).reshape(-1)
            self._high = np.asarray(space.high, dtype=np.float64).reshape(-1)
        self.safe_action = np.asarray(safe_action, dtype=np.float32).reshape(-1)
        if self.safe_action.shape != (self.action_size,):
            raise ValueError(f"safe_action needs {self.action_size} values")

        self.boot_id = boot_id if boot_id is not None else self._new_boot_id()
        self.stats = SimStats()
        self.error: BaseException | None = None  # exception that ended serve(), if any

        self.armed = False
        self.latched = False  # watchdog latched: only an accepted ARM clears it
        self.handshake_ok = False
        self.hung = False
        self.applied_action: np.ndarray = self.safe_action.copy()  # what the actuator holds
        self._sizes = Sizes(self.obs_size, self.action_size)
        self._parser = Parser(self._sizes, frame_timeout_s=0.05)
        self._rx_seq = SeqTracker()
        self._tx_seq = 0
        self._rx_errors_base = 0
        self._obs_frame: bytes | None = None  # current OBS, re-sent byte for byte
        self._obs_seq = 0
        self._awaiting = False  # the current OBS has not been answered
        self._obs_sent_at = 0.0
        self._last_obs_tx = 0.0
        self._last_status_at = 0.0
        self._last_disarmed_reply = -1e9
        self._need_reset = True  # the next episode starts with env.reset
        self._ep_return = 0.0
        self._ep_len = 0
        self._in_episode = False
        self._reset_seeded = False
        self._reboot_done = False
        self._next_tick = 0.0  # free-running: when the next period starts
        self._fed_at = 0.0  # free-running: last accepted ACTION (or ARM), for the watchdog
        self._unanswered: deque[int] = deque(maxlen=64)  # free-running: recent missed OBS seqs

        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.device_path = os.ttyname(self._slave)
        self.link_path = None if link_path is None else os.fspath(link_path)
        if self.link_path is not None:
            try:
                self._install_link(self.link_path)
            except BaseException:
                for fd in (self._master, self._slave):
                    with contextlib.suppress(OSError):
                        os.close(fd)
                raise
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def _install_link(self, path: str) -> None:
        """Point the symlink `path` at this pty, replacing only a link an earlier SimRobot left.

        A simulated robot whose process was killed leaves its symlink behind, pointing at a pty
        slave (/dev/pts/N); that one is replaced, so the robot can restart at the same path.
        Anything else at `path` (a regular file, a directory, a symlink elsewhere) is refused
        with FileExistsError and left untouched.
        """
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is not None and not (stat.S_ISLNK(info.st_mode) and self._is_pty_link(path)):
            if stat.S_ISLNK(info.st_mode):
                what = f"a symlink to {os.readlink(path)}"
            elif stat.S_ISDIR(info.st_mode):
                what = "a directory"
            else:
                what = "a file"
            raise FileExistsError(
                errno.EEXIST,
                f"{path} is {what}, not a link to a pseudo-terminal left by a simulated robot; "
                "refusing to replace it (nothing was changed). Remove it yourself or choose "
                "another --link path",
                path,
            )
        # a fresh name, so that no existing file is ever overwritten or removed on the way
        tmp = f"{path}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        os.symlink(self.device_path, tmp)
        try:
            os.replace(tmp, path)  # atomic: a reader never sees a missing link
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _is_pty_link(self, path: str) -> bool:
        """Whether the symlink `path` points where this OS puts pty slaves (like ours)."""
        try:
            target = os.readlink(path)
        except OSError:
            return False
        mine = self.device_path  # /dev/pts/3 on Linux, /dev/ttys003 on macOS
        name = re.escape(re.sub(r"\d+$", "", os.path.basename(mine))) + r"\d+"
        return (
            os.path.isabs(target)
            and os.path.dirname(target) == os.path.dirname(mine)
            and re.fullmatch(name, os.path.basename(target)) is not None
        )

    # ---------------------------------------------------------------- lifecycle

    def start(self, max_steps: int | None = None) -> threading.Thread:
        """Run serve() in a daemon thread until close()/stop()."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(
            target=self.serve, args=(self._stop, max_steps), name="SimRobot", daemon=True
        )
        self._thread.start()
        return self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the serving thread started by start()."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def close(self) -> None:
        """Stop serving, close the pty (the host sees the device vanish) and remove link_path."""
        if self._closed:
            return
        self.stop()
        self._closed = True
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.link_path is not None:
            with contextlib.suppress(OSError):
                if os.readlink(self.link_path) == self.device_path:
                    os.unlink(self.link_path)

    def __enter__(self) -> SimRobot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- the MCU loop

    def serve(
        self, stop_event: threading.Event | None = None, max_steps: int | None = None
    ) -> None:
        """Play the MCU until `stop_event` is set or `max_steps` env steps were taken."""
        stop_event = stop_event or self._stop
        try:
            self._boot()
            while not stop_event.is_set():
                if max_steps is not None and self.stats.steps >= max_steps:
                    return
                if self.hung:
                    stop_event.wait(0.02)
                    continue
                now = time.monotonic()
                wait = max(0.0, min(0.02, self._next_deadline(now) - now))
                try:
                    ready, _, _ = select.select([self._master], [], [], wait)
                except (OSError, ValueError):
                    return  # closed under us
                if ready:
                    try:
                        data = os.read(self._master, 4096)
                    except BlockingIOError:
                        data = b""
                    except OSError as e:
                        if e.errno in (errno.EIO, errno.EBADF):
                            return
                        raise
                    boots = self.stats.reboots
                    for item in self._parser.feed(data, time.monotonic()):
                        if isinstance(item, Frame):
                            self._on_frame(item)
                        if self.hung or self.stats.reboots != boots:
                            break  # a hung or rebooting MCU loses the rest of its RX buffer
                else:
                    self._parser.expire(time.monotonic())
                self._timers(time.monotonic())
        except BaseException as e:  # surfaced to tests through .error
            self.error = e
            raise

    def _boot(self) -> None:
        """Announce this boot: a leading 0x00 ends any partial frame, then HELLO(nonce 0)."""
        self._write_raw(b"\x00")
        self._send_hello(nonce=0, accepted=False)

    def _next_deadline(self, now: float) -> float:
        t = now + 0.02
        if self.period_s > 0:
            if self.armed:
                t = min(t, self._next_tick)
                if self.watchdog_s > 0:
                    t = min(t, self._fed_at + self.watchdog_s)
        elif self.armed and self._awaiting:
            t = min(t, self._last_obs_tx + self.resend_s)
            if self.watchdog_s > 0:
                t = min(t, self._obs_sent_at + self.watchdog_s)
        if self.latched:
            t = min(t, self._last_status_at + self.watchdog_s)
        return t

    def _timers(self, now: float) -> None:
        if self.period_s > 0:
            if self.armed and self.watchdog_s > 0 and now - self._fed_at >= self.watchdog_s:
                self._trip_watchdog()
            elif self.armed and now >= self._next_tick:
                self._tick(now)
        elif self.armed and self._awaiting:
            if self.watchdog_s > 0 and now - self._obs_sent_at >= self.watchdog_s:
                self._trip_watchdog()
            elif now - self._last_obs_tx >= self.resend_s and self._obs_frame is not None:
                self._last_obs_tx = now
                self.stats.obs_resent += 1
                self._write_frame(self._obs_frame)
        if self.latched and now - self._last_status_at >= self.watchdog_s:
            self._send_status("HEARTBEAT")

    def _trip_watchdog(self) -> None:
        self.stats.watchdog_trips += 1
        self._apply_safe()
        self.armed = False
        self.latched = True
        self._awaiting = False
        self._interrupt_episode()
        self._send_status("WATCHDOG")

    # ---------------------------------------------------------------- incoming frames

    def _on_frame(self, f: Frame) -> None:
        if self.faults.rx_drop_prob and self._rng.random() < self.faults.rx_drop_prob:
            self.stats.rx_dropped += 1
            return
        self.stats.rx_frames += 1
        self._rx_seq.update(f.seq)
        handler = {
            MsgId.HELLO_REQ: self._on_hello_req,
            MsgId.ARM: self._on_arm,
            MsgId.STOP: self._on_stop,
            MsgId.STATUS_REQ: lambda f: self._send_status("REPLY"),
            MsgId.ACTION: self._on_action,
            MsgId.PREDICTION: self._on_prediction,
        }.get(f.msg_id)
        if handler is not None:
            handler(f)

    def _on_hello_req(self, f: Frame) -> None:
        fl = f.fields
        if self.armed:
            self._apply_safe()
            self._interrupt_episode()
        self.armed = False
        self._awaiting = False
        mine = self._hello_values()
        accepted = all(
            fl[k] == mine[k]
            for k in (
                "protocol_version",
                "schema_hash",
                "obs_size",
                "action_size",
                "num_actions",
                "obs_dtype",
                "action_dtype",
            )
        )
        self.handshake_ok = accepted
        self.stats.hellos += 1
        if not accepted:
            self.stats.handshakes_refused += 1
        self._send_hello(nonce=fl["nonce"], accepted=accepted)

    def _on_arm(self, f: Frame) -> None:
        if not self.handshake_ok or f.fields["boot_id"] != self.boot_id:
            self.stats.arms_refused += 1
            self._send_status("ARM_REFUSED")
            return
        if self.armed:  # idempotent: the host re-sent ARM because our STATUS was lost
            self._send_status("REPLY")
            return
        self.armed = True
        self.latched = False
        self.stats.arms += 1
        self._send_status("ARMED")
        self._interrupt_episode()
        now = time.monotonic()
        self._fed_at, self._next_tick = now, now + self.period_s
        self._unanswered.clear()
        self._start_episode()

    def _on_stop(self, f: Frame) -> None:
        if self.armed:
            self._interrupt_episode()
        self._apply_safe()
        self.armed = False
        self._awaiting = False
        self.stats.stops += 1
        self._send_status("STOPPED")

    def _controller_action(self):
        """The robot's own controller's action for the current observation (prediction mode)."""
        if self.controller == "random":
            if self.action_kind == "discrete":
                a = [float(self._rng.integers(self.num_actions))]
            else:
                a = self._rng.uniform(self._low, self._high)
        elif self.controller == "hold":
            a = self.safe_action
        else:
            a = self.controller(self._last_obs)
        self.stats.controller_actions += 1
        return self._env_action(np.asarray(a, dtype=np.float64).reshape(-1))

    def _on_prediction(self, f: Frame) -> None:
        """Prediction mode: a PREDICTION for the current OBS lets the controller act (lock-step:
        the env steps now; free-running: at the next period); anything else is rejected."""
        seq = f.fields["obs_seq"]
        if self.controller is None or not self.armed or not self._awaiting or seq != self._obs_seq:
            self.stats.predictions_rejected += 1
            return
        self.stats.predictions_received += 1
        self.stats.last_prediction = [float(x) for x in f.fields["prediction"]]
        self._awaiting = False
        self._fed_at = time.monotonic()
        if self.period_s > 0 or self._need_reset:  # free-running: _tick steps; or episode over
            if self._need_reset and self.period_s == 0:
                self._start_episode()
            return
        self._step_env(self._controller_action(), applied=False)

    def _on_action(self, f: Frame) -> None:
        self.stats.action_frames += 1
        if not self.armed:
            self.stats.actions_ignored += 1
            now = time.monotonic()
            if now - self._last_disarmed_reply >= self.resend_s:  # tell the host, rate-limited
                self._last_disarmed_reply = now
                self._send_status("REPLY")
            return
        if self.period_s > 0:
            self._on_action_free(f)
            return
        if not self._awaiting or f.fields["obs_seq"] != self._obs_seq:
            self.stats.actions_stale += 1
            return
        self._awaiting = False
        if self._need_reset:  # the answered OBS ended the episode: its action is ignored
            self._start_episode()
            return
        self._step_env(self._env_action(f.fields["action"]))

    def _on_action_free(self, f: Frame) -> None:
        """Free-running: an ACTION for the current OBS becomes the action held from now on (the
        env steps with it at the next period); one for an OBS already superseded is late: it was
        computed from an old sample, so it is rejected and counted, never applied."""
        seq = f.fields["obs_seq"]
        if not self._awaiting or seq != self._obs_seq:
            if seq in self._unanswered:
                self._unanswered.remove(seq)
                self.stats.actions_late += 1
            else:
                self.stats.actions_stale += 1
            return
        if not np.all(np.isfinite(f.fields["action"])):
            self._env_action(f.fields["action"])  # counts it and applies the safe action
            return  # still unanswered: the watchdog keeps running
        self._awaiting = False
        self._fed_at = time.monotonic()
        if self._need_reset:  # it answered the episode's last OBS: nothing to apply it to
            return
        self._env_action(f.fields["action"])  # sets applied_action: held until the next one
        self.stats.actions_applied += 1

    def _tick(self, now: float) -> None:
        """One free-running period: step the env with the action held, send the next OBS."""
        self._next_tick += self.period_s
        if self._next_tick <= now:  # we fell behind (a busy machine): do not bunch periods
            self._next_tick = now + self.period_s
        if self._awaiting:  # no ACTION in time: the previous action is held for this period
            self.stats.steps_held += 1
            self._unanswered.append(self._obs_seq)
        self._awaiting = False
        if self._need_reset:
            self._start_episode()
            return
        held = self._controller_action() if self.controller is not None else None
        self._step_env(self._held_env_action() if held is None else held, applied=False)

    def _held_env_action(self):
        a = self.applied_action
        if self.action_kind == "discrete":
            return int(a[0])
        space = self.env.action_space
        return a.astype(np.float64).reshape(space.shape).astype(space.dtype)

    def _step_env(self, action, applied: bool = True) -> None:
        obs, reward, terminated, truncated, _ = self.env.step(action)
        self.stats.steps += 1
        if applied:
            self.stats.actions_applied += 1
        self._ep_return += float(reward)
        self._ep_len += 1
        flags = (OBS_TERMINAL if terminated else 0) | (OBS_TRUNCATED if truncated else 0)
        if terminated or truncated:
            self.stats.episodes += 1
            self.stats.returns.append(self._ep_return)
            self.stats.lengths.append(self._ep_len)
            self._in_episode = False
            self._need_reset = True
        if self._fault_due(self.faults.reboot_after_steps) and not self._reboot_done:
            self._reboot()
            return
        if self._fault_due(self.faults.hang_after_steps):
            self.hung = True
            return
        self._send_obs(flags, float(reward), obs)

    def _fault_due(self, after: int | None) -> bool:
        return after is not None and self.stats.steps >= after

    def _env_action(self, values: np.ndarray):
        a = np.asarray(values, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            self.stats.actions_nonfinite += 1
            self._apply_safe()
            a = self.safe_action.astype(np.float64)
        if self.action_kind == "discrete":
            index = int(np.clip(np.rint(a[0]), 0, self.num_actions - 1))
            if index != a[0]:
                self.stats.actions_clipped += 1
            self.applied_action = np.array([index], dtype=np.float32)
            return index
        clipped = np.clip(a, self._low, self._high)
        if np.any(clipped != a):
            self.stats.actions_clipped += 1
        self.applied_action = clipped.astype(np.float32)
        space = self.env.action_space
        return clipped.reshape(space.shape).astype(space.dtype)

    # ---------------------------------------------------------------- episodes

    def _start_episode(self) -> None:
        if self._reset_seeded:
            obs, _ = self.env.reset()
        else:
            obs, _ = self.env.reset(seed=self.seed)
            self._reset_seeded = True
        self._need_reset = False
        self._in_episode = True
        self._ep_return = 0.0
        self._ep_len = 0
        self._send_obs(OBS_FIRST, 0.0, obs)

    def _interrupt_episode(self) -> None:
        if self._in_episode and self._ep_len > 0:
            self.stats.episodes_interrupted += 1
        self._in_episode = False
        self._need_reset = True

    def _apply_safe(self) -> None:
        """The actuator holds the safe action (the env itself does not advance)."""
        self.applied_action = self.safe_action.copy()
        self.stats.safe_applied += 1

    def _reboot(self) -> None:
        self._reboot_done = True
        self.stats.reboots += 1
        self._interrupt_episode()
        self._apply_safe()
        old = self.boot_id
        while self.boot_id == old:
            self.boot_id = self._new_boot_id()
        self.armed = self.latched = self.handshake_ok = self._awaiting = False
        self._tx_seq = 0
        self._obs_frame = None
        self._parser.reset()
        self._rx_seq.reset()
        self._boot()

    def _new_boot_id(self) -> int:
        return int(self._rng.integers(1, 1 << 32))

    # ---------------------------------------------------------------- outgoing frames

    def _hello_values(self) -> dict:
        return {
            "protocol_version": self.protocol_version,
            "schema_hash": self.schema_hash,
            "obs_size": self.obs_size,
            "action_size": self.action_size,
            "num_actions": self.num_actions,
            "obs_dtype": protocol.DTYPE_F32,
            "action_dtype": protocol.DTYPE_F32,
        }

    def _send_hello(self, nonce: int, accepted: bool) -> None:
        self._send(
            "HELLO",
            boot_id=self.boot_id,
            nonce=nonce,
            control_period_ms=round(self.period_s * 1000),
            watchdog_ms=min(0xFFFF, round(self.watchdog_s * 1000)),
            accepted=int(accepted),
            **self._hello_values(),
        )

    def _send_status(self, event: str) -> None:
        self._last_status_at = time.monotonic()
        c = self._parser.counters
        s = self.stats
        self._send(
            "STATUS",
            armed=int(self.armed),
            watchdog_latched=int(self.latched),
            event=_EVENT[event],
            boot_id=self.boot_id,
            last_obs_seq=self._obs_seq,
            frames_ok=c["frames_ok"] % (1 << 32),
            frame_errors=sum(c[k] for k in _FRAME_ERRORS) % (1 << 32),
            watchdog_trips=s.watchdog_trips,
            actions_applied=s.actions_applied % (1 << 32),
            actions_rejected=s.actions_rejected % (1 << 32),
        )

    def _send_obs(self, flags: int, reward: float, obs) -> None:
        o = np.asarray(obs, dtype=np.float32).reshape(-1)
        if o.size != self.obs_size:
            raise ValueError(f"env returned {o.size} observation values, expected {self.obs_size}")
        self._last_obs = o
        seq = self._tx_seq
        self._obs_frame = protocol.encode_frame(
            "OBS", seq, {"flags": flags, "reward": np.float32(reward), "obs": o}, self._sizes
        )
        self._tx_seq = (seq + 1) % protocol.SEQ_MODULUS
        self._obs_seq = seq
        self._awaiting = True
        now = time.monotonic()
        self._obs_sent_at = self._last_obs_tx = now
        self.stats.obs_sent += 1
        self._write_frame(self._obs_frame)

    def _send(self, msg: str, **fields) -> None:
        frame = protocol.encode_frame(msg, self._tx_seq, fields, self._sizes)
        self._tx_seq = (self._tx_seq + 1) % protocol.SEQ_MODULUS
        self._write_frame(frame)

    def _write_frame(self, frame: bytes) -> None:
        """Write one encoded frame through the fault injector."""
        fx, rng, s = self.faults, self._rng, self.stats
        s.frames_sent += 1
        if fx.delay_s:
            time.sleep(fx.delay_s)
        if fx.garbage_prob and rng.random() < fx.garbage_prob:
            s.garbage_writes += 1
            self._write_raw(
                rng.integers(0, 256, int(rng.integers(1, 25)), dtype=np.uint8).tobytes()
            )
        if fx.drop_prob and rng.random() < fx.drop_prob:
            s.frames_dropped += 1
            return
        if fx.corrupt_prob and rng.random() < fx.corrupt_prob:
            s.frames_corrupted += 1
            b = bytearray(frame)
            b[int(rng.integers(0, len(b) - 1))] ^= int(rng.integers(1, 256))
            frame = bytes(b)
        copies = 1
        if fx.duplicate_prob and rng.random() < fx.duplicate_prob:
            s.frames_duplicated += 1
            copies = 2
        for _ in range(copies):
            if fx.split_writes:
                i = 0
                while i < len(frame):
                    n = int(rng.integers(1, 8))
                    self._write_raw(frame[i : i + n])
                    i += n
            else:
                self._write_raw(frame)

    def _write_raw(self, data: bytes) -> None:
        """Write to the pty master; if the host stops reading, drop what does not fit."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._master, view)
                view = view[n:]
            except BlockingIOError:
                _, w, _ = select.select([], [self._master], [], 0.05)
                if not w:
                    self.stats.tx_overflow += len(view)
                    return
            except OSError:
                self.stats.tx_overflow += len(view)
                return
