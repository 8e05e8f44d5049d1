"""Classic-control POMDPs: gymnasium CartPole-v1 / Pendulum-v1 with parts of the state hidden.

Cheap (a few microseconds a step) and learnable in minutes on a CPU: the default for demos and
smoke tests. Masks are written against the observation layouts documented by gymnasium.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtu_edge.envs.registry import require

if TYPE_CHECKING:
    import gymnasium

# gymnasium's documented CartPole-v1 observation, in order.
CARTPOLE_OBS = ("cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity")
# CartPole-P keeps the positions; both velocities are hidden.
CARTPOLE_P_KEEP = ("cart_position", "pole_angle")

# gymnasium's documented Pendulum-v1 observation, in order.
PENDULUM_OBS = ("cos_theta", "sin_theta", "angular_velocity")
# Pendulum-P keeps the angle (as cos, sin); the angular velocity is hidden.
PENDULUM_P_KEEP = ("cos_theta", "sin_theta")


def _masked(env_id: str, gym_id: str, layout: tuple[str, ...], keep: tuple[str, ...], **kwargs):
    """``gymnasium.make(gym_id)`` (which applies its TimeLimit) observing only ``keep``."""
    gym = require("gymnasium", env_id)
    from rtu_edge.envs.wrappers import SelectObservation

    env = gym.make(gym_id, **kwargs)
    if env.observation_space.shape != (len(layout),):
        raise RuntimeError(
            f"{gym_id} observation is {env.observation_space.shape}, expected the documented"
            f" layout {layout}; the gymnasium version changed it"
        )
    return SelectObservation(env, [layout.index(name) for name in keep])


def cartpole_p(**kwargs: Any) -> gymnasium.Env:
    """CartPole-v1 observing [cart position, pole angle]; velocities hidden."""
    return _masked("classic/CartPole-P", "CartPole-v1", CARTPOLE_OBS, CARTPOLE_P_KEEP, **kwargs)


def cartpole(**kwargs: Any) -> gymnasium.Env:
    """CartPole-v1 with the full observation, for comparison with CartPole-P."""
    return _masked("classic/CartPole", "CartPole-v1", CARTPOLE_OBS, CARTPOLE_OBS, **kwargs)


def pendulum_p(**kwargs: Any) -> gymnasium.Env:
    """Pendulum-v1 observing [cos(theta), sin(theta)]; angular velocity hidden."""
    return _masked("classic/Pendulum-P", "Pendulum-v1", PENDULUM_OBS, PENDULUM_P_KEEP, **kwargs)


# (id, factory, description) for the registry.
ENVS = (
    (
        "classic/CartPole-P",
        cartpole_p,
        "CartPole-v1, velocities hidden (obs: x, theta); discrete 2",
    ),
    (
        "classic/CartPole",
        cartpole,
        "CartPole-v1, full observation (obs: x, x_dot, theta, theta_dot); discrete 2",
    ),
    (
        "classic/Pendulum-P",
        pendulum_p,
        "Pendulum-v1, angular velocity hidden (obs: cos, sin); continuous 1 in [-2, 2]",
    ),
)
