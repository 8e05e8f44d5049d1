"""`rtu-edge train`: run the streaming learner on a gymnasium environment and save a run directory.

RUN_DIR/
  config.json            the TrainConfig, AgentConfig and ACConfig (everything export needs)
  metrics.csv            one row per finished episode: step, episode, return, length, steps/s, wall time
  checkpoint.safetensors every carried tensor of the learn step (params, traces, normalisers, state)
  summary.json           final_return, steps_per_second, recurrent_params, ...
  learning_curve.svg     episode returns over steps

The loop feeds the environment to :func:`rtu_edge.learners.ac.ac_step` exactly as the robot
does over the serial link: one call per observation, with `first` / `terminal` flags, and one
extra call on the final observation of every episode (its action is discarded).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rtu_edge import envs as envs_mod
from rtu_edge.agent import AgentConfig
from rtu_edge.atomic import atomic_write_bytes, atomic_write_json
from rtu_edge.cells import CELLS, recurrent_param_count
from rtu_edge.learners.ac import ACConfig, ac_step, initial_state
from rtu_edge.plots import write_learning_curve_svg

ALGOS = ("ac",)  # later: "td", "ppo"
METRICS_HEADER = [
    "step",
    "episode",
    "episode_return",
    "episode_length",
    "steps_per_second",
    "wall_time_s",
]
CHECKPOINT = "checkpoint.safetensors"


@dataclass
class TrainConfig:
    """One training run. Saved as config.json in the run directory."""

    out: str  # run directory (created; an existing non-empty one needs overwrite=True)
    env: str = envs_mod.DEFAULT_ENV  # environment id, `rtu-edge envs` lists them
    cell: str = "rtu"  # "rtu" (linear RTU) or "rtu-nonlinear"
    algo: str = "ac"  # learner: streaming AC(lambda)
    steps: int = 50_000  # environment steps
    seed: int = 0  # seeds the parameters, the exploration noise and the environment
    hidden_size: int = 32  # RTU units n
    encoder_size: int = 32  # encoder width
    head_size: int = 32  # width of the actor and critic hidden layers
    activation: str = "relu"  # RTU activation
    layer_norm: bool = False  # LayerNorm before the encoder's and heads' tanh (streaming-RL recipe)
    checkpoint_every: int = 20_000  # steps between checkpoints, so a crash loses little
    overwrite: bool = False  # allow writing into a non-empty run directory
    resume: bool = False  # continue the run in `out` from its last checkpoint (see resume_config)
    # torch.compile the learn step: ~4.7x faster per step on the demo agent, but compiling
    # takes ~25 s (needs a C++ compiler), so it pays off only for runs of ~50k steps or more.
    # "auto" compiles when steps >= 100k; if compilation fails, training runs eagerly.
    compile: str = "auto"  # "auto" | "yes" | "no"
    ac: ACConfig = field(default_factory=ACConfig)


def agent_config_for(cfg: TrainConfig) -> AgentConfig:
    info = envs_mod.env_info(cfg.env)
    return AgentConfig(
        obs_size=info.obs_size,
        action_kind=info.action_kind,
        action_dims=info.action_dims,
        num_actions=info.num_actions,
        encoder_size=cfg.encoder_size,
        hidden_size=cfg.hidden_size,
        head_size=cfg.head_size,
        cell=cfg.cell,
        activation=cfg.activation,
        layer_norm=cfg.layer_norm,
    )


def save_checkpoint(
    run_dir: Path,
    state: dict[str, torch.Tensor],
    progress: dict[str, int] | None = None,
    rng: torch.Generator | None = None,
) -> None:
    """All carried tensors (bundle names), plus step counters and the noise RNG as metadata."""
    from safetensors.torch import save

    meta = {k: str(v) for k, v in (progress or {}).items()}
    if rng is not None:
        meta["noise_rng"] = bytes(rng.get_state().tolist()).hex()
    data = save({k: v.contiguous() for k, v in state.items()}, metadata=meta)
    atomic_write_bytes(run_dir / CHECKPOINT, data)


def resume_config(run_dir: str | Path, steps: int | None = None) -> TrainConfig:
    """The config of an interrupted run, to continue it (optionally to a new total of steps)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: nothing to resume in {run_dir}")
    saved = dict(json.loads(path.read_text())["train"])
    saved["ac"] = ACConfig(**saved["ac"])
    saved.update(resume=True, overwrite=False)
    if steps is not None:
        saved["steps"] = steps
    return TrainConfig(**saved)


