"""The batching lever for training throughput (issue 8): B independent agents in one process.

    python benchmarks/bench_batched.py [--sizes demo,paper] [--batches 1,4,16] [--steps 200]
        [--json benchmarks/results/bench_batched.json]

The `ac` learn step is a pure function of (state, inputs), so `torch.func.vmap` runs B agents
(B seeds, each its own parameters and traces) as one batched call. This measures agent-steps
per second of the learn step alone (no environment) for B sequential calls vs one vmapped call,
interleaved in the same process on one thread, and checks that the vmapped states equal the
sequential ones (max |difference| is reported; 0 means bit-identical). It is a measurement of
the lever, not yet a training mode: `rtu-edge train` still runs one agent per process.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.func import vmap  # noqa: E402

from firmware_bridge.atomic import atomic_write_json  # noqa: E402
from rtu_edge.config import NetConfig, TrainConfig  # noqa: E402
from rtu_edge.learners import get_learner  # noqa: E402
from rtu_edge.train import agent_config_for  # noqa: E402

SIZES = {  # the two sizes of `rtu-edge bench`
    "demo": ("classic/CartPole-P", NetConfig(hidden_size=32, encoder_size=32, head_size=32)),
    "paper": ("mujoco/HalfCheetah-P", NetConfig(hidden_size=192, encoder_size=64, head_size=64)),
}


def _inputs(learner, agent, steps: int, batch: int, seed: int) -> list[list[dict]]:
    """Random per-tick inputs for each agent (first = 1 on tick 0), drawn once, reused by both."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(steps):
        row = []
        for _ in range(batch):
            d = {}
            for s in learner.step_inputs(agent):
                if s.source in ("obs", "reward", "noise"):
                    d[s.name] = torch.randn(s.shape, generator=g)
                else:
                    flag = 1.0 if (s.source == "first" and t == 0) else 0.0
                    d[s.name] = torch.full(s.shape, flag)
            row.append(d)
        out.append(row)
    return out


def measure(size: str, batch: int, steps: int, rounds: int) -> dict:
    env, net = SIZES[size]
    learner = get_learner("ac")
    cfg = TrainConfig(out="-", env=env, net=net, learner=learner.Config())
    agent = agent_config_for(cfg)
    states = [learner.initial_state(agent, cfg.learner, seed) for seed in range(batch)]
    ticks = _inputs(learner, agent, steps * rounds, batch, seed=0)

    def step(s, i):
        return learner.learn_step(cfg.learner, agent, s, i)

    batched = vmap(step, randomness="error")
    seq = [dict(s) for s in states]
    vm = {k: torch.stack([s[k] for s in states]) for k in states[0]}
    t_seq = t_vm = 0.0
    with torch.inference_mode():
        for r in range(rounds):  # interleaved: both paths see the same machine noise
            chunk = ticks[r * steps : (r + 1) * steps]
            t0 = time.perf_counter()
            for row in chunk:
                for b in range(batch):
                    new, _ = step(seq[b], row[b])
                    seq[b].update(new)
            t_seq += time.perf_counter() - t0
            stacked = [{k: torch.stack([d[k] for d in row]) for k in row[0]} for row in chunk]
            t0 = time.perf_counter()
            for inp in stacked:
                new, _ = batched(vm, inp)
                vm.update(new)
            t_vm += time.perf_counter() - t0
    diff = max(float((vm[k][b] - seq[b][k]).abs().max()) for k in vm for b in range(batch))
    n = steps * rounds * batch
    return {
        "size": size,
        "batch": batch,
        "agent_steps": n,
        "sequential_agent_steps_per_s": n / t_seq,
        "vmap_agent_steps_per_s": n / t_vm,
        "speedup": t_seq / t_vm,
        "max_abs_state_difference": diff,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="demo,paper")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--steps", type=int, default=100, help="ticks per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    try:
        batches = [int(x) for x in args.batches.split(",")]
    except ValueError:
        sys.exit(f"error: --batches must be comma-separated integers, got {args.batches!r}")
    if min(batches) < 1 or args.steps < 1 or args.rounds < 1:
        sys.exit("error: --batches, --steps and --rounds must be at least 1")
    torch.set_num_threads(1)
    rows = []
    print("size   B  sequential agent-steps/s  vmap agent-steps/s  speed-up  max |diff|")
    for size in args.sizes.split(","):
        if size not in SIZES:
            sys.exit(f"error: unknown size {size!r}; choose from {sorted(SIZES)}")
        for b in batches:
            r = measure(size, b, args.steps, args.rounds)
            rows.append(r)
            print(
                f"{size:<6} {b:>2} {r['sequential_agent_steps_per_s']:>25.0f} "
                f"{r['vmap_agent_steps_per_s']:>19.0f} {r['speedup']:>9.2f} "
                f"{r['max_abs_state_difference']:>10.1e}"
            )
    if args.json:
        atomic_write_json(
            Path(args.json),
            {
                "command": "python " + " ".join(sys.argv),
                "torch": torch.__version__,
                "machine": platform.machine(),
                "threads": 1,
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
