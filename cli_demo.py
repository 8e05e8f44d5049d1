"""`rtu-edge demo`: the whole chain on the built-in default, without hardware (an app: it uses
all three packages, so it lives beside cli.py, not inside the library).

1. train a small agent on the workstation (torch, exact RTRL, streaming AC);
2. export its act and learn steps to ONNX (parity-checked);
3. start `rtu-edge sim-robot` in a separate process: a simulated microcontroller on a
   pseudo-terminal, speaking the real wire protocol;
4. on that "robot", with onnxruntime only:
   a. run the exported policy frozen (act graph, greedy) -> returns before on-robot learning;
   b. keep learning on the robot (learn graph) for `robot_steps` ticks, checkpointing;
   c. run the frozen policy again, resumed from the newest checkpoint -> returns after;
5. print what happened and write report.json and robot_learning.png.

Steps 4a-4c run the same code as `rtu-edge run` (firmware_bridge.robot_loop.run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from firmware_bridge.atomic import atomic_write_json
from rtu_edge.plots import write_learning_curve


@dataclass
class DemoConfig:
    workdir: str = "demo"  # everything goes here: run/, bundle/, checkpoints/, report.json
    env: str = "classic/CartPole-P"  # the built-in default POMDP
    cell: str = "rtu"
    train_steps: int = 15_000  # short on purpose: the robot is meant to improve the policy
    robot_steps: int = 40_000  # on-robot learning ticks
    eval_steps: int = 5_000  # frozen-policy ticks before and after on-robot learning
    seed: int = 0
    sim_start_timeout_s: float = 30.0  # waiting for the simulated robot's pseudo-terminal


def _start_sim_robot(cfg: DemoConfig, link: Path, log_path: Path) -> subprocess.Popen:
    if link.exists() or link.is_symlink():
        link.unlink()
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "sim-robot",
        "--env",
        cfg.env,
        "--link",
        str(link),
        "--seed",
        str(cfg.seed + 7),
    ]
    log_f = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log_f, stderr=subprocess.STDOUT, cwd=os.getcwd())
    deadline = time.monotonic() + cfg.sim_start_timeout_s
    while not link.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"sim-robot exited early; see {log_path}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"sim-robot did not create {link} within {cfg.sim_start_timeout_s}s")
        time.sleep(0.05)
    return proc


def run_demo(cfg: DemoConfig, log=print) -> str:
    from export.bundle import ExportConfig, export_run
    from firmware_bridge.robot_loop import RunConfig, run
    from rtu_edge.config import NetConfig
    from rtu_edge.train import TrainConfig, train

    work = Path(cfg.workdir)
    run_dir, bundle, ckpt = work / "run", work / "bundle", work / "checkpoints"
    for p in (run_dir, bundle, ckpt):
        if p.exists():
            shutil.rmtree(p)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    log(f"[1/4] training {cfg.cell} on {cfg.env} for {cfg.train_steps} steps (torch, exact RTRL)")
    tr = train(
        TrainConfig(
            out=str(run_dir),
            env=cfg.env,
            net=NetConfig(cell=cfg.cell),
            steps=cfg.train_steps,
            seed=cfg.seed,
        )
    )
    log(f"[2/4] exporting to {bundle}")
    export_run(ExportConfig(run_dir=str(run_dir), out=str(bundle)), log=log)

    log("[3/4] starting the simulated robot on a pseudo-terminal")
    link = work / "robot.tty"
    sim = _start_sim_robot(cfg, link, work / "sim_robot.log")
    try:
        common = dict(
            bundle=str(bundle),
            port=str(link),
            checkpoint_dir=str(ckpt),
            seed=cfg.seed,
            status_every_s=0,
        )
        log(
            f"[4/4] on the robot (onnxruntime only): frozen {cfg.eval_steps} ticks, "
            f"learning {cfg.robot_steps} ticks, frozen {cfg.eval_steps} ticks"
        )
        before = run(RunConfig(learn=False, steps=cfg.eval_steps, fresh=True, **common), log=log)
        learning = run(RunConfig(learn=True, steps=cfg.robot_steps, fresh=True, **common), log=log)
        after = run(RunConfig(learn=False, steps=cfg.eval_steps, **common), log=log)
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=5)
        except subprocess.TimeoutExpired:
            sim.kill()

    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")

    rets = learning["episode_returns"]
    tenth = max(1, len(rets) // 10)
    report = {
        "config": asdict(cfg),
        "train": tr,
        "robot_before": {
            "mean_return": mean(before["episode_returns"]),
            "episodes": before["episodes"],
        },
        "robot_learning": {
            "first_10pct_return": mean(rets[:tenth]),
            "last_10pct_return": mean(rets[-tenth:]),
            "episodes": learning["episodes"],
            "ticks_per_second": learning["ticks_per_second"],
            "learn_latency_us": learning["graph_latency_us"],
            "tick_latency_us": learning["tick_latency_us"],
            "bad_updates": learning["counters"]["bad_updates"],
        },
        "robot_after": {
            "mean_return": mean(after["episode_returns"]),
            "episodes": after["episodes"],
        },
        "act_latency_us": after["graph_latency_us"],
        "wall_time_s": time.perf_counter() - t0,
    }
    atomic_write_json(work / "report.json", report)
    if rets:
        pts = [(i + 1, r) for i, r in enumerate(rets)]
        write_learning_curve(
            work / "robot_learning.png",
            pts,
            title=f"on-robot learning, {cfg.env}",
            x_label="episode on the robot",
        )
    b, lr, a = report["robot_before"], report["robot_learning"], report["robot_after"]
    lines = [
        "",
        f"rtu-edge demo: {cfg.env}, {cfg.cell}, done in {report['wall_time_s']:.0f}s",
        f"  workstation training ({cfg.train_steps} steps): final return {tr['final_return']:.1f}, "
        f"{tr['steps_per_second']:.0f} steps/s (torch)",
        f"  robot, frozen policy before on-robot learning:  mean return {b['mean_return']:.1f} "
        f"over {b['episodes']} episodes",
        f"  robot, learning on ({cfg.robot_steps} ticks, {lr['episodes']} episodes): "
        f"return {lr['first_10pct_return']:.1f} (first 10%) -> {lr['last_10pct_return']:.1f} (last 10%)",
        f"  robot, frozen policy after on-robot learning:   mean return {a['mean_return']:.1f} "
        f"over {a['episodes']} episodes",
        f"  learn.onnx step latency p50 {lr['learn_latency_us']['p50']:.0f} us, "
        f"p99 {lr['learn_latency_us']['p99']:.0f} us; whole tick incl. serial p50 "
        f"{lr['tick_latency_us']['p50']:.0f} us; {lr['ticks_per_second']:.0f} ticks/s",
        f"  report: {work / 'report.json'}, curve: {work / 'robot_learning.png'}",
    ]
    return "\n".join(lines)
