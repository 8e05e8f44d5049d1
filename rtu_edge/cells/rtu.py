"""The RTU cells `rtu` (linear recurrence) and `rtu-nonlinear` over the math in `rtu_math`.

Two faces over the same math:
- `forward(xs, state)`: unrolled sequence through autograd (BPTT / truncated BPTT).
- `rtrl_step` + `rtrl_grads`: one step carrying exact RTRL traces, and the parameter
  gradient from those traces; no autograd graph is built through time.

Options (factory keywords; `--set cell.<option>=<value>`):

- `activation` f in {relu (default), tanh, identity}.
- `param`: how (r, theta) are parameterised (rtu_math, the paper's appendix):
  "exp-exp" (default) r = exp(-exp(nu_log)), theta = exp(theta_log);
  "exp-direct" r = exp(-exp(nu_log)), theta learned directly;
  "direct-direct" r = exp(-nu), theta learned directly.
  The parameter names follow: nu_log / theta_log, nu_log / theta, nu / theta (and so do the
  tensor names of an exported bundle, e.g. params.cell.theta).
- `projection` (`rtu` only, default False): a learned dense layer inside the cell,
  z = f(concat[c1, c2] @ proj_w + proj_b) with proj_w (2n, 2n) and proj_b (2n,), so f moves
  from h to after the projection; its gradient is immediate (no trace).
- `authors_theta_grad` (default False): reproduce the authors' theta_log gradient (no factor
  theta); only with param="exp-exp".

The paper's architecture ablation (rtu-rtrl.md section 6) with these options:

    placement                              cell            options
    linear recurrence                      rtu             activation=identity
    linear recurrence + nonlinear output   rtu             activation=relu (the default)
    nonlinear recurrence                   rtu-nonlinear   activation=relu (the default)
    linear recurrence + nonlinear proj.    rtu             projection=true (relu)
    linear recurrence + linear projection  rtu             projection=true, activation=identity
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from rtu_edge.cells import rtu_math
from rtu_edge.cells.base import Cell, Params
from rtu_edge.cells.rtu_math import RTUProjection, RTUState

DEFAULT_ACTIVATION = "relu"  # f; the authors' control agents use ReLU for the RTU
DEFAULT_PARAM = rtu_math.DEFAULT_PARAM  # "exp-exp": r = exp(-exp(nu_log)), theta = exp(theta_log)


def recurrent_param_count(input_size: int, hidden_size: int) -> int:
    """Learnable parameters of one RTU layer: w1, w2 (d*n each) plus nu_log, theta_log (n each).

    Without the projection (which adds 4n^2 + 2n); the same under every `param`.
    """
    return 2 * input_size * hidden_size + 2 * hidden_size


class RTU(Cell):
    """Recurrent Trace Unit layer: input (B, d) -> output (B, 2n) = [real parts, imag parts].

    nonlinear=False: linear recurrence, y = f(h) (the lean complex RTRL traces apply), or
    y = f(h @ proj_w + proj_b) with projection=True.
    nonlinear=True: c = f(a) feeds back (per-component real traces); no projection.
    param chooses the parameterisation of (r, theta) (rtu_math.PARAMETERISATIONS).
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
        *,
        param: str = DEFAULT_PARAM,
        projection: bool = False,
    ) -> None:
        super().__init__(input_size, hidden_size)
        rtu_math._check_activation(activation)
        rtu_math._check_param(param)
        if not isinstance(projection, bool):
            raise ValueError(f"projection must be true or false; got {projection!r}")
        if projection and nonlinear:
            raise ValueError(
                "projection=True is for the linear recurrence (cell 'rtu'); the non-linear "
                "RTU's output is its state"
            )
        if authors_theta_grad and param != "exp-exp":
            raise ValueError(
                "authors_theta_grad reproduces the authors' theta_log gradient and exists only "
                f"for param='exp-exp'; got param={param!r}"
            )
        p = rtu_math.init_params(input_size, hidden_size, generator=generator, param=param)
        self.nonlinear = bool(nonlinear)
        self.activation = activation
        self.param = param
        self.projection = projection
        self.authors_theta_grad = bool(authors_theta_grad)
        self.Params = type(p)
        self.Traces = rtu_math.NonlinearTraces if self.nonlinear else rtu_math.LinearTraces
        # nu_log, theta_log (or theta, nu: see `param`) (n,) each; w1, w2 (d, n)
        for name, value in p._asdict().items():
            self.register_parameter(name, nn.Parameter(value))
        if projection:  # drawn after the recurrence: a seed gives the same recurrence
            q = rtu_math.init_projection(hidden_size, generator=generator)
            self.proj_w = nn.Parameter(q.proj_w)  # (2n, 2n)
            self.proj_b = nn.Parameter(q.proj_b)  # (2n,)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"nonlinear={self.nonlinear}, activation={self.activation!r}, "
            f"param={self.param!r}, projection={self.projection}"
        )

    @property
    def output_size(self) -> int:
        return 2 * self.hidden_size

    def params(self, params: Params | None = None) -> rtu_math.AnyRTUParams:
        """The recurrence's parameters (the module's, or those given by name) as a tuple of
        the parameterisation's type (`RTUParams` by default)."""
        p = self._p(params)
        return self.Params(*(p[k] for k in self.Params._fields))

    def projection_params(self, params: Params | None = None) -> RTUProjection | None:
        """The projection's parameters, or None without a projection."""
        if not self.projection:
            return None
        p = self._p(params)
        return RTUProjection(p["proj_w"], p["proj_b"])

    @property
    def _inner_activation(self) -> str:
        """f of the recurrence's own output: moved after the projection when there is one."""
        return "identity" if self.projection else self.activation

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
        ys, state = rtu_math.sequence(
            self.params(), xs, state, self.nonlinear, self._inner_activation, dones=dones
        )
        return self._project(ys, None), state

    def act_constants(self, params: Params | None = None) -> Params:
        """lam_diag, lam_cross (2n,) and w_in (d, 2n): what `step_forward` derives from the
        parameters (rtu_math.act_constants)."""
        return rtu_math.act_constants(self.params(params))

    def step_forward(
        self,
        x: Tensor,
        state: RTUState,
        done: Tensor | None = None,
        params: Params | None = None,
        consts: Params | None = None,
    ) -> tuple[Tensor, RTUState]:
        """One step without traces: x (B, d) -> y (B, 2n), new state."""
        y, state = rtu_math.step_forward(
            self.params(params), x, state, done, self.nonlinear, self._inner_activation, consts
        )
        return self._project(y, params), state

    def rtrl_step(self, x: Tensor, state: RTUState, traces, done=None, params=None):
        """One step with trace update: x (B, d) -> y (B, 2n), new state, new traces.

        Runs without autograd when it uses the module's parameters (nothing is tracked
        through time).
        """
        with torch.no_grad() if params is None else nullcontext():
            y, state, traces = rtu_math.step(
                self.params(params),
                x,
                state,
                traces,
                done,
                self.nonlinear,
                self._inner_activation,
            )
            return self._project(y, params), state, traces

    def rtrl_grads(self, dL_dy: Tensor, state: RTUState, traces, params=None) -> Params:
        """Parameter gradients {name: tensor shaped like the parameter} for this step.

        state and traces are those returned by `rtrl_step` for the step that produced y;
        dL_dy is (B, 2n). Summed over the batch.
        """
        with torch.no_grad() if params is None else nullcontext():
            dL_dh, g_proj = self._unproject(dL_dy, state, params)
            g = rtu_math.grads(
                self.params(params),
                dL_dh,
                state,
                traces,
                self.nonlinear,
                self._inner_activation,
                authors_theta_grad=self.authors_theta_grad,
            )
            return {**g, **g_proj}

    def rtrl_backward_rows(self, dL_dys: Tensor, state: RTUState, traces, params=None):
        """K cotangents (K, 2n) of a batch of one at once: (parameter gradients with a leading
        axis of K, input gradients (K, d)), row k equal to `rtrl_grads` and `input_grad` of
        cotangent k. None with a projection (its gradient sums over the batch): call those."""
        if self.projection:
            return None
        p = self.params(params)
        act = self._inner_activation
        g = rtu_math.grads(
            p,
            dL_dys,
            state,
            traces,
            self.nonlinear,
            act,
            authors_theta_grad=self.authors_theta_grad,
            rows=True,
        )
        return g, rtu_math.input_grad(p, dL_dys, state, self.nonlinear, act, rows=True)

    def input_grad(self, dL_dy: Tensor, state: RTUState, traces, params=None) -> Tensor:
        """One-step gradient of sum(dL_dy * y_t) w.r.t. x_t, (B, d)."""
        dL_dh, _ = self._unproject(dL_dy, state, params)
        return rtu_math.input_grad(
            self.params(params), dL_dh, state, self.nonlinear, self._inner_activation
        )

    def _project(self, y: Tensor, params: Params | None) -> Tensor:
        q = self.projection_params(params)
        return y if q is None else rtu_math.project(q, y, self.activation)

    def _unproject(
        self, dL_dz: Tensor, state: RTUState, params: Params | None
    ) -> tuple[Tensor, Params]:
        """(cotangent of the recurrence's output, projection gradients) for this step."""
        q = self.projection_params(params)
        if q is None:
            return dL_dz, {}
        h = torch.cat([state.c1, state.c2], dim=-1)  # the projection's input (identity f)
        return rtu_math.project_grads(q, h, dL_dz, self.activation)


