"""The interface every `--cell` implements.

A cell is one file of pure tensor math (``<name>_math.py``: functions of tensors, no state on
``self``, exportable to ONNX) plus a thin module over it. The module holds the parameters for
the autograd path and gives the agent, the learners and the exporter one API for every cell:

- ``initial_state(B)``, ``forward(xs, state, dones=None)``: the autograd path over a sequence
  (T-BPTT differentiates through it).
- ``step_forward(x, state, done=None, params=None)``: one step, no traces (the act graph).
- RTRL cells (``online = True``) also: ``initial_traces(B)``,
  ``rtrl_step(x, state, traces, done=None, params=None)``,
  ``rtrl_grads(dL_dy, state, traces, params=None)`` and
  ``input_grad(dL_dy, state, traces, params=None)`` (one-step gradient w.r.t. x).

``params`` is a dict keyed by the names in `param_names` (the module's own parameters when
None): the learn step passes tensors from its flat state, which is how one function is both
trained with in torch and exported. State and traces are NamedTuples; the agent stores their
fields as ``carry.<field>`` and ``trace.<field>``.

``done[b] = 1`` means ``x[b]`` is the first input of a new episode: state and traces of row b
are multiplied by ``1 - done`` first (a mask, never control flow).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]


class Cell(nn.Module):
    """Base class: sizes, the parameter dict, and errors for what a cell does not support."""

    online: bool = True  # exact RTRL: can learn on the robot
    State: type[NamedTuple]
    Traces: type[NamedTuple]

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)

    @property
    def output_size(self) -> int:
        raise NotImplementedError

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.named_parameters())

    def param_dict(self) -> Params:
        """Detached copies of the parameters, keyed by `param_names`."""
        return {k: v.detach().clone().contiguous() for k, v in self.named_parameters()}

    def _p(self, params: Params | None) -> Params:
        return dict(self.named_parameters()) if params is None else params

    def _dtype_device(self) -> tuple[torch.dtype, torch.device]:
        p = next(self.parameters())
        return p.dtype, p.device

    def recurrent_param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # RTRL-only methods: a T-BPTT cell says so clearly.
    def initial_traces(self, batch_size: int):
        raise NotImplementedError(self._offline_msg())

    def rtrl_step(self, x, state, traces, done=None, params=None):
        raise NotImplementedError(self._offline_msg())

    def rtrl_grads(self, dL_dy, state, traces, params=None):
        raise NotImplementedError(self._offline_msg())

    def input_grad(self, dL_dy, state, traces, params=None):
        raise NotImplementedError(self._offline_msg())

    def _offline_msg(self) -> str:
        return (
            f"{type(self).__name__} has no exact RTRL; it is trained by truncated BPTT "
            "(--truncation T) and cannot learn on the robot"
        )


def state_to_dict(prefix: str, t: NamedTuple) -> dict[str, Tensor]:
    """A NamedTuple of tensors as bundle names ``<prefix>.<field>``."""
    return {f"{prefix}.{k}": v for k, v in t._asdict().items()}


def state_from_dict(cls: type[NamedTuple], prefix: str, d: dict[str, Tensor]):
    """The NamedTuple ``cls`` rebuilt from the ``<prefix>.<field>`` entries of ``d``."""
    return cls(*(d[f"{prefix}.{k}"] for k in cls._fields))
