"""Helpers shared by the cells' math files: activations, episode masks, input checks.

Each math file imports what it uses from here, so a check or a mask is written once.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _act(activation: str, a: Tensor) -> Tensor:
    if activation == "relu":
        return torch.relu(a)
    if activation == "tanh":
        return torch.tanh(a)
    return a


def _act_grad_from_pre(activation: str, a: Tensor) -> Tensor | None:
    """f'(a) from the pre-activation; None for identity (f' = 1, skip the multiply)."""
    if activation == "relu":
        return (a > 0).to(a.dtype)  # 0 at the kink, as torch autograd
    if activation == "tanh":
        t = torch.tanh(a)
        return 1 - t * t
    return None


def _act_grad_from_post(activation: str, c: Tensor) -> Tensor | None:
    """f'(a) from the post-activation c = f(a); None for identity."""
    if activation == "relu":
        return (c > 0).to(c.dtype)  # c > 0 iff a > 0, so 0 at the kink
    if activation == "tanh":
        return 1 - c * c
    return None


def _scale(factor: Tensor | None, t: Tensor) -> Tensor:
    return t if factor is None else factor * t


def _mask(t: Tensor, keep: Tensor) -> Tensor:
    """Multiply row b of t (B, ...) by keep[b]."""
    return t * keep.reshape((keep.shape[0],) + (1,) * (t.dim() - 1))


def _keep_mask(done: object, b: int, dtype: torch.dtype) -> Tensor:
    if not isinstance(done, Tensor) or tuple(done.shape) != (b,):
        raise ValueError(
            f"done must be None or a tensor of shape ({b},) (1 = first step of a new "
            f"episode); got {_shape_of(done)}"
        )
    return 1 - done.to(dtype)


def _shape_of(t: object) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else f"{type(t).__name__}"


def _check_positive_int(v: object, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int; got {v!r}")
    return v


def _check_sizes(input_size: object, hidden_size: object) -> tuple[int, int]:
    return (
        _check_positive_int(input_size, "input_size"),
        _check_positive_int(hidden_size, "hidden_size"),
    )


def _check_batch_input(t: object, width: int, dtype: torch.dtype, name: str) -> int:
    if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[1] != width:
        raise ValueError(f"{name} must be a tensor of shape (B, {width}); got {_shape_of(t)}")
    if t.dtype != dtype:
        raise ValueError(f"{name} has dtype {t.dtype} but the parameters are {dtype}")
    return t.shape[0]
