"""Episode return of uniformly random actions: the floor for the control items of the report.

python benchmarks/study/random_policy.py [--episodes 5] [ENV_ID ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rtu_edge.envs.registry import make  # noqa: E402

DEFAULT = ["mujoco/HalfCheetah-P", "mujoco/HalfCheetah-V", "mujoco/Reacher-POMDP"]


def random_returns(env_id: str, episodes: int, seed: int = 0) -> list[float]:
    env = make(env_id, seed=seed)
    env.action_space.seed(seed)
    out = []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        total, done = 0.0, False
        while not done:
            _, r, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(r)
            done = terminated or truncated
        out.append(total)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("envs", nargs="*", default=DEFAULT)
    ap.add_argument("--episodes", type=int, default=5)
    args = ap.parse_args()
    for env_id in args.envs:
        try:
            r = random_returns(env_id, args.episodes)
        except ValueError as e:  # an unknown env id: the registry's message lists the ids
            sys.exit(f"error: {e}")
        print(
            f"{env_id}: random actions, {len(r)} episodes: mean {np.mean(r):.4g}, "
            f"min {min(r):.4g}, max {max(r):.4g}"
        )


if __name__ == "__main__":
    main()
