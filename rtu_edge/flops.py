"""Count the floating-point operations a torch function really executes, op by op.

Hand-derived FLOP formulas drift from the code; this counts what runs. Every aten op that
reaches the dispatcher is classified:

- matrix products (mm, bmm, addmm, baddbmm): 2 * M * N * K;
- elementwise arithmetic and transcendental ops: one FLOP per output element;
- reductions (sum, mean, amax, ...): one FLOP per input element;
- everything else (views, copies, concatenation, comparisons feeding masks, allocation): free.

The counts of the backward pass of autograd are included when the function calls
``backward()`` (the T-BPTT cost), since autograd's kernels dispatch the same way.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
_MATMUL = {"mm", "bmm", "addmm", "baddbmm", "addbmm"}
_REDUCE = {"sum", "mean", "amax", "amin", "max", "min", "prod", "norm", "linalg_vector_norm"}
_ELEMENTWISE = {
    "add", "sub", "mul", "div", "neg", "exp", "log", "sqrt", "rsqrt", "sin", "cos", "tanh",
    "relu", "sigmoid", "pow", "abs", "clamp", "clamp_min", "clamp_max", "where", "reciprocal",
    "threshold_backward", "tanh_backward", "sigmoid_backward", "maximum", "minimum", "sign",
    "softmax", "_softmax", "log_softmax", "_log_softmax", "addcmul", "addcdiv", "lerp",
    "square", "expm1", "log1p", "rsub", "sgn",
}  # fmt: skip


class FlopCounter(TorchDispatchMode):
    """``with FlopCounter() as fc: fn()``; then ``fc.total`` and ``fc.by_op``."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__.rstrip("_")
        flops = 0
        if name in _MATMUL:
            a, b = args[-2], args[-1]
            flops = 2 * a.numel() * b.shape[-1]  # (..., M, K) @ (..., K, N): 2 M N K per batch
        elif name in _REDUCE:
            flops = args[0].numel()
        elif name in _ELEMENTWISE and isinstance(out, torch.Tensor):
            flops = out.numel()
        if flops:
            self.by_op[name] += int(flops)
        return out


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)``."""
    with FlopCounter() as counter:
        fn(*args, **kwargs)
    return counter.total
