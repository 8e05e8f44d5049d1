"""The trial stream behind the ``animal/`` ids (definitions in rtu_edge/envs/animal.py).

Imported lazily by the factories (it needs gymnasium, a training-only dependency).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from rtu_edge.envs import animal


class TraceStream(gymnasium.Env):
    """An endless stream of conditioning trials; the reward is the US bit of the returned
    observation [US, CS_1..CS_k, D_1..D_m].

    ``patterns[j]`` is the CS vector of pattern j, ``positive[j]`` whether its trials deliver the
    US; each trial draws a pattern uniformly. With ``noise`` > 0 a trial's outcome is flipped
    with that probability. The action (Discrete(1)) is ignored.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        isi0: int = 10,
        patterns: Sequence[Sequence[int]] = ((1,),),
        positive: Sequence[bool] = (True,),
        noise: float = 0.0,
        num_distractors: int = animal.NUM_DISTRACTORS,
        iti_range: tuple[int, int] = animal.ITI_RANGE,
    ):
        isi0 = int(isi0)
        if isi0 < 1:
            raise ValueError(f"isi0 must be at least 1, got {isi0}")
        self.isi0 = isi0
        self.isi_range = animal.isi_range(isi0)
        self.gamma = animal.gamma_for_isi(isi0)  # the discount to train with (module docstring)
        self.patterns = np.asarray(patterns, dtype=np.float32)
        self.positive = np.asarray(positive, dtype=bool)
        if self.patterns.ndim != 2 or len(self.positive) != len(self.patterns):
            raise ValueError("patterns must be a list of CS vectors, one positive flag each")
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must lie in [0, 1], got {noise}")
        self.noise = float(noise)
        lo, hi = int(iti_range[0]), int(iti_range[1])
        if not 0 <= lo <= hi:
            raise ValueError(
                f"iti_range must be (low, high) with 0 <= low <= high, got {iti_range}"
            )
        self.iti_range = (lo, hi)
        if num_distractors < 0:
            raise ValueError(f"num_distractors must be >= 0, got {num_distractors}")
        # distractor i = 1..m: onset probability 1 / (10 i) on a step where it is off
        self.distractor_p = 1.0 / (10.0 * np.arange(1, int(num_distractors) + 1))
        self.num_cs = self.patterns.shape[1]
        size = 1 + self.num_cs + int(num_distractors)
        self.observation_space = spaces.Box(0.0, 1.0, (size,), dtype=np.float32)
        self.action_space = spaces.Discrete(1)
        self._left = np.zeros(int(num_distractors), dtype=np.int64)  # steps each stays on
        self._tau = 0  # trial step
        self._trial: dict[str, Any] = {}

    def _new_trial(self) -> None:
        rng = self.np_random
        isi = int(rng.integers(self.isi_range[0], self.isi_range[1] + 1))
        iti = int(rng.integers(self.iti_range[0], self.iti_range[1] + 1))
        pattern = int(rng.integers(len(self.patterns)))
        us = bool(self.positive[pattern])
        if self.noise > 0.0 and rng.random() < self.noise:
            us = not us
        self._trial = {"isi": isi, "iti": iti, "pattern": pattern, "us": us}
        self._tau = 0

    def _observe(self) -> np.ndarray:
        """The current step's observation; advances the distractors by one step."""
        t, tau = self._trial, self._tau
        obs = np.zeros(self.observation_space.shape, dtype=np.float32)
        obs[0] = float(t["us"] and t["isi"] <= tau < t["isi"] + animal.US_STEPS)
        if tau < animal.CS_STEPS:
            obs[1 : 1 + self.num_cs] = self.patterns[t["pattern"]]
        if self._left.size:
            off = self._left == 0
            onset = off & (self.np_random.random(self._left.size) < self.distractor_p)
            self._left[onset] = animal.DISTRACTOR_STEPS
            obs[1 + self.num_cs :] = self._left > 0
            self._left = np.maximum(self._left - 1, 0)
        return obs

    def _info(self) -> dict[str, Any]:
        return {"trial_step": self._tau, **self._trial}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._left[:] = 0
        self._new_trial()
        obs = self._observe()
        return obs, {**self._info(), "gamma": self.gamma}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"the only action is 0 (it is ignored), got {action!r}")
        self._tau += 1
        t = self._trial
        if self._tau == t["isi"] + animal.US_STEPS + t["iti"]:
            self._new_trial()
        obs = self._observe()
        return obs, float(obs[0]), False, False, self._info()
