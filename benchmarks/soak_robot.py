"""Long on-robot learning run against the simulated robot: is memory flat, is latency steady?

    python benchmarks/soak_robot.py --bundle BUNDLE_DIR [--ticks 200000 | --minutes 60]
        [--budget-ms 20] [--out benchmarks/results/soak.json]

Runs `firmware_bridge.robot_loop.run` (learning on) against an in-process SimRobot on a real
pseudo-terminal and samples this process's resident memory once a second. `--minutes` ends the
run after that much wall time (a SIGINT to this process, which the loop takes at the next tick
boundary, as Ctrl-C on a robot) instead of after `--ticks`. Reports:

- RSS after warm-up, at the end, its maximum, one sample every 10 s, and its trend: the
  least-squares slope over the samples after warm-up (MB per hour) and the growth over the
  second half of the run (a leak grows there as in the first half; a warm-up does not);
- the graph step and whole-tick latency over the *whole* run (every tick counted in a fixed
  histogram of 1 us bins up to 100 ms, not only the loop's last-10,000 ring), p50/p99/p99.9/max,
  and the whole-tick p99 of each minute; `tick_p99_in_budget` says whether the whole-run tick
  p99 and every minute's p99 are under `--budget-ms` (default 20 ms: a 50 Hz control period);
- the run's counters, bad updates among them.

A bundle comes from `rtu-edge demo` (demo/bundle) or `rtu-edge train` + `rtu-edge export`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# 1 us bins up to 100 ms, the last one holds everything slower (the maximum is kept apart).
# Every array the sampler uses is allocated, and its pages touched, before the run starts:
# the script must not grow the RSS it measures.
HIST_BINS = 100_001


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hist_quantiles(
    h: np.ndarray, qs: tuple[float, ...], cdf: np.ndarray | None = None
) -> list[float | None]:
    """Quantiles (in us, bin upper edge) of a 1 us histogram; `cdf` is a scratch buffer."""
    cdf = np.cumsum(h, out=cdf)
    n = int(cdf[-1])
    if n == 0:
        return [None] * len(qs)
    return [float(np.searchsorted(cdf, q / 100 * n) + 1) for q in qs]


def install_recording_rings(robot_loop) -> list:
    """Every LatencyRing the loop makes also counts each sample in a whole-run histogram.

    `run` makes two rings, the graph's and then the whole tick's, in that order."""
    rings: list = []

    class RecordingRing(robot_loop.LatencyRing):
        def __init__(self, size: int = 10_000):
            super().__init__(size)
            self.hist = np.ones(HIST_BINS, dtype=np.int64)  # every page touched now
            self.hist[:] = 0
            self.max_s = 0.0
            rings.append(self)

        def add(self, seconds: float) -> None:
            super().add(seconds)
            self.hist[min(int(seconds * 1e6), HIST_BINS - 1)] += 1
            if seconds > self.max_s:
                self.max_s = seconds

    robot_loop.LatencyRing = RecordingRing
    return rings


def slope_mb_per_hour(samples: list[tuple[float, float]]) -> float | None:
    if len(samples) < 2:
        return None
    t = np.array([s[0] for s in samples])
    m = np.array([s[1] for s in samples])
    return float(np.polyfit(t, m, 1)[0] * 3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--ticks", type=int, default=200_000, help="ticks to run (without --minutes)")
    ap.add_argument("--minutes", type=float, default=None, help="run this long instead of --ticks")
    ap.add_argument("--warmup-s", type=float, default=60.0, help="RSS warm-up excluded from trend")
    ap.add_argument("--budget-ms", type=float, default=20.0, help="whole-tick p99 budget")
    ap.add_argument("--out", default="benchmarks/results/soak.json")
    args = ap.parse_args()
    if args.minutes is not None and args.minutes <= 0:
        ap.error("--minutes must be > 0")
    if args.ticks <= 0:
        ap.error("--ticks must be > 0")

    from firmware_bridge import robot_loop
    from firmware_bridge.bundle import load_bundle
    from firmware_bridge.robot_loop import RunConfig, run
    from firmware_bridge.sim_robot import SimRobot
    from rtu_edge import envs

    rings = install_recording_rings(robot_loop)
    env_id = load_bundle(args.bundle).manifest.env_id
    info = envs.env_info(env_id)
    samples: list[tuple[float, float]] = []
    minute_p99: list[float | None] = []
    done = threading.Event()
    prev, diff, cdf = (np.ones(HIST_BINS, dtype=np.int64) for _ in range(3))
    prev[:] = 0

    def sample() -> None:
        t0 = time.monotonic()
        while not done.wait(1.0):
            t = time.monotonic() - t0
            samples.append((t, rss_mb()))
            if len(samples) % 60 == 0 and len(rings) >= 2:  # this minute's whole-tick p99
                np.subtract(rings[1].hist, prev, out=diff)
                np.copyto(prev, rings[1].hist)
                minute_p99.append(hist_quantiles(diff, (99,), cdf)[0])

    if args.minutes is not None:  # ends the loop at a tick boundary, as Ctrl-C would
        timer = threading.Timer(args.minutes * 60, os.kill, (os.getpid(), signal.SIGINT))
        timer.daemon = True
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "tty"
        robot = SimRobot(
            envs.make(env_id, seed=0),
            action_kind=info.action_kind,
            safe_action=list(info.safe_action),
            link_path=str(link),
        )
        robot.start()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        if args.minutes is not None:
            timer.start()
        try:
            s = run(
                RunConfig(
                    bundle=args.bundle,
                    port=str(link),
                    steps=None if args.minutes is not None else args.ticks,
                    checkpoint_dir=str(Path(tmp) / "ck"),
                    fresh=True,
                    status_every_s=0,
                    checkpoint_every_s=10.0,
                ),
                log=lambda m: None,
            )
        finally:
            done.set()
            robot.close()
            if args.minutes is not None:
                timer.cancel()
    warm = [(t, m) for t, m in samples if t >= args.warmup_s] or samples
    half = [(t, m) for t, m in warm if t >= warm[-1][0] / 2] if warm else []
    qs = (50, 99, 99.9)

    def lat(ring) -> dict:
        p50, p99, p999 = hist_quantiles(ring.hist, qs)
        return {"p50": p50, "p99": p99, "p99.9": p999, "max": ring.max_s * 1e6}

    graph, tick = lat(rings[0]), lat(rings[1])
    budget_us = args.budget_ms * 1000
    in_budget = tick["p99"] is not None and tick["p99"] < budget_us
    in_budget = in_budget and all(p is None or p < budget_us for p in minute_p99)
    if args.minutes is not None:
        command = (
            f"python benchmarks/soak_robot.py --bundle {args.bundle} --minutes {args.minutes:g}"
        )
    else:
        command = f"python benchmarks/soak_robot.py --bundle {args.bundle} --ticks {args.ticks}"
    result = {
        "command": command,
        "env": env_id,
        "exit": s["exit"],
        "ticks": s["ticks"],
        "seconds": samples[-1][0] if samples else None,
        "ticks_per_second": s["ticks_per_second"],
        "episodes": s["episodes"],
        "rss_warmup_s": args.warmup_s,
        "rss_mb_after_warmup": warm[0][1] if warm else None,
        "rss_mb_end": warm[-1][1] if warm else None,
        "rss_mb_max": max(m for _, m in warm) if warm else None,
        "rss_mb_slope_per_hour_after_warmup": slope_mb_per_hour(warm),
        "rss_mb_growth_second_half": (half[-1][1] - half[0][1]) if half else None,
        "rss_mb_every_10s": [round(m, 2) for t, m in samples[9::10]],
        "graph_latency_us": graph,
        "tick_latency_us": tick,
        "tick_p99_us_each_minute": minute_p99,
        "budget_ms": args.budget_ms,
        "tick_p99_in_budget": bool(in_budget),
        "loop_ring_latency_us_last_10000": {
            "graph": s["graph_latency_us"],
            "tick": s["tick_latency_us"],
        },
        "checkpoints": s["counters"]["checkpoints"],
        "checkpoint_failures": s["counters"]["checkpoint_failures"],
        "bad_updates": s["counters"]["bad_updates"],
        "rollbacks": s["counters"]["rollbacks"],
        "timeouts": s["counters"]["timeouts"],
        "link_errors": s["counters"]["link_errors"],
        "first_episodes_return": s["first_episodes_return"],
        "last_episodes_return": s["last_episodes_return"],
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
