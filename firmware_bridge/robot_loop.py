"""`rtu-edge run`: the on-robot loop. onnxruntime + numpy + pyserial only; never torch.

Each tick: read an observation from the microcontroller, run the learn graph (or the act graph
with ``--no-learn``), clamp the action to the manifest's limits, send it. Around that:

* resume from the newest checkpoint that verifies (a flag is needed to start fresh);
* checkpoint atomically every ``checkpoint_every_s`` and at exit (Ctrl-C / SIGTERM included);
* skip non-finite updates, roll back to the last good snapshot after ``max_bad_updates`` in a row;
* on a timeout (robot silent) send the safe action and pause learning; on a reboot of the
  microcontroller reset the recurrent state and handshake again;
* measure itself: a live status line (steps/s, episode return, step latency p50/p99) and a
  summary at exit.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from firmware_bridge.atomic import atomic_write_json
from firmware_bridge.bundle import Bundle, load_bundle
from firmware_bridge.checkpoints import CheckpointError, CheckpointStore
from firmware_bridge.contract import NoiseSpec, sample_noise
from firmware_bridge.fpenv import flush_denormals
from firmware_bridge.host import (
    HandshakeError,
    LinkConfig,
    LinkError,
    RobotConnection,
    RobotRebooted,
    SessionInterrupted,
    WatchdogLatched,
)
from firmware_bridge.runtime import StepRunner

CHECKPOINT_FORMAT = 1


@dataclass
class RunConfig:
    """One on-robot session. Every timeout is a named value here."""

    bundle: str  # bundle directory written by `rtu-edge export`
    port: str  # serial device, e.g. /dev/serial/by-id/usb-...; `rtu-edge ports` lists them
    learn: bool = True  # run learn.onnx (keep learning) or act.onnx (frozen, greedy)
    steps: int | None = None  # stop after this many ticks (None: until Ctrl-C)
    checkpoint_dir: str | None = None  # default: <bundle>-checkpoints next to the bundle
    checkpoint_every_s: float = 30.0  # wall time between checkpoints while learning
    keep_checkpoints: int = 3  # rotating copies kept on disk
    fresh: bool = False  # ignore existing checkpoints and start from the bundle's state
    baud: int = 1_000_000  # ignored by pseudo-terminals; real UARTs need the MCU's rate
    obs_timeout_s: float = 0.5  # no observation for this long: safe action, learning paused
    max_bad_updates: int = 10  # non-finite updates in a row before rolling back
    snapshot_every: int = 1000  # ticks between in-memory "last good" snapshots for rollback
    seed: int = 0  # exploration noise
    status_every_s: float = 1.0  # live line period (0 disables it)
    mcu_status_every_s: float = 1.0  # STATUS_REQ period: the MCU's counters (0 disables it)
    max_silent_timeouts: int = 20  # consecutive timeouts before giving up with an error
    # watchdog latches in a row with no step of the robot in between (no OBS but first ones):
    # the MCU rejects every answer (e.g. a prediction bundle and firmware without a controller);
    # give up with an error naming the likely cause instead of re-arming forever
    max_latches_without_step: int = 5
    # consecutive timeouts before the host handshakes again: a rebooted MCU whose boot HELLO
    # was lost on the wire waits, disarmed, for a HELLO_REQ; nothing else would wake it
    rehandshake_after_timeouts: int = 3
    reconnect_tries: int = 5  # after a link error: handshake attempts before giving up
    reconnect_backoff_s: float = 0.5  # first wait between attempts; doubles each time
    link: LinkConfig | None = field(
        default=None
    )  # advanced link settings (built from port/baud if None)


class RunError(RuntimeError):
    """The run cannot start or continue; the message says what to do."""


class LatencyRing:
    """Fixed-size ring of the last step latencies: flat memory on hours-long runs."""

    def __init__(self, size: int = 10_000):
        self.buf = np.zeros(size, dtype=np.float64)
        self.n = 0

    def add(self, seconds: float) -> None:
        self.buf[self.n % self.buf.size] = seconds
        self.n += 1

    def percentiles(self, *qs: float) -> list[float]:
        if self.n == 0:
            return [float("nan")] * len(qs)
        data = self.buf[: min(self.n, self.buf.size)]
        return [float(np.percentile(data, q)) for q in qs]


class UpdateGuard:
    """Runs the graph for one tick and, when it learns, checks the update (fault 22).

    A step whose declared "check" outputs (e.g. TD error, value) are not finite is a bad update
    (the graph itself already refused to move the parameters). After `max_bad` in a row, the
    runner is rolled back to the last good snapshot, taken every `snapshot_every` good ticks,
    and only when every tensor of the state is finite (a finite TD error does not prove finite
    parameters or traces). `counts` (the run's counters) gets "learn_steps", "bad_updates",
    "rollbacks" and "snapshots_refused" added up.
    """

    def __init__(
        self,
        runner: StepRunner,
        learn: bool,
        max_bad: int,
        snapshot_every: int,
        counts: dict,
        checked: list[str],
    ):
        self.runner = runner
        self.checked = checked  # outputs declared with use "check": must be finite
        self.learn = learn
        self.max_bad = max_bad
        self.snapshot_every = snapshot_every
        self.last_good = runner.state() if learn else None
        self.bad_in_row = 0
        self.counts = counts

    def step(self, inputs: dict[str, np.ndarray], tick: int) -> tuple[dict, bool]:
        """Returns (graph outputs, rolled_back). After a rollback, start a fresh chain."""
        out = self.runner.step(**inputs)
        if not self.learn:
            return out, False
        if all(np.isfinite(out[k]).all() for k in self.checked):
            self.bad_in_row = 0
            self.counts["learn_steps"] += 1
            if tick % self.snapshot_every == 0:
                snap = self.runner.state()
                if all(np.isfinite(v).all() for v in snap.values()):
                    self.last_good = snap
                else:  # keep the older good snapshot as the rollback target
                    self.counts["snapshots_refused"] = self.counts.get("snapshots_refused", 0) + 1
            return out, False
        self.counts["bad_updates"] += 1
        self.bad_in_row += 1
        if self.bad_in_row < self.max_bad:
            return out, False
        self.counts["rollbacks"] += 1
        self.runner.load_state(self.last_good)
        self.bad_in_row = 0
        return out, True


def _source_value(source: str, o, first: bool, noise: NoiseSpec | None, rng) -> np.ndarray:
    """The value of a per-step input with this declared source (firmware_bridge.contract)."""
    if source == "obs":
        return o.obs.reshape(1, -1)
    if source == "first":
        return np.array([float(first)], np.float32)
    if source == "reward":  # a first tick has no previous transition: its reward is ignored
        return np.array([0.0 if first else o.reward], np.float32)
    if source == "terminal":
        return np.array([float(o.terminal)], np.float32)
    if source == "noise":
        return sample_noise(noise, rng)
    raise RunError(f"the bundle declares an input source {source!r} this rtu-edge cannot fill")


def _bundle_id(bundle: Bundle) -> str:
    """What checkpoints are tied to: the learn graph's SHA-256 (act's for an act-only bundle)."""
    m = bundle.manifest
    return m.files[m.graphs["learn" if m.learns else "act"].file]


def default_checkpoint_dir(bundle_dir: str | Path) -> Path:
    b = Path(bundle_dir).resolve()
    return b.with_name(b.name + "-checkpoints")


def _resume(cfg: RunConfig, bundle: Bundle, store: CheckpointStore, log) -> tuple[dict, dict]:
    """The state to start from, and the counters saved with it."""
    state = bundle.initial_state()
    if cfg.fresh:
        log("starting from the bundle's state (--fresh)")
        return state, {}
    found = store.load_latest()
    if found is None:
        log(f"no checkpoint in {store.directory}: starting from the bundle's state")
        return state, {}
    tensors, meta, path = found
    if meta.get("bundle_learn_sha256") != _bundle_id(bundle):
        raise RunError(
            f"the checkpoints in {store.directory} were written by another bundle; "
            "pass --fresh to start from this bundle's state or choose another --checkpoint-dir"
        )
    missing = sorted(set(state) - set(tensors))
    if missing:
        raise RunError(f"checkpoint {path} lacks tensors {missing[:5]}...; pass --fresh")
    for k in state:
        if tensors[k].shape != state[k].shape:
            raise RunError(
                f"checkpoint {path}: tensor {k} has shape {tensors[k].shape}, bundle {state[k].shape}"
            )
        state[k] = tensors[k].astype(state[k].dtype)
    log(f"resumed from {path.name} (tick {meta.get('tick', '?')})")
    return state, meta.get("counters", {})


def run(cfg: RunConfig, log=print) -> dict:
    """Run the on-robot loop until `cfg.steps` ticks, Ctrl-C or SIGTERM. Returns the summary."""
    bundle = load_bundle(cfg.bundle)
    m = bundle.manifest
    graph = "learn" if cfg.learn else "act"
    if cfg.learn and not m.learns:
        cells = ", ".join(m.rtrl_cells) or "the cells with exact RTRL"
        raise RunError(
            f"bundle {cfg.bundle} cannot learn on the robot: its cell {m.cell!r} was trained by "
            f"truncated BPTT and has no exact RTRL, so the bundle holds act.onnx only. Run it "
            f"frozen with --no-learn, or train a cell that learns on the robot ({cells})."
        )
    spec = m.graphs[graph]  # what each per-step input is filled with, what each output is for
    # prediction mode (no action output): each OBS is answered with PREDICTION, the robot's own
    # controller acts; the prediction must be finite like a "check" output
    predicts = spec.predicts
    answer_out = spec.output_with_use("prediction" if predicts else "action")[0].name
    checked = [o.name for o in spec.output_with_use("check")]
    if predicts:
        checked.append(answer_out)
    ckpt_dir = (
        Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else default_checkpoint_dir(cfg.bundle)
    )
    store = CheckpointStore(ckpt_dir, keep=cfg.keep_checkpoints)
    if cfg.learn:  # before resuming or connecting: a learning run must be able to save
        try:
            store.check_writable()
        except CheckpointError as e:
            raise RunError(f"{e}; or run with --no-learn, which saves nothing") from None
    full_state, counters = _resume(cfg, bundle, store, log)

    runner = bundle.runner(graph, full_state)
    rng = np.random.default_rng(cfg.seed + int(counters.get("ticks", 0)))

    act = m.action
    link_cfg = cfg.link or LinkConfig(port=cfg.port, baud=cfg.baud)
    conn = RobotConnection(
        link_cfg,
        obs_size=m.observation_size,
        action_size=act.dims,
        schema_hash=m.schema_hash,
        action_low=np.asarray(act.low, np.float32),
        action_high=np.asarray(act.high, np.float32),
        safe_action=np.asarray(act.safe, np.float32),
        max_delta=None if act.max_delta is None else np.asarray(act.max_delta, np.float32),
        num_actions=act.num_actions if act.kind == "discrete" else None,
    )

    # Counters and statistics (flat memory: fixed rings and bounded deques only)
    c = {
        k: 0
        for k in (
            "ticks",
            "learn_steps",
            "episodes",
            "non_finite_obs",
            "bad_updates",
            "rollbacks",
            "timeouts",
            "interruptions",
            "link_errors",
            "reboots",
            "checkpoints",
            "checkpoint_failures",
            "silent_rehandshakes",
            "overruns",
        )
    }
    c["ticks_before"] = int(counters.get("ticks", 0))
    graph_lat, tick_lat = LatencyRing(), LatencyRing()
    # episode returns of this session; bounded so that a days-long run keeps flat memory
    returns: deque[float] = deque(maxlen=100_000)
    recent: deque[float] = deque(maxlen=10)
    ep_return, force_first = 0.0, True
    guard = UpdateGuard(runner, cfg.learn, cfg.max_bad_updates, cfg.snapshot_every, c, checked)

    # Ctrl-C and SIGTERM end the loop at the next tick boundary (never mid-step), also when
    # the parent started us with SIGINT ignored (background jobs, service managers).
    stop: dict[str, str | None] = {"reason": None}
    names = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}

    def on_signal(signum, frame):
        stop["reason"] = names.get(signum, str(signum))

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in names} if _main_thread() else {}

    def checkpoint(reason: str) -> None:
        if not cfg.learn or c["ticks"] == 0:
            return  # nothing learned since the last save
        meta = {
            "format": CHECKPOINT_FORMAT,
            "tick": c["ticks_before"] + c["ticks"],
            "bundle_learn_sha256": _bundle_id(bundle),
            "counters": {"ticks": c["ticks_before"] + c["ticks"]},
            "reason": reason,
        }
        # hidden state and traces are saved too, but a resumed run starts a new episode
        # (a graph's read-only copies of tensors inside packed buffers are not saved twice)
        tensors = full_state | {k: v for k, v in runner.state().items() if k in full_state}
        try:
            store.save(c["ticks_before"] + c["ticks"], tensors, meta)
            c["checkpoints"] += 1
        except CheckpointError as e:  # disk full / read-only: keep controlling, warn
            c["checkpoint_failures"] += 1
            log(f"WARNING: checkpoint failed ({e}); the previous one is intact; control continues")

    t_start = time.monotonic()
    last_status = last_ckpt = last_status_req = t_start
    silent = 0
    latches = 0  # watchdog latches since the robot last stepped (an OBS that is not first)
    period_s = 0.0  # HELLO.control_period_ms in seconds; 0: lock-step, nothing to overrun
    exit_reason = "steps"
    # Subnormal floats flushed to zero on this thread, which runs the graph, so that a robot
    # at rest does not step slower (fpenv.py); set after load_bundle built the sessions.
    fp = flush_denormals()
    if not fp.active:
        log(f"note: subnormal floats {fp.describe()}; steps may slow down while the robot rests")
    try:
        hello = conn.connect()
        log(
            f"connected to {cfg.port}: boot id {hello.boot_id:#010x}, obs {hello.obs_size}, "
            f"action {hello.action_size}, watchdog {hello.watchdog_ms} ms, control period "
            + (f"{hello.control_period_ms} ms" if hello.control_period_ms else "0 (lock-step)")
        )
        period_s = hello.control_period_ms / 1000
        while cfg.steps is None or c["ticks"] < cfg.steps:
            if stop["reason"]:
                exit_reason = stop["reason"]
                break
            # Every exchange with the robot in this tick (observe, act, the safe action) can meet
            # a reboot, a watchdog latch, wrong sizes or port trouble: all end in a reconnect.
            try:
                o = conn.observe(timeout=cfg.obs_timeout_s)
                if o is None:  # silent robot: safe action, no learning on a stale sample
                    c["timeouts"] += 1
                    silent += 1
                    conn.send_safe()
                    force_first = True  # the chain of transitions is broken: start over
                    if silent >= cfg.max_silent_timeouts:
                        raise RunError(
                            f"no observation from {cfg.port} for {silent * cfg.obs_timeout_s:.1f}s; "
                            "is the robot powered and armed? (STOP is sent; its watchdog holds the safe action)"
                        )
                    if silent % cfg.rehandshake_after_timeouts == 0:
                        c["silent_rehandshakes"] += 1
                        raise SessionInterrupted(
                            f"no observation for {silent * cfg.obs_timeout_s:.1f}s (a reboot "
                            "whose HELLO was lost, or a latched MCU)"
                        )
                    continue
                silent = 0
                if not o.first:
                    latches = 0  # it stepped: it accepted the previous answer
                t0 = time.perf_counter()
                if not o.finite:  # NaN/Inf from the sensors: hold safe, learn nothing
                    c["non_finite_obs"] += 1
                    conn.act(np.asarray(act.safe, np.float32), o.seq)
                    force_first = True  # the next good sample starts a fresh chain (state reset)
                    continue
                first = o.first or force_first
                force_first = False
                inputs = {
                    s.name: _source_value(s.source, o, first, m.noise, rng)
                    for s in spec.step_inputs
                }
                tg = time.perf_counter()
                out, rolled_back = guard.step(inputs, c["ticks"])
                graph_lat.add(time.perf_counter() - tg)
                if rolled_back:
                    force_first = True
                    log(f"WARNING: {cfg.max_bad_updates} bad updates in a row; rolled back")
                if predicts:
                    conn.predict(out[answer_out], o.seq)
                else:
                    conn.act(out[answer_out][0], o.seq)
                # the MCU answers at once; the STATUS comes in with the next OBS
                if cfg.mcu_status_every_s and time.monotonic() - last_status_req >= (
                    cfg.mcu_status_every_s
                ):
                    last_status_req = time.monotonic()
                    conn.request_status()
            except HandshakeError:
                raise  # firmware and bundle disagree: retrying cannot help
            except LinkError as e:
                if isinstance(e, RobotRebooted):
                    c["reboots"] += 1
                elif isinstance(e, SessionInterrupted):
                    c["interruptions"] += 1
                else:
                    c["link_errors"] += 1
                if isinstance(e, WatchdogLatched):
                    latches += 1
                    if latches >= cfg.max_latches_without_step:
                        raise RunError(
                            _rejects_every_answer(latches, predicts, hello, conn.mcu_counters)
                        ) from None
                log(f"{e}; resetting recurrent state and handshaking again")
                new_hello = _reconnect(conn, cfg, log)
                if new_hello.boot_id != hello.boot_id and not isinstance(e, RobotRebooted):
                    c["reboots"] += 1  # found by the new handshake (its boot HELLO was lost)
                hello = new_hello
                period_s = hello.control_period_ms / 1000
                force_first, ep_return = True, 0.0
                continue
            tick_s = time.perf_counter() - t0
            tick_lat.add(tick_s)
            if period_s and tick_s > period_s:  # the MCU sent its next OBS before our ACTION
                c["overruns"] += 1
            c["ticks"] += 1
            if not o.first:  # the robot's own episode bookkeeping, for reporting
                ep_return += o.reward
            if o.terminal or o.truncated:
                c["episodes"] += 1
                returns.append(ep_return)
                recent.append(ep_return)
                ep_return = 0.0
            now = time.monotonic()
            if cfg.learn and now - last_ckpt >= cfg.checkpoint_every_s:
                checkpoint("periodic")
                last_ckpt = now
            if cfg.status_every_s and now - last_status >= cfg.status_every_s:
                last_status = now
                p50, p99 = graph_lat.percentiles(50, 99)
                avg = f"{np.mean(recent):.1f}" if recent else "-"
                print(
                    f"\rtick {c['ticks']:>8} | {c['ticks'] / (now - t_start):7.0f} ticks/s | "
                    f"episodes {c['episodes']:>5} | return(avg10) {avg:>8} | "
                    f"{graph} p50 {p50 * 1e6:6.0f}us p99 {p99 * 1e6:6.0f}us | "
                    f"bad {c['bad_updates']}{_period_text(period_s, c, tick_lat)}"
                    f"{_mcu_status_text(conn.mcu_counters)}",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    except KeyboardInterrupt:
        exit_reason = "Ctrl-C"
    finally:
        fp.restore()  # the caller's thread as it was
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if cfg.status_every_s:
            print(file=sys.stderr)
        try:  # an OBS still unanswered gets the safe action (an answered one cannot be
            conn.send_safe()  # answered again: the MCU would reject it)...
        except LinkError:
            pass  # the link may be why we stopped; the MCU watchdog applies the safe action
        conn.close()  # ...then STOP: the MCU applies the safe action, disarms and holds it
        checkpoint("exit")

    elapsed = time.monotonic() - t_start
    gp50, gp99 = graph_lat.percentiles(50, 99)
    tp50, tp99 = tick_lat.percentiles(50, 99)
    k = max(1, min(10, len(returns) // 2)) if returns else 0
    summary = {
        "graph": graph,
        "exit": exit_reason,
        "ticks": c["ticks"],
        "ticks_per_second": c["ticks"] / elapsed if elapsed > 0 else 0.0,
        "episodes": c["episodes"],
        "episode_returns": list(returns),
        "first_episodes_return": float(np.mean(list(returns)[:k])) if returns else None,
        "last_episodes_return": float(np.mean(list(returns)[-k:])) if returns else None,
        "graph_latency_us": {"p50": gp50 * 1e6, "p99": gp99 * 1e6},
        "tick_latency_us": {"p50": tp50 * 1e6, "p99": tp99 * 1e6},
        # the MCU's declared control period (HELLO.control_period_ms of the last session; 0:
        # lock-step) and the whole-tick p99 as a fraction of it (None in lock-step)
        "control_period_ms": round(period_s * 1000),
        "tick_p99_over_period": tp99 / period_s if period_s and c["ticks"] else None,
        "subnormals_flushed": fp.active,
        "counters": c | {"link": dict(conn.counters), "mcu": conn.mcu_counters},
        "checkpoint_dir": str(ckpt_dir),
        "config": {k: v for k, v in asdict(cfg).items() if k != "link"},
    }
    if cfg.learn or ckpt_dir.exists():
        try:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(ckpt_dir / f"last_{graph}_run.json", summary)
        except OSError as e:  # the run itself finished: warn, and still report its summary
            log(
                f"WARNING: could not write last_{graph}_run.json to {ckpt_dir} ({e}); "
                "the summary is still reported"
            )
    return summary


def _rejects_every_answer(latches: int, predicts: bool, hello, mcu: dict) -> str:
    """Why the MCU's watchdog keeps tripping with the robot never stepping, and what to do."""
    rejected = mcu.get("actions_rejected")
    said = f" (its STATUS: actions_rejected {rejected})" if rejected is not None else ""
    head = (
        f"the MCU's watchdog tripped {latches} times in a row and the robot never took a step: "
        f"it rejects every {'PREDICTION' if predicts else 'ACTION'} this host sends{said}. "
    )
    if predicts:
        return head + (
            "This bundle predicts (prediction mode: each OBS is answered with PREDICTION and the "
            "MCU's own controller acts), and this firmware has no controller or predates "
            "prediction mode: give the firmware's plant a control callback (mcu_loop.h "
            "mcu_plant_t.control; rtu_edge_posix --controller random; SimRobot(controller=...)), "
            "or run a bundle with an action output. The robot holds its safe action."
        )
    return head + (
        f"Its watchdog ({hello.watchdog_ms} ms) may be shorter than a tick here, or its firmware "
        "refuses these actions (sizes, bounds): check the MCU's counters and watchdog_ms. The "
        "robot holds its safe action."
    )


