"""Recurrent cells trained by exact RTRL.

`CELLS` maps a cell name to its constructor options; it is an open registry that later
cells (online-lru, gru, ...) extend.
"""

from rtu_edge.cells.rtu import RTU, recurrent_param_count
from rtu_edge.cells.rtu_math import (
    ACTIVATIONS,
    LinearTraces,
    NonlinearTraces,
    RTUParams,
    RTUState,
    Traces,
)

CELLS: dict[str, dict] = {
    "rtu": {"nonlinear": False},  # linear recurrence, y = f(h); lean complex traces
    "rtu-nonlinear": {"nonlinear": True},  # c = f(a) feeds back; per-component traces
}

__all__ = [
    "ACTIVATIONS",
    "CELLS",
    "RTU",
    "LinearTraces",
    "NonlinearTraces",
    "RTUParams",
    "RTUState",
    "Traces",
    "recurrent_param_count",
]
