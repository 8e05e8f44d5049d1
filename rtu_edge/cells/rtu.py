"""The RTU as a torch module: parameters on the module, state and traces passed explicitly.

Two faces over the same math (`rtu_math`):
- `forward(xs, state)`: unrolled sequence through autograd (BPTT / truncated BPTT).
- `rtrl_step` + `rtrl_grads`: one step carrying exact RTRL traces, and the parameter
  gradient from those traces; no autograd graph is built through time.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rtu_edge.cells import rtu_math
from rtu_edge.cells.rtu_math import RTUParams, RTUState, Traces


def recurrent_param_count(input_size: int, hidden_size: int) -> int:
    """Learnable parameters of one RTU layer: w1, w2 (d*n each) plus nu_log, theta_log (n each)."""
    return 2 * input_size * hidden_size + 2 * hidden_size


class RTU(nn.Module):
    """Recurrent Trace Unit layer: input (B, d) -> output (B, 2n) = [real parts, imag parts].

    nonlinear=False: linear recurrence, y = f(h) (the lean complex RTRL traces apply).
    nonlinear=True: c = f(a) feeds back (per-component real traces).
    authors_theta_grad=True makes `rtrl_grads` reproduce the authors' theta_log gradient,
    which lacks the chain-rule factor theta; the default is the exact gradient.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinear: bool = False,
        activation: str = "relu",
        authors_theta_grad: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        rtu_math._check_activation(activation)
        p = rtu_math.init_params(input_size, hidden_size, generator=generator)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.nonlinear = bool(nonlinear)
        self.activation = activation
        self.authors_theta_grad = bool(authors_theta_grad)
        self.nu_log = nn.Parameter(p.nu_log)  # (n,)
        self.theta_log = nn.Parameter(p.theta_log)  # (n,)
        self.w1 = nn.Parameter(p.w1)  # (d, n)
        self.w2 = nn.Parameter(p.w2)  # (d, n)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"nonlinear={self.nonlinear}, activation={self.activation!r}"
        )

    @property
    def output_size(self) -> int:
        return 2 * self.hidden_size

    def params(self) -> RTUParams:
        """The module's parameters as the `RTUParams` tuple the math functions take."""
        return RTUParams(self.nu_log, self.theta_log, self.w1, self.w2)

    def initial_state(self, batch_size: int) -> RTUState:
        """Zero state (B, n), on the parameters' dtype and device."""
        s = rtu_math.initial_state(self.hidden_size, batch_size, dtype=self.w1.dtype)
        return RTUState(*(t.to(self.w1.device) for t in s))

    def initial_traces(self, batch_size: int) -> Traces:
        """Zero RTRL traces for this cell kind, on the parameters' dtype and device."""
        tr = rtu_math.initial_traces(
            self.input_size, self.hidden_size, batch_size, self.nonlinear, dtype=self.w1.dtype
        )
        return type(tr)(*(t.to(self.w1.device) for t in tr))

    def forward(
        self, xs: Tensor, state: RTUState, dones: Tensor | None = None
    ) -> tuple[Tensor, RTUState]:
        """xs (T, B, d), dones (T, B) or None -> ys (T, B, 2n), final state. Autograd path."""
        return rtu_math.sequence(
            self.params(), xs, state, self.nonlinear, self.activation, dones=dones
        )

    def rtrl_step(
        self, x: Tensor, state: RTUState, traces: Traces, done: Tensor | None = None
    ) -> tuple[Tensor, RTUState, Traces]:
        """One step with trace update: x (B, d) -> y (B, 2n), new state, new traces.

        Runs without autograd (nothing is tracked through time); for a gradient w.r.t. x
        use `rtu_math.input_grad`.
        """
        with torch.no_grad():
            return rtu_math.step(
                self.params(), x, state, traces, done, self.nonlinear, self.activation
            )

    def rtrl_grads(self, dL_dy: Tensor, state: RTUState, traces: Traces) -> dict[str, Tensor]:
        """Parameter gradients {name: tensor shaped like the parameter} for this step.

        state and traces are those returned by `rtrl_step` for the step that produced y;
        dL_dy is (B, 2n). Summed over the batch.
        """
        with torch.no_grad():
            return rtu_math.grads(
                self.params(),
                dL_dy,
                state,
                traces,
                self.nonlinear,
                self.activation,
                authors_theta_grad=self.authors_theta_grad,
            )
