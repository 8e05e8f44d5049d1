"""MSRE of always predicting 0 on the animal-learning streams: the floor a learner must beat.

    python benchmarks/study/zero_predictor.py [--steps 10000] [--seeds 0 1]

Uses the same window as summary.json's `msre` (the last 10% of --steps) and the same return
computation (rtu_edge.train.msre), on the stream each seed's run sees.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rtu_edge.envs.registry import make  # noqa: E402
from rtu_edge.train import msre  # noqa: E402

ENVS = {
    "animal/trace-conditioning": 0.9,
    "animal/trace-patterning": 0.9,
    "animal/trace-conditioning-isi30": 0.966,
}


def zero_msre(env_id: str, gamma: float, steps: int, seed: int) -> float:
    env = make(env_id, seed=seed)
    env.reset(seed=seed)
    cumulants, first = [], []
    reward, is_first = 0.0, 1.0
    for _ in range(steps):
        cumulants.append(reward)
        first.append(is_first)
        _, reward, _, _, _ = env.step(env.action_space.sample())
        is_first = 0.0
    lo = steps - steps // 10
    return msre([0.0] * (steps - lo), cumulants[lo:], first[lo:], gamma)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args()
    if args.steps < 10:
        sys.exit(
            f"error: --steps must be at least 10 (the window is the last 10%), got {args.steps}"
        )
    for env_id, gamma in ENVS.items():
        values = [zero_msre(env_id, gamma, args.steps, s) for s in args.seeds]
        print(
            f"{env_id}: zero prediction MSRE over the last 10% of {args.steps} steps: "
            + ", ".join(f"seed {s} {v:.4f}" for s, v in zip(args.seeds, values))
        )


if __name__ == "__main__":
    main()
