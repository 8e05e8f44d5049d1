"""The small hardware interface the on-robot loop uses: connect / observe / act / stop.

`RobotConnection` owns one `SerialLink`, runs the handshake (refusing any mismatch with a
`HandshakeError` that names both sides' values), arms the MCU, and then serves the lock-step
loop: `observe()` returns the next new observation, `act()` clamps, rate-limits and sanitises
the action and returns what was actually sent.

Errors are typed: `LinkError` (base: port, timeouts, protocol faults), `HandshakeError`
(mismatch: do not retry), and `SessionInterrupted` (the MCU is disarmed: reset recurrent state
and traces, treat it as an episode boundary, and call `connect()` again) with its subclasses
`RobotRebooted` (new boot id, fault 15) and `WatchdogLatched` (fault 17).

Robot path: numpy, pyserial and the standard library only.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, fields

import numpy as np

from firmware_bridge import protocol
from firmware_bridge.link import LinkError, SerialLink
from firmware_bridge.protocol import (
    OBS_FIRST,
    OBS_TERMINAL,
    OBS_TRUNCATED,
    Frame,
    MsgId,
    SeqTracker,
    Sizes,
    seq_diff,
)

__all__ = [
    "HandshakeError",
    "HelloInfo",
    "LinkConfig",
    "LinkError",
    "MCU_COUNTERS",
    "Observation",
    "RobotConnection",
    "RobotRebooted",
    "SessionInterrupted",
    "WatchdogLatched",
    "check_hello",
]


# STATUS fields that count since the MCU's boot (docs/protocol.md, STATUS)
MCU_COUNTERS = (
    "frames_ok",
    "frame_errors",
    "watchdog_trips",
    "actions_applied",
    "actions_rejected",
)


class HandshakeError(LinkError):
    """Host and MCU disagree (version, schema hash, sizes, dtypes): retrying cannot help."""


class SessionInterrupted(LinkError):
    """The MCU is disarmed: reset state and traces, episode boundary, then `connect()` again."""


class RobotRebooted(SessionInterrupted):
    """The MCU announced a new boot id (fault 15)."""


class WatchdogLatched(SessionInterrupted):
    """The MCU's watchdog tripped: it applied the safe action and stays latched until re-armed."""


@dataclass
class LinkConfig:
    """How the host talks to the MCU. Every timeout is measured with time.monotonic()."""

    port: str  # serial device; prefer /dev/serial/by-id/... (stable across replugs)
    baud: int = 1_000_000  # must equal the firmware's; a mismatch shows up as CRC errors
    # connect() gives up after this long: covers the boot window of boards that reset when the
    # port is opened (DTR toggles on open; Arduino bootloaders take 1-2 s).
    handshake_timeout_s: float = 3.0
    # HELLO_REQ / ARM are re-sent this often during connect(): the first one may be lost while
    # the MCU boots, or to line noise.
    hello_retry_s: float = 0.2
    # Step timeout: observe() returns None when no new OBS arrives for this long (fault 16).
    obs_timeout_s: float = 0.5
    # stop() waits this long for the MCU to confirm the disarm before giving up (it re-sends
    # STOP three times within it); the MCU's own watchdog still catches a lost STOP.
    stop_timeout_s: float = 0.3
    # This many wrong-length frames in a row (fault 4: firmware and host disagree on sizes)
    # -> safe action and LinkError, so the caller re-handshakes instead of running blind.
    max_bad_length: int = 3
    # Longest single blocking read; the overshoot of any deadline is at most this.
    read_poll_s: float = 0.005
    # A write that blocks longer means the MCU stopped reading (flow control stuck, hung).
    write_timeout_s: float = 0.5
    # Partial frame followed by silence is dropped after this long (fault 9). None: derived from
    # baud and the maximum frame size plus twice the latency timer (DynamixelSDK's formula).
    frame_timeout_s: float | None = None
    # USB-serial adapter latency timer (FTDI default 16 ms; set it to 1 ms, see
    # docs/protocol.md); enters the derived frame timeout.
    latency_timer_ms: int = 16
    # socket:// and rfc2217:// would send actuator commands over a network: off unless asked.
    allow_network: bool = False


