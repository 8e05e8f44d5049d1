"""The interface every `--algo` implements: what a learner declares, and its two step functions.

A learner is one file that reads top to bottom (see `ac.py`) and ends with a `Learner` record.
Export builds `learn.onnx` and `act.onnx` from the declarations alone, the training loop feeds
the environment through them, and the robot loop fills the declared inputs by their `source`
and uses the outputs by their `use` (firmware_bridge.contract). No caller names a tensor.

Step functions are pure: ``(cfg, agent, state, inputs) -> (new_state, outputs)`` with
``state`` the carried tensors by bundle name (``params.*``, ``carry.*``, ...), ``inputs`` and
``outputs`` keyed by the declared names. ``learn_step`` returns every carried tensor;
``act_step`` returns only the ``carry.*`` tensors it reads (the cell state); with an
``act_prepare`` it also reads the ``prep.*`` constants that one computes from the state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from firmware_bridge.contract import NoiseSpec, StepInput, StepOutput

BEHAVIOURS = ("own", "random")  # values of Learner.behaviour


@dataclass(frozen=True)
class Learner:
    name: str  # the `--algo` name
    description: str  # one line, for `rtu-edge train --help` and docs
    Config: type  # dataclass of hyperparameters, every field commented
    heads: tuple[str, ...]  # the agent heads it uses ("critic", "actor")
    initial_state: Callable  # (agent, cfg, seed) -> state: every carried tensor, by name
    learn_step: Callable  # (cfg, agent, state, inputs) -> (new state, outputs)
    act_step: Callable  # (cfg, agent, state, inputs) -> (new carry.* state, outputs)
    step_inputs: Callable[..., tuple[StepInput, ...]]  # (agent) -> the learn step's inputs
    learn_outputs: Callable[..., tuple[StepOutput, ...]]  # (agent) -> the learn step's outputs
    act_inputs: Callable[..., tuple[StepInput, ...]]  # (agent) -> the act step's inputs
    act_outputs: Callable[..., tuple[StepOutput, ...]]  # (agent) -> the act step's outputs
    act_state_names: Callable[..., list[str]]  # (agent, state) -> the tensors act reads
    noise: Callable[..., NoiseSpec | None]  # (agent) -> exploration noise of the learn step
    streaming: bool = True  # learns one tick at a time, so it can keep learning on the robot
    # Who picks the actions when training on a control environment: "own" (the learn step's
    # action output) or "random" (uniformly random actions: a prediction learner's behaviour).
    behaviour: str = "own"
    # A learner with its own training loop (cfg: TrainConfig, progress) -> summary, which
    # rtu_edge.train.train calls instead of the per-tick loop (ppo: rollouts and epochs); it
    # returns None to let the per-tick loop run after all (td with RTRL; its own loop: T-BPTT).
    train: Callable | None = None
    # A non-streaming learner's export: (cfg, agent, state) -> (streaming algo, its config, its
    # state); export/bundle.py then exports that learner's graphs (ppo -> ac).
    to_streaming: Callable | None = None
    # (agent) -> tuple of firmware_bridge.contract.PackedBuffer: state tensors that the bundle
    # carries packed into flat buffers (ac: parameters and eligibility traces; td: those and
    # Adam's moments). Its step functions then take the state packed or by tensor; export and
    # the training loop pack the buffers a state holds (`packing.held`: td under SGD has no
    # moments). The exported learn step is also fed the tensors inside its buffers by name, as
    # views (bundle format 5): read the parameters with `packing.read`, which uses them.
    packing: Callable | None = None
    # (cfg, agent, state) -> the act step's constants, ``prep.*`` tensors (contract.PREP_PREFIX):
    # what it derives from the state alone (ac: the observation std, the cell's act_constants).
    # Export writes them as act_prepare.onnx, which the robot runs once per loaded state;
    # act_step reads them from its state when they are there and derives them when not.
    act_prepare: Callable | None = None

    def step_function(self, graph: str) -> Callable:
        """The step of bundle graph ``graph`` as ``(cfg, agent, state, inputs) -> (new state,
        outputs)``: ``learn``, ``act``, or ``act_prepare`` (no inputs and no new state; its
        outputs are the ``prep.*`` constants)."""
        if graph == "learn":
            return self.learn_step
        if graph == "act":
            return self.act_step
        if graph == "act_prepare" and self.act_prepare is not None:
            prepare = self.act_prepare
            return lambda cfg, agent, state, _inputs: ({}, prepare(cfg, agent, state))
        raise ValueError(f"learner {self.name!r} has no {graph!r} graph")

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(
                f"learner {self.name!r}: behaviour must be one of {BEHAVIOURS}, "
                f"got {self.behaviour!r}"
            )


MODES = ("auto", "rtrl", "tbptt")


def uses_rtrl(mode: str, cell, cell_name: str) -> bool:
    """A learner's gradient for this cell: RTRL traces (True) or truncated BPTT (False).

    ``mode`` "auto" picks RTRL when the cell has it; "rtrl" on a cell without it is an error
    that names the cells with RTRL.
    """
    if mode not in MODES:
        raise ValueError(f"learner.mode must be one of {MODES}, got {mode!r}")
    if mode == "tbptt":
        return False
    if mode == "rtrl" and not cell.online:
        from rtu_edge.cells import rtrl_cells

        raise ValueError(
            f"cell {cell_name!r} has no exact RTRL; use --set learner.mode=tbptt "
            f"(or auto), or one of the RTRL cells {rtrl_cells()}"
        )
    return bool(cell.online)
