"""The interface every `--cell` implements.

A cell is one file of pure tensor math (``<name>_math.py``: functions of tensors, no state on
``self``, exportable to ONNX) plus a thin module over it. The module holds the parameters for
the autograd path and gives the agent, the learners and the exporter one API for every cell:

- ``initial_state(B)``, ``forward(xs, state, dones=None)``: the autograd path over a sequence
  (T-BPTT differentiates through it).
- ``step_forward(x, state, done=None, params=None, consts=None)``: one step, no traces (the
  act graph). ``consts`` is what ``act_constants(params)`` returned: the quantities the step
  derives from the parameters alone (an RTU's lam and gamma), computed once for an act graph
  whose parameters do not change (the bundle's act_prepare.onnx); None computes them here.
  A cell without such constants returns ``{}`` and ignores ``consts``.
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

from contextlib import nullcontext
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

    def act_constants(self, params: Params | None = None) -> Params:
        """What `step_forward` derives from the parameters alone (none by default)."""
        return {}

    # RTRL-only methods: a T-BPTT cell says so clearly.
    def initial_traces(self, batch_size: int):
        raise NotImplementedError(self._offline_msg())

    def rtrl_step(self, x, state, traces, done=None, params=None):
        raise NotImplementedError(self._offline_msg())

    def rtrl_grads(self, dL_dy, state, traces, params=None):
        raise NotImplementedError(self._offline_msg())

    def input_grad(self, dL_dy, state, traces, params=None):
        raise NotImplementedError(self._offline_msg())

    def rtrl_backward_rows(self, dL_dys, state, traces, params=None):
        """Optional: K cotangents (K, out) of a batch of one in one pass, as
        (parameter gradients with a leading axis of K, input gradients (K, input)); row k
        equals `rtrl_grads` and `input_grad` of cotangent k. None (the default): the caller
        takes them one at a time."""
        return None

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


class MathCell(Cell):
    """A cell whose math module (``<name>_math.py``) provides the standard function set.

    The math module defines ``init_params``, ``initial_state``, ``sequence``, ``step_forward``,
    ``output_size`` and, for RTRL cells, ``initial_traces``, ``step``, ``grads``, ``input_grad``.
    Its ``OPTIONS`` (run-time options, e.g. the activation) are passed to every function;
    keyword-only arguments of ``init_params`` that are not in ``OPTIONS`` are init-only.
    """

    def __init__(
        self,
        math,
        input_size: int,
        hidden_size: int,
        online: bool,
        generator: torch.Generator | None = None,
        **options,
    ) -> None:
        super().__init__(input_size, hidden_size)
        known = math_cell_options(math)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"unknown options {unknown}; the options are {sorted(known)}")
        self.math = math
        self.online = online
        self.options = {k: options.get(k, v) for k, v in math.OPTIONS.items()}  # run-time
        p = math.init_params(input_size, hidden_size, generator=generator, **options)
        self.Params = type(p)
        for name, value in p._asdict().items():
            self.register_parameter(name, nn.Parameter(value))
        self.State = type(math.initial_state(hidden_size, 1))
        if online:
            self.Traces = type(self._traces(1, torch.float32))

    def extra_repr(self) -> str:
        return f"{self.math.__name__}, input_size={self.input_size}, hidden_size={self.hidden_size}"

    @property
    def output_size(self) -> int:
        return self.math.output_size(self.hidden_size, **self._options_for(self.math.output_size))

    def params(self, params: Params | None = None):
        p = self._p(params)
        return self.Params(*(p[k] for k in self.Params._fields))

    def _options_for(self, fn) -> dict[str, object]:
        """The run-time options that `fn` takes as keywords (e.g. a width that depends on one)."""
        import inspect

        kw = inspect.signature(fn).parameters
        return {k: v for k, v in self.options.items() if k in kw}

    def _traces(self, batch_size: int, dtype: torch.dtype):
        return self.math.initial_traces(
            self.input_size,
            self.hidden_size,
            batch_size,
            dtype=dtype,
            **self._options_for(self.math.initial_traces),
        )

    def initial_state(self, batch_size: int):
        dtype, device = self._dtype_device()
        s = self.math.initial_state(self.hidden_size, batch_size, dtype=dtype)
        return type(s)(*(t.to(device) for t in s))

    def initial_traces(self, batch_size: int):
        if not self.online:
            raise NotImplementedError(self._offline_msg())
        dtype, device = self._dtype_device()
        tr = self._traces(batch_size, dtype)
        return type(tr)(*(t.to(device) for t in tr))

    def forward(self, xs: Tensor, state, dones: Tensor | None = None):
        return self.math.sequence(self.params(), xs, state, dones, **self.options)

    def act_constants(self, params: Params | None = None) -> Params:
        fn = getattr(self.math, "act_constants", None)  # a math module may offer them
        return {} if fn is None else fn(self.params(params))

    def step_forward(self, x: Tensor, state, done: Tensor | None = None, params=None, consts=None):
        extra = {"consts": consts} if consts else {}  # (a math module without constants: {})
        return self.math.step_forward(self.params(params), x, state, done, **self.options, **extra)

    def rtrl_step(self, x: Tensor, state, traces, done=None, params=None):
        if not self.online:
            raise NotImplementedError(self._offline_msg())
        with torch.no_grad() if params is None else nullcontext():
            return self.math.step(self.params(params), x, state, traces, done, **self.options)

    def rtrl_grads(self, dL_dy: Tensor, state, traces, params=None) -> Params:
        if not self.online:
            raise NotImplementedError(self._offline_msg())
        with torch.no_grad() if params is None else nullcontext():
            return self.math.grads(self.params(params), dL_dy, state, traces, **self.options)

    def input_grad(self, dL_dy: Tensor, state, traces, params=None) -> Tensor:
        if not self.online:
            raise NotImplementedError(self._offline_msg())
        return self.math.input_grad(self.params(params), dL_dy, state, traces, **self.options)


def math_cell_options(math) -> dict[str, object]:
    """Every option of a math cell with its default: run-time OPTIONS and init-only keywords."""
    import inspect

    out = dict(math.OPTIONS)
    for p in inspect.signature(math.init_params).parameters.values():
        if p.kind is p.KEYWORD_ONLY:
            out.setdefault(p.name, p.default)
    return out


def math_cell(math, online: bool, doc: str):
    """The registry factory of a math cell: ``(input_size, hidden_size, generator=None, **opts)``.

    ``math`` is the math module or its dotted name (so a registry entry is one line). Its options
    (and their defaults, the math module's own) are listed by `factory.options`.
    """
    if isinstance(math, str):
        import importlib

        math = importlib.import_module(math)

    def factory(input_size: int, hidden_size: int, generator=None, **options) -> MathCell:
        return MathCell(math, input_size, hidden_size, online, generator=generator, **options)

    factory.__doc__ = doc
    factory.options = math_cell_options(math)
    factory.online = online
    return factory
