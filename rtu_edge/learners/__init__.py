"""The learners: `LEARNERS` maps every `--algo` name to its `Learner` record (learners/base.py).

Adding a learner: one file that ends with ``LEARNER = Learner(...)``, and one line here.
"""

from __future__ import annotations

from rtu_edge.learners import ac, td
from rtu_edge.learners.base import Learner

LEARNERS: dict[str, Learner] = {
    "ac": ac.LEARNER,  # streaming actor-critic AC(lambda), ObGD
    "td": td.LEARNER,  # TD(lambda) prediction of a cumulant, Adam or SGD
}


def get_learner(name: str) -> Learner:
    if name not in LEARNERS:
        raise ValueError(f"unknown algo {name!r}; choose one of {sorted(LEARNERS)}")
    return LEARNERS[name]


__all__ = ["LEARNERS", "Learner", "get_learner"]
