"""Training throughput: eager vs torch.compile'd learn step, same process, same run.

    python benchmarks/bench_train.py [--env mujoco/HalfCheetah-P] [--steps 20000]

Uses the paper's MuJoCo budget (encoder 64, RTU n=192, heads 64). steps/s is train()'s own
figure, over the training loop, so it includes torch.compile's one-off compile on the first
steps (seconds to minutes; use enough --steps); setup_and_compile_s is the rest of the call
(environment, run directory, final checkpoint). bench_train_batched.py times steady state.

benchmarks/bench_train_batched.py is the fuller study (issue 8's targets): eager vs
`train --seeds` batches vs --compile vs sb3-contrib RecurrentPPO, steady-state, per core.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rtu_edge.config import NetConfig
from rtu_edge.train import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", default="mujoco/HalfCheetah-P")
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--out", default="benchmarks/results/train_speed.json")
    args = ap.parse_args()
    rows = {}
    for mode in ("no", "yes"):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            s = train(
                TrainConfig(
                    out=str(Path(tmp) / "run"),
                    env=args.env,
                    steps=args.steps,
                    net=NetConfig(hidden_size=192, encoder_size=64, head_size=64),
                    compile=mode,
                ),
                progress=False,
            )
            total = time.perf_counter() - t0
        rows["compiled" if mode == "yes" else "eager"] = {
            "steps_per_second": s["steps_per_second"],
            "setup_and_compile_s": total - s["wall_time_s"],
        }
        print(mode, rows)
    rows["speedup"] = rows["compiled"]["steps_per_second"] / rows["eager"]["steps_per_second"]
    result = {
        "command": f"python benchmarks/bench_train.py --env {args.env} --steps {args.steps}",
        "env": args.env,
        "steps": args.steps,
        "results": rows,
    }
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