def linear_rtu(
    input_size: int,
    hidden_size: int,
    *,
    activation: str = DEFAULT_ACTIVATION,  # f in y = f(h), or in y = f(h @ proj_w + proj_b)
    param: str = DEFAULT_PARAM,  # (r, theta): exp-exp | exp-direct | direct-direct
    projection: bool = False,  # a learned dense projection of h inside the cell
    authors_theta_grad: bool = False,  # reproduce the authors' theta_log gradient (no factor theta)
    generator: torch.Generator | None = None,
) -> RTU:
    """`--cell rtu`: linear recurrence, y = f(h) (or f of a dense projection); lean traces."""
    return RTU(
        input_size,
        hidden_size,
        False,
        activation,
        authors_theta_grad,
        generator,
        param=param,
        projection=projection,
    )


def nonlinear_rtu(
    input_size: int,
    hidden_size: int,
    *,
    activation: str = DEFAULT_ACTIVATION,  # f in c = f(a), inside the recurrence
    param: str = DEFAULT_PARAM,  # (r, theta): exp-exp | exp-direct | direct-direct
    authors_theta_grad: bool = False,  # reproduce the authors' theta_log gradient (no factor theta)
    generator: torch.Generator | None = None,
) -> RTU:
    """`--cell rtu-nonlinear`: c = f(a) feeds back; per-component traces."""
    return RTU(
        input_size, hidden_size, True, activation, authors_theta_grad, generator, param=param
    )
