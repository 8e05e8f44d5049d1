"""Sizes and costs of the cells at a parameter budget (the paper compares cells at ~24k).

- `size_for_budget(cell, input_size, budget)`: the largest hidden size whose recurrent
  parameters fit the budget (even sizes only for the block RNN).
- `rtrl_flops(cell, input_size, hidden_size)`: FLOPs of one RTRL step of the cell (forward with
  trace update, parameter gradients from the traces, input gradient), counted op by op.
- `tbptt_flops(cell, input_size, hidden_size, T)`: FLOPs per step of truncated BPTT in the
  incremental setting: each step re-runs the last T steps forward and backward.
- `budget_table(input_size, budget)`: one row per cell, for `rtu-edge cells --budget`.
"""

from __future__ import annotations

import torch

from rtu_edge.cells import CELLS, make_cell
from rtu_edge.flops import count_flops


def param_count(name: str, input_size: int, hidden_size: int, **options) -> int:
    return make_cell(name, input_size, hidden_size, **options).recurrent_param_count()


def size_for_budget(name: str, input_size: int, budget: int, **options) -> int:
    """The largest hidden size n with param_count(n) <= budget (counts grow with n)."""
    step = 2 if name == "block-rnn" else 1
    if param_count(name, input_size, step, **options) > budget:
        raise ValueError(f"a budget of {budget} parameters is too small for cell {name!r}")
    lo, hi = step, step
    while param_count(name, input_size, hi, **options) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > step:  # invariant: count(lo) <= budget < count(hi)
        mid = (lo + hi) // 2 // step * step
        mid = max(mid, lo + step)
        if param_count(name, input_size, mid, **options) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def rtrl_flops(name: str, input_size: int, hidden_size: int, **options) -> int | None:
    """One RTRL step of the cell, batch 1; None for a cell without RTRL."""
    cell = make_cell(name, input_size, hidden_size, **options)
    if not cell.online:
        return None
    x = torch.randn(1, input_size)
    state, traces = cell.initial_state(1), cell.initial_traces(1)
    g = torch.randn(1, cell.output_size)

    def one_step():
        y, s, tr = cell.rtrl_step(x, state, traces)
        cell.rtrl_grads(g, s, tr)
        cell.input_grad(g, s, tr)

    return count_flops(one_step)


def tbptt_flops(name: str, input_size: int, hidden_size: int, T: int, **options) -> int:
    """One incremental T-BPTT step: forward over the last T inputs, then backward."""
    cell = make_cell(name, input_size, hidden_size, **options)
    xs = torch.randn(T, 1, input_size, requires_grad=True)
    g = torch.randn(T, 1, cell.output_size)

    def window():
        ys, _ = cell(xs, cell.initial_state(1))
        (ys * g).sum().backward()

    return count_flops(window)


def budget_table(input_size: int, budget: int, T: int = 16) -> list[dict]:
    rows = []
    for name in CELLS:
        n = size_for_budget(name, input_size, budget)
        rows.append(
            {
                "cell": name,
                "hidden_size": n,
                "recurrent_params": param_count(name, input_size, n),
                "rtrl_flops": rtrl_flops(name, input_size, n),
                f"tbptt{T}_flops": tbptt_flops(name, input_size, n, T),
            }
        )
    return rows
