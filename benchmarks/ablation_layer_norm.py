"""Does LayerNorm (the streaming-RL recipe's) help the RTU agent? Same runs with and without.

    python benchmarks/ablation_layer_norm.py [--envs classic/CartPole-P classic/Pendulum-P]
        [--steps 50000] [--seeds 5] [--workers 2]

Each (env, layer_norm, seed) is one `rtu-edge train` run with the default agent (the demo's
sizes), eager, one torch thread per worker process. Reports `final_return` (mean episode
return over the last 10% of training) per seed, and mean and standard error per setting;
writes benchmarks/results/layer_norm.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def one_run(job: tuple[str, bool, int, int]) -> dict:
    env, layer_norm, seed, steps = job
    import torch

    torch.set_num_threads(1)
    from rtu_edge.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        s = train(
            TrainConfig(
                out=str(Path(tmp) / "run"),
                env=env,
                steps=steps,
                seed=seed,
                layer_norm=layer_norm,
                compile="no",
            ),
            progress=False,
        )
    return {
        "env": env,
        "layer_norm": layer_norm,
        "seed": seed,
        "final_return": s["final_return"],
        "steps_per_second": s["steps_per_second"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--envs", nargs="+", default=["classic/CartPole-P", "classic/Pendulum-P"])
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/layer_norm.json")
    args = ap.parse_args()

    jobs = [
        (env, ln, seed, args.steps)
        for env in args.envs
        for seed in range(args.seeds)
        for ln in (False, True)
    ]
    t0 = time.monotonic()
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for i, row in enumerate(pool.map(one_run, jobs), 1):
            rows.append(row)
            print(
                f"[{i}/{len(jobs)}, {time.monotonic() - t0:.0f}s] {row['env']} "
                f"layer_norm={row['layer_norm']} seed {row['seed']}: "
                f"final_return {row['final_return']:.1f}",
                flush=True,
            )

    table = {}
    for env in args.envs:
        for ln in (False, True):
            r = [x["final_return"] for x in rows if x["env"] == env and x["layer_norm"] == ln]
            sps = [x["steps_per_second"] for x in rows if x["env"] == env and x["layer_norm"] == ln]
            sem = statistics.stdev(r) / len(r) ** 0.5 if len(r) > 1 else float("nan")
            table[f"{env} layer_norm={ln}"] = {
                "final_return_mean": statistics.fmean(r),
                "final_return_sem": sem,
                "per_seed": r,
                "steps_per_second_mean": statistics.fmean(sps),
            }
    result = {
        "command": (
            f"python benchmarks/ablation_layer_norm.py --envs {' '.join(args.envs)} "
            f"--steps {args.steps} --seeds {args.seeds} --workers {args.workers}"
        ),
        "results": table,
        "runs": rows,
    }
    print()
    print(f"{'setting':45s} {'final_return':>22s}  per seed")
    for k, v in table.items():
        seeds = " ".join(f"{x:.1f}" for x in v["per_seed"])
        print(f"{k:45s} {v['final_return_mean']:10.1f} +- {v['final_return_sem']:<8.1f}  {seeds}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
