"""The agent sizes `rtu-edge bench` measures, built as bundles, and their torch eager steps.

A size is a NetConfig, the environment's sizes and a learner (``ac`` unless it names
another), with that learner's initial state (no training: step time does not depend on the
values, except for subnormal ones, which the bench's cases produce). `build_size` writes a
run directory holding that state and exports it with `export_run` (what `rtu-edge export` does, without the parity check: the sizes have no
environment to replay; export's own tests check parity), so the bundle is exactly what a robot
would load. `torch_stepper` is the same learner's step in eager mode from the same state, one
thread, under ``torch.inference_mode`` (what `rtu-edge train` runs per tick).

`SIZES` is torch-free so the command line can check ``--sizes`` before importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from rtu_edge.config import NetConfig


@dataclass(frozen=True)
class Size:
    description: str
    obs_size: int
    action_kind: str  # "discrete" | "continuous"
    action_dims: int
    num_actions: int
    net: dict = field(default_factory=dict)  # NetConfig fields
    algo: str = "ac"  # the learner (rtu_edge.learners registry name)


SIZES: dict[str, Size] = {
    # for tests: exports in a few seconds, steps in tens of microseconds
    "tiny": Size(
        "obs 2, enc 4, n 4, head 4, discrete 2",
        obs_size=2,
        action_kind="discrete",
        action_dims=1,
        num_actions=2,
        net=dict(encoder_size=4, hidden_size=4, head_size=4),
    ),
    # the demo agent on classic/CartPole-P (NetConfig defaults)
    "demo": Size(
        "obs 2, enc 32, n 32, head 32, discrete 2",
        obs_size=2,
        action_kind="discrete",
        action_dims=1,
        num_actions=2,
        net=dict(encoder_size=32, hidden_size=32, head_size=32),
    ),
    # the paper's MuJoCo budget: 64-wide encoder, n = 192 (24,960 recurrent parameters)
    "paper": Size(
        "obs 17, enc 64, n 192, heads 64, continuous 6",
        obs_size=17,
        action_kind="continuous",
        action_dims=6,
        num_actions=0,
        net=dict(encoder_size=64, hidden_size=192, head_size=64),
    ),
}
# the demo agent's trunk and critic under the `td` learner (prediction, no actions): so a td
# graph change can be timed (`rtu-edge bench --sizes td-demo`) and checked for its values
# (benchmarks/same_values.py, bench_ab.sh with SIZES=td-demo) like ac's
SIZES["td-demo"] = replace(SIZES["demo"], description="td: obs 2, enc 32, n 32, head 32", algo="td")
DEFAULT_SIZES = ("demo", "paper")


def _env_info(size: Size) -> dict:
    if size.action_kind == "discrete":
        low, high, safe = (0.0,), (float(size.num_actions - 1),), (0.0,)
    else:
        low, high = (-1.0,) * size.action_dims, (1.0,) * size.action_dims
        safe = (0.0,) * size.action_dims
    return {
        "obs_size": size.obs_size,
        "action_kind": size.action_kind,
        "action_dims": size.action_dims,
        "num_actions": size.num_actions,
        "action_low": list(low),
        "action_high": list(high),
        "safe_action": list(safe),
    }


@dataclass
class BuiltSize:
    name: str
    size: Size
    bundle: Path
    cfg: object  # the learner's Config
    agent: object  # AgentConfig
    state: dict  # the initial state (torch tensors by name; the bundle holds it packed)

    def torch_stepper(self, graph: str):
        """A fresh eager step of `graph` ("learn" | "act") from the initial state."""
        return TorchStepper(self, graph)


class TorchStepper:
    """learn_step / act_step in eager mode on numpy inputs; `state()` as numpy."""

    def __init__(self, built: BuiltSize, graph: str):
        import torch

        from export.bundle import packing_of
        from rtu_edge import packing
        from rtu_edge.learners import get_learner

        learner = get_learner(built.size.algo)
        self._torch = torch
        self.cfg, self.agent = built.cfg, built.agent
        # the state packed as in the bundle: torch steps the same flat buffers as onnxruntime
        state = packing.pack(built.state, packing_of(learner, built.agent, built.state))
        if graph == "learn":
            names, self.fn = list(state), learner.learn_step
        else:
            names, self.fn = learner.act_state_names(built.agent, state), learner.act_step
        readable = packing.with_views(state, packing_of(learner, built.agent, built.state))
        self.state_t = {k: readable[k].clone() for k in names}
        if graph == "act" and learner.act_prepare is not None:  # once, as the robot does
            with torch.inference_mode():
                self.state_t.update(learner.act_prepare(self.cfg, self.agent, readable))

    def __call__(self, inputs: Mapping) -> None:
        torch = self._torch
        with torch.inference_mode():
            x = {k: torch.from_numpy(v) for k, v in inputs.items()}
            new, _ = self.fn(self.cfg, self.agent, self.state_t, x)
            self.state_t.update(new)

    def state(self) -> dict:
        return {k: v.numpy() for k, v in self.state_t.items()}


def build_size(name: str, directory: str | Path, seed: int = 0) -> BuiltSize:
    """Write size `name` as a run directory and its bundle under `directory`."""
    if name not in SIZES:
        raise ValueError(f"unknown size {name!r}; choose from {', '.join(SIZES)}")
    return build(name, SIZES[name], directory, seed)


def build(name: str, size: Size, directory: str | Path, seed: int = 0) -> BuiltSize:
    """Write `size` as ``NAME-run`` (its initial state) and ``NAME-bundle`` under `directory`
    (any Size: benchmarks/bench_learn_step.py varies the cell and its hidden size)."""
    import torch

    from export.bundle import ExportConfig, export_run
    from rtu_edge import run_dir as rd
    from rtu_edge.agent import AgentConfig
    from rtu_edge.config import TrainConfig
    from rtu_edge.learners import get_learner

    torch.set_num_threads(1)
    learner = get_learner(size.algo)
    net = NetConfig(**size.net)
    info = _env_info(size)
    agent = rd.agent_config(net, info)
    assert isinstance(agent, AgentConfig)
    cfg = learner.Config()
    state = learner.initial_state(agent, cfg, seed)
    root = Path(directory)
    run = root / f"{name}-run"
    run.mkdir(parents=True, exist_ok=True)
    train = TrainConfig(out=str(run), env=f"bench/{name}", algo=size.algo, seed=seed, net=net)
    train.learner = cfg
    rd.write_config(run, train, info)
    rd.save_checkpoint(run, state)
    bundle = root / f"{name}-bundle"
    export_run(
        ExportConfig(run_dir=str(run), out=str(bundle), check_parity=False, overwrite=True),
        log=lambda _msg: None,
    )
    return BuiltSize(name, size, bundle, cfg, agent, state)
