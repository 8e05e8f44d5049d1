"""The environment registry: ids of the form ``family/name`` mapped to factories.

This module imports no gymnasium, MuJoCo or popgym at import time, so the robot install (which
has none of them) can still read :class:`EnvInfo` and list the ids. Factories import what they
need when called; :func:`require` turns a missing package into an error that names the extra.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import gymnasium

DEFAULT_ENV = "classic/CartPole-P"

# "family/name": one slash, no spaces, nothing empty.
_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+")
_EXTRA_HINT = "pip install 'rtu-edge[train]'"


@dataclass(frozen=True)
class EnvInfo:
    """What a learner, exporter or robot needs to know about an environment, without building it."""

    env_id: str
    description: str  # one line, for `rtu-edge envs`
    obs_size: int  # length of the flat float32 observation
    action_kind: str  # "discrete" | "continuous"
    action_dims: int  # continuous: action vector length; discrete: 1
    num_actions: int  # discrete: number of actions; continuous: 0
    action_low: tuple[float, ...]  # per action dim (discrete: (0.0,))
    action_high: tuple[float, ...]  # per action dim (discrete: (num_actions - 1,))
    # What a robot holds when the controller is gone: zeros clipped into [low, high] for
    # continuous actions, action 0 for discrete ones (none of the built-in tasks has a no-op).
    safe_action: tuple[float, ...]
    max_episode_steps: int | None  # the TimeLimit applied by make(); None if unlimited


class UnknownEnvError(KeyError, ValueError):
    """An id that is not registered. Catch it as KeyError or ValueError."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class MissingDependencyError(ImportError):
    """An environment needs an optional package (gymnasium, mujoco, popgym) that is missing."""


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., gymnasium.Env]
    description: str


_REGISTRY: dict[str, _Entry] = {}
_INFO_CACHE: dict[str, EnvInfo] = {}


def register(env_id: str, factory: Callable[..., gymnasium.Env], description: str) -> None:
    """Add ``env_id`` ("family/name"); ``factory(**kwargs)`` must return an env with a flat
    float32 Box observation space, a Discrete or float32 Box action space, and a TimeLimit."""
    if not isinstance(env_id, str) or not _ID_PATTERN.fullmatch(env_id):
        raise ValueError(
            f"environment id {env_id!r} must look like 'family/name' (e.g. 'classic/CartPole-P'):"
            " one '/', letters, digits, '_', '.', '-'"
        )
    if env_id in _REGISTRY:
        raise ValueError(f"environment id {env_id!r} is already registered")
    if not callable(factory):
        raise TypeError(f"factory for {env_id!r} must be callable, got {type(factory).__name__}")
    if not description or not description.strip() or "\n" in description:
        raise ValueError(f"description for {env_id!r} must be one non-empty line")
    _REGISTRY[env_id] = _Entry(factory, description.strip())


def list_envs() -> list[tuple[str, str]]:
    """(id, description) for every registered environment, sorted by id."""
    return sorted((env_id, entry.description) for env_id, entry in _REGISTRY.items())


def make(env_id: str, seed: int | None = None, **kwargs: Any) -> gymnasium.Env:
    """Build ``env_id``; ``kwargs`` go to its factory.

    With a seed, the first ``reset()`` without a seed uses it (so two envs made with the same
    seed replay identically) and the action space is seeded too. Steps return at most one of
    terminated / truncated: when both hold, terminated wins. Info dicts are fresh copies.
    """
    entry = _lookup(env_id)
    env = entry.factory(**kwargs)
    from rtu_edge.envs.wrappers import RegistryEnv

    return RegistryEnv(env, env_id, seed)


def env_info(env_id: str) -> EnvInfo:
    """Sizes and bounds of ``env_id`` with default kwargs (builds it once, then cached)."""
    entry = _lookup(env_id)
    if env_id not in _INFO_CACHE:
        env = make(env_id)
        try:
            from rtu_edge.envs.wrappers import max_episode_steps

            _INFO_CACHE[env_id] = info_from_spaces(
                env_id,
                entry.description,
                env.observation_space,
                env.action_space,
                max_episode_steps(env),
            )
        finally:
            env.close()
    return _INFO_CACHE[env_id]


def info_from_spaces(
    env_id: str,
    description: str,
    observation_space: Any,
    action_space: Any,
    max_episode_steps: int | None,
) -> EnvInfo:
    """EnvInfo for spaces that already satisfy the registry's contract."""
    import numpy as np
    from gymnasium import spaces

    obs_size = int(np.prod(observation_space.shape))
    if isinstance(action_space, spaces.Discrete):
        n = int(action_space.n)
        low, high, safe = np.zeros(1), np.full(1, n - 1.0), np.zeros(1)
        kind, dims = "discrete", 1
    else:
        low = np.asarray(action_space.low, dtype=np.float64).reshape(-1)
        high = np.asarray(action_space.high, dtype=np.float64).reshape(-1)
        safe = np.clip(np.zeros_like(low), low, high)
        n, kind, dims = 0, "continuous", int(low.size)
    return EnvInfo(
        env_id=env_id,
        description=description,
        obs_size=obs_size,
        action_kind=kind,
        action_dims=dims,
        num_actions=n,
        action_low=tuple(float(x) for x in low),
        action_high=tuple(float(x) for x in high),
        safe_action=tuple(float(x) for x in safe),
        max_episode_steps=max_episode_steps,
    )


def require(module: str, env_id: str) -> ModuleType:
    """Import an optional package for ``env_id``, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{env_id} needs the '{module.split('.')[0]}' package, which is not installed"
            f" ({err}); install the training extra: {_EXTRA_HINT}"
        ) from err


def _lookup(env_id: str) -> _Entry:
    try:
        return _REGISTRY[env_id]
    except KeyError:
        pass
    close = _close_matches(str(env_id))
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownEnvError(
        f"unknown environment {env_id!r}.{hint} `rtu-edge envs` lists them all."
    ) from None


def _close_matches(query: str, n: int = 3) -> list[str]:
    """Registered ids nearest to ``query``, comparing whole ids and also the name after '/'
    (so 'CartPole-P' or 'mujoco/cartpole-p' still finds 'classic/CartPole-P')."""
    q = query.lower()
    q_name = q.rsplit("/", 1)[-1]
    scored = []
    for env_id in _REGISTRY:
        full = env_id.lower()
        name = full.rsplit("/", 1)[-1]
        score = max(
            difflib.SequenceMatcher(None, q, full).ratio(),
            difflib.SequenceMatcher(None, q_name, name).ratio(),
        )
        if score >= 0.6:
            scored.append((-score, env_id))
    return [env_id for _, env_id in sorted(scored)[:n]]