def _reconnect(conn: RobotConnection, cfg: RunConfig, log):
    """Handshake again, with exponential backoff (no busy loop); returns the new HELLO. The
    last failure propagates."""
    wait = cfg.reconnect_backoff_s
    for attempt in range(1, cfg.reconnect_tries + 1):
        try:
            return conn.connect()
        except HandshakeError:
            raise
        except LinkError as e:
            if attempt == cfg.reconnect_tries:
                raise LinkError(
                    f"gave up after {attempt} reconnect attempts: {e}. The robot holds its safe "
                    "action (watchdog); check the cable and power, then run again."
                ) from e
            log(f"reconnect attempt {attempt} failed ({e}); retrying in {wait:.1f}s")
            if conn.link is not None and not conn.link.is_open:
                conn.close()
            time.sleep(wait)
            wait *= 2


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _period_text(period_s: float, c: dict, tick_lat: LatencyRing) -> str:
    """Overruns and the tick p99 against the control period for the live line ('' in
    lock-step)."""
    if not period_s:
        return ""
    (p99,) = tick_lat.percentiles(99)
    return f" | period {period_s * 1e3:.0f}ms overruns {c['overruns']} p99 {p99 / period_s:.0%}"


def _mcu_status_text(m: dict) -> str:
    """The MCU's counters for the live line ('' before its first STATUS)."""
    if not m:
        return ""
    return (
        f" | mcu frame errors {m['frame_errors']} rejected {m['actions_rejected']} "
        f"watchdog {m['watchdog_trips']}"
    )


