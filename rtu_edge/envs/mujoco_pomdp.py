"""MuJoCo POMDPs on gymnasium's v5 locomotion tasks (Ant, HalfCheetah, Hopper, Walker2d).

A v5 observation is ``qpos[k:]`` (the root's global x, or x and y for Ant, are excluded by
default: ``exclude_current_positions_from_observation``), then ``qvel``, then for Ant the
contact forces ``cfrc_ext``. gymnasium documents this split in
``env.unwrapped.observation_structure``; the masks are built from it, not from fixed indices:

- ``-P`` keeps the position part ``qpos[k:]`` (joint angles, root height and orientation);
  every velocity is hidden.
- ``-V`` keeps the velocity part ``qvel`` (all of it, root velocities included); every position
  and angle is hidden. Hopper and Walker2d clip these to [-10, 10] (gymnasium's behaviour).
- the plain id (e.g. ``mujoco/HalfCheetah``) keeps both, for comparison.

Ant is built with ``include_cfrc_ext_in_observation=False``, so its observation is the
authors' 13 positions + 14 velocities (v5 otherwise appends 78 contact forces).

Difference from the RTU authors' code: their HalfCheetah split was 9/8, a slicing quirk that put
the root-x velocity into -P. Ours is the clean 8 positions / 9 velocities.

Time limit: 1000 steps, reported as truncation (bootstrap from the last state). Pass
``authors_time_limit=True`` to ``make`` to report it as termination, as the authors did.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from rtu_edge.envs.registry import require

if TYPE_CHECKING:
    import gymnasium

# rtu-edge name -> gymnasium id.
TASKS = {
    "Ant": "Ant-v5",
    "HalfCheetah": "HalfCheetah-v5",
    "Hopper": "Hopper-v5",
    "Walker2d": "Walker2d-v5",
}
# For the descriptions only (the masks are derived at build time): gymnasium v5 docs.
_SIZES = {  # name: (excluded root coords, positions kept, velocities, action dims)
    "Ant": ("x, y", 13, 14, 8),
    "HalfCheetah": ("x", 8, 9, 6),
    "Hopper": ("x", 5, 6, 3),
    "Walker2d": ("x", 8, 9, 6),
}
PARTS = ("P", "V", "full")


def env_id_for(name: str, part: str) -> str:
    """Registry id: "mujoco/Ant-P", "mujoco/Ant-V", or "mujoco/Ant" for the full observation."""
    return f"mujoco/{name}" + ("" if part == "full" else f"-{part}")


def _import_gymnasium_mujoco(env_id: str) -> None:
    """Import gymnasium's MuJoCo envs, tolerating a missing ``imageio``.

    ``gymnasium.envs.mujoco`` imports imageio at module level only to save screenshots from the
    human viewer. When it is absent, a stand-in is visible during that one import (and removed
    from ``sys.modules`` afterwards) whose ``imwrite`` says to install imageio.
    """
    if "gymnasium.envs.mujoco" in sys.modules:
        return
    require("gymnasium", env_id)
    require("mujoco", env_id)
    try:
        import imageio  # noqa: F401

        stub = None
    except ImportError:
        stub = types.ModuleType("imageio")

        def imwrite(*_args: Any, **_kwargs: Any) -> None:
            raise ImportError("saving MuJoCo viewer frames needs imageio: pip install imageio")

        stub.imwrite = imwrite  # type: ignore[attr-defined]
        sys.modules["imageio"] = stub
    try:
        require("gymnasium.envs.mujoco", env_id)
    finally:
        if stub is not None and sys.modules.get("imageio") is stub:
            del sys.modules["imageio"]


def observation_parts(env: gymnasium.Env) -> dict[str, slice]:
    """Slices of the raw v5 observation: {"P": qpos part, "V": qvel part, "full": both}."""
    base = env.unwrapped
    structure = base.observation_structure
    n_pos, n_vel = int(structure["qpos"]), int(structure["qvel"])
    if (
        n_pos + int(structure["skipped_qpos"]) != base.data.qpos.size
        or n_vel != base.data.qvel.size
    ):
        raise RuntimeError(f"{env.spec}: observation_structure {structure} disagrees with data")
    return {"P": slice(0, n_pos), "V": slice(n_pos, n_pos + n_vel), "full": slice(0, n_pos + n_vel)}


def make_mujoco(
    name: str, part: str, *, authors_time_limit: bool = False, **kwargs: Any
) -> gymnasium.Env:
    """Build ``name`` (a key of TASKS) keeping ``part`` ("P", "V" or "full") of its observation.

    Other kwargs go to ``gymnasium.make`` (e.g. ``max_episode_steps``, ``render_mode``).
    """
    _import_gymnasium_mujoco(env_id_for(name, part))
    import gymnasium as gym

    from rtu_edge.envs.wrappers import SelectObservation, TruncationAsTermination

    if name == "Ant":
        kwargs.setdefault("include_cfrc_ext_in_observation", False)
    env = gym.make(TASKS[name], **kwargs)
    keep = observation_parts(env)[part]
    env = SelectObservation(env, range(keep.start, keep.stop))
    if authors_time_limit:
        env = TruncationAsTermination(env)
    return env


def _factory(name: str, part: str):
    def factory(**kwargs: Any) -> gymnasium.Env:
        return make_mujoco(name, part, **kwargs)

    factory.__name__ = f"make_{name}_{part}"
    factory.__doc__ = f"{TASKS[name]}, {part} part of the observation (see module docstring)."
    return factory


def _description(name: str, part: str) -> str:
    skipped, n_pos, n_vel, n_act = _SIZES[name]
    gym_id = TASKS[name]
    extra = ", no contact forces" if name == "Ant" else ""
    action = f"continuous {n_act} in [-1, 1]"
    if part == "P":
        what = f"velocities hidden (obs: {n_pos} qpos, root {skipped} excluded{extra})"
    elif part == "V":
        what = f"positions and angles hidden (obs: {n_vel} qvel{extra})"
    else:
        what = f"full observation (obs: {n_pos} qpos + {n_vel} qvel{extra})"
    return f"{gym_id}, {what}; {action}"


# (id, factory, description) for the registry.
ENVS = tuple(
    (env_id_for(name, part), _factory(name, part), _description(name, part))
    for name in TASKS
    for part in PARTS
)
