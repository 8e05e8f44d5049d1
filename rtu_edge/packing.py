"""Packed state in torch: several tensors of a learner's state in one flat buffer.

The layout type is the contract's `PackedBuffer` (firmware_bridge/contract.py, which also has
the numpy `pack_state` / `unpack_state` the robot side uses); these are the same operations on
torch tensors, written so that they export to a few ONNX nodes: a buffer is read with one
`Split` (plus a `Reshape` per tensor of rank != 1) and written with one `Concat`.

Why: the exported learn step is dispatch-bound. Per-parameter work (eligibility-trace decay,
ObGD norms and updates) done once on a flat buffer is a handful of nodes instead of a handful
per tensor, and one buffer is one binding instead of one per tensor (issue 8).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from firmware_bridge.contract import PackedBuffer, PackedTensor

__all__ = [
    "PackedBuffer",
    "PackedTensor",
    "cat_flat",
    "flatten",
    "held",
    "pack",
    "read",
    "unpack",
    "views",
    "with_views",
]


def views(buf: PackedBuffer, flat: Tensor) -> dict[str, Tensor]:
    """The tensors inside ``flat`` (1-D, ``buf.size``) by name: views, not copies."""
    parts = torch.split(flat, [t.size for t in buf.tensors])
    return {
        t.name: part if len(t.shape) == 1 else part.reshape(t.shape)
        for t, part in zip(buf.tensors, parts, strict=True)
    }


def held(packing: Sequence[PackedBuffer], state: Mapping) -> tuple[PackedBuffer, ...]:
    """The buffers of ``packing`` whose tensors ``state`` holds, all of them (a learner's
    layout may name buffers a state lacks: td's Adam moments under SGD, an act-only state's
    traces)."""
    return tuple(b for b in packing if all(t.name in state for t in b.tensors))


def read(buf: PackedBuffer, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors inside ``buf`` by name: the state's own when it holds them all (an exported
    learn step is fed them as views of the buffer: contract.view_inputs), else `views` of
    ``state[buf.name]`` (a Split in a graph)."""
    if all(t.name in state for t in buf.tensors):
        return {t.name: state[t.name] for t in buf.tensors}
    return views(buf, state[buf.name])


def cat_flat(tensors: Iterable[Tensor]) -> Tensor:
    """The tensors flattened and concatenated, in order (one Concat; a Reshape per tensor of
    rank != 1)."""
    return torch.cat([v if v.dim() == 1 else v.reshape(-1) for v in tensors])


def flatten(buf: PackedBuffer, tensors: Mapping[str, Tensor]) -> Tensor:
    """The buffer holding ``tensors[name]`` for every tensor of ``buf``, in its order."""
    return cat_flat(tensors[t.name] for t in buf.tensors)


def pack(state: Mapping[str, Tensor], packing: Sequence[PackedBuffer]) -> dict[str, Tensor]:
    """``state`` with the tensors of each buffer replaced by the buffer (a copy)."""
    out = {k: v for k, v in state.items()}
    for buf in packing:
        out[buf.name] = flatten(buf, out)
        for t in buf.tensors:
            del out[t.name]
    return out


def with_views(state: Mapping[str, Tensor], packing: Sequence[PackedBuffer]) -> dict:
    """``state`` plus, by name, a view of every tensor inside its packed buffers (what a graph
    that reads such a tensor by its own name is fed: contract.graph_state)."""
    out = dict(state)
    for buf in packing:
        if buf.name in state:
            out.update(views(buf, state[buf.name]))
    return out


def unpack(state: Mapping[str, Tensor], packing: Sequence[PackedBuffer]) -> dict[str, Tensor]:
    """``state`` with each buffer replaced by the tensors it holds (views of the buffer)."""
    out = {k: v for k, v in state.items()}
    for buf in packing:
        out.update(views(buf, out.pop(buf.name)))
    return out