@dataclass(frozen=True)
class HelloInfo:
    """What the MCU said about itself in its HELLO."""

    protocol_version: int
    schema_hash: int
    boot_id: int
    obs_size: int
    action_size: int
    num_actions: int
    obs_dtype: int
    action_dtype: int
    control_period_ms: int
    watchdog_ms: int
    accepted: bool

    @classmethod
    def from_frame(cls, frame: Frame) -> HelloInfo:
        values = {k.name: frame.fields[k.name] for k in fields(cls)}
        values["accepted"] = bool(values["accepted"])
        return cls(**values)


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays field-wise is ambiguous
class Observation:
    """One new observation from the MCU."""

    seq: int  # frame seq; pass it to act() so the MCU knows which OBS the action answers
    obs: np.ndarray  # float32, (obs_size,)
    reward: float  # reward of the transition that led here (0 when first)
    first: bool  # first observation of an episode: reset recurrent state, no TD update
    terminal: bool  # terminal state: its value is 0 for bootstrapping
    truncated: bool  # episode cut by a time limit (not terminal: bootstrap)
    received_at: float  # time.monotonic() when the frame was read
    finite: bool  # False when obs or reward holds NaN/Inf (fault 5): do not learn from it


def check_hello(
    hello: HelloInfo,
    *,
    obs_size: int,
    action_size: int,
    schema_hash: int,
    num_actions: int | None = None,
    protocol_version: int = protocol.PROTOCOL_VERSION,
    port: str = "the MCU",
) -> None:
    """Raise HandshakeError naming both sides' values for every field that differs."""
    rows = [
        ("protocol version", protocol_version, hello.protocol_version, str),
        ("schema hash", schema_hash, hello.schema_hash, lambda v: f"0x{v:08x}"),
        ("obs_size", obs_size, hello.obs_size, str),
        ("action_size", action_size, hello.action_size, str),
        ("obs dtype code", protocol.DTYPE_F32, hello.obs_dtype, str),
        ("action dtype code", protocol.DTYPE_F32, hello.action_dtype, str),
    ]
    if num_actions is not None:
        rows.append(("num_actions", num_actions, hello.num_actions, str))
    bad = [f"{n}: host {fmt(h)}, MCU {fmt(m)}" for n, h, m, fmt in rows if h != m]
    if bad:
        raise HandshakeError(
            f"handshake with {port} refused, the host and the firmware disagree on "
            + "; ".join(bad)
            + ". The bundle was exported for a different firmware/protocol: reflash the MCU with "
            "a firmware built from this rtu_edge_protocol.h and this robot's sizes, or export a "
            "bundle that matches the firmware. The robot stays disarmed."
        )
    if not hello.accepted:
        raise HandshakeError(
            f"{port} refused the handshake (HELLO accepted=0) although every value matches: "
            "check the firmware's own configuration (dtype, num_actions). It stays disarmed."
        )


_HOST_COUNTERS = (
    "connects",
    "hello_sent",
    "arm_sent",
    "obs_received",  # new observations decoded (obs_skipped of them were superseded)
    "obs_duplicates",  # OBS re-sent or duplicated by the link: skipped
    "obs_stale",  # OBS older than the newest seen: skipped (fault 12)
    "obs_skipped",  # older new OBS superseded by a newer one in the same read
    "obs_timeouts",  # observe() returned None (fault 16)
    "nonfinite_obs",  # NaN/Inf obs or reward (fault 5)
    "action_resends",  # last action re-sent because its OBS came again (lost ACTION)
    "action_resends_suppressed",  # such duplicates drained with a newer copy or a new OBS
    "actions_sent",
    "predictions_sent",  # PREDICTIONs answering an OBS (prediction mode: the MCU acts itself)
    "actions_clamped",  # action outside [low, high]
    "actions_rate_limited",  # change per step above max_delta
    "actions_nonfinite",  # NaN/Inf action replaced by the safe action (fault 23)
    "safe_actions_sent",
    "safe_actions_skipped",  # send_safe() with the newest OBS already answered: no ACTION sent
    "stops",
    "stops_unconfirmed",
    "status_requests",  # STATUS_REQ sent (request_status())
    "status_received",  # STATUS frames read while armed (their counters: mcu_counters)
    "reboots",  # new boot id seen (fault 15)
    "watchdog_latched",  # STATUS with the watchdog latched (fault 17)
    "bad_length_streaks",  # wrong-length frames in a row -> re-handshake (fault 4)
    "ignored_frames",  # frames not expected in the current state
)


