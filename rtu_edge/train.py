"""`rtu-edge train`: run a streaming learner on a gymnasium environment and save a run directory.

The run directory's layout is in `rtu_edge.run_dir`. The loop feeds the environment to the
learner's learn step (`rtu_edge.learners.LEARNERS[algo]`) exactly as the robot does over the
serial link: one call per observation, inputs filled by their declared source (`first` /
`terminal` flags, reward, noise), and one extra call on the final observation of every episode
(its action is discarded).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import signal
import threading
import time
from array import array
from collections import deque
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from firmware_bridge.atomic import atomic_write_bytes, atomic_write_json
from firmware_bridge.contract import ActionSpec, NoiseSpec
from rtu_edge import envs as envs_mod
from rtu_edge import run_dir as rd
from rtu_edge.agent import AgentConfig
from rtu_edge.cells import CELLS
from rtu_edge.config import TrainConfig
from rtu_edge.flops import count_flops
from rtu_edge.learners import Learner, get_learner
from rtu_edge.plots import write_learning_curve

METRICS_HEADER = rd.METRICS_HEADER
CHECKPOINT = rd.CHECKPOINT
load_run = rd.load_run
resume_config = rd.resume_config


def agent_config_for(cfg: TrainConfig) -> AgentConfig:
    return rd.agent_config(cfg.net, asdict(envs_mod.env_info(cfg.env)))


def action_spec(info: envs_mod.EnvInfo) -> ActionSpec:
    """The environment's actuator in the contract's terms (the same rule the robot applies)."""
    return ActionSpec(
        kind=info.action_kind,
        dims=info.action_dims,
        num_actions=info.num_actions,
        low=tuple(info.action_low),
        high=tuple(info.action_high),
        safe=tuple(info.safe_action),
    )


def env_action(spec: ActionSpec, action: torch.Tensor):
    """The learner's action as the environment takes it: an index, or a clipped float32 vector."""
    a = spec.to_actuator(action.detach().cpu().numpy())
    return int(a[0]) if spec.kind == "discrete" else a


def sample_noise(spec: NoiseSpec | None, gen: torch.Generator) -> torch.Tensor | None:
    """Training's exploration noise (torch RNG, so a seed replays): normal or standard Gumbel."""
    if spec is None:
        return None
    if spec.distribution == "normal":
        return torch.randn(1, spec.size, generator=gen)
    u = torch.rand(1, spec.size, generator=gen).clamp_(1e-10, 1 - 1e-7)
    return -torch.log(-torch.log(u))


