"""Training throughput per core (issue 8): eager `rtu-edge train` vs batched seeds vs --compile,
and sb3-contrib RecurrentPPO on the same env id, all in this one invocation.

    python benchmarks/bench_train_batched.py [--env mujoco/HalfCheetah-P] [--steps 3000]
        [--batches 4,8,16] [--rounds 2] [--sb3-steps 3000] [--no-sb3]
        [--json benchmarks/results/train_batched.json]

Every measurement is one `rtu-edge train` process at the paper budget (RTU n=192, encoder 64,
heads 64), single-threaded (train sets torch to 1 thread; OMP/MKL at 1), so agent-steps/s is
per core:

- ``eager``: ``--seed 0 --compile no`` (today's `rtu-edge train`);
- ``batch K``: ``--seeds 0..K-1 --compile no`` (one vmapped learn step per tick for K agents);
- ``compiled``: ``--seed 0 --compile yes``; ``compiled batch K``: ``--seeds 0..K-1 --compile yes``;
- ``sb3``: ``RecurrentPPO("MlpLstmPolicy")`` with its defaults (benchmarks/compare_sb3.py).

Two steady-state rates per measurement, both between each agent's first and last episode end
(so after imports, setup and compiling) and summed over the K agents: ``agent_steps_per_s`` by
the wall clock (metrics.csv), and ``agent_steps_per_cpu_s`` by the process's CPU time at those
rows (recorded by this script's ``--train-worker`` wrapper around `rtu-edge train`), which a
shared machine disturbs less. sb3's are its own ``learn`` loop's (wall and CPU time).
``process_cpu_s`` is the whole process, setup and compiling included. The rounds run the
configurations in alternating order (the machine is shared); the table gives the median over
rounds and the ratios to eager and to sb3.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compare_sb3 import run_child, run_sb3  # noqa: E402

from firmware_bridge.atomic import atomic_write_json  # noqa: E402

PAPER = ["--hidden-size", "192", "--encoder-size", "64", "--head-size", "64"]


def configs(batches: list[int], sb3: bool) -> list[tuple[str, int, str]]:
    """(name, K, compile) of every measurement; K = 0 is sb3."""
    out = [("eager", 1, "no")]
    out += [(f"batch {k}", k, "no") for k in batches]
    out += [("compiled", 1, "yes")]
    out += [(f"compiled batch {k}", k, "yes") for k in batches]
    if sb3:
        out.append(("sb3 RecurrentPPO", 0, "-"))
    return out


def steady_rate(metrics: Path) -> float | None:
    """Steps per second between the first and the last episode end of one run's metrics.csv."""
    rows = list(csv.DictReader(open(metrics)))
    if len(rows) < 2:
        return None
    a, b = rows[0], rows[-1]
    return (int(b["step"]) - int(a["step"])) / (float(b["wall_time_s"]) - float(a["wall_time_s"]))


def train_worker(clock: str, argv: list[str]) -> None:
    """`rtu-edge train ARGV` in this process; the process CPU time at every metrics.csv row
    (file, step, CPU s) goes to the JSON file `clock`."""
    from cli import app
    from rtu_edge import run_dir as rd

    ticks = []
    writerow = rd.MetricsLog.writerow

    def timed(self, row):
        ticks.append((self.file.name, int(row[0]), time.process_time()))
        writerow(self, row)

    rd.MetricsLog.writerow = timed
    try:
        app(argv, standalone_mode=False)
    finally:
        Path(clock).write_text(json.dumps(ticks))


def steady_cpu_rate(ticks: list) -> float | None:
    """Agent-steps per process CPU second between each agent's first and last episode end."""
    total = 0.0
    for name in {t[0] for t in ticks}:
        mine = [t for t in ticks if t[0] == name]
        if len(mine) < 2:
            return None
        total += (mine[-1][1] - mine[0][1]) / (mine[-1][2] - mine[0][2])
    return total or None