class RobotConnection:
    """Host side of the robot link. A context manager: `with conn: conn.connect(); ...`.

    The action limits are applied in this order: NaN/Inf -> the whole safe action is sent
    instead; clamp to [action_low, action_high]; limit the change from the last action sent to
    max_delta (the reference starts at the safe action after each arm); round to an integer
    index when num_actions is given (discrete).
    """

    def __init__(
        self,
        config: LinkConfig,
        obs_size: int,
        action_size: int,
        schema_hash: int,
        action_low,
        action_high,
        safe_action,
        max_delta=None,
        *,
        num_actions: int | None = None,
    ):
        self.config = config
        self.obs_size = int(obs_size)
        self.action_size = int(action_size)
        self.schema_hash = int(schema_hash)
        self.num_actions = num_actions
        if not 0 < self.obs_size <= protocol.MAX_OBS_SIZE:
            raise ValueError(f"obs_size {obs_size} outside 1..{protocol.MAX_OBS_SIZE}")
        if not 0 < self.action_size <= protocol.MAX_ACTION_SIZE:
            raise ValueError(f"action_size {action_size} outside 1..{protocol.MAX_ACTION_SIZE}")
        self.low = self._vector("action_low", action_low)
        self.high = self._vector("action_high", action_high)
        self.safe = self._vector("safe_action", safe_action)
        if np.any(self.low > self.high):
            raise ValueError(f"action_low {self.low} > action_high {self.high}")
        if np.any(self.safe < self.low) or np.any(self.safe > self.high):
            raise ValueError(f"safe_action {self.safe} outside [{self.low}, {self.high}]")
        self.max_delta = None if max_delta is None else self._vector("max_delta", max_delta)
        if self.max_delta is not None and np.any(self.max_delta <= 0):
            raise ValueError(f"max_delta {self.max_delta} must be > 0")
        self.sizes = Sizes(self.obs_size, self.action_size)

        self.link: SerialLink | None = None
        self.hello: HelloInfo | None = None  # the accepted HELLO of the current session
        self.armed = False
        self.mcu_status: dict | None = None  # fields of the latest STATUS
        self._tracker = SeqTracker()  # all MCU frames of this boot
        self._c = dict.fromkeys(_HOST_COUNTERS, 0)
        self._reset_session()

    def _vector(self, name: str, value) -> np.ndarray:
        v = np.asarray(value, dtype=np.float32).reshape(-1)
        if v.shape != (self.action_size,):
            raise ValueError(f"{name} has {v.size} values, action_size is {self.action_size}")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} must be finite, got {v}")
        return v

    def _reset_session(self) -> None:
        self._last_obs_seq: int | None = None  # newest OBS seq seen since arming
        self._obs_floor: int | None = None  # OBS at or before this seq predate the arm
        self._last_answered: int | None = None  # OBS seq the last ACTION answered
        self._last_sent = self.safe.copy()  # rate-limiter reference
        self._last_prediction: np.ndarray | None = None  # set when the last answer predicted
        self._pending: Observation | None = None  # OBS that arrived while arming
        self._resend_due = 0  # duplicates of the answered OBS seen in the current drain
        self._bad_length_mark = 0

    # ---------------------------------------------------------------- connect

    def connect(self) -> HelloInfo:
        """Open the port (if needed), handshake, check every value, then arm.

        Raises HandshakeError on any mismatch (both sides' values named), LinkError when the MCU
        does not answer, RobotRebooted if it reboots while arming. The port stays open on
        failure, so a retry does not toggle DTR (and reset the board) again; after a port
        failure (SerialLink closes the port) it is reopened by its path. The link's counters
        survive reconnects.
        """
        cfg = self.config
        if self.link is None:
            self.link = SerialLink(
                cfg.port,
                cfg.baud,
                allow_network=cfg.allow_network,
                sizes=self.sizes,
                read_poll_s=cfg.read_poll_s,
                write_timeout_s=cfg.write_timeout_s,
                frame_timeout_s=cfg.frame_timeout_s,
                latency_timer_ms=cfg.latency_timer_ms,
            )
        if not self.link.is_open:
            self.link.open()  # by path: after a port failure, whatever device is there now
        else:
            try:
                self.link.reset_input()
            except LinkError:  # the device went away under the open port (it is closed now)
                self.link.open()
        self._c["connects"] += 1
        self.armed = False
        self.hello = None
        hello = self._handshake()
        self.hello = hello
        self._tracker.reset()
        self.arm()
        return hello

    def _handshake(self) -> HelloInfo:
        link, cfg = self._require_link(), self.config
        nonce = secrets.randbits(32) or 1
        rx_before = link.counters
        start = time.monotonic()
        deadline = start + cfg.handshake_timeout_s
        next_send = start
        while True:
            now = time.monotonic()
            if now >= next_send:
                link.send(
                    "HELLO_REQ",
                    protocol_version=protocol.PROTOCOL_VERSION,
                    schema_hash=self.schema_hash,
                    nonce=nonce,
                    obs_size=self.obs_size,
                    action_size=self.action_size,
                    num_actions=self.num_actions or 0,
                    obs_dtype=protocol.DTYPE_F32,
                    action_dtype=protocol.DTYPE_F32,
                )
                self._c["hello_sent"] += 1
                next_send = now + cfg.hello_retry_s
            if now >= deadline:
                break
            for f in link.recv(min(next_send, deadline) - now):
                if f.msg_id == MsgId.HELLO and f.fields["nonce"] == nonce:
                    hello = HelloInfo.from_frame(f)
                    check_hello(
                        hello,
                        obs_size=self.obs_size,
                        action_size=self.action_size,
                        schema_hash=self.schema_hash,
                        num_actions=self.num_actions,
                        port=cfg.port,
                    )
                    return hello
                self._c["ignored_frames"] += 1
        rx = link.counters
        got = rx["rx_frames_ok"] - rx_before["rx_frames_ok"]
        crc = rx["rx_crc_errors"] - rx_before["rx_crc_errors"]
        hint = (
            f" {crc} CRC errors and no valid frame: the baud rate ({cfg.baud}) probably differs "
            "from the firmware's."
            if crc and not got
            else ""
        )
        raise LinkError(
            f"no HELLO reply from {cfg.port} within {cfg.handshake_timeout_s}s "
            f"({self._c['hello_sent']} HELLO_REQ sent; {got} valid frames and {crc} CRC errors "
            f"received).{hint} Check that the firmware speaks rtu-edge protocol "
            f"v{protocol.PROTOCOL_VERSION}, the baud rate matches, TX/RX are not swapped, and "
            "the board finished booting (opening the port resets many boards; raise "
            "LinkConfig.handshake_timeout_s if its boot takes longer)."
        )

    def arm(self) -> None:
        """Arm the MCU for the accepted handshake (also clears a latched watchdog).

        Re-sends ARM until STATUS(armed) or the first observation arrives. Learning state is the
        caller's: after a latch, reset recurrent state and traces (the episode restarts).
        """
        link, cfg = self._require_link(), self.config
        if self.hello is None:
            raise LinkError("arm() before a successful handshake: call connect()")
        boot = self.hello.boot_id
        self.armed = False
        self._reset_session()
        deadline = time.monotonic() + cfg.handshake_timeout_s
        next_send = time.monotonic()
        confirmed = False
        while not confirmed:
            now = time.monotonic()
            if now >= deadline:
                raise LinkError(
                    f"{cfg.port} did not confirm ARM within {cfg.handshake_timeout_s}s "
                    f"({self._c['arm_sent']} ARM sent): check the link counters "
                    f"{self._link_summary()}"
                )
            if now >= next_send:
                link.send("ARM", boot_id=boot)
                self._c["arm_sent"] += 1
                next_send = now + cfg.hello_retry_s
            for f in link.recv(min(next_send, deadline) - now):
                fl = f.fields
                if f.msg_id == MsgId.HELLO and fl["boot_id"] != boot:
                    self._rebooted(fl["boot_id"])
                if f.msg_id == MsgId.STATUS:
                    self.mcu_status = fl
                    if fl["boot_id"] != boot:
                        self._rebooted(fl["boot_id"])
                    if fl["event"] == protocol.enum_value("STATUS", "event", "ARM_REFUSED"):
                        raise HandshakeError(
                            f"{cfg.port} refused ARM for boot id 0x{boot:08x}: its last "
                            "handshake was not accepted. Call connect() again."
                        )
                    if fl["armed"]:
                        confirmed = True
                        self._obs_floor = f.seq
                        continue
                if f.msg_id == MsgId.OBS and fl["flags"] & OBS_FIRST:
                    confirmed = True
                    self.armed = True
                    obs = self._on_obs(f)
                    if obs is not None:
                        self._pending = obs
                    continue
                if confirmed and f.msg_id == MsgId.OBS:
                    self.armed = True
                    obs = self._on_obs(f)
                    if obs is not None:
                        self._pending = obs
                    continue
                self._c["ignored_frames"] += 1
        self.armed = True
        self._bad_length_mark = link.parser.counters["bad_length"]

    def _rebooted(self, new_boot: int) -> None:
        old = self.hello.boot_id if self.hello else 0
        self.armed = False
        self._c["reboots"] += 1
        self._tracker.reset()
        raise RobotRebooted(
            f"{self.config.port} rebooted (boot id 0x{old:08x} -> 0x{new_boot:08x}); it is "
            "disarmed. Reset recurrent state and traces, treat this as an episode boundary, and "
            "call connect() to handshake and arm again."
        )

    # ---------------------------------------------------------------- observe

    def observe(self, timeout: float | None = None) -> Observation | None:
        """The next new observation, or None after `timeout` (default obs_timeout_s).

        Duplicated and stale OBS are skipped and counted; a duplicate of the OBS last answered
        re-sends that action (the ACTION was lost). Raises RobotRebooted on a new boot id,
        WatchdogLatched when the MCU latched, LinkError on repeated wrong-length frames or a
        port failure.
        """
        link = self._require_armed()
        if self._pending is not None:
            obs, self._pending = self._pending, None
            return obs
        wait = self.config.obs_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            newest = None
            self._resend_due = 0
            batch = link.recv(max(0.0, deadline - time.monotonic()))
            while batch:
                for f in batch:
                    obs = self._dispatch(f)
                    if obs is not None:
                        if newest is not None:
                            self._c["obs_skipped"] += 1
                        newest = obs
                # A duplicate of the answered OBS asks for its action again (the ACTION was
                # lost), but after a stall the MCU's re-sends queue up: drain what is already
                # waiting and answer only the newest, once (docs/protocol.md, section 6).
                batch = link.recv(0) if self._resend_due and newest is None else []
            if self._resend_due:
                due, self._resend_due = self._resend_due, 0
                if newest is None and self._last_prediction is not None:
                    self._send_prediction(self._last_prediction, self._last_answered)
                    self._c["action_resends"] += 1
                elif newest is None:
                    self._send_action(self._last_sent, self._last_answered)
                    self._c["action_resends"] += 1
                    due -= 1
                self._c["action_resends_suppressed"] += due
            bad = link.parser.counters["bad_length"]
            if newest is not None:
                self._bad_length_mark = bad
                return newest
            streak = bad - self._bad_length_mark
            if streak >= self.config.max_bad_length:
                self._c["bad_length_streaks"] += 1
                self._bad_length_mark = bad
                self.send_safe()
                self.armed = False
                raise LinkError(
                    f"{streak} frames in a row from {self.config.port} had "
                    f"the wrong length (expected obs_size={self.obs_size}): the firmware "
                    "changed its sizes. Call connect() to handshake again (HELLO_REQ makes the MCU "
                    "apply its safe action and disarm)."
                )
            if time.monotonic() >= deadline:
                self._c["obs_timeouts"] += 1
                return None

    def _dispatch(self, f: Frame) -> Observation | None:
        fl = f.fields
        boot = self.hello.boot_id
        if f.msg_id == MsgId.HELLO:
            if fl["boot_id"] != boot:
                self._rebooted(fl["boot_id"])
            self._c["ignored_frames"] += 1
            return None
        self._tracker.update(f.seq)
        if f.msg_id == MsgId.OBS:
            return self._on_obs(f)
        if f.msg_id == MsgId.STATUS:
            if self._obs_floor is not None and seq_diff(f.seq, self._obs_floor) < 0:
                return None  # sent before the arm was confirmed
            self.mcu_status = fl
            self._c["status_received"] += 1
            if fl["boot_id"] != boot:
                self._rebooted(fl["boot_id"])
            if fl["watchdog_latched"]:
                self.armed = False
                self._c["watchdog_latched"] += 1
                raise WatchdogLatched(
                    f"{self.config.port}: the MCU watchdog tripped (no valid ACTION within "
                    f"{self.hello.watchdog_ms} ms); it applied the safe action and stays latched. "
                    "Reset recurrent state and traces, then call arm() or connect()."
                )
            if not fl["armed"]:
                self.armed = False
                raise SessionInterrupted(
                    f"{self.config.port}: the MCU reports it is disarmed (STATUS event "
                    f"{fl['event']}); call connect() to arm it again."
                )
            return None
        self._c["ignored_frames"] += 1  # a host->MCU id: TX looped back to RX, or echo on
        return None

    def _on_obs(self, f: Frame) -> Observation | None:
        seq = f.seq
        if self._obs_floor is not None and seq_diff(seq, self._obs_floor) <= 0:
            self._c["obs_stale"] += 1
            return None
        if self._last_obs_seq is not None:
            d = seq_diff(seq, self._last_obs_seq)
            if d == 0:
                self._c["obs_duplicates"] += 1
                if self._last_answered == seq:
                    self._resend_due += 1  # observe() re-sends its action once per drain
                return None
            if d < 0:
                self._c["obs_stale"] += 1
                return None
        self._last_obs_seq = seq
        self._obs_floor = None  # from here on, _last_obs_seq orders the OBS stream
        fl = f.fields
        obs = np.array(fl["obs"], dtype=np.float32)
        reward = float(fl["reward"])
        finite = bool(np.isfinite(obs).all() and np.isfinite(reward))
        if not finite:
            self._c["nonfinite_obs"] += 1
        self._c["obs_received"] += 1
        flags = fl["flags"]
        return Observation(
            seq=seq,
            obs=obs,
            reward=reward,
            first=bool(flags & OBS_FIRST),
            terminal=bool(flags & OBS_TERMINAL),
            truncated=bool(flags & OBS_TRUNCATED),
            received_at=time.monotonic(),
            finite=finite,
        )

    # ---------------------------------------------------------------- act

    def act(self, action, obs_seq: int) -> np.ndarray:
        """Send the action answering OBS `obs_seq`; returns the float32 values actually sent."""
        self._require_armed()
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.action_size,):
            raise ValueError(f"action has {a.size} values, action_size is {self.action_size}")
        if not np.all(np.isfinite(a)):
            self._c["actions_nonfinite"] += 1
            self._c["safe_actions_sent"] += 1
            sent = self.safe.copy()
        else:
            sent = np.clip(a, self.low, self.high)
            if np.any(sent != a):
                self._c["actions_clamped"] += 1
            if self.max_delta is not None:
                ref = self._last_sent
                limited = np.clip(sent, ref - self.max_delta, ref + self.max_delta)
                if np.any(limited != sent):
                    self._c["actions_rate_limited"] += 1
                sent = np.clip(limited, self.low, self.high)
            if self.num_actions:
                sent = np.clip(np.rint(sent), 0, self.num_actions - 1)
            sent = sent.astype(np.float32)
        self._send_action(sent, obs_seq)
        return sent.copy()

    def _send_action(self, action: np.ndarray, obs_seq: int) -> None:
        self._require_link().send("ACTION", obs_seq=obs_seq, action=action)
        self._last_sent = action
        self._last_prediction = None
        self._last_answered = obs_seq
        self._c["actions_sent"] += 1

    def predict(self, prediction, obs_seq: int) -> np.ndarray:
        """Prediction mode: answer OBS `obs_seq` with PREDICTION; the MCU's own controller acts.

        Returns the float32 values sent (1..MAX_PREDICTION_SIZE of them). A lost PREDICTION is
        re-sent like a lost ACTION; `send_safe()` still answers with the safe ACTION.
        """
        self._require_armed()
        v = np.asarray(prediction, dtype=np.float32).reshape(-1)
        if not 0 < v.size <= protocol.MAX_PREDICTION_SIZE:
            raise ValueError(
                f"prediction has {v.size} values, PREDICTION holds 1..{protocol.MAX_PREDICTION_SIZE}"
            )
        self._send_prediction(v, obs_seq)
        return v.copy()

    def _send_prediction(self, values: np.ndarray, obs_seq: int) -> None:
        self._require_link().send("PREDICTION", obs_seq=obs_seq, prediction=values)
        self._last_prediction = values
        self._last_answered = obs_seq
        self._c["predictions_sent"] += 1

    def send_safe(self) -> bool:
        """Answer the newest observation with the safe action, if it is still unanswered.

        Use it when the loop must hold still (shutdown, a wrong-length streak, no new
        observation in time). Returns whether an ACTION was sent: an MCU rejects an ACTION for
        an OBS that was already answered (docs/protocol.md, section 6), so none is sent then
        (counted in `safe_actions_skipped`); the MCU keeps the action it applied until the next
        OBS is answered, a STOP (which applies the safe action) or its watchdog. Nothing is sent
        while disarmed or before the first OBS. After a send the rate limiter restarts from the
        safe action.
        """
        if self.link is None or not self.link.is_open or not self.armed:
            return False
        if self._last_obs_seq is None:
            return False  # nothing to answer yet: the MCU re-sends its OBS, holds the safe action
        if self._last_answered == self._last_obs_seq:
            self._c["safe_actions_skipped"] += 1
            return False
        self._send_action(self.safe.copy(), self._last_obs_seq)
        self._c["safe_actions_sent"] += 1
        return True

    def request_status(self) -> None:
        """Send STATUS_REQ. The MCU answers STATUS(REPLY) at once; it arrives with the next OBS
        and `observe()` reads it (updating `mcu_status`) without disturbing the lock-step."""
        self._require_armed().send("STATUS_REQ")
        self._c["status_requests"] += 1

    @property
    def mcu_counters(self) -> dict[str, int]:
        """The MCU's own counters from its latest STATUS (since its boot); {} before any."""
        st = self.mcu_status or {}
        return {k: int(st[k]) for k in MCU_COUNTERS if k in st}

    # ---------------------------------------------------------------- stop / close

    def stop(self, reason: str = "USER") -> None:
        """Disarm the MCU (it applies the safe action); waits up to stop_timeout_s for STATUS."""
        link = self._require_link()
        self.armed = False
        code = protocol.enum_value("STOP", "reason", reason)
        stopped = protocol.enum_value("STATUS", "event", "STOPPED")
        deadline = time.monotonic() + self.config.stop_timeout_s
        self._c["stops"] += 1
        for _ in range(3):
            link.send("STOP", reason=code)
            until = min(deadline, time.monotonic() + self.config.stop_timeout_s / 3)
            while time.monotonic() < until:
                for f in link.recv(until - time.monotonic()):
                    if f.msg_id == MsgId.STATUS and f.fields["event"] == stopped:
                        self.mcu_status = f.fields
                        return
        self._c["stops_unconfirmed"] += 1

    def close(self) -> None:
        """Stop the MCU if armed (best effort) and close the port. Idempotent."""
        if self.link is None:
            return
        try:
            if self.armed and self.link.is_open:
                self.stop("SHUTDOWN")
        except LinkError:
            pass  # the port may be the reason we close; the MCU watchdog still holds
        finally:
            self.armed = False
            self.link.close()

    def __enter__(self) -> RobotConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- helpers

    def _require_link(self) -> SerialLink:
        if self.link is None or not self.link.is_open:
            raise LinkError(f"not connected to {self.config.port}: call connect() first")
        return self.link

    def _require_armed(self) -> SerialLink:
        link = self._require_link()
        if not self.armed:
            raise LinkError(
                f"{self.config.port} is not armed: call connect() (or arm() after a latch)"
            )
        return link

    def _link_summary(self) -> str:
        c = self.link.counters if self.link else {}
        keys = ("rx_frames_ok", "rx_crc_errors", "rx_cobs_errors", "rx_bad_length")
        return ", ".join(f"{k}={c.get(k, 0)}" for k in keys)

    @property
    def counters(self) -> dict[str, int]:
        """Host counters, link counters (rx_*, tx_*) and sequence counters (seq_*)."""
        out = dict(self._c)
        if self.link is not None:
            out.update(self.link.counters)
        out.update({f"seq_{k}": v for k, v in self._tracker.counters.items()})
        return out