def random_action(spec: ActionSpec, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random action (1, dims): the behaviour policy of a prediction learner."""
    if spec.kind == "discrete":
        return torch.randint(spec.num_actions, (1, 1), generator=gen).float()
    low, high = torch.tensor(spec.low), torch.tensor(spec.high)
    return low + (high - low) * torch.rand(1, spec.dims, generator=gen)


def msre(values, cumulants, first, gamma: float) -> float | None:
    """Mean squared return error of one window of learn-step calls, in call order.

    ``values[i]`` is v(S_i), ``cumulants[i]`` the C_i that came with S_i, ``first[i]`` its flag.
    The true return G_i = C_{i+1} + gamma G_{i+1} is summed backwards and cut (G = 0 beyond)
    where an episode ends (the next call is first: after a terminal state or a truncation) and
    at the end of the window. Each episode's final call (a terminal value is 0 by definition;
    the learner never fits a truncated one) and the window's last call are left out.
    """
    errors, g = [], 0.0
    for i in range(len(values) - 2, -1, -1):
        if first[i + 1]:
            g = 0.0
            continue
        g = cumulants[i + 1] + gamma * g
        errors.append((values[i] - g) ** 2)
    return float(np.mean(errors)) if errors else None


def step_example(learner: Learner, agent: AgentConfig, dtype=torch.float32) -> dict:
    """Zero-valued per-step inputs of the learn step (first = 1), by declared name."""
    out = {}
    for s in learner.step_inputs(agent):
        out[s.name] = (torch.ones if s.source == "first" else torch.zeros)(s.shape, dtype=dtype)
    return out


def learn_step_flops(learner: Learner, learner_cfg, agent: AgentConfig, state: dict) -> int:
    """FLOPs of one whole learn step (cell, RTRL, heads, update), counted op by op."""
    s = {k: v.clone() for k, v in state.items()}
    example = step_example(learner, agent)
    if "first" in {i.source for i in learner.step_inputs(agent)}:  # a mid-episode tick
        example[next(i.name for i in learner.step_inputs(agent) if i.source == "first")].zero_()
    with torch.inference_mode():
        return count_flops(learner.learn_step, learner_cfg, agent, s, example)


def make_step_fn(cfg: TrainConfig, agent: AgentConfig, state: dict[str, torch.Tensor], log=print):
    """The learner's learn step bound to the configs: eager, or torch.compile'd (same function,
    same numbers up to float rounding; tests/rtu_edge/test_train.py compares them).

    Ctrl-C or SIGTERM while compiling raises KeyboardInterrupt, also when torch swallowed it
    or turned it into a compile error (the signal is recorded, not only raised).
    """
    learner = get_learner(cfg.algo)

    def eager(s, inputs):
        return learner.learn_step(cfg.learner, agent, s, inputs)

    if cfg.compile not in ("auto", "yes", "no"):
        raise ValueError(f"compile must be 'auto', 'yes' or 'no', got {cfg.compile!r}")
    if cfg.compile == "no" or (cfg.compile == "auto" and cfg.steps < 100_000):
        return eager
    compiled = torch.compile(eager, dynamic=False, fullgraph=True)
    signals: list[int] = []  # Ctrl-C / SIGTERM seen while compiling

    def interrupt(signum, frame):
        signals.append(signum)
        raise KeyboardInterrupt

    old = {}
    t0 = time.perf_counter()
    try:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, interrupt)
        with torch.inference_mode():
            compiled({k: v.clone() for k, v in state.items()}, step_example(learner, agent))
    except Exception as e:  # no C++ compiler, unsupported platform, ...
        if not signals:
            log(f"torch.compile failed ({type(e).__name__}: {e}); training eagerly")
            return eager
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if signals:  # the interrupt may have been caught (or wrapped) inside torch
        raise KeyboardInterrupt
    log(f"compiled the learn step in {time.perf_counter() - t0:.0f}s")
    return compiled


@contextlib.contextmanager
def _signals_interrupt():
    """SIGINT and SIGTERM raise KeyboardInterrupt inside the loop, so the checkpoint is saved.

    Also when the parent started us with SIGINT ignored (background jobs, batch schedulers).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train one agent; returns the summary (also written to summary.json).

    One learn-step call per observation, inputs filled by their declared source exactly as the
    robot loop fills them, and one extra call on the final observation of every episode (its
    action is discarded).
    """
    learner = get_learner(cfg.algo)
    if cfg.learner is None:
        cfg.learner = learner.Config()
    if not isinstance(cfg.learner, learner.Config):
        raise ValueError(
            f"the learner config must be a {learner.Config.__name__} for --algo {cfg.algo}"
        )
    if cfg.net.cell not in CELLS:
        raise ValueError(f"unknown cell {cfg.net.cell!r}; choose one of {sorted(CELLS)}")
    if cfg.steps <= 0:
        raise ValueError("--steps must be positive")
    if cfg.tensorboard:
        rd.tensorboard_writer_class()  # fails before any file is written when it is missing
    if learner.train is not None:  # a learner with its own loop (ppo; td with T-BPTT)
        summary = learner.train(cfg, progress=progress)
        if summary is not None:  # None: this configuration learns tick by tick, below
            return summary
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f"--out {run_dir} is a file; choose a directory for the run")
    torch.set_num_threads(1)
    info = envs_mod.env_info(cfg.env)
    agent = agent_config_for(cfg)
    cell = agent.cell
    if not cell.online:
        raise ValueError(
            f"cell {cfg.net.cell!r} has no exact RTRL, so the streaming learner {cfg.algo!r} "
            "cannot train it"
        )
    spec = action_spec(info)
    noise_spec = learner.noise(agent)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    start_step, start_episode = 0, 0
    if cfg.resume:
        run, state = load_run(run_dir)
        if run.agent != agent:
            raise ValueError(f"{run_dir} holds a different agent ({run.agent}); cannot resume")
        progress_meta = rd.read_progress(run_dir)
        start_step = int(progress_meta.get("step", 0))
        start_episode = int(progress_meta.get("episode", 0))
        if "noise_rng" in progress_meta:
            rng_bytes = bytes.fromhex(progress_meta["noise_rng"])
            gen.set_state(torch.tensor(list(rng_bytes), dtype=torch.uint8))
        if start_step >= cfg.steps:
            raise ValueError(f"{run_dir} already reached step {start_step}; pass a larger --steps")
        # metrics rows after the checkpoint belong to the lost part of the run: drop them
        metrics = run_dir / rd.METRICS
        rows = list(csv.reader(io.StringIO(metrics.read_text()))) if metrics.exists() else []
        kept = [r for r in rows[1:] if r and int(r[0]) <= start_step]
        text = io.StringIO()
        csv.writer(text).writerows([METRICS_HEADER, *kept])
        atomic_write_bytes(metrics, text.getvalue().encode())
        metrics_f = rd.MetricsLog(
            open(metrics, "a", newline=""), run_dir, cfg.tensorboard, resume_step=start_step
        )
        writer = metrics_f
    else:
        if run_dir.exists() and any(run_dir.iterdir()) and not cfg.overwrite:
            raise FileExistsError(
                f"{run_dir} already holds files; choose another --out, pass --overwrite, "
                "or continue it with --resume"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        state = learner.initial_state(agent, cfg.learner, cfg.seed)
        kept = []
        metrics_file = open(run_dir / rd.METRICS, "w", newline="")
        csv.writer(metrics_file).writerow(METRICS_HEADER)
        metrics_f = writer = rd.MetricsLog(metrics_file, run_dir, cfg.tensorboard)
    rd.write_config(run_dir, cfg, asdict(info))
    # a resumed run starts a fresh episode, with its own environment seed
    env = envs_mod.make(cfg.env, seed=cfg.seed + 7919 * start_episode)
    returns: list[tuple[int, float]] = [(int(r[0]), float(r[2])) for r in kept]
    recent: deque[float] = deque((r for _, r in returns[-20:]), maxlen=20)
    sources = {s.name: s.source for s in learner.step_inputs(agent)}
    # a random-behaviour learner (td) need not output an action: the env gets random ones
    action_name = next((o.name for o in learner.learn_outputs(agent) if o.use == "action"), None)
    if action_name is None and learner.behaviour != "random":
        raise ValueError(f"learner {learner.name!r} declares no output with use 'action'")
    checked = [o.name for o in learner.learn_outputs(agent) if o.use in ("check", "prediction")]
    # A learner with a "prediction" output gets its MSRE over the first and the last 10% of the
    # steps: v, C and first of each call there (array("f"): 12 bytes a call).
    predicting = "prediction" in {o.name for o in learner.learn_outputs(agent)}
    windows = {"first_msre": (0, cfg.steps // 10), "msre": (cfg.steps - cfg.steps // 10, cfg.steps)}
    logs = {k: tuple(array("f") for _ in range(3)) for k in windows}

    bar = None
    if progress:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn(f"train {cfg.env} {cfg.net.cell} {cfg.algo}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[sps]:>7.0f} steps/s  recent return {task.fields[ret]}"),
            TimeRemainingColumn(),
        )
        task = bar.add_task("train", total=cfg.steps, completed=start_step, sps=0.0, ret="-")
        bar.start()

    obs, _ = env.reset()
    reward, first, terminal, episode_over = 0.0, 1.0, 0.0, False
    ep_return, ep_len, episode = 0.0, 0, start_episode
    step = start_step
    t0 = time.perf_counter()
    bad_updates = skipped_checkpoints = 0
    log = bar.console.print if bar is not None else print

    def checkpoint() -> None:
        nonlocal skipped_checkpoints
        try:
            rd.save_checkpoint(run_dir, state, {"step": step, "episode": episode}, gen)
        except rd.RunDirError as e:
            skipped_checkpoints += 1
            log(f"WARNING: {e}")

    try:
        with torch.inference_mode(), _signals_interrupt():
            # compiling can take tens of seconds: an interrupt here also saves the checkpoint
            step_fn = make_step_fn(cfg, agent, state, log=log)
            while step < cfg.steps:
                values = {
                    "obs": torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1),
                    "reward": torch.tensor([reward], dtype=torch.float32),
                    "first": torch.tensor([first]),
                    "terminal": torch.tensor([terminal]),
                }
                inputs = {
                    name: sample_noise(noise_spec, gen) if src == "noise" else values[src]
                    for name, src in sources.items()
                }
                new, out = step_fn(state, inputs)
                state.update(new)
                if not all(math.isfinite(float(out[k].reshape(-1)[0])) for k in checked):
                    bad_updates += 1
                for key, (lo, hi) in windows.items():
                    if predicting and lo <= step < hi:
                        for column, x in zip(logs[key], (out["prediction"], reward, first)):
                            column.append(float(x))
                if episode_over:  # the tick on the final observation: learn, then reset
                    episode += 1
                    recent.append(ep_return)
                    returns.append((step, ep_return))
                    elapsed = time.perf_counter() - t0
                    writer.writerow(
                        [
                            step,
                            episode,
                            f"{ep_return:.6g}",
                            ep_len,
                            f"{(step - start_step) / elapsed:.1f}",
                            f"{elapsed:.2f}",
                        ]
                    )
                    obs, _ = env.reset()
                    reward, first, terminal, episode_over = 0.0, 1.0, 0.0, False
                    ep_return, ep_len = 0.0, 0
                    continue
                if learner.behaviour == "random":
                    action = random_action(spec, gen)
                else:
                    action = out[action_name]
                obs, r, term, trunc, _ = env.step(env_action(spec, action))
                reward, first, terminal = float(r), 0.0, float(term)
                episode_over = term or trunc
                ep_return += reward
                ep_len += 1
                step += 1
                if step % cfg.checkpoint_every == 0:
                    checkpoint()
                    metrics_f.flush()
                if bar is not None and step % 200 == 0:
                    sps = (step - start_step) / (time.perf_counter() - t0)
                    ret = f"{sum(recent) / len(recent):.1f}" if recent else "-"
                    bar.update(task, completed=step, sps=sps, ret=ret)
    except KeyboardInterrupt:
        # keep everything learned so far; `rtu-edge train --out RUN --resume` continues
        checkpoint()
        raise
    finally:
        if bar is not None:
            bar.stop()
        metrics_f.close()
        env.close()
    elapsed = time.perf_counter() - t0
    checkpoint()

    tail = [r for s, r in returns if s >= 0.9 * cfg.steps] or [r for _, r in returns[-1:]]
    summary = {
        "env": cfg.env,
        "cell": cfg.net.cell,
        "algo": cfg.algo,
        "steps": cfg.steps,
        "episodes": episode,
        "final_return": float(np.mean(tail)) if tail else None,
        "first_return": float(np.mean([r for _, r in returns[: max(1, len(returns) // 10)]]))
        if returns
        else None,
        "steps_per_second": (cfg.steps - start_step) / elapsed,
        "recurrent_params": cell.recurrent_param_count(),
        "flops_per_step": learn_step_flops(learner, cfg.learner, agent, state),
        "non_finite_updates": bad_updates,
        "skipped_checkpoints": skipped_checkpoints,
        "wall_time_s": elapsed,
        "gradient": "rtrl",  # this loop needs a cell with exact RTRL (checked above)
    }
    if predicting:
        gamma = cfg.learner.gamma
        summary.update({k: msre(*logs[k], gamma) for k in windows})
    atomic_write_json(run_dir / rd.SUMMARY, summary)
    if returns:
        write_learning_curve(
            run_dir / "learning_curve.png",
            returns,
            title=f"{cfg.env} {cfg.net.cell} {cfg.algo} seed {cfg.seed}",
        )
    return summary
