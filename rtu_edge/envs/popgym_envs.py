"""POPGym memory tasks (Morad et al., ICLR 2023), from the real ``popgym`` package classes.

Each env is ``popgym.envs.<module>.<Class>()`` with:

- observations one-hot encoded / flattened to a float32 vector (``FlattenObservation``);
- MultiDiscrete action spaces flattened to one Discrete over the product of the components
  (``FlattenMultiDiscreteAction``; none of the tasks below has one today);
- a TimeLimit at the task's own maximum episode length, so it never cuts an episode short.

popgym 1.0.7 on gymnasium 1.4: the classes follow the gymnasium reset/step API; the one defect is
that CountRecall returns the same ``counts`` array in every info dict and keeps mutating it
(it fails gymnasium's env checker). ``make`` hands out copies. Rewards are popgym's, scaled so
an episode's undiscounted return lies in [-1, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtu_edge.envs.registry import require

if TYPE_CHECKING:
    import gymnasium

# name: (popgym module, maximum episode length read from the built env, description)
TASKS = {
    "RepeatFirstEasy": (
        "popgym.envs.repeat_first",
        lambda env: env.max_episode_length,
        "POPGym: repeat the first card's suit, later cards are distractors"
        " (obs: suit one-hot 4, first card shown once); discrete 4",
    ),
    "CountRecallEasy": (
        "popgym.envs.count_recall",
        lambda env: env.max_episode_length,
        "POPGym: how often has the queried colour been dealt, past cards hidden"
        " (obs: dealt + query colour one-hot 2+2); discrete 27",
    ),
    "ConcentrationEasy": (
        "popgym.envs.concentration",
        lambda env: env.episode_length,
        "POPGym: flip pairs of 52 face-down cards to match colours, flipped-back cards hidden"
        " (obs: 52 cards one-hot 3); discrete 52",
    ),
    "AutoencodeEasy": (
        "popgym.envs.autoencode",
        lambda env: env.max_episode_length,
        "POPGym: watch 52 suits then output them in reverse, watched cards hidden"
        " (obs: mode one-hot 2 + suit one-hot 4); discrete 4",
    ),
    "HigherLowerEasy": (
        "popgym.envs.higher_lower",
        lambda env: env.deck_size - 1,
        "POPGym: guess whether the next card is higher, past cards hidden"
        " (obs: rank one-hot 13); discrete 2",
    ),
    "PositionOnlyCartPoleEasy": (
        "popgym.envs.position_only_cartpole",
        lambda env: env.max_episode_length,
        "POPGym CartPole, velocities hidden (obs: x, theta), 200 steps; discrete 2",
    ),
    "PositionOnlyPendulumEasy": (
        "popgym.envs.position_only_pendulum",
        lambda env: env.max_episode_length,
        "POPGym Pendulum, angular velocity hidden (obs: cos, sin), 200 steps;"
        " continuous 1 in [-2, 2]",
    ),
}


def make_popgym(name: str, **kwargs: Any) -> gymnasium.Env:
    """Build popgym's ``name`` class (a key of TASKS); kwargs go to its constructor."""
    env_id = f"popgym/{name}"
    module_name, max_steps, _ = TASKS[name]
    require("gymnasium", env_id)
    module = require(module_name, env_id)
    from gymnasium import spaces
    from gymnasium.wrappers import TimeLimit

    from rtu_edge.envs.wrappers import FlattenMultiDiscreteAction, FlattenObservation

    raw = getattr(module, name)(**kwargs)
    limit = int(max_steps(raw))
    env: gymnasium.Env = FlattenObservation(raw)
    if isinstance(env.action_space, spaces.MultiDiscrete):
        env = FlattenMultiDiscreteAction(env)
    return TimeLimit(env, max_episode_steps=limit)


def _factory(name: str):
    def factory(**kwargs: Any) -> gymnasium.Env:
        return make_popgym(name, **kwargs)

    factory.__name__ = f"make_{name}"
    factory.__doc__ = f"popgym {name}, observations one-hot encoded (see module docstring)."
    return factory


# (id, factory, description) for the registry.
ENVS = tuple((f"popgym/{name}", _factory(name), desc) for name, (_, _, desc) in TASKS.items())