def _read_progress(run_dir: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(run_dir / CHECKPOINT), framework="pt") as f:
        return dict(f.metadata() or {})


def load_run(run_dir: str | Path) -> tuple[dict, AgentConfig, ACConfig, dict[str, torch.Tensor]]:
    """Read a run directory back: (config dict, agent config, learner config, state tensors)."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / "config.json", run_dir / CHECKPOINT
    for p in (cfg_path, ckpt_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} is missing: is {run_dir} a directory written by `rtu-edge train`?"
            )
    config = json.loads(cfg_path.read_text())
    agent = AgentConfig(**config["agent"])
    ac = ACConfig(**config["train"]["ac"])
    return config, agent, ac, load_file(str(ckpt_path))


def _noise(agent: AgentConfig, gen: torch.Generator) -> torch.Tensor:
    if agent.action_kind == "continuous":
        return torch.randn(1, agent.noise_size, generator=gen)
    u = torch.rand(1, agent.noise_size, generator=gen).clamp_(1e-10, 1 - 1e-7)
    return -torch.log(-torch.log(u))  # standard Gumbel


def env_action(agent: AgentConfig, action: torch.Tensor, low, high):
    """The learner's action as the environment takes it: an index, or a clipped float32 vector."""
    if agent.action_kind == "discrete":
        return int(min(max(round(float(action[0, 0])), 0), agent.num_actions - 1))
    return np.clip(action[0].numpy().astype(np.float32), low, high)


