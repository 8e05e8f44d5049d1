"""The RTU cells `rtu` (linear recurrence) and `rtu-nonlinear` over the math in `rtu_math`.

Two faces over the same math:
- `forward(xs, state)`: unrolled sequence through autograd (BPTT / truncated BPTT).
- `rtrl_step` + `rtrl_grads`: one step carrying exact RTRL traces, and the parameter
  gradient from those traces; no autograd graph is built through time.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from rtu_edge.cells import rtu_math
from rtu_edge.cells.base import Cell, Params
from rtu_edge.cells.rtu_math import RTUParams, RTUState

DEFAULT_ACTIVATION = "relu"  # f; the authors' control agents use ReLU for the RTU


def recurrent_param_count(input_size: int, hidden_size: int) -> int:
    """Learnable parameters of one RTU layer: w1, w2 (d*n each) plus nu_log, theta_log (n each)."""
    return 2 * input_size * hidden_size + 2 * hidden_size


class RTU(Cell):
    """Recurrent Trace Unit layer: input (B, d) -> output (B, 2n) = [real parts, imag parts].

    nonlinear=False: linear recurrence, y = f(h) (the lean complex RTRL traces apply).
    nonlinear=True: c = f(a) feeds back (per-component real traces).
    authors_theta_grad=True makes `rtrl_grads` reproduce the authors' theta_log gradient,
    which lacks the chain-rule factor theta; the default is the exact gradient.
    """

    State = RTUState

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        nonlinear: bool = False,
        activation: str = DEFAULT_ACTIVATION,
        authors_theta_grad: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(input_size, hidden_size)
        rtu_math._check_activation(activation)
        p = rtu_math.init_params(input_size, hidden_size, generator=generator)
        self.nonlinear = bool(nonlinear)
        self.activation = activation
        self.authors_theta_grad = bool(authors_theta_grad)
        self.Traces = rtu_math.NonlinearTraces if self.nonlinear else rtu_math.LinearTraces
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

    def params(self, params: Params | None = None) -> RTUParams:
        """The parameters (the module's, or those given by name) as an `RTUParams` tuple."""
        p = self._p(params)
        return RTUParams(p["nu_log"], p["theta_log"], p["w1"], p["w2"])

    def initial_state(self, batch_size: int) -> RTUState:
        """Zero state (B, n), on the parameters' dtype and device."""
        dtype, device = self._dtype_device()
        s = rtu_math.initial_state(self.hidden_size, batch_size, dtype=dtype)
        return RTUState(*(t.to(device) for t in s))

    def initial_traces(self, batch_size: int):
        """Zero RTRL traces for this cell kind, on the parameters' dtype and device."""
        dtype, device = self._dtype_device()
        tr = rtu_math.initial_traces(
            self.input_size, self.hidden_size, batch_size, self.nonlinear, dtype=dtype
        )
        return type(tr)(*(t.to(device) for t in tr))

    def forward(
        self, xs: Tensor, state: RTUState, dones: Tensor | None = None
    ) -> tuple[Tensor, RTUState]:
        """xs (T, B, d), dones (T, B) or None -> ys (T, B, 2n), final state. Autograd path."""
        return rtu_math.sequence(
            self.params(), xs, state, self.nonlinear, self.activation, dones=dones
        )

    def step_forward(
        self, x: Tensor, state: RTUState, done: Tensor | None = None, params: Params | None = None
    ) -> tuple[Tensor, RTUState]:
        """One step without traces: x (B, d) -> y (B, 2n), new state."""
        if done is not None:
            keep = (1.0 - done).unsqueeze(-1)
            state = RTUState(state.c1 * keep, state.c2 * keep)
        ys, state = rtu_math.sequence(
            self.params(params), x.unsqueeze(0), state, self.nonlinear, self.activation
        )
        return ys[0], state

    def rtrl_step(self, x: Tensor, state: RTUState, traces, done=None, params=None):
        """One step with trace update: x (B, d) -> y (B, 2n), new state, new traces.

        Runs without autograd when it uses the module's parameters (nothing is tracked
        through time).
        """
        with torch.no_grad() if params is None else nullcontext():
            return rtu_math.step(
                self.params(params), x, state, traces, done, self.nonlinear, self.activation
            )

    def rtrl_grads(self, dL_dy: Tensor, state: RTUState, traces, params=None) -> Params:
        """Parameter gradients {name: tensor shaped like the parameter} for this step.

        state and traces are those returned by `rtrl_step` for the step that produced y;
        dL_dy is (B, 2n). Summed over the batch.
        """
        with torch.no_grad() if params is None else nullcontext():
            return rtu_math.grads(
                self.params(params),
                dL_dy,
                state,
                traces,
                self.nonlinear,
                self.activation,
                authors_theta_grad=self.authors_theta_grad,
            )

    def input_grad(self, dL_dy: Tensor, state: RTUState, traces, params=None) -> Tensor:
        """One-step gradient of sum(dL_dy * y_t) w.r.t. x_t, (B, d)."""
        return rtu_math.input_grad(
            self.params(params), dL_dy, state, self.nonlinear, self.activation
        )


def linear_rtu(
    input_size: int,
    hidden_size: int,
    *,
    activation: str = DEFAULT_ACTIVATION,  # f in y = f(h): relu | tanh | identity
    authors_theta_grad: bool = False,  # reproduce the authors' theta_log gradient (no factor theta)
    generator: torch.Generator | None = None,
) -> RTU:
    """`--cell rtu`: linear recurrence, y = f(h); lean complex traces."""
    return RTU(input_size, hidden_size, False, activation, authors_theta_grad, generator)


def nonlinear_rtu(
    input_size: int,
    hidden_size: int,
    *,
    activation: str = DEFAULT_ACTIVATION,  # f in c = f(a), inside the recurrence
    authors_theta_grad: bool = False,  # reproduce the authors' theta_log gradient (no factor theta)
    generator: torch.Generator | None = None,
) -> RTU:
    """`--cell rtu-nonlinear`: c = f(a) feeds back; per-component traces."""
    return RTU(input_size, hidden_size, True, activation, authors_theta_grad, generator)
