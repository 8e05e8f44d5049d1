"""Run configuration: the one source of every default, and `--set key=value` overrides.

Torch-free, so the CLI can read defaults for `--help` without importing torch.

- `NetConfig`: the network a user chooses (sizes, cell, cell options, init, LayerNorm).
- `TrainConfig`: one training run, holding a `NetConfig` and the learner's own config
  dataclass (`rtu_edge.learners.LEARNERS[algo].Config`). Saved as config.json.
- `apply_overrides`: ``learner.lam=0.9``, ``cell.activation=tanh``, ``net.head_size=64``,
  ``steps=1000``: each value is parsed as the type of the field it replaces.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from typing import Any

from rtu_edge.envs.registry import DEFAULT_ENV  # torch-free


@dataclass
class NetConfig:
    """The network: encoder -> cell -> heads. Saved with every run and bundle."""

    cell: str = "rtu"  # key of rtu_edge.cells.CELLS (`rtu-edge train --cell`)
    # Options of the cell's factory, e.g. {"activation": "tanh"}; the factory's keyword
    # defaults fill in the rest (rtu_edge/cells). Set with --set cell.<option>=<value>.
    cell_options: dict = field(default_factory=dict)
    hidden_size: int = 32  # cell units n (the RTU outputs 2n features)
    encoder_size: int = 32  # width of the tanh encoder below the cell (the paper uses 64)
    head_size: int = 32  # width of the single hidden layer of each head (the paper uses 64)
    sparsity: float = 0.9  # fraction of zeroed input weights per unit (sparse init, Elsayed 2024)
    layer_norm: bool = False  # LayerNorm (no affine) before each tanh of the encoder and heads


@dataclass
class TrainConfig:
    """One training run. Saved as config.json in the run directory."""

    out: str  # run directory (created; an existing non-empty one needs overwrite=True)
    env: str = DEFAULT_ENV  # environment id, `rtu-edge envs` lists them
    algo: str = "ac"  # learner, a key of rtu_edge.learners.LEARNERS
    steps: int = 50_000  # environment steps
    seed: int = 0  # seeds the parameters, the exploration noise and the environment
    checkpoint_every: int = 20_000  # steps between checkpoints, so a crash loses little
    overwrite: bool = False  # allow writing into a non-empty run directory
    resume: bool = False  # continue the run in `out` from its last checkpoint
    # torch.compile the learn step: several times faster per step, but compiling takes tens of
    # seconds (needs a C++ compiler), so "auto" compiles only when steps >= 100k (steps times
    # the seeds of a batched run, `train --seeds`); if compilation fails, training runs
    # eagerly. "auto" | "yes" | "no".
    compile: str = "auto"
    # also log the metrics.csv rows as TensorBoard scalars in RUN/tb/ (needs tensorboard)
    tensorboard: bool = False
    net: NetConfig = field(default_factory=NetConfig)
    learner: Any = None  # the learner's Config dataclass; None: its defaults

    @property
    def cell(self) -> str:
        return self.net.cell


class OverrideError(ValueError):
    """A `--set` entry that names no field or whose value does not parse."""


def parse_value(text: str, like: object, where: str) -> object:
    """`text` as the type of `like` (bool, int, float, str, None or JSON for the rest)."""
    if isinstance(like, bool):
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise OverrideError(f"{where}: expected true or false, got {text!r}")
    if isinstance(like, int):
        try:
            return int(text)
        except ValueError:
            raise OverrideError(f"{where}: expected an integer, got {text!r}") from None
    if isinstance(like, float):
        try:
            return float(text)
        except ValueError:
            raise OverrideError(f"{where}: expected a number, got {text!r}") from None
    if isinstance(like, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_field(obj: object, name: str, text: str, where: str) -> None:
    names = [f.name for f in dataclasses.fields(obj)]
    if name not in names:
        raise OverrideError(f"{where}: no such field; choose one of {names}")
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current) or isinstance(current, dict):
        raise OverrideError(f"{where} is a group; set one of its fields ({where}.<field>)")
    setattr(obj, name, parse_value(text, current, where))


def apply_overrides(cfg: TrainConfig, sets: list[str], cell_factory=None) -> TrainConfig:
    """Apply ``key=value`` entries to `cfg` in place (and return it).

    ``learner.<f>`` sets a field of the learner config, ``net.<f>`` of the NetConfig,
    ``cell.<option>`` a keyword of the cell factory (checked against its signature when
    `cell_factory` is given), anything else a field of TrainConfig.
    """
    for entry in sets:
        if "=" not in entry:
            raise OverrideError(f"--set {entry!r}: expected key=value, e.g. learner.lam=0.9")
        key, text = entry.split("=", 1)
        key = key.strip()
        group, _, name = key.partition(".")
        if group == "learner" and name:
            if cfg.learner is None:
                raise OverrideError(f"--set {key}: no learner config to set")
            _set_field(cfg.learner, name, text, key)
        elif group == "net" and name:
            _set_field(cfg.net, name, text, key)
        elif group == "cell" and name:
            like = None
            if cell_factory is not None:
                options = cell_options(cell_factory)
                if name not in options:
                    raise OverrideError(
                        f"--set {key}: cell {cfg.net.cell!r} has no option {name!r}; "
                        f"its options are {sorted(options)}"
                    )
                like = options[name]
            cfg.net.cell_options[name] = parse_value(text, like, key)
        else:
            _set_field(cfg, key, text, key)
    return cfg


def cell_options(factory) -> dict[str, object]:
    """The keyword options of a cell factory with their defaults (the one source)."""
    if hasattr(factory, "options"):  # a math cell: the math module's own defaults
        return dict(factory.options)
    out = {}
    for p in inspect.signature(factory).parameters.values():
        if p.kind is p.KEYWORD_ONLY or (
            p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty
        ):
            if p.name != "generator":
                out[p.name] = p.default
    return out