def run_train(env: str, steps: int, k: int, compile_: str) -> dict:
    seeds = ["--seed", "0"] if k == 1 else ["--seeds", ",".join(map(str, range(k)))]
    args = ["--env", env, "--steps", str(steps), *PAPER, *seeds, "--compile", compile_]
    with tempfile.TemporaryDirectory() as tmp:
        clock = Path(tmp) / "clock.json"
        out = Path(tmp) / "runs"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--train-worker", str(clock)]
        cmd += ["train", "--out", str(out), "--no-progress", *args]
        proc = run_child(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dirs = [out] if k == 1 else sorted(out.glob("seed*"))
        assert len(dirs) == k, dirs
        rates = [steady_rate(d / "metrics.csv") for d in dirs]
        summaries = [json.loads((d / "summary.json").read_text()) for d in dirs]
        ticks = json.loads(clock.read_text())
    return {
        "agents": k,
        "agent_steps": k * steps,
        "agent_steps_per_s": None if None in rates else sum(rates),
        "agent_steps_per_cpu_s": steady_cpu_rate(ticks),
        "agent_steps_per_s_with_setup": sum(s["steps_per_second"] for s in summaries),
        "agent_steps_per_process_cpu_s": k * steps / proc["process_cpu_s"],
        **proc,
        "command": "rtu-edge train " + " ".join(args),
    }


def run_one(env: str, steps: int, sb3_steps: int, k: int, compile_: str) -> dict:
    if k:
        return run_train(env, steps, k, compile_)
    r = run_sb3(env, sb3_steps, seed=0)
    return {
        "agents": 1,
        "agent_steps": r["steps_run"],
        "agent_steps_per_s": r["steps_per_second"],
        "agent_steps_per_cpu_s": r["steps_run"] / r["learn_cpu_s"],
        "agent_steps_per_process_cpu_s": r["steps_per_process_cpu_s"],
        "process_wall_s": r["process_wall_s"],
        "process_cpu_s": r["process_cpu_s"],
        "load_avg_1m": r["load_avg_1m"],
        "command": r["command"],
    }


def summarize(rows: list[dict]) -> dict[str, dict]:
    """Median over rounds per configuration, and the ratios to eager and to sb3."""
    table: dict[str, dict] = {}
    for name in dict.fromkeys(r["name"] for r in rows):
        mine = [r for r in rows if r["name"] == name]
        entry = {}
        for key in ("agent_steps_per_s", "agent_steps_per_cpu_s"):
            xs = [r[key] for r in mine if r.get(key) is not None]
            entry[key] = statistics.median(xs) if xs else None
        table[name] = entry
    for base in ("eager", "sb3 RecurrentPPO"):
        if base not in table:
            continue
        for entry in table.values():
            for key in ("agent_steps_per_s", "agent_steps_per_cpu_s"):
                b, x = table[base][key], entry[key]
                tag = "vs_eager" if base == "eager" else "vs_sb3"
                entry[f"{key}_{tag}"] = x / b if b and x else None
    return table


def format_table(table: dict[str, dict]) -> str:
    def f(x, nd=0):
        return "-" if x is None else f"{x:,.{nd}f}"

    lines = [
        "| configuration | agent-steps/s (wall) | vs eager | vs sb3 | agent-steps / CPU s | "
        "vs eager | vs sb3 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in table.items():
        lines.append(
            f"| {name} | {f(e['agent_steps_per_s'])} "
            f"| {f(e.get('agent_steps_per_s_vs_eager'), 2)}x "
            f"| {f(e.get('agent_steps_per_s_vs_sb3'), 2)}x "
            f"| {f(e['agent_steps_per_cpu_s'])} "
            f"| {f(e.get('agent_steps_per_cpu_s_vs_eager'), 2)}x "
            f"| {f(e.get('agent_steps_per_cpu_s_vs_sb3'), 2)}x |"
        )
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["--train-worker"]:
        train_worker(sys.argv[2], sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="mujoco/HalfCheetah-P")
    ap.add_argument("--steps", type=int, default=3000, help="environment steps per agent")
    ap.add_argument("--batches", default="4,8,16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sb3-steps", type=int, default=3000)
    ap.add_argument("--no-sb3", action="store_true", help="leave out the sb3 row")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    try:
        batches = [int(x) for x in args.batches.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"error: --batches must be comma-separated integers, got {args.batches!r}")
    if not batches or min(batches) < 2 or args.steps < 1 or args.rounds < 1:
        sys.exit("error: --batches must be at least 2, --steps and --rounds at least 1")
    todo = configs(batches, sb3=not args.no_sb3)
    rows = []
    for r in range(args.rounds):
        order = todo if r % 2 == 0 else todo[::-1]  # alternate: both ends see the same load
        for name, k, compile_ in order:
            row = {
                "round": r,
                "name": name,
                **run_one(args.env, args.steps, args.sb3_steps, k, compile_),
            }
            rows.append(row)
            print(
                f"round {r} {name:<18} {row['agent_steps_per_s'] or 0:>8.0f} agent-steps/s "
                f"{row['agent_steps_per_cpu_s']:>8.0f} per CPU s  load {row['load_avg_1m']}",
                flush=True,
            )
    table = summarize(rows)
    print(format_table(table))
    if args.json:
        atomic_write_json(
            Path(args.json),
            {
                "command": "python " + " ".join(sys.argv),
                "env": args.env,
                "net": "RTU n=192, encoder 64, heads 64 (the paper's MuJoCo budget)",
                "machine": platform.machine(),
                "cpu_count": os.cpu_count(),
                "threads_per_process": 1,
                "table": table,
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
