"""Why the Gaussian log std is bounded: where it goes on a clipped action space without the bound.

    python benchmarks/log_std_growth.py [--env classic/Pendulum-P] [--steps 20000] [--seeds 2]

Trains the default agent with the log-std bound lifted (log_std_max = 1e9) and in place, with
the plain entropy step, the |delta|-scaled one (the default) and none; reports the learned log
std at the end and `final_return`. Writes benchmarks/results/log_std_growth.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SETTINGS = {
    "unbounded, plain entropy step": dict(entropy_td_scaled=False, log_std_max=1e9),
    "unbounded, no entropy": dict(entropy_coef=0.0, log_std_max=1e9),
    "unbounded, |delta|-scaled entropy": dict(log_std_max=1e9),
    "bounded, plain entropy step": dict(entropy_td_scaled=False),
    "bounded, |delta|-scaled (default)": dict(),
}


def one_run(job: tuple[str, str, int, int]) -> dict:
    setting, env, seed, steps = job
    import torch

    torch.set_num_threads(1)
    from safetensors.torch import load_file

    from rtu_edge.learners.ac import ACConfig
    from rtu_edge.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        s = train(
            TrainConfig(
                out=str(run),
                env=env,
                steps=steps,
                seed=seed,
                compile="no",
                learner=ACConfig(**SETTINGS[setting]),
            ),
            progress=False,
        )
        log_std = load_file(str(run / "checkpoint.safetensors"))["params.actor.log_std"]
    return {
        "setting": setting,
        "seed": seed,
        "final_log_std": [round(float(x), 3) for x in log_std],
        "final_return": s["final_return"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="classic/Pendulum-P")
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/log_std_growth.json")
    args = ap.parse_args()
    jobs = [(k, args.env, seed, args.steps) for k in SETTINGS for seed in range(args.seeds)]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(one_run, jobs))
    for r in rows:
        print(
            f"{r['setting']:34s} seed {r['seed']}: log std {r['final_log_std']}, "
            f"final_return {r['final_return']:.1f}"
        )
    result = {
        "command": (
            f"python benchmarks/log_std_growth.py --env {args.env} --steps {args.steps} "
            f"--seeds {args.seeds} --workers {args.workers}"
        ),
        "runs": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