def format_summary(s: dict) -> str:
    lines = [
        f"{s['graph']} run ended ({s['exit']}): {s['ticks']} ticks at {s['ticks_per_second']:.0f}/s, "
        f"{s['episodes']} episodes",
        f"  step latency ({s['graph']}.onnx): p50 {s['graph_latency_us']['p50']:.0f} us, "
        f"p99 {s['graph_latency_us']['p99']:.0f} us; whole tick p50 {s['tick_latency_us']['p50']:.0f} us, "
        f"p99 {s['tick_latency_us']['p99']:.0f} us",
    ]
    if s["episodes"]:
        lines.append(
            f"  episode return: first episodes {s['first_episodes_return']:.1f}, "
            f"last episodes {s['last_episodes_return']:.1f}"
        )
    c = s["counters"]
    lines.append(
        f"  bad updates {c['bad_updates']}, rollbacks {c['rollbacks']}, timeouts {c['timeouts']}, "
        f"reboots {c['reboots']}, non-finite obs {c['non_finite_obs']}, checkpoints {c['checkpoints']}"
    )
    if s.get("control_period_ms"):
        ratio = s["tick_p99_over_period"]
        lines.append(
            f"  control period {s['control_period_ms']} ms: overruns {c['overruns']} "
            f"(ticks longer than the period), whole tick p99 "
            + ("-" if ratio is None else f"{ratio:.0%}")
            + " of the period"
        )
    m = c.get("mcu")
    if m:
        lines.append(
            f"  MCU (its last STATUS, counts since its boot): frames ok {m['frames_ok']}, "
            f"frame errors {m['frame_errors']}, actions applied {m['actions_applied']}, "
            f"rejected {m['actions_rejected']}, watchdog trips {m['watchdog_trips']}"
        )
    return "\n".join(lines)


def summary_json(s: dict) -> str:
    return json.dumps(s, indent=2)
