"""rtu-edge (ac, ppo) side by side with sb3-contrib's RecurrentPPO, at equal environment steps.

    python benchmarks/compare_sb3.py [--envs classic/CartPole-P,mujoco/HalfCheetah-P]
        [--steps 50000] [--seeds 0,1] [--agents ac,ppo,sb3] [--throughput-steps 10000]
        [--out benchmarks/results/compare_sb3.json] [--resume]

Needs the comparison extra for the sb3 rows: pip install 'rtu-edge[compare]' (sb3-contrib; torch
stays the pinned CPU wheel). Issue 6 item 8 and issue 8's training-throughput target.

Every run is its own process, one at a time, single-threaded (torch.set_num_threads(1) and
OMP/MKL_NUM_THREADS=1 on both sides), seeded:

- ``ac``:  ``rtu-edge train --algo ac`` (streaming AC(lambda), RTU by exact RTRL), its defaults;
- ``ppo``: ``rtu-edge train --algo ppo`` (recurrent PPO, the same RTU by RTRL), its defaults;
- ``sb3``: ``sb3_contrib.RecurrentPPO("MlpLstmPolicy", env)`` with all its defaults (LSTM 256,
  separate actor and critic LSTMs, MLP heads [64, 64], n_steps 128, 10 epochs, lr 3e-4, no
  observation or reward normalisation), stopped after exactly ``--steps`` environment steps.

All agents see the same environment: ``rtu_edge.envs.make(env_id, seed=seed)`` (the project's
own masking), which sb3 takes as an ordinary gymnasium Env. ``final_return`` is the mean return
of the episodes that ended in the last 10% of the steps (step >= 0.9 * steps), as in
rtu_edge/train.py's summary.json; with none there, the last episode's return.

The throughput row (issue 8): eager ``rtu-edge train --algo ac --budget 24960 --encoder-size 64
--head-size 64 --compile no`` on mujoco/HalfCheetah-P for ``--throughput-steps`` steps, against
the steps/s of the sb3 RecurrentPPO runs on the same env id in this same invocation (target:
rtu-edge >= 5x sb3).

Results go to ``--out`` after every run (``--resume`` keeps the finished runs of that file whose
env, agent, seed and steps match, so a killed invocation continues) and a markdown table is
printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ("ac", "ppo", "sb3")
DEFAULT_ENVS = "classic/CartPole-P,mujoco/HalfCheetah-P"
THROUGHPUT_ENV = "mujoco/HalfCheetah-P"
PAPER = ["--budget", "24960", "--encoder-size", "64", "--head-size", "64", "--compile", "no"]
COMPARE_EXTRA = "pip install 'rtu-edge[compare]'  (sb3-contrib; keeps torch==2.13.0)"


def final_return(returns: list[tuple[int, float]], steps: int) -> float | None:
    """Mean return of the episodes ending at step >= 0.9 * steps (rtu_edge/train.py's rule)."""
    tail = [r for s, r in returns if s >= 0.9 * steps] or [r for _, r in returns[-1:]]
    return sum(tail) / len(tail) if tail else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="compare_sb3.py",
        description="rtu-edge ac / ppo vs sb3-contrib RecurrentPPO at equal environment steps.",
    )
    ap.add_argument("--envs", default=DEFAULT_ENVS, help="comma-separated env ids")
    ap.add_argument("--steps", type=int, default=50_000, help="environment steps per run")
    ap.add_argument("--seeds", default="0", help="comma-separated integer seeds")
    ap.add_argument("--agents", default=",".join(AGENTS), help="subset of ac,ppo,sb3")
    ap.add_argument(
        "--throughput-steps",
        type=int,
        default=10_000,
        help="steps of the paper-budget eager ac throughput run on mujoco/HalfCheetah-P (0: skip)",
    )
    ap.add_argument("--out", default="benchmarks/results/compare_sb3.json")
    ap.add_argument("--runs-dir", default=None, help="keep run directories here (default: temp)")
    ap.add_argument("--resume", action="store_true", help="keep matching runs already in --out")
    ap.add_argument("--table", metavar="JSON", help="only print the table of a results file")
    # internal: one sb3 run in this process, its result as JSON to the given path
    ap.add_argument(
        "--sb3-worker", nargs=4, metavar=("ENV", "STEPS", "SEED", "JSON"), help=argparse.SUPPRESS
    )
    a = ap.parse_args(argv)
    if a.sb3_worker or a.table:
        return a
    a.env_list = [e.strip() for e in a.envs.split(",") if e.strip()]
    a.agent_list = [x.strip() for x in a.agents.split(",") if x.strip()]
    bad = [x for x in a.agent_list if x not in AGENTS]
    if bad or not a.agent_list:
        ap.error(f"--agents: unknown {bad or a.agents!r}; choose from {','.join(AGENTS)}")
    try:
        a.seed_list = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--seeds must be comma-separated integers, got {a.seeds!r}")
    if not a.seed_list:
        ap.error("--seeds: give at least one seed")
    if a.steps <= 0:
        ap.error(f"--steps must be positive, got {a.steps}")
    if a.throughput_steps < 0:
        ap.error(f"--throughput-steps must be >= 0, got {a.throughput_steps}")
    if not a.env_list:
        ap.error("--envs: give at least one env id")
    from rtu_edge.envs import list_envs  # torch-free

    known = {e for e, _ in list_envs()}
    unknown = [e for e in a.env_list if e not in known]
    if unknown:
        ap.error(f"--envs: unknown {unknown}; `rtu-edge envs` lists them")
    return a


