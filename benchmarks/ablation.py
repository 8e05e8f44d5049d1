"""One switch of the agent or learner, off vs on: the same training runs with and without.

    python benchmarks/ablation.py --what layer_norm|entropy_td_scaled
        [--envs classic/CartPole-P classic/Pendulum-P] [--steps 50000] [--seeds 5] [--workers 2]

  layer_norm         LayerNorm before each tanh (the streaming-RL recipe's), NetConfig
  entropy_td_scaled  the actor's entropy step scaled by |delta| (Elsayed et al.), ACConfig

Each (env, setting, seed) is one `rtu-edge train` run with the default agent (the demo's
sizes), eager, one torch thread per worker process. Reports `final_return` (mean episode
return over the last 10% of training) per seed, mean and standard error per setting, and the
final Gaussian log std where there is one; writes benchmarks/results/ablation_WHAT.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SWITCHES = ("layer_norm", "entropy_td_scaled")


def one_run(job: tuple[str, str, bool, int, int]) -> dict:
    what, env, on, seed, steps = job
    import torch

    torch.set_num_threads(1)
    from safetensors.torch import load_file

    from rtu_edge.config import NetConfig
    from rtu_edge.learners.ac import ACConfig
    from rtu_edge.train import TrainConfig, train

    if what == "layer_norm":
        switch = {"net": NetConfig(layer_norm=on)}
    else:
        switch = {"learner": ACConfig(**{what: on})}
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        s = train(
            TrainConfig(out=str(run), env=env, steps=steps, seed=seed, compile="no", **switch),
            progress=False,
        )
        log_std = load_file(str(run / "checkpoint.safetensors")).get("params.actor.log_std")
    return {
        "env": env,
        what: on,
        "seed": seed,
        "final_return": s["final_return"],
        "final_log_std": None if log_std is None else [round(float(x), 3) for x in log_std],
        "steps_per_second": s["steps_per_second"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--what", choices=SWITCHES, required=True)
    ap.add_argument("--envs", nargs="+", default=["classic/CartPole-P", "classic/Pendulum-P"])
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="[default: benchmarks/results/ablation_WHAT.json]")
    args = ap.parse_args()
    what = args.what

    jobs = [
        (what, env, on, seed, args.steps)
        for env in args.envs
        for seed in range(args.seeds)
        for on in (False, True)
    ]
    t0 = time.monotonic()
    rows = []
    with ProcessPoolExecutor(args.workers) as pool:
        for i, row in enumerate(pool.map(one_run, jobs), 1):
            rows.append(row)
            print(
                f"[{i}/{len(jobs)}, {time.monotonic() - t0:.0f}s] {row['env']} "
                f"{what}={row[what]} seed {row['seed']}: "
                f"final_return {row['final_return']:.1f}, log std {row['final_log_std']}",
                flush=True,
            )

    table = {}
    for env in args.envs:
        for on in (False, True):
            mine = [x for x in rows if x["env"] == env and x[what] == on]
            r = [x["final_return"] for x in mine]
            sps = [x["steps_per_second"] for x in mine]
            sem = statistics.stdev(r) / len(r) ** 0.5 if len(r) > 1 else float("nan")
            table[f"{env} {what}={on}"] = {
                "final_return_mean": statistics.fmean(r),
                "final_return_sem": sem,
                "per_seed": r,
                "steps_per_second_mean": statistics.fmean(sps),
            }
    result = {
        "command": (
            f"python benchmarks/ablation.py --what {what} --envs {' '.join(args.envs)} "
            f"--steps {args.steps} --seeds {args.seeds} --workers {args.workers}"
        ),
        "results": table,
        "runs": rows,
    }
    print()
    print(f"{'setting':52s} {'final_return':>22s}  per seed")
    for k, v in table.items():
        seeds = " ".join(f"{x:.1f}" for x in v["per_seed"])
        print(f"{k:45s} {v['final_return_mean']:10.1f} +- {v['final_return_sem']:<8.1f}  {seeds}")
    out = Path(args.out or f"benchmarks/results/ablation_{what}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
