"""The recurrent cells: `CELLS` maps every `--cell` name to a factory.

A factory is ``(input_size, hidden_size, generator=None, **options) -> Cell`` (see
`rtu_edge.cells.base`). Its keyword defaults are the one source of each option's default;
`rtu-edge train --set cell.<option>=<value>` overrides them. Adding a cell: one file of math
plus its module, and one line here.
"""

from __future__ import annotations

from collections.abc import Callable

from rtu_edge.cells.base import Cell, math_cell, state_from_dict, state_to_dict
from rtu_edge.cells.rtu import RTU, linear_rtu, nonlinear_rtu, recurrent_param_count
from rtu_edge.cells.rtu_math import (
    ACTIVATIONS,
    PARAMETERISATIONS,
    LinearTraces,
    NonlinearTraces,
    RTUDirectParams,
    RTUDirectThetaParams,
    RTUParams,
    RTUState,
    Traces,
)

CELLS: dict[str, Callable[..., Cell]] = {
    "rtu": linear_rtu,  # linear recurrence, y = f(h); lean complex traces
    "rtu-nonlinear": nonlinear_rtu,  # c = f(a) feeds back; per-component traces
    "online-lru": math_cell("rtu_edge.cells.online_lru_math", True, "online LRU, exact RTRL"),
    "block-rnn": math_cell("rtu_edge.cells.block_rnn_math", True, "2x2-block RNN, exact RTRL"),
    "mlp": math_cell("rtu_edge.cells.mlp_math", True, "memoryless baseline, no recurrence"),
    "gru": math_cell("rtu_edge.cells.gru_math", False, "GRU, truncated BPTT only"),
    "lru": math_cell("rtu_edge.cells.lru_math", False, "LRU (Orvieto et al.), truncated BPTT only"),
}


# The paper's architecture ablation (rtu-rtrl.md section 6) for the RTU and the online LRU,
# as (cell, options) per placement of the non-linearity f (relu here; tanh works as well).
# docs/cells.md "Ablation options" explains each; the cell modules' docstrings give the math.
PLACEMENTS = (
    "linear recurrence",
    "linear recurrence + nonlinear output",
    "nonlinear recurrence",
    "linear recurrence + nonlinear projection",
    "linear recurrence + linear projection",
)
ARCHITECTURE_ABLATION: dict[str, dict[str, tuple[str, dict]]] = {
    "rtu": {
        PLACEMENTS[0]: ("rtu", {"activation": "identity"}),  # y = h
        PLACEMENTS[1]: ("rtu", {"activation": "relu"}),  # y = f(h), the default
        PLACEMENTS[2]: ("rtu-nonlinear", {"activation": "relu"}),  # h = f(a) feeds back
        PLACEMENTS[3]: ("rtu", {"projection": True, "activation": "relu"}),  # f(h W + b)
        PLACEMENTS[4]: ("rtu", {"projection": True, "activation": "identity"}),  # h W + b
    },
    "online-lru": {
        PLACEMENTS[0]: ("online-lru", {"projection": False, "activation": "identity"}),  # y = h
        PLACEMENTS[1]: ("online-lru", {"projection": False, "activation": "relu"}),  # f(h)
        PLACEMENTS[2]: (
            "online-lru",
            {"projection": False, "nonlinear": True, "activation": "relu"},  # h = f(a)
        ),
        PLACEMENTS[3]: ("online-lru", {"activation": "relu"}),  # f(Re(h C))
        PLACEMENTS[4]: ("online-lru", {}),  # Re(h C), the default
    },
}


def make_cell(name: str, input_size: int, hidden_size: int, **options) -> Cell:
    """Build cell ``name``; an unknown name or option is a ValueError that lists the choices."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; choose one of {sorted(CELLS)}")
    try:
        return CELLS[name](input_size, hidden_size, **options)
    except TypeError as e:  # an option the factory does not take
        raise ValueError(f"cell {name!r}: {e}") from None


def rtrl_cells() -> list[str]:
    """The cells with exact RTRL: the ones that can keep learning on the robot."""
    return [name for name in CELLS if make_cell(name, 2, 2).online]


__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURE_ABLATION",
    "CELLS",
    "PARAMETERISATIONS",
    "PLACEMENTS",
    "RTU",
    "Cell",
    "LinearTraces",
    "NonlinearTraces",
    "RTUDirectParams",
    "RTUDirectThetaParams",
    "RTUParams",
    "RTUState",
    "Traces",
    "make_cell",
    "rtrl_cells",
    "recurrent_param_count",
    "state_from_dict",
    "state_to_dict",
]