def make_step_fn(cfg: TrainConfig, agent: AgentConfig, state: dict[str, torch.Tensor], log=print):
    """`ac_step` bound to the configs: eager, or torch.compile'd (same function, same numbers
    up to float rounding; tests/rtu_edge/test_train.py compares them).

    Ctrl-C or SIGTERM while compiling raises KeyboardInterrupt, also when torch swallowed it
    or turned it into a compile error (the signal is recorded, not only raised).
    """
    eager = functools.partial(ac_step, cfg.ac, agent)
    if cfg.compile not in ("auto", "yes", "no"):
        raise ValueError(f"compile must be 'auto', 'yes' or 'no', got {cfg.compile!r}")
    if cfg.compile == "no" or (cfg.compile == "auto" and cfg.steps < 100_000):
        return eager
    compiled = torch.compile(eager, dynamic=False, fullgraph=True)
    example = (
        torch.zeros(1, agent.obs_size),
        torch.zeros(1),
        torch.ones(1),
        torch.zeros(1),
        torch.zeros(1, agent.noise_size),
    )
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
            compiled({k: v.clone() for k, v in state.items()}, *example)  # compile now
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
    """Train one agent; returns the summary (also written to summary.json)."""
    if cfg.cell not in CELLS:
        raise ValueError(f"unknown cell {cfg.cell!r}; choose one of {sorted(CELLS)}")
    if cfg.algo not in ALGOS:
        raise ValueError(f"unknown algo {cfg.algo!r}; choose one of {list(ALGOS)}")
    if cfg.steps <= 0:
        raise ValueError("--steps must be positive")
    run_dir = Path(cfg.out)
    torch.set_num_threads(1)
    info = envs_mod.env_info(cfg.env)
    agent = agent_config_for(cfg)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    start_step, start_episode = 0, 0
    if cfg.resume:
        _, saved_agent, _, state = load_run(run_dir)
        if saved_agent != agent:
            raise ValueError(f"{run_dir} holds a different agent ({saved_agent}); cannot resume")
        progress_meta = _read_progress(run_dir)
        start_step = int(progress_meta.get("step", 0))
        start_episode = int(progress_meta.get("episode", 0))
        if "noise_rng" in progress_meta:
            rng_bytes = bytes.fromhex(progress_meta["noise_rng"])
            gen.set_state(torch.tensor(list(rng_bytes), dtype=torch.uint8))
        if start_step >= cfg.steps:
            raise ValueError(f"{run_dir} already reached step {start_step}; pass a larger --steps")
        # metrics rows after the checkpoint belong to the lost part of the run: drop them
        metrics = run_dir / "metrics.csv"
        rows = list(csv.reader(io.StringIO(metrics.read_text()))) if metrics.exists() else []
        kept = [r for r in rows[1:] if r and int(r[0]) <= start_step]
        text = io.StringIO()
        csv.writer(text).writerows([METRICS_HEADER, *kept])
        atomic_write_bytes(metrics, text.getvalue().encode())
        metrics_f = open(metrics, "a", newline="")
        writer = csv.writer(metrics_f)
    else:
        if run_dir.exists() and any(run_dir.iterdir()) and not cfg.overwrite:
            raise FileExistsError(
                f"{run_dir} already holds files; choose another --out, pass --overwrite, "
                "or continue it with --resume"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        state = initial_state(agent, cfg.seed)
        kept = []
        metrics_f = open(run_dir / "metrics.csv", "w", newline="")
        writer = csv.writer(metrics_f)
        writer.writerow(METRICS_HEADER)
    atomic_write_json(
        run_dir / "config.json",
        {"train": asdict(cfg), "agent": agent.to_dict(), "env_info": asdict(info)},
    )
    # a resumed run starts a fresh episode, with its own environment seed
    env = envs_mod.make(cfg.env, seed=cfg.seed + 7919 * start_episode)
    low = np.asarray(info.action_low, dtype=np.float32)
    high = np.asarray(info.action_high, dtype=np.float32)
    returns: list[tuple[int, float]] = [(int(r[0]), float(r[2])) for r in kept]
    recent: deque[float] = deque((r for _, r in returns[-20:]), maxlen=20)

    try:
        step_fn = make_step_fn(cfg, agent, state)
    except KeyboardInterrupt:  # while compiling: nothing learned yet, keep the start resumable
        metrics_f.close()
        env.close()
        save_checkpoint(run_dir, state, {"step": start_step, "episode": start_episode}, gen)
        raise
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
            TextColumn(f"train {cfg.env} {cfg.cell}"),
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
    bad_updates = 0
    try:
        with torch.inference_mode(), _signals_interrupt():
            while step < cfg.steps:
                new, action, _, delta = step_fn(
                    state,
                    torch.as_tensor(obs, dtype=torch.float32).reshape(1, -1),
                    torch.tensor([reward], dtype=torch.float32),
                    torch.tensor([first]),
                    torch.tensor([terminal]),
                    _noise(agent, gen),
                )
                state.update(new)
                if not math.isfinite(float(delta)):
                    bad_updates += 1
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
                obs, r, term, trunc, _ = env.step(env_action(agent, action, low, high))
                reward, first, terminal = float(r), 0.0, float(term)
                episode_over = term or trunc
                ep_return += reward
                ep_len += 1
                step += 1
                if step % cfg.checkpoint_every == 0:
                    save_checkpoint(run_dir, state, {"step": step, "episode": episode}, gen)
                    metrics_f.flush()
                if bar is not None and step % 200 == 0:
                    sps = (step - start_step) / (time.perf_counter() - t0)
                    ret = f"{sum(recent) / len(recent):.1f}" if recent else "-"
                    bar.update(task, completed=step, sps=sps, ret=ret)
    except KeyboardInterrupt:
        # keep everything learned so far; `rtu-edge train --out RUN --resume` continues
        save_checkpoint(run_dir, state, {"step": step, "episode": episode}, gen)
        raise
    finally:
        if bar is not None:
            bar.stop()
        metrics_f.close()
        env.close()
    elapsed = time.perf_counter() - t0
    save_checkpoint(run_dir, state, {"step": step, "episode": episode}, gen)

    tail = [r for s, r in returns if s >= 0.9 * cfg.steps] or [r for _, r in returns[-1:]]
    summary = {
        "env": cfg.env,
        "cell": cfg.cell,
        "algo": cfg.algo,
        "steps": cfg.steps,
        "episodes": episode,
        "final_return": float(np.mean(tail)) if tail else None,
        "first_return": float(np.mean([r for _, r in returns[: max(1, len(returns) // 10)]]))
        if returns
        else None,
        "steps_per_second": (cfg.steps - start_step) / elapsed,
        "recurrent_params": recurrent_param_count(agent.encoder_size, agent.hidden_size),
        "non_finite_updates": bad_updates,
        "wall_time_s": elapsed,
    }
    atomic_write_json(run_dir / "summary.json", summary)
    if returns:
        write_learning_curve_svg(
            run_dir / "learning_curve.svg", returns, title=f"{cfg.env} {cfg.cell} seed {cfg.seed}"
        )
    return summary
