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
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.func import vmap

from firmware_bridge.atomic import atomic_write_bytes, atomic_write_json
from firmware_bridge.contract import ActionSpec, NoiseSpec
from rtu_edge import envs as envs_mod
from rtu_edge import packing as P
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


def env_action(spec: ActionSpec, action: torch.Tensor | np.ndarray):
    """The learner's action as the environment takes it: an index, or a clipped float32 vector."""
    if isinstance(action, torch.Tensor):
        action = action.detach().cpu().numpy()
    a = spec.to_actuator(action)
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


def make_step_fn(
    cfg: TrainConfig,
    agent: AgentConfig,
    state: dict[str, torch.Tensor],
    log=print,
    batch: int | None = None,
):
    """The learner's learn step bound to the configs: eager, or torch.compile'd (same function,
    same numbers up to float rounding; tests/rtu_edge/test_train.py compares them). With
    `batch` = K, the step of K agents at once: `torch.func.vmap` over the leading axis of the
    state and the inputs (`state` is then the K agents' states stacked).

    Ctrl-C or SIGTERM while compiling raises KeyboardInterrupt, also when torch swallowed it
    or turned it into a compile error (the signal is recorded, not only raised).
    """
    learner = get_learner(cfg.algo)

    def one(s, inputs):
        return learner.learn_step(cfg.learner, agent, s, inputs)

    eager = one if batch is None else vmap(one, randomness="error")
    example = step_example(learner, agent)
    if batch is not None:
        example = {k: v.expand(batch, *v.shape).clone() for k, v in example.items()}

    if cfg.compile not in ("auto", "yes", "no"):
        raise ValueError(f"compile must be 'auto', 'yes' or 'no', got {cfg.compile!r}")
    if cfg.compile == "no" or (cfg.compile == "auto" and cfg.steps * (batch or 1) < 100_000):
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
            compiled({k: v.clone() for k, v in state.items()}, example)
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


