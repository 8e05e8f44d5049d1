"""Run one exported step graph per control step with onnxruntime, without per-step allocation.

A graph input ``X`` is *carried* when the same graph has an output ``X.next`` (docs/bundle.md).
`StepRunner` keeps two buffer sets, A and B, for the carried tensors and two IOBindings built
once (A -> B and B -> A) and alternates them, so a step copies only the small per-step inputs
in and the small outputs out (docs: /work/shared/design/onnx-runtime.md, "Fastest pattern").

Robot path: imports onnxruntime, numpy and the standard library only (no torch, no onnx).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

__all__ = [
    "StepRunnerError",
    "StepRunner",
    "carried_names",
    "make_session",
    "numpy_dtype",
    "reference_step",
    "session_options",
]

NEXT_SUFFIX = ".next"

# onnxruntime type strings -> numpy dtype names (the names used in manifest.json).
_ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}


class StepRunnerError(ValueError):
    """The state or the per-step inputs do not fit the graph; the message names the tensors."""


def numpy_dtype(ort_type: str) -> str | None:
    """The numpy dtype name for an onnxruntime type string such as ``tensor(float)``."""
    return _ORT_TO_NUMPY.get(ort_type)


def session_options() -> ort.SessionOptions:
    """Session options for a control loop: one thread, sequential, all graph optimisations.

    One intra-op and one inter-op thread: at these sizes a step is dispatch-bound and a thread
    pool only adds wake-up jitter (onnx-runtime.md).
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Bytes are parsed as an ONNX protobuf, never as an ORT-format flatbuffer, so the bundle
    # loader's protobuf checks cover everything onnxruntime reads.
    so.add_session_config_entry("session.load_model_format", "ONNX")
    return so


def make_session(model: bytes) -> ort.InferenceSession:
    """An InferenceSession on the CPU from serialized model bytes, with `session_options`."""
    return ort.InferenceSession(model, session_options(), providers=["CPUExecutionProvider"])


def carried_names(session: ort.InferenceSession) -> list[str]:
    """Inputs ``X`` of the graph that have an output ``X.next``, in graph input order."""
    outputs = {o.name for o in session.get_outputs()}
    return [i.name for i in session.get_inputs() if i.name + NEXT_SUFFIX in outputs]


def _static_shape(shape) -> tuple[int, ...] | None:
    if all(isinstance(d, int) and d >= 0 for d in shape):
        return tuple(shape)
    return None


def _fmt(names) -> str:
    return ", ".join(repr(n) for n in sorted(names))


