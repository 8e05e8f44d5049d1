"""Small tensor helpers whose exported ONNX graph must mean what the torch code means (and
be cheap: `l1_norm`).

Measured (torch 2.13, dynamo exporter at opset 18): the exporter's onnxscript optimizer treats
a scalar constant within 1e-8 of zero as zero (its pattern constants match with abs_tol 1e-8),
so ``x + 1e-8`` exports as ``x``: ``sqrt(var + 1e-8)`` became ``sqrt(var)`` in learn.onnx, and
a sensor whose reading never changes (variance exactly 0) turned the robot's normalised
observation into NaN, while the same step in torch was fine. The same rule treats a
multiplier within 1e-5 (relative) of 1 as 1. The rule only matches rank-0 constants.
export/parity.py's at-rest phase catches this class.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor


def plus_eps(x: Tensor, eps: float) -> Tensor:
    """``x + eps``, also in the exported graph (x of rank >= 1).

    The constant is a rank-``x.dim()`` tensor of ones-shape, not a scalar, so the optimizer's
    no-op rule does not match it; in torch the result is exactly ``x + eps``.
    """
    return x + torch.full((1,) * x.dim(), eps, dtype=x.dtype)


def l1_norm(x: Tensor, dim: int | None = None) -> Tensor:
    """``sum(|x|)``: as a 0-d tensor over all of x, or over ``dim`` only when given.

    Over all of x it exports as one ``ReduceL1`` node (one pass over x) rather than ``Abs``
    then ``ReduceSum`` (two passes, the first writing a copy of x), with the axes named (with
    ``dim=None`` the exporter would reshape x to 1-D first, one more node). Over one axis it
    is ``Abs`` then ``ReduceSum``: onnxruntime's ReduceL1 over one axis of a matrix takes its
    slow general path, 2.8x the time of the two nodes on a (2, 26112) one, where over all of
    a vector it is the faster one (benchmarks/reduce_l1.py)."""
    if dim is not None:
        return x.abs().sum(dim)
    return torch.linalg.vector_norm(x, ord=1, dim=tuple(range(x.dim())) or None)


def finite(x: Tensor) -> Tensor:
    """Whether the one element of ``x`` is finite, as a bool tensor of x's shape.

    ``|x| < inf`` is False for +-inf and for NaN (every comparison with NaN is False): two
    graph nodes (``Abs``, ``Less``), where ``torch.isfinite(x).all()`` exports as eight
    (``IsInf``, ``IsNaN``, two ``Not``, ``And``, then ``Cast``, ``ReduceMin``, ``Cast``).
    The learners test a product or a sum of everything that must be finite, so one element.
    """
    if x.numel() != 1:
        raise ValueError(f"finite() takes one element, got shape {tuple(x.shape)}")
    return x.abs() < math.inf


def taken_if(
    ok: Tensor,
    update: Callable[..., tuple[Tensor, ...]],
    old: tuple[Tensor, ...],
    args: tuple[Tensor, ...] = (),
) -> tuple[Tensor, ...]:
    """``update(*old, *args)`` if the one-element bool ``ok`` holds, else ``old``: an update
    applied only when it is finite. ``update`` returns one tensor per ``old`` tensor, of the
    same shape and dtype, and reads tensors only through its arguments.

    In torch (eager, vmap, compile) this is ``torch.where(ok, new, old)`` per tensor: the
    update is computed either way and selected. Exported (``torch.compiler.is_exporting()``),
    it is one ONNX ``If`` (``torch.cond``) whose branches compute the update or pass the old
    values on, so the graph does not pass over the buffers a second time to select one. The
    values are the same either way. (Measured with benchmarks/bench_ab.sh, README "Measured":
    the paper-size learn step 5% faster; the demo one, whose buffer is 12x smaller, unchanged
    within the A/B's noise.) Keep ``update`` to the final adds and compute the step it adds
    before the call: onnxruntime runs nodes inside an If's branch slower than the same nodes
    in the main graph (ac's update, README "Measured", the views row).
    The tensors go to ``torch.cond`` as operands, not in closures, and one-element ones as
    0-d (`scalars`): the exporter traces the branches with symbolic sizes, and its first
    attempt (non-strict) fails to broadcast a closed-over or a (1,) tensor against a buffer.
    (td's per-tensor Adam computed before the If, which then passes the new values on, was
    tried before td was packed and was slower: the branch copies every new moment. It stays
    inside.)
    """
    if ok.numel() != 1:
        raise ValueError(f"taken_if() takes a one-element condition, got shape {tuple(ok.shape)}")
    n = len(old)
    if torch.compiler.is_exporting():
        return tuple(
            torch.cond(
                ok.reshape(()),
                lambda *ops: tuple(update(*ops)),
                lambda *ops: tuple(t.clone() for t in ops[:n]),
                (*old, *args),
            )
        )
    new = update(*old, *args)
    return tuple(torch.where(ok, a, b) for a, b in zip(new, old, strict=True))


def added(*tensors: Tensor) -> tuple[Tensor, ...]:
    """``(w1, ..., wk, d1, ..., dk) -> (w1 + d1, ..., wk + dk)``: an update for `taken_if`
    whose steps were computed before it."""
    k, odd = divmod(len(tensors), 2)
    if odd:
        raise ValueError(f"added() takes k values then k steps, got {len(tensors)} tensors")
    return tuple(w + d for w, d in zip(tensors[:k], tensors[k:], strict=True))


def scalars(*xs: Tensor) -> tuple[Tensor, ...]:
    """One-element tensors as 0-d ones, for `taken_if`'s args: the exporter traces its
    operands with symbolic sizes and cannot broadcast a (1,) one against a buffer."""
    return tuple(x.reshape(()) for x in xs)
