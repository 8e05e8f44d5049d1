"""The env behind the ``memory/chain-L`` ids (definition in rtu_edge/envs/memory.py).

Imported lazily by the factories (it needs gymnasium, a training-only dependency).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces


class MemoryChain(gymnasium.Env):
    """L steps; the context (+-1) is shown at t = 0, the query (one-hot) at t = L-1; the action
    taken after the query is rewarded +1 if it names the queried context bit, else -1."""

    metadata = {"render_modes": []}

    def __init__(self, length: int, num_bits: int = 1):
        length, num_bits = int(length), int(num_bits)
        if length < 1 or num_bits < 1:
            raise ValueError(f"length and num_bits must be >= 1, got {length}, {num_bits}")
        self.length, self.num_bits = length, num_bits
        low = np.concatenate(([0.0], -np.ones(num_bits), np.zeros(num_bits))).astype(np.float32)
        self.observation_space = spaces.Box(low, np.ones_like(low), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._t = 0
        self._context = np.zeros(num_bits, dtype=np.int64)
        self._query = 0

    def _observe(self) -> np.ndarray:
        n, t = self.num_bits, self._t
        obs = np.zeros(1 + 2 * n, dtype=np.float32)
        obs[0] = 1.0 - t / self.length
        if t == 0:
            obs[1 : 1 + n] = 2 * self._context - 1
        if t == self.length - 1:
            obs[1 + n + self._query] = 1.0
        return obs

    def _info(self) -> dict[str, Any]:
        return {"context": self._context.copy(), "query": self._query}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._context = self.np_random.integers(0, 2, self.num_bits)
        self._query = int(self.np_random.integers(self.num_bits))
        return self._observe(), self._info()

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action must be 0 or 1, got {action!r}")
        if self._t >= self.length:
            raise RuntimeError("the episode has ended: call reset()")
        answer = self._t == self.length - 1
        self._t += 1
        if not answer:
            return self._observe(), 0.0, False, False, self._info()
        reward = 1.0 if int(action) == int(self._context[self._query]) else -1.0
        obs = np.zeros(1 + 2 * self.num_bits, dtype=np.float32)  # time left 0, nothing shown
        return obs, reward, True, False, self._info()