class StepRunner:
    """Runs one graph step after step, feeding every ``X.next`` back as ``X``.

    Inputs of the graph fall in four kinds, decided once here:

    - carried: ``X`` with an output ``X.next``; must be in ``state``; ping-pongs between the
      buffer sets A and B.
    - constant: any other input present in ``state`` (e.g. ``params.*`` for the act graph,
      which reads them but does not write them); bound once, updated by `load_state`.
    - view: an input named in ``views`` as ``(state name, offset, shape)``: bound to that part
      of a carried or constant state tensor (flattened in C order), so it always holds the
      tensor's current value and costs no copy (a learn graph reads ``params.enc.w`` inside
      the ``params.flat`` it carries: contract.view_inputs). Not state of its own.
    - per-step: every other input (``obs``, ``reward``, ...); preallocated arrays that
      `step` overwrites in place. ``step_inputs`` gives their initial values (and their shapes
      when the graph leaves a dimension symbolic).

    Outputs other than the ``X.next`` ones are written by onnxruntime straight into
    preallocated arrays; `step` returns copies of them (they are small).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        state: Mapping[str, np.ndarray],
        step_inputs: Mapping[str, np.ndarray] | None = None,
        views: Mapping[str, tuple[str, int, tuple[int, ...]]] | None = None,
    ) -> None:
        self._session = session
        step_inputs = dict(step_inputs or {})
        views = dict(views or {})
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        carried = carried_names(session)
        carried_set = set(carried)

        missing = [n for n in carried if n not in state]
        extra = [n for n in state if n not in inputs]
        clash = [n for n in step_inputs if n in state]
        unknown_step = [n for n in step_inputs if n not in inputs]
        view_clash = [n for n in views if n in state or n in step_inputs or n not in inputs]
        view_of = [v[0] for v in views.values() if v[0] not in state]
        problems = []
        if view_clash:
            problems.append(
                f"views {_fmt(view_clash)} must be graph inputs given neither in state nor in "
                "step_inputs"
            )
        if view_of:
            problems.append(
                f"views of tensors not in state: {_fmt(view_of)} (a view names a part of a "
                "state tensor: give that tensor in state)"
            )
        if missing:
            problems.append(f"state lacks carried tensors {_fmt(missing)}")
        if extra:
            problems.append(f"state has tensors the graph does not read: {_fmt(extra)}")
        if clash:
            problems.append(f"names given both in state and step_inputs: {_fmt(clash)}")
        if unknown_step:
            problems.append(f"step_inputs the graph does not read: {_fmt(unknown_step)}")
        if problems:
            raise StepRunnerError(
                "StepRunner: " + "; ".join(problems) + f". Graph inputs: {_fmt(inputs)}."
            )

        self.carried_names: tuple[str, ...] = tuple(carried)
        self.constant_names: tuple[str, ...] = tuple(
            n for n in inputs if n in state and n not in carried_set
        )
        self.view_names: tuple[str, ...] = tuple(n for n in inputs if n in views)
        self.step_input_names: tuple[str, ...] = tuple(
            n for n in inputs if n not in state and n not in views
        )
        self.output_names: tuple[str, ...] = tuple(
            n
            for n in outputs
            if not (n.endswith(NEXT_SUFFIX) and n[: -len(NEXT_SUFFIX)] in carried_set)
        )

        # Expected (dtype, shape) of every state-fed input; shape None = symbolic in the graph.
        self._spec: dict[str, tuple[np.dtype, tuple[int, ...] | None]] = {}
        for name in self.carried_names + self.constant_names:
            self._spec[name] = self._input_spec(inputs[name])
        self._check_state(state, require_all=True)
        # A symbolic dimension takes its size from the initial state, fixed from then on.
        for name, (dtype, shape) in self._spec.items():
            if shape is None:
                self._spec[name] = (dtype, np.asarray(state[name]).shape)

        # Buffer sets A and B for carried tensors, plus constants; OrtValues share their memory.
        self._sets: list[dict[str, np.ndarray]] = [{}, {}]
        for name in self.carried_names:
            first = np.array(state[name], dtype=self._spec[name][0], order="C", copy=True)
            next_spec = outputs[name + NEXT_SUFFIX]
            next_shape = _static_shape(next_spec.shape)
            next_dtype = numpy_dtype(next_spec.type)
            if next_dtype != first.dtype.name or (
                next_shape is not None and next_shape != first.shape
            ):
                raise StepRunnerError(
                    f"StepRunner: carried tensor {name!r} is {first.dtype.name}{list(first.shape)}"
                    f" but output {name + NEXT_SUFFIX!r} is {next_dtype}{next_spec.shape}; "
                    "the graph cannot feed its output back. Re-export the graph."
                )
            self._sets[0][name] = first
            self._sets[1][name] = np.empty_like(first)
        self._const: dict[str, np.ndarray] = {
            n: np.array(state[n], dtype=self._spec[n][0], order="C", copy=True)
            for n in self.constant_names
        }

        # A view per buffer set of its carried tensor (one for a constant's), checked for fit.
        self._views: list[dict[str, np.ndarray]] = [{}, {}]
        for name in self.view_names:
            of, offset, shape = views[name]
            dtype, want = self._input_spec(inputs[name])
            size = int(np.prod(shape, dtype=np.int64))
            whole = self._sets[0].get(of, self._const.get(of))
            if (
                whole.dtype != dtype
                or (want is not None and tuple(shape) != want)
                or offset < 0
                or offset + size > whole.size
            ):
                raise StepRunnerError(
                    f"StepRunner: view {name!r} as {list(shape)} at [{offset}:{offset + size}] of "
                    f"{of!r} ({whole.dtype.name}{list(whole.shape)}) does not fit the graph's "
                    f"input {dtype.name}{list(want) if want is not None else '(symbolic)'}. "
                    "Re-export the graph."
                )
            for i in (0, 1):
                buf = self._sets[i].get(of, self._const.get(of))
                self._views[i][name] = buf.reshape(-1)[offset : offset + size].reshape(shape)

        self._inputs: dict[str, np.ndarray] = {}
        for name in self.step_input_names:
            dtype, shape = self._input_spec(inputs[name])
            if name in step_inputs:
                value = np.asarray(step_inputs[name])
                if shape is not None and value.shape != shape:
                    raise StepRunnerError(
                        f"StepRunner: step_inputs[{name!r}] has shape {list(value.shape)}, "
                        f"the graph expects {list(shape)}."
                    )
                self._inputs[name] = np.array(value, dtype=dtype, order="C", copy=True)
            elif shape is None:
                raise StepRunnerError(
                    f"StepRunner: per-step input {name!r} has a symbolic shape "
                    f"{inputs[name].shape} in the graph; pass an example in step_inputs "
                    "(or export the graph with static shapes)."
                )
            else:
                self._inputs[name] = np.zeros(shape, dtype=dtype)

        self._outputs: dict[str, np.ndarray] = {}
        for name in self.output_names:
            dtype, shape = self._input_spec(outputs[name], what="output")
            if shape is None:
                raise StepRunnerError(
                    f"StepRunner: output {name!r} has a symbolic shape {outputs[name].shape}; "
                    "the runner preallocates outputs. Export the graph with static shapes."
                )
            self._outputs[name] = np.zeros(shape, dtype=dtype)

        # OrtValues wrapping the numpy buffers (ortvalue_from_numpy shares memory), kept alive
        # here for as long as the bindings are.
        wrap = ort.OrtValue.ortvalue_from_numpy
        self._values = {
            "A": {n: wrap(a) for n, a in self._sets[0].items()},
            "B": {n: wrap(a) for n, a in self._sets[1].items()},
            "A views": {n: wrap(a) for n, a in self._views[0].items()},
            "B views": {n: wrap(a) for n, a in self._views[1].items()},
            "const": {n: wrap(a) for n, a in self._const.items()},
            "in": {n: wrap(a) for n, a in self._inputs.items()},
            "out": {n: wrap(a) for n, a in self._outputs.items()},
        }
        self._bindings = [
            self._make_binding(self._values["A"], self._values["B"], self._values["A views"]),
            self._make_binding(self._values["B"], self._values["A"], self._values["B views"]),
        ]
        self._cur = 0  # index of the buffer set that holds the current carried values
        self._out_items = tuple(self._outputs.items())
        self.steps = 0  # completed steps since construction

    # -- construction helpers -------------------------------------------------------------

    @staticmethod
    def _input_spec(arg, what: str = "input") -> tuple[np.dtype, tuple[int, ...] | None]:
        name = numpy_dtype(arg.type)
        if name is None:
            raise StepRunnerError(
                f"StepRunner: {what} {arg.name!r} has type {arg.type}, which the runner does not "
                "support (tensors of numeric or bool types only)."
            )
        return np.dtype(name), _static_shape(arg.shape)

    def _make_binding(self, src: dict, dst: dict, views: dict) -> ort.IOBinding:
        binding = self._session.io_binding()
        for name, value in src.items():
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name + NEXT_SUFFIX, dst[name])
        for name, value in views.items():
            binding.bind_ortvalue_input(name, value)
        for name, value in self._values["const"].items():
            binding.bind_ortvalue_input(name, value)
        for name, value in self._values["in"].items():
            binding.bind_ortvalue_input(name, value)
        for name, value in self._values["out"].items():
            binding.bind_ortvalue_output(name, value)
        return binding

    def _check_state(self, state: Mapping[str, np.ndarray], require_all: bool) -> None:
        problems = []
        unknown = [n for n in state if n not in self._spec]
        views = [n for n in unknown if n in self.view_names]
        if views:
            problems.append(
                f"{_fmt(views)} are views of a buffer the graph carries, not state of their "
                "own: load the buffer they are part of"
            )
        unknown = [n for n in unknown if n not in views]
        if unknown:
            problems.append(f"unknown names {_fmt(unknown)} (not state-fed inputs of this graph)")
        if require_all:
            missing = [n for n in self._spec if n not in state]
            if missing:
                problems.append(f"missing {_fmt(missing)}")
        for name, value in state.items():
            if name not in self._spec:
                continue
            dtype, shape = self._spec[name]
            arr = np.asarray(value)
            if arr.dtype != dtype:
                problems.append(
                    f"{name!r} has dtype {arr.dtype.name}, the graph wants {dtype.name}"
                )
            if shape is not None and arr.shape != shape:
                problems.append(
                    f"{name!r} has shape {list(arr.shape)}, the graph wants {list(shape)}"
                )
        if problems:
            raise StepRunnerError("StepRunner state does not fit the graph: " + "; ".join(problems))

    # -- the control loop -----------------------------------------------------------------

    def step(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run one step: copy the per-step inputs in place, run, swap A and B.

        Every per-step input must be given on every call (a stale observation is never reused).
        A value may have the input's shape or the same number of elements (``reward=0.5`` for a
        (1,) input); values are cast to the input's dtype. Returns copies of the outputs that
        are not carried (``action``, ``value``, ``td_error``, ...). If onnxruntime raises, the
        carried state is left as it was before the call.
        """
        buffers = self._inputs
        if len(inputs) != len(buffers):
            self._raise_input_names(inputs)
        for name, value in inputs.items():
            buf = buffers.get(name)
            if buf is None:
                self._raise_input_names(inputs)
            if type(value) is np.ndarray and value.shape == buf.shape:
                try:
                    np.copyto(buf, value)
                except TypeError:
                    self._copy_checked(name, buf, value)
            else:
                self._copy_checked(name, buf, value)
        self._session.run_with_iobinding(self._bindings[self._cur])
        self._cur ^= 1
        self.steps += 1
        return {name: arr.copy() for name, arr in self._out_items}

    def _raise_input_names(self, inputs) -> None:
        missing = [n for n in self._inputs if n not in inputs]
        unknown = [n for n in inputs if n not in self._inputs]
        parts = []
        if missing:
            parts.append(f"missing per-step inputs {_fmt(missing)}")
        if unknown:
            parts.append(f"unknown per-step inputs {_fmt(unknown)}")
        raise StepRunnerError(
            "StepRunner.step: "
            + "; ".join(parts)
            + f". Give exactly {_fmt(self._inputs)} on every step."
        )

    @staticmethod
    def _copy_checked(name: str, buf: np.ndarray, value) -> None:
        arr = np.asarray(value)
        if arr.shape != buf.shape:
            if arr.size != buf.size:
                raise StepRunnerError(
                    f"StepRunner.step: input {name!r} has shape {list(arr.shape)} "
                    f"({arr.size} values), the graph expects {list(buf.shape)} ({buf.size} values)."
                )
            arr = arr.reshape(buf.shape)
        try:
            np.copyto(buf, arr, casting="same_kind")
        except TypeError as exc:
            raise StepRunnerError(
                f"StepRunner.step: input {name!r} has dtype {arr.dtype.name}, which does not "
                f"cast safely to the graph's {buf.dtype.name}."
            ) from exc

    # -- state access ---------------------------------------------------------------------

    @property
    def state_names(self) -> tuple[str, ...]:
        """Every input fed from state: carried ones, then constant ones."""
        return self.carried_names + self.constant_names

    def state(self) -> dict[str, np.ndarray]:
        """Copies of the current state, keyed by input name ``X``.

        Holds every carried tensor at its current value and every constant input as last
        loaded, so ``load_state(state())`` is a no-op.
        """
        current = self._sets[self._cur]
        out = {n: current[n].copy() for n in self.carried_names}
        out.update({n: a.copy() for n, a in self._const.items()})
        return out

    def load_state(self, state: Mapping[str, np.ndarray], *, partial: bool = False) -> None:
        """Overwrite state tensors in place (the bindings stay valid).

        With ``partial=False`` every state-fed input must be given; with ``partial=True`` any
        subset (e.g. fresh ``params.*`` for the act graph). Everything is checked before
        anything is written, so a bad dict leaves the runner unchanged.
        """
        self._check_state(state, require_all=not partial)
        current = self._sets[self._cur]
        for name, value in state.items():
            target = current[name] if name in current else self._const[name]
            np.copyto(target, np.asarray(value))

    def reset(self, names_prefix: str) -> list[str]:
        """Zero every state tensor whose name starts with ``names_prefix`` (e.g. ``"carry."``).

        Returns the names it zeroed, so a mistyped prefix shows up as an empty list.
        """
        current = self._sets[self._cur]
        zeroed = []
        for name in self.state_names:
            if name.startswith(names_prefix):
                (current[name] if name in current else self._const[name]).fill(0)
                zeroed.append(name)
        return zeroed


def reference_step(
    session: ort.InferenceSession,
    state: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray],
    views: Mapping[str, tuple[str, int, tuple[int, ...]]] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One step with plain ``session.run``: the slow, obvious path that tests compare against.

    Returns ``(outputs, new_state)``: the outputs that are not ``X.next`` of a carried ``X``,
    and ``state`` with every carried ``X`` replaced by the graph's ``X.next``. ``views`` as
    for `StepRunner`: each is fed a copy of its part of the state tensor it views.
    """
    views = views or {}
    feeds = {}
    for arg in session.get_inputs():
        if arg.name in views:
            of, offset, shape = views[arg.name]
            part = np.asarray(state[of]).reshape(-1)[offset : offset + int(np.prod(shape))]
            feeds[arg.name] = part.reshape(shape).copy()
        elif arg.name in state:
            feeds[arg.name] = state[arg.name]
        elif arg.name in inputs:
            feeds[arg.name] = inputs[arg.name]
        else:
            raise StepRunnerError(f"reference_step: no value for graph input {arg.name!r}")
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(names, feeds), strict=True))
    carried = carried_names(session)
    new_state = dict(state)
    for name in carried:
        new_state[name] = values.pop(name + NEXT_SUFFIX)
    return values, new_state
