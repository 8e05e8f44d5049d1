"""Thin gymnasium wrappers that give every registered environment the same face.

Imported lazily by the factories (it needs gymnasium, a training-only dependency).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit


class RegistryEnv(gymnasium.Wrapper):
    """The outermost wrapper of every env from ``make``.

    - checks the space contract once (flat float32 Box observations; Discrete or float32 Box
      actions), so a third-party factory that breaks it fails at ``make``, not mid-training;
    - uses the seed given to ``make`` on the first ``reset()`` that has none, and seeds the
      action space with it;
    - returns at most one of terminated / truncated (terminated wins when both hold: a natural
      end that coincides with the time limit is an end, not a cut);
    - returns fresh info dicts, with arrays copied (popgym's CountRecall hands out one array that
      it keeps mutating).
    """

    def __init__(self, env: gymnasium.Env, env_id: str, seed: int | None = None):
        super().__init__(env)
        check_spaces(env_id, env.observation_space, env.action_space)
        self.env_id = env_id
        self._first_seed = seed
        if seed is not None:
            self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is None:
            seed = self._first_seed
        self._first_seed = None
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, copy_info(info)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        terminated = bool(terminated)
        truncated = bool(truncated) and not terminated
        return obs, float(reward), terminated, truncated, copy_info(info)


def check_spaces(env_id: str, observation_space: spaces.Space, action_space: spaces.Space):
    """Raise TypeError unless the spaces follow the registry's contract."""
    obs_ok = (
        isinstance(observation_space, spaces.Box)
        and observation_space.dtype == np.float32
        and len(observation_space.shape) == 1
    )
    if not obs_ok:
        raise TypeError(
            f"{env_id}: observation space must be a flat float32 Box, got {observation_space};"
            " wrap the env in SelectObservation or FlattenObservation"
        )
    discrete_ok = isinstance(action_space, spaces.Discrete) and int(action_space.start) == 0
    box_ok = (
        isinstance(action_space, spaces.Box)
        and action_space.dtype == np.float32
        and len(action_space.shape) == 1
    )
    if not (discrete_ok or box_ok):
        raise TypeError(
            f"{env_id}: action space must be Discrete(n) starting at 0 or a flat float32 Box,"
            f" got {action_space}"
        )


def copy_info(info: dict[str, Any]) -> dict[str, Any]:
    """A new dict whose array values are copies, safe to store or mutate."""
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in info.items()}


def max_episode_steps(env: gymnasium.Env) -> int | None:
    """The limit of the first TimeLimit in the wrapper chain, or None."""
    while True:
        if isinstance(env, TimeLimit):
            return int(env._max_episode_steps)
        if not isinstance(env, gymnasium.Wrapper):
            return None
        env = env.env


class SelectObservation(gymnasium.ObservationWrapper):
    """Keep the observation entries at ``indices`` (in that order), as float32.

    The Box bounds are the wrapped space's bounds at those indices.
    """

    def __init__(self, env: gymnasium.Env, indices: Sequence[int]):
        super().__init__(env)
        inner = env.observation_space
        if not isinstance(inner, spaces.Box) or len(inner.shape) != 1:
            raise TypeError(f"SelectObservation needs a flat Box observation space, got {inner}")
        self.indices = np.asarray(indices, dtype=np.intp)
        if self.indices.size == 0:
            raise ValueError("SelectObservation needs at least one index")
        self.observation_space = spaces.Box(
            low=inner.low[self.indices].astype(np.float32),
            high=inner.high[self.indices].astype(np.float32),
            dtype=np.float32,
        )

    def observation(self, observation):
        return np.asarray(observation)[self.indices].astype(np.float32)


class FlattenObservation(gymnasium.ObservationWrapper):
    """Encode Discrete / MultiDiscrete / MultiBinary / Box / Tuple observations as one flat
    float32 vector: Discrete(n) -> one-hot of length n; MultiDiscrete(nvec) -> one one-hot per
    component, concatenated; MultiBinary and Box -> flattened values; Tuple -> its parts
    concatenated in order."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        low, high, self._encode = _encoder(env.observation_space)
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)

    def observation(self, observation):
        return self._encode(observation)


def _encoder(space: spaces.Space) -> tuple[np.ndarray, np.ndarray, Callable[[Any], np.ndarray]]:
    """(low, high, encode) for one space; encode returns a flat float32 array."""
    if isinstance(space, spaces.Discrete):
        n, start = int(space.n), int(space.start)

        def one_hot(x: Any) -> np.ndarray:
            out = np.zeros(n, dtype=np.float32)
            out[int(x) - start] = 1.0
            return out

        return np.zeros(n, np.float32), np.ones(n, np.float32), one_hot
    if isinstance(space, spaces.MultiDiscrete):
        nvec = space.nvec.reshape(-1).astype(np.intp)
        start = space.start.reshape(-1).astype(np.intp)
        offsets = np.concatenate(([0], np.cumsum(nvec)[:-1])).astype(np.intp)
        size = int(nvec.sum())

        def multi_one_hot(x: Any) -> np.ndarray:
            out = np.zeros(size, dtype=np.float32)
            out[offsets + np.asarray(x, dtype=np.intp).reshape(-1) - start] = 1.0
            return out

        return np.zeros(size, np.float32), np.ones(size, np.float32), multi_one_hot
    if isinstance(space, spaces.MultiBinary):
        size = int(np.prod(space.shape))
        return (
            np.zeros(size, np.float32),
            np.ones(size, np.float32),
            lambda x: np.asarray(x, dtype=np.float32).reshape(-1),
        )
    if isinstance(space, spaces.Box):
        return (
            space.low.reshape(-1).astype(np.float32),
            space.high.reshape(-1).astype(np.float32),
            lambda x: np.asarray(x, dtype=np.float32).reshape(-1),
        )
    if isinstance(space, spaces.Tuple):
        parts = [_encoder(s) for s in space.spaces]
        encoders = [enc for _, _, enc in parts]

        def concat(x: Any) -> np.ndarray:
            return np.concatenate([enc(xi) for enc, xi in zip(encoders, x, strict=True)])

        return (
            np.concatenate([low for low, _, _ in parts]),
            np.concatenate([high for _, high, _ in parts]),
            concat,
        )
    raise NotImplementedError(f"FlattenObservation cannot encode {space}")


class FlattenMultiDiscreteAction(gymnasium.ActionWrapper):
    """Expose a MultiDiscrete(nvec) action space as one Discrete(prod(nvec)).

    Action ``a`` maps to ``np.unravel_index(a, nvec)`` (C order: the last component varies
    fastest), plus the space's ``start`` offsets.
    """

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        inner = env.action_space
        if not isinstance(inner, spaces.MultiDiscrete):
            raise TypeError(f"FlattenMultiDiscreteAction needs MultiDiscrete, got {inner}")
        self._nvec = tuple(int(n) for n in inner.nvec.reshape(-1))
        self._shape = inner.nvec.shape
        self._start = inner.start
        self.action_space = spaces.Discrete(int(np.prod(self._nvec)))

    def action(self, action):
        parts = np.array(np.unravel_index(int(action), self._nvec), dtype=np.int64)
        return parts.reshape(self._shape) + self._start


class TruncationAsTermination(gymnasium.Wrapper):
    """Report a time-limit cut as termination (no bootstrapping), as the RTU authors' code did.

    Only for reproducing their curves: it makes the value of the last state look like zero.
    """

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if truncated and not terminated:
            terminated, truncated = True, False
        return obs, reward, terminated, truncated, info
