"""Environments for recurrent agents, by id ("family/name").

    >>> from rtu_edge.envs import make, env_info, list_envs, DEFAULT_ENV
    >>> env = make(DEFAULT_ENV, seed=0)   # CartPole-v1 with velocities hidden
    >>> obs, info = env.reset()           # the first reset uses seed 0

Every env from ``make`` has a flat float32 Box observation space, a Discrete(n) or float32 Box
action space, the gymnasium reset/step API and a TimeLimit. Families: ``classic`` (gymnasium
classic control, masked), ``mujoco`` (v5 locomotion, -P positions / -V velocities only, and
Reacher-POMDP), ``popgym`` (the POPGym memory tasks), ``animal`` (trace conditioning and
patterning prediction streams) and ``memory`` (bsuite's memory chain). ``rtu-edge envs`` lists
them; docs/environments.md defines each.

Importing this package is cheap and needs neither gymnasium, MuJoCo nor popgym (nor torch):
factories import them when called.
"""

from rtu_edge.envs import animal, classic, memory, mujoco_pomdp, popgym_envs, reacher_pomdp
from rtu_edge.envs.registry import (
    DEFAULT_ENV,
    EnvInfo,
    MissingDependencyError,
    UnknownEnvError,
    env_info,
    list_envs,
    make,
    register,
)

__all__ = [
    "DEFAULT_ENV",
    "EnvInfo",
    "MissingDependencyError",
    "UnknownEnvError",
    "env_info",
    "list_envs",
    "make",
    "register",
]

for _env_id, _factory, _description in (
    *classic.ENVS,
    *mujoco_pomdp.ENVS,
    *reacher_pomdp.ENVS,
    *popgym_envs.ENVS,
    *animal.ENVS,
    *memory.ENVS,
):
    register(_env_id, _factory, _description)
del _env_id, _factory, _description
