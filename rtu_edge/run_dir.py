"""Run directories: what `rtu-edge train` writes and `rtu-edge export` reads.

RUN_DIR/
  config.json             {"train": TrainConfig (net and learner inside), "env_info": EnvInfo}
  checkpoint.safetensors  every carried tensor of the learn step, by bundle name; step counters
                          and the noise RNG as metadata. Never holds a non-finite value.
  metrics.csv             one row per finished episode (METRICS_HEADER)
  tb/                     with `train --tensorboard`: the same rows as TensorBoard scalars
                          (one tag per column, the step as the global step; `MetricsLog`)
  summary.json            final_return, steps_per_second, recurrent_params, flops_per_step, ...
  learning_curve.png      episode returns over steps

`rtu-edge train --out DIR --seeds 0,1,2` (one batched process) writes one such run directory
per seed, DIR/seed0, DIR/seed1, DIR/seed2 (`seed_dir`), each exactly what `--seed N --out
DIR/seedN` writes, plus "batch_size" in its summary.json.

Every error names the file and says what to do.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from firmware_bridge.atomic import atomic_write_bytes, atomic_write_json
from rtu_edge.agent import AgentConfig
from rtu_edge.config import NetConfig, TrainConfig
from rtu_edge.learners import Learner, get_learner

CONFIG = "config.json"
CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
METRICS_HEADER = [
    "step",
    "episode",
    "episode_return",
    "episode_length",
    "steps_per_second",
    "wall_time_s",
]
MAX_CONFIG_BYTES = 1 << 20
TENSORBOARD = "tb"


def seed_dir(out: str | Path, seed: int) -> Path:
    """The run directory of one seed of a batched run (`rtu-edge train --seeds`)."""
    return Path(out) / f"seed{seed}"


class RunDirError(ValueError):
    """A run directory that cannot be read or written; the message names the file."""


@dataclass
class Run:
    """A run directory read back: its config, the agent and learner it describes."""

    path: Path
    train: TrainConfig
    env_info: dict
    agent: AgentConfig
    learner: Learner


def agent_config(net: NetConfig, env_info: dict) -> AgentConfig:
    return AgentConfig(
        obs_size=env_info["obs_size"],
        action_kind=env_info["action_kind"],
        action_dims=env_info["action_dims"],
        num_actions=env_info["num_actions"],
        net=net,
    )


def write_config(run_dir: Path, cfg: TrainConfig, env_info: dict) -> None:
    atomic_write_json(Path(run_dir) / CONFIG, {"train": asdict(cfg), "env_info": env_info})


def train_config_from_dict(d: dict, where: str) -> TrainConfig:
    """A TrainConfig from config.json's "train" object; unknown or bad fields name the file."""
    try:
        d = dict(d)
        net = NetConfig(**d.pop("net", {}))
        learner = get_learner(d.get("algo", "ac"))
        learner_cfg = learner.Config(**(d.pop("learner", None) or {}))
        cfg = TrainConfig(**d, net=net, learner=learner_cfg)
    except (TypeError, ValueError) as e:
        raise RunDirError(
            f"{where} does not describe a run of this rtu-edge version ({e}); "
            "train again with `rtu-edge train`"
        ) from None
    return cfg


def read_config(run_dir: str | Path) -> tuple[TrainConfig, dict]:
    """(TrainConfig, env_info) of a run directory."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise RunDirError(
            f"{path} is missing: is {run_dir} a directory written by `rtu-edge train`?"
        )
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise RunDirError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes: not a config.json")
    try:
        obj = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunDirError(f"{path} is not valid JSON ({e}); the run directory is damaged") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("train"), dict):
        raise RunDirError(f"{path} has no 'train' object: not a config.json of `rtu-edge train`")
    info = obj.get("env_info")
    if not isinstance(info, dict):
        raise RunDirError(f"{path} has no 'env_info' object; train again with `rtu-edge train`")
    return train_config_from_dict(obj["train"], str(path)), info


def load_run(run_dir: str | Path) -> tuple[Run, dict[str, torch.Tensor]]:
    """Read a run directory back: the Run and its checkpointed state tensors."""
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    cfg, info = read_config(run_dir)
    ckpt = run_dir / CHECKPOINT
    if not ckpt.is_file():
        raise RunDirError(f"{ckpt} is missing: the run in {run_dir} never saved a checkpoint")
    try:
        state = load_file(str(ckpt))
    except Exception as e:  # safetensors raises its own error types on a damaged file
        raise RunDirError(f"{ckpt} is not a readable safetensors file ({e})") from None
    run = Run(run_dir, cfg, info, agent_config(cfg.net, info), get_learner(cfg.algo))
    return run, state


def non_finite(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors holding NaN or Inf."""
    return [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def save_checkpoint(
    run_dir: Path,
    state: dict[str, torch.Tensor],
    progress: dict[str, int] | None = None,
    rng: torch.Generator | None = None,
) -> None:
    """All carried tensors, plus step counters and the noise RNG as metadata, atomically.

    Refuses (RunDirError, the previous checkpoint untouched) when any tensor is not finite.
    """
    from safetensors.torch import save

    bad = non_finite(state)
    if bad:
        raise RunDirError(
            f"not checkpointing {run_dir / CHECKPOINT}: non-finite values in {bad[:5]}; "
            "the previous checkpoint is kept"
        )
    meta = {k: str(v) for k, v in (progress or {}).items()}
    if rng is not None:
        meta["noise_rng"] = bytes(rng.get_state().tolist()).hex()
    data = save({k: v.contiguous() for k, v in state.items()}, metadata=meta)
    atomic_write_bytes(Path(run_dir) / CHECKPOINT, data)


def read_progress(run_dir: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(Path(run_dir) / CHECKPOINT), framework="pt") as f:
        return dict(f.metadata() or {})


def resume_config(run_dir: str | Path, steps: int | None = None) -> TrainConfig:
    """The config of an interrupted run, to continue it (optionally to a new total of steps)."""
    cfg, _ = read_config(run_dir)
    cfg = dataclasses.replace(cfg, resume=True, overwrite=False)
    if steps is not None:
        cfg.steps = steps
    return cfg


def tensorboard_writer_class():
    """torch's SummaryWriter; a ValueError naming the package when tensorboard is missing."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard needs it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install tensorboard "
            "(or pip install 'rtu-edge[tensorboard]')"
        ) from None
    return SummaryWriter


class MetricsLog:
    """Writes metrics.csv rows (METRICS_HEADER) to `file`, and with `tensorboard` the same
    rows as scalars to RUN/tb/: one tag per column after `step`, which is the global step.
    A resumed run (`resume_step`) purges the TensorBoard events after its checkpoint, as its
    metrics.csv rows after it are dropped."""

    def __init__(self, file, run_dir: Path, tensorboard: bool = False, resume_step=None) -> None:
        self.file = file
        self.csv = csv.writer(file)
        self.tb = None
        if tensorboard:
            writer_class = tensorboard_writer_class()
            purge = None if resume_step is None else int(resume_step) + 1
            self.tb = writer_class(log_dir=str(Path(run_dir) / TENSORBOARD), purge_step=purge)

    def writerow(self, row: list) -> None:
        self.csv.writerow(row)
        if self.tb is not None:
            step = int(row[0])
            for name, value in zip(METRICS_HEADER[1:], row[1:]):
                self.tb.add_scalar(name, float(value), global_step=step)

    def flush(self) -> None:
        self.file.flush()
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