def _env() -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=f"{ROOT}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(ROOT),
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
    )
    return env


def run_child(cmd: list[str], **kw) -> dict:
    """Run one child process; its wall time, CPU time (user + sys, whole process: imports and
    setup included) and the 1-minute load average before and after (the machine is shared)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=_env(), cwd=ROOT, **kw)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "process_wall_s": wall,
        "process_cpu_s": cpu,
        "load_avg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


# ---- sb3 side -----------------------------------------------------------------------------------


def sb3_worker(env_id: str, steps: int, seed: int, out: str) -> None:
    """One RecurrentPPO('MlpLstmPolicy') run with sb3-contrib's defaults; JSON to ``out``."""
    import gymnasium
    import torch

    try:
        import sb3_contrib
        import stable_baselines3
        from sb3_contrib import RecurrentPPO
        from stable_baselines3.common.callbacks import BaseCallback
    except ImportError as e:
        sys.exit(f"the sb3 rows need sb3-contrib ({e}): {COMPARE_EXTRA}")
    from rtu_edge import envs as envs_mod

    torch.set_num_threads(1)
    returns: list[tuple[int, float]] = []
    counter = {"steps": 0}

    class Record(gymnasium.Wrapper):
        """Episode returns with the global step at which each ended (sb3 sees it unchanged)."""

        def reset(self, **kw):
            self._ret = 0.0
            return self.env.reset(**kw)

        def step(self, action):
            obs, r, term, trunc, info = self.env.step(action)
            counter["steps"] += 1
            self._ret += float(r)
            if term or trunc:
                returns.append((counter["steps"], self._ret))
            return obs, r, term, trunc, info

    class StopAt(BaseCallback):
        """Stop after exactly ``steps`` environment steps (not at the next multiple of n_steps)."""

        def _on_step(self) -> bool:
            return self.num_timesteps < steps

    t_setup = time.perf_counter()
    env = Record(envs_mod.make(env_id, seed=seed))
    model = RecurrentPPO("MlpLstmPolicy", env, seed=seed, device="cpu", verbose=0)
    pol = model.policy
    lstm = {
        "actor": sum(p.numel() for p in pol.lstm_actor.parameters()),
        "critic": sum(p.numel() for p in pol.lstm_critic.parameters())
        if pol.lstm_critic is not None
        else 0,
    }
    setup = time.perf_counter() - t_setup
    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=steps, callback=StopAt())
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    done = counter["steps"]
    result = {
        "final_return": final_return([x for x in returns if x[0] <= steps], steps),
        "first_return": (
            sum(r for _, r in returns[: max(1, len(returns) // 10)])
            / len(returns[: max(1, len(returns) // 10)])
            if returns
            else None
        ),
        "episodes": len([x for x in returns if x[0] <= steps]),
        "steps_run": done,
        "wall_time_s": elapsed,
        "setup_s": setup,
        "learn_cpu_s": cpu,
        "steps_per_second": done / elapsed,
        "torch_threads": torch.get_num_threads(),
        "policy": {
            "class": type(pol).__name__,
            "lstm_hidden_size": pol.lstm_actor.hidden_size,
            "lstm_layers": pol.lstm_actor.num_layers,
            "shared_lstm": pol.shared_lstm,
            "critic_lstm": pol.lstm_critic is not None,
            "net_arch": pol.net_arch,
            "lstm_params": lstm,
            "recurrent_params": lstm["actor"] + lstm["critic"],
            "total_params": sum(p.numel() for p in pol.parameters()),
        },
        "hyperparameters": {
            k: getattr(model, k)
            for k in (
                "n_steps",
                "batch_size",
                "n_epochs",
                "gamma",
                "gae_lambda",
                "ent_coef",
                "vf_coef",
                "max_grad_norm",
            )
        }
        | {"learning_rate": model.learning_rate, "clip_range": 0.2},
        "versions": {
            "sb3_contrib": sb3_contrib.__version__,
            "stable_baselines3": stable_baselines3.__version__,
        },
    }
    Path(out).write_text(json.dumps(result, indent=2) + "\n")


def run_sb3(env_id: str, steps: int, seed: int) -> dict:
    cmd_display = (
        f"RecurrentPPO('MlpLstmPolicy', rtu_edge.envs.make({env_id!r}, seed={seed}), "
        f"seed={seed}, device='cpu').learn({steps})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sb3.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--sb3-worker",
            env_id,
            str(steps),
            str(seed),
            str(out),
        ]
        proc = run_child(cmd)
        r = json.loads(out.read_text())
    r.update(proc)
    r["steps_per_process_cpu_s"] = r["steps_run"] / proc["process_cpu_s"]
    r["command"] = cmd_display
    return r


# ---- rtu-edge side ------------------------------------------------------------------------------


def run_rtu(
    env_id: str, algo: str, steps: int, seed: int, runs_dir: str | None, extra: list[str] = ()
) -> dict:
    args = [
        "--env",
        env_id,
        "--algo",
        algo,
        "--steps",
        str(steps),
        "--seed",
        str(seed),
        *extra,
        "--no-progress",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(runs_dir).resolve() if runs_dir else Path(tmp)
        tag = "paper" if extra else "default"
        out = base / f"{env_id.replace('/', '_')}__{algo}__{tag}__s{seed}__{steps}"
        cmd = [sys.executable, "-m", "cli", "train", "--out", str(out), "--overwrite", *args]
        proc = run_child(cmd, stdout=subprocess.DEVNULL)
        s = json.loads((out / "summary.json").read_text())
        cfg = json.loads((out / "config.json").read_text())
    net = cfg["train"]["net"]
    return {
        "final_return": s["final_return"],
        "first_return": s.get("first_return"),
        "episodes": s["episodes"],
        "steps_run": s["steps"],
        "wall_time_s": s["wall_time_s"],
        "steps_per_second": s["steps_per_second"],
        **proc,
        "steps_per_process_cpu_s": s["steps"] / proc["process_cpu_s"],
        "recurrent_params": s["recurrent_params"],
        "net": net,
        "learner": cfg["train"]["learner"],
        "gradient": s.get("gradient", "rtrl"),
        "command": "rtu-edge train " + shlex.join(args),
    }


# ---- the table ----------------------------------------------------------------------------------


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _fmt(x, nd=1):
    return "-" if x is None else f"{x:,.{nd}f}"


def throughput_ratios(result: dict) -> None:
    """Fill the throughput row's sb3 numbers (from this file's sb3 runs on its env) and ratios."""
    t = result.get("throughput")
    if not t:
        return
    sb3 = [r for r in result["runs"] if r["env"] == t["env"] and r["agent"] == "sb3"]
    t["sb3_steps_per_second"] = _mean(r["steps_per_second"] for r in sb3)
    t["sb3_steps"] = sb3[0]["steps_run"] if sb3 else None
    t["sb3_recurrent_params"] = sb3[0]["policy"]["recurrent_params"] if sb3 else None
    t["sb3_steps_per_process_cpu_s"] = _mean(r.get("steps_per_process_cpu_s") for r in sb3)
    for key, rtu, ref in (
        ("ratio", "steps_per_second", "sb3_steps_per_second"),
        ("cpu_ratio", "steps_per_process_cpu_s", "sb3_steps_per_process_cpu_s"),
    ):
        t[key] = t["rtu"][rtu] / t[ref] if t["rtu"].get(rtu) and t[ref] else None
    t["target"] = ">= 5x sb3-contrib RecurrentPPO (issue 8)"


def table(result: dict) -> str:
    lines = [
        f"{result['steps']:,} environment steps per run, seeds {result['seeds']}, one thread each",
        "",
        "| env | agent | recurrent params | final return (per seed) | mean | wall s | steps/s "
        "| steps / CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in result["runs"]:
        groups.setdefault((r["env"], r["agent"]), []).append(r)
    for (env_id, agent), rs in groups.items():
        rs.sort(key=lambda r: r["seed"])
        params = rs[0].get("recurrent_params") or rs[0].get("policy", {}).get("recurrent_params")
        name = {
            "ac": "rtu-edge ac (RTU, RTRL)",
            "ppo": "rtu-edge ppo (RTU, RTRL)",
            "sb3": "sb3-contrib RecurrentPPO (LSTM 256)",
        }[agent]
        lines.append(
            f"| {env_id} | {name} | {params:,} | "
            + ", ".join(_fmt(r["final_return"]) for r in rs)
            + f" | {_fmt(_mean(r['final_return'] for r in rs))}"
            + f" | {_fmt(_mean(r['wall_time_s'] for r in rs), 0)}"
            + f" | {_fmt(_mean(r['steps_per_second'] for r in rs), 0)}"
            + f" | {_fmt(_mean(r.get('steps_per_process_cpu_s') for r in rs), 0)} |"
        )
    throughput_ratios(result)
    t = result.get("throughput")
    if t:
        lines += [
            "",
            f"Training throughput at the paper budget on {t['env']} (issue 8 target: >= 5x sb3):",
            "",
            "| agent | recurrent params | steps | steps/s | vs sb3 RecurrentPPO "
            "| steps / CPU s | vs sb3 |",
            "|---|---|---|---|---|---|---|",
            f"| `{t['rtu']['command']}` | {t['rtu']['recurrent_params']:,} | "
            f"{t['rtu']['steps_run']:,} | {_fmt(t['rtu']['steps_per_second'], 0)} | "
            f"{_fmt(t.get('ratio'), 2)}x | {_fmt(t['rtu'].get('steps_per_process_cpu_s'), 0)} | "
            f"{_fmt(t.get('cpu_ratio'), 2)}x |",
        ]
        if t.get("sb3_steps_per_second") is not None:
            lines.append(
                f"| sb3-contrib RecurrentPPO defaults (mean of the {t['env']} runs above) | "
                f"{t['sb3_recurrent_params']:,} | {t['sb3_steps']:,} | "
                f"{_fmt(t['sb3_steps_per_second'], 0)} | 1x | "
                f"{_fmt(t.get('sb3_steps_per_process_cpu_s'), 0)} | 1x |"
            )
    return "\n".join(lines)


def versions() -> dict:
    import importlib.metadata as md

    v = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in (
        "torch",
        "numpy",
        "gymnasium",
        "mujoco",
        "popgym",
        "stable-baselines3",
        "sb3-contrib",
        "rtu-edge",
    ):
        try:
            v[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            v[pkg] = None
    try:
        v["cpu"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        v["cpu"] = platform.processor() or None
    try:
        v["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        v["git_dirty"] = bool(
            subprocess.run(
                ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        v["git_commit"] = None
    return v


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    if a.table:
        print(table(json.loads(Path(a.table).read_text())))
        return
    if a.sb3_worker:
        env_id, steps, seed, out = a.sb3_worker
        sb3_worker(env_id, int(steps), int(seed), out)
        return
    if "sb3" in a.agent_list:
        try:
            import sb3_contrib  # noqa: F401
        except ImportError:
            sys.exit(f"--agents includes sb3, which needs sb3-contrib: {COMPARE_EXTRA}")
    out = Path(a.out)
    # --resume only continues: the command that reproduces the file is the same without it
    command = "python benchmarks/compare_sb3.py " + shlex.join(
        x for x in (argv if argv is not None else sys.argv[1:]) if x != "--resume"
    )
    result = {
        "command": command,
        "steps": a.steps,
        "seeds": a.seed_list,
        "envs": a.env_list,
        "agents": a.agent_list,
        "threads": "1 per run (torch.set_num_threads(1), OMP/MKL_NUM_THREADS=1), runs one at a time",
        "final_return": "mean return of the episodes ending at step >= 0.9 * steps "
        "(rtu_edge/train.py's summary.json rule)",
        "versions": versions(),
        "runs": [],
        "throughput": None,
    }
    if a.resume and out.exists():
        old = json.loads(out.read_text())
        result["runs"] = [
            r
            for r in old.get("runs", [])
            if r["steps"] == a.steps
            and r["env"] in a.env_list
            and r["agent"] in a.agent_list
            and r["seed"] in a.seed_list
        ]
        t = old.get("throughput")
        if t and t.get("rtu", {}).get("steps_run") == a.throughput_steps:
            result["throughput"] = {"env": t["env"], "rtu": t["rtu"]}

    def save() -> None:
        throughput_ratios(result)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")

    done = {(r["env"], r["agent"], r["seed"]) for r in result["runs"]}
    for env_id in a.env_list:
        for seed in a.seed_list:
            for agent in a.agent_list:
                if (env_id, agent, seed) in done:
                    continue
                print(
                    f"[{time.strftime('%H:%M:%S')}] {env_id} {agent} seed {seed} ({a.steps} steps)",
                    flush=True,
                )
                r = (
                    run_sb3(env_id, a.steps, seed)
                    if agent == "sb3"
                    else run_rtu(env_id, agent, a.steps, seed, a.runs_dir)
                )
                r.update(env=env_id, agent=agent, seed=seed, steps=a.steps)
                print(
                    f"    final return {_fmt(r['final_return'])}, {r['wall_time_s']:.0f} s, "
                    f"{r['steps_per_second']:.0f} steps/s",
                    flush=True,
                )
                result["runs"].append(r)
                save()
    if a.throughput_steps and result["throughput"] is None:
        print(
            f"[{time.strftime('%H:%M:%S')}] throughput: {THROUGHPUT_ENV} ac at the paper "
            f"budget ({a.throughput_steps} steps)",
            flush=True,
        )
        r = run_rtu(THROUGHPUT_ENV, "ac", a.throughput_steps, a.seed_list[0], a.runs_dir, PAPER)
        result["throughput"] = {"env": THROUGHPUT_ENV, "rtu": r}
    save()
    print(table(result))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