def _check_config(cfg: TrainConfig) -> Learner:
    """The learner of `cfg` (its default config filled in); ValueError on a bad config."""
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
    return learner


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train one agent; returns the summary (also written to summary.json).

    One learn-step call per observation, inputs filled by their declared source exactly as the
    robot loop fills them, and one extra call on the final observation of every episode (its
    action is discarded).
    """
    learner = _check_config(cfg)
    if learner.train is not None:  # a learner with its own loop (ppo; td with T-BPTT)
        summary = learner.train(cfg, progress=progress)
        if summary is not None:  # None: this configuration learns tick by tick, below
            return summary
    return _train_runs([cfg], learner, progress)[0]


BATCHED_ALGOS = ("ac",)  # learners `train_batch` runs (their learn step vmaps)
_PER_SEED = ("seed", "out", "resume", "overwrite")  # what may differ between batched runs


def train_batch(cfgs: list[TrainConfig], progress: bool = True) -> list[dict]:
    """Train K agents of one config that differ only in their seed (and run directory) in this
    process: one vmapped learn step per tick for all K (`torch.func.vmap` over their stacked
    states), each agent with its own environment, noise RNG, parameters and traces.

    Every agent writes its own run directory, exactly as `train` would with its config (same
    files, same checkpoint rule; resumable one by one or together), and its numbers equal a
    `train` run with its seed up to float32 rounding. Returns the K summaries in order.
    """
    if not cfgs:
        raise ValueError("train_batch needs at least one config")
    learners = [_check_config(c) for c in cfgs]
    first = cfgs[0]
    if first.algo not in BATCHED_ALGOS:
        raise ValueError(
            f"batched training (--seeds) supports --algo {', '.join(BATCHED_ALGOS)}, not "
            f"{first.algo!r}; train each seed in its own run (or a sweep)"
        )
    shared = {k: v for k, v in asdict(first).items() if k not in _PER_SEED}
    for c in cfgs[1:]:
        other = {k: v for k, v in asdict(c).items() if k not in _PER_SEED}
        if other != shared:
            diff = sorted(k for k in shared if shared[k] != other[k])
            raise ValueError(
                f"batched runs must differ only in seed and out; {c.out} differs in {diff}"
            )
    outs = [str(Path(c.out).resolve()) for c in cfgs]
    if len(set(outs)) < len(outs) or len({c.seed for c in cfgs}) < len(cfgs):
        raise ValueError("batched runs need distinct seeds and distinct run directories")
    return _train_runs(cfgs, learners[0], progress)


@dataclass
class _Plan:
    """What the loop needs of the learner and the environment, the same for every agent."""

    learner: Learner
    agent: AgentConfig
    info: envs_mod.EnvInfo
    spec: ActionSpec
    noise_spec: NoiseSpec | None
    sources: dict[str, str]  # learn-step input name -> its source
    action_name: str | None  # the output the environment gets (None: random behaviour)
    checked: list[str]  # outputs whose non-finite value counts as a bad update
    predicting: bool  # has a "prediction" output: MSRE over the first and last 10%
    idle: dict  # the inputs by source of an agent that is done (in a batch): a zero first tick

    @classmethod
    def of(cls, cfg: TrainConfig, learner: Learner) -> _Plan:
        info = envs_mod.env_info(cfg.env)
        agent = agent_config_for(cfg)
        if not agent.cell.online:
            raise ValueError(
                f"cell {cfg.net.cell!r} has no exact RTRL, so the streaming learner {cfg.algo!r} "
                "cannot train it"
            )
        outputs = learner.learn_outputs(agent)
        # a random-behaviour learner (td) need not output an action: the env gets random ones
        action_name = next((o.name for o in outputs if o.use == "action"), None)
        if action_name is None and learner.behaviour != "random":
            raise ValueError(f"learner {learner.name!r} declares no output with use 'action'")
        return cls(
            learner=learner,
            agent=agent,
            info=info,
            spec=action_spec(info),
            noise_spec=learner.noise(agent),
            sources={s.name: s.source for s in learner.step_inputs(agent)},
            action_name=action_name,
            checked=[o.name for o in outputs if o.use in ("check", "prediction")],
            predicting="prediction" in {o.name for o in outputs},
            idle={"obs": 0.0, "reward": 0.0, "first": 1.0, "terminal": 0.0, "noise": None},
        )


class _Run:
    """One agent's side of the loop: its run directory, environment, noise RNG, counters and
    metrics. The learn step and the state tensors belong to the caller (one agent or a batch):
    `inputs` gives this agent's next learn-step inputs, `consume` takes its outputs."""

    def __init__(self, cfg: TrainConfig, plan: _Plan) -> None:
        self.cfg, self.plan = cfg, plan
        self.run_dir = run_dir = Path(cfg.out)
        if run_dir.exists() and not run_dir.is_dir():
            raise FileExistsError(f"--out {run_dir} is a file; choose a directory for the run")
        self.gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.start_step, self.start_episode = 0, 0
        kept = self._resume() if cfg.resume else self._start()
        rd.write_config(run_dir, cfg, asdict(plan.info))
        # a resumed run starts a fresh episode, with its own environment seed
        self.env = envs_mod.make(cfg.env, seed=cfg.seed + 7919 * self.start_episode)
        self.returns: list[tuple[int, float]] = [(int(r[0]), float(r[2])) for r in kept]
        self.recent: deque[float] = deque((r for _, r in self.returns[-20:]), maxlen=20)
        steps = cfg.steps
        self.windows = {"first_msre": (0, steps // 10), "msre": (steps - steps // 10, steps)}
        # v, C and first of each call in the MSRE windows (array("f"): 12 bytes a call)
        self.logs = {k: tuple(array("f") for _ in range(3)) for k in self.windows}
        self.obs, _ = self.env.reset()
        self.reward, self.first, self.terminal, self.episode_over = 0.0, 1.0, 0.0, False
        self.ep_return, self.ep_len, self.episode = 0.0, 0, self.start_episode
        self.step = self.start_step
        self.bad_updates = self.skipped_checkpoints = 0
        self.finished = False

    def _resume(self) -> list[list[str]]:
        """Load the checkpoint and counters of the run in `out`; the metrics rows it keeps."""
        cfg, run_dir = self.cfg, self.run_dir
        run, self.state = load_run(run_dir)
        if run.agent != self.plan.agent:
            raise ValueError(f"{run_dir} holds a different agent ({run.agent}); cannot resume")
        progress_meta = rd.read_progress(run_dir)
        self.start_step = int(progress_meta.get("step", 0))
        self.start_episode = int(progress_meta.get("episode", 0))
        if "noise_rng" in progress_meta:
            rng_bytes = bytes.fromhex(progress_meta["noise_rng"])
            self.gen.set_state(torch.tensor(list(rng_bytes), dtype=torch.uint8))
        if self.start_step >= cfg.steps:
            raise ValueError(
                f"{run_dir} already reached step {self.start_step}; pass a larger --steps"
            )
        # metrics rows after the checkpoint belong to the lost part of the run: drop them
        metrics = run_dir / rd.METRICS
        rows = list(csv.reader(io.StringIO(metrics.read_text()))) if metrics.exists() else []
        kept = [r for r in rows[1:] if r and int(r[0]) <= self.start_step]
        text = io.StringIO()
        csv.writer(text).writerows([METRICS_HEADER, *kept])
        atomic_write_bytes(metrics, text.getvalue().encode())
        self.writer = rd.MetricsLog(
            open(metrics, "a", newline=""), run_dir, cfg.tensorboard, resume_step=self.start_step
        )
        return kept

    def _start(self) -> list[list[str]]:
        cfg, run_dir = self.cfg, self.run_dir
        if run_dir.exists() and any(run_dir.iterdir()) and not cfg.overwrite:
            raise FileExistsError(
                f"{run_dir} already holds files; choose another --out, pass --overwrite, "
                "or continue it with --resume"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        self.state = self.plan.learner.initial_state(self.plan.agent, cfg.learner, cfg.seed)
        metrics_file = open(run_dir / rd.METRICS, "w", newline="")
        csv.writer(metrics_file).writerow(METRICS_HEADER)
        self.writer = rd.MetricsLog(metrics_file, run_dir, cfg.tensorboard)
        return []

    def values(self) -> dict:
        """The next learn-step inputs by source (obs, reward, first, terminal; noise drawn)."""
        return {
            "obs": self.obs,
            "reward": self.reward,
            "first": self.first,
            "terminal": self.terminal,
            "noise": sample_noise(self.plan.noise_spec, self.gen),
        }

    def consume(self, out: dict[str, np.ndarray], state_fn, t0: float, log) -> None:
        """The learn step's outputs (as arrays) for the inputs last given: log, step the
        environment (or reset it after an episode's final tick) and checkpoint on schedule.
        `state_fn()` is this agent's state after the step."""
        plan = self.plan
        if not all(math.isfinite(float(out[k].reshape(-1)[0])) for k in plan.checked):
            self.bad_updates += 1
        for key, (lo, hi) in self.windows.items():
            if plan.predicting and lo <= self.step < hi:
                for column, x in zip(
                    self.logs[key], (out["prediction"][0], self.reward, self.first)
                ):
                    column.append(float(x))
        if self.episode_over:  # the tick on the final observation: learn, then reset
            self._end_episode(t0)
            return
        if plan.learner.behaviour == "random":
            action = random_action(plan.spec, self.gen)
        else:
            action = out[plan.action_name]
        self.obs, r, term, trunc, _ = self.env.step(env_action(plan.spec, action))
        self.reward, self.first, self.terminal = float(r), 0.0, float(term)
        self.episode_over = term or trunc
        self.ep_return += self.reward
        self.ep_len += 1
        self.step += 1
        if self.step % self.cfg.checkpoint_every == 0:
            self.checkpoint(state_fn(), log)
            self.writer.flush()

    def _end_episode(self, t0: float) -> None:
        self.episode += 1
        self.recent.append(self.ep_return)
        self.returns.append((self.step, self.ep_return))
        elapsed = time.perf_counter() - t0
        self.writer.writerow(
            [
                self.step,
                self.episode,
                f"{self.ep_return:.6g}",
                self.ep_len,
                f"{(self.step - self.start_step) / elapsed:.1f}",
                f"{elapsed:.2f}",
            ]
        )
        self.obs, _ = self.env.reset()
        self.reward, self.first, self.terminal, self.episode_over = 0.0, 1.0, 0.0, False
        self.ep_return, self.ep_len = 0.0, 0

    @property
    def done(self) -> bool:
        return self.step >= self.cfg.steps

    def recent_return(self) -> str:
        return f"{sum(self.recent) / len(self.recent):.1f}" if self.recent else "-"

    def checkpoint(self, state: dict[str, torch.Tensor], log) -> None:
        """Save `state` and the counters; a state with a non-finite value is not saved."""
        progress = {"step": self.step, "episode": self.episode}
        try:
            rd.save_checkpoint(self.run_dir, state, progress, self.gen)
        except rd.RunDirError as e:
            self.skipped_checkpoints += 1
            log(f"WARNING: {e}")

    def close(self) -> None:
        self.writer.close()
        self.env.close()

    def finish(self, state: dict[str, torch.Tensor], elapsed: float, flops, log, extra) -> dict:
        """Close the run: last checkpoint, summary.json and the learning curve."""
        self.finished = True
        self.close()
        self.checkpoint(state, log)
        cfg, returns = self.cfg, self.returns
        tail = [r for s, r in returns if s >= 0.9 * cfg.steps] or [r for _, r in returns[-1:]]
        head = [r for _, r in returns[: max(1, len(returns) // 10)]]
        summary = {
            "env": cfg.env,
            "cell": cfg.net.cell,
            "algo": cfg.algo,
            "steps": cfg.steps,
            "episodes": self.episode,
            "final_return": float(np.mean(tail)) if tail else None,
            "first_return": float(np.mean(head)) if returns else None,
            "steps_per_second": (cfg.steps - self.start_step) / elapsed,
            "recurrent_params": self.plan.agent.cell.recurrent_param_count(),
            "flops_per_step": flops(state),
            "non_finite_updates": self.bad_updates,
            "skipped_checkpoints": self.skipped_checkpoints,
            "wall_time_s": elapsed,
            "gradient": "rtrl",  # this loop needs a cell with exact RTRL (checked in _Plan)
            **extra,
        }
        if self.plan.predicting:
            gamma = cfg.learner.gamma
            summary.update({k: msre(*self.logs[k], gamma) for k in self.windows})
        atomic_write_json(self.run_dir / rd.SUMMARY, summary)
        if returns:
            write_learning_curve(
                self.run_dir / "learning_curve.png",
                returns,
                title=f"{cfg.env} {cfg.net.cell} {cfg.algo} seed {cfg.seed}",
            )
        return summary


class _Inputs:
    """The learn-step inputs of K agents in buffers allocated once (leading axis K), written
    row by row in place each tick: a few numpy writes per agent instead of new tensors."""

    def __init__(self, plan: _Plan, k: int, batched: bool) -> None:
        self.rows: dict[str, np.ndarray] = {}  # source -> (K, *shape) view of its tensor
        self.tensors: dict[str, torch.Tensor] = {}  # the step's inputs by name
        for s in plan.learner.step_inputs(plan.agent):
            buf = torch.zeros((k, *s.shape))
            self.rows[s.source] = buf.numpy()  # shares the tensor's memory
            self.tensors[s.name] = buf if batched else buf[0]

    def fill(self, i: int, run: _Run) -> None:
        """Row i from agent i's next inputs (an idle agent's: a zero first tick)."""
        values = run.plan.idle if run.finished else run.values()
        for source, rows in self.rows.items():
            v = values[source]
            rows[i] = 0.0 if v is None else v.numpy() if isinstance(v, torch.Tensor) else v


def _stack(dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([d[k] for d in dicts]) for k in dicts[0]}


def _row(d: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    return {k: v[i] for k, v in d.items()}


class _Bar:
    """The rich progress bar: one line per agent (steps, steps/s, recent return); or none."""

    def __init__(self, runs: list[_Run], enabled: bool) -> None:
        self.bar, self.tasks = None, []
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[sps]:>7.0f} steps/s  recent return {task.fields[ret]}"),
            TimeRemainingColumn(),
        )
        for r in runs:
            cfg = r.cfg
            name = f"train {cfg.env} {cfg.net.cell} {cfg.algo}"
            if len(runs) > 1:
                name += f" seed {cfg.seed}"
            self.tasks.append(
                self.bar.add_task(name, total=cfg.steps, completed=r.step, sps=0.0, ret="-")
            )
        self.bar.start()

    @property
    def log(self):
        return self.bar.console.print if self.bar is not None else print

    def update(self, i: int, r: _Run, t0: float) -> None:
        if self.bar is not None and (r.step % 200 == 0 or r.done):
            sps = (r.step - r.start_step) / (time.perf_counter() - t0)
            self.bar.update(self.tasks[i], completed=r.step, sps=sps, ret=r.recent_return())

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _open_runs(cfgs: list[TrainConfig], plan: _Plan) -> list[_Run]:
    runs: list[_Run] = []
    try:
        for c in cfgs:
            runs.append(_Run(c, plan))
    except BaseException:
        for r in runs:
            r.close()
        raise
    return runs


def _train_runs(cfgs: list[TrainConfig], learner: Learner, progress: bool) -> list[dict]:
    """The per-tick loop for one agent (K = 1: the learn step as it is) or a batch of K
    (the learn step vmapped over the stacked states and inputs of the K agents)."""
    torch.set_num_threads(1)
    cfg = cfgs[0]
    plan = _Plan.of(cfg, learner)
    runs = _open_runs(cfgs, plan)
    batched = len(runs) > 1
    # the loop carries the learner's packed form (ac: flat parameter and trace buffers), so a
    # step does not pack and unpack them; checkpoints hold the tensors by name, as always
    layout = P.held(learner.packing(plan.agent), runs[0].state) if learner.packing else ()
    packed = [P.pack(r.state, layout) for r in runs]
    state = _stack(packed) if batched else packed[0]

    def state_of(i: int) -> dict[str, torch.Tensor]:  # agent i's state by name, a copy
        mine = _row(state, i) if batched else state
        return {k: v.clone() for k, v in P.unpack(mine, layout).items()}

    flops: list[int] = []  # the same for every agent: counted once

    def count(s: dict[str, torch.Tensor]) -> int:
        if not flops:
            flops.append(learn_step_flops(learner, cfg.learner, plan.agent, s))
        return flops[0]

    extra = {"batch_size": len(runs)} if batched else {}
    summaries: list[dict | None] = [None] * len(runs)
    inputs = _Inputs(plan, len(runs), batched)
    bar = _Bar(runs, progress)
    log = bar.log
    t0 = time.perf_counter()
    try:
        with torch.inference_mode(), _signals_interrupt():
            # compiling can take tens of seconds: an interrupt here also saves the checkpoint
            step_fn = make_step_fn(
                cfg, plan.agent, state, log=log, batch=len(runs) if batched else None
            )
            while not all(r.finished for r in runs):
                for i, r in enumerate(runs):
                    inputs.fill(i, r)
                new, out = step_fn(state, inputs.tensors)
                out = {k: v.numpy() for k, v in out.items()}
                state.update(new)
                for i, r in enumerate(runs):
                    if r.finished:
                        continue
                    r.consume(_row(out, i) if batched else out, partial(state_of, i), t0, log)
                    bar.update(i, r, t0)
                    if r.done:
                        elapsed = time.perf_counter() - t0
                        summaries[i] = r.finish(state_of(i), elapsed, count, log, extra)
    except KeyboardInterrupt:
        # keep everything learned so far; `rtu-edge train --out RUN --resume` continues
        for i, r in enumerate(runs):
            if not r.finished:
                r.checkpoint(state_of(i), log)
        raise
    finally:
        bar.stop()
        for r in runs:
            if not r.finished:
                r.close()
    return summaries
