"""Long on-robot learning run against the simulated robot: is memory flat, is latency steady?

    python benchmarks/soak_robot.py --bundle BUNDLE_DIR [--ticks 200000] [--out benchmarks/results/soak.json]

Runs `firmware_bridge.robot_loop.run` (learning on) against an in-process SimRobot on a real
pseudo-terminal and samples this process's resident memory once a second. Reports RSS after
warm-up and at the end, and the graph step latency of the whole run. A bundle comes from
`rtu-edge demo` (demo/bundle) or `rtu-edge export`.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--ticks", type=int, default=200_000)
    ap.add_argument("--out", default="benchmarks/results/soak.json")
    args = ap.parse_args()

    from firmware_bridge.bundle import load_bundle
    from firmware_bridge.robot_loop import RunConfig, run
    from firmware_bridge.sim_robot import SimRobot
    from rtu_edge import envs

    env_id = load_bundle(args.bundle).manifest.env_id
    info = envs.env_info(env_id)
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        t0 = time.monotonic()
        while not done.wait(1.0):
            samples.append((time.monotonic() - t0, rss_mb()))

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
        try:
            s = run(
                RunConfig(
                    bundle=args.bundle,
                    port=str(link),
                    steps=args.ticks,
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
    warm = [m for t, m in samples if t >= 5.0] or [m for _, m in samples]
    result = {
        "command": f"python benchmarks/soak_robot.py --bundle {args.bundle} --ticks {args.ticks}",
        "env": env_id,
        "ticks": s["ticks"],
        "seconds": samples[-1][0] if samples else None,
        "episodes": s["episodes"],
        "rss_mb_after_warmup": warm[0] if warm else None,
        "rss_mb_end": warm[-1] if warm else None,
        "rss_mb_max": max(warm) if warm else None,
        "rss_mb_every_10s": [round(m, 2) for t, m in samples[9::10]],
        "graph_latency_us": s["graph_latency_us"],
        "tick_latency_us": s["tick_latency_us"],
        "checkpoints": s["counters"]["checkpoints"],
        "bad_updates": s["counters"]["bad_updates"],
        "last_episodes_return": s["last_episodes_return"],
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
