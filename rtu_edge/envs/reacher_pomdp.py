"""``mujoco/Reacher-POMDP``: gymnasium Reacher-v5 where the target must be remembered.

Reacher-v5's observation (gymnasium 1.x) is ``cos(qpos_arm)``, ``sin(qpos_arm)``,
``qpos_target`` (the target's x, y), ``qvel_arm``, then ``(fingertip - target)[:2]``. The arm
and target parts are found from the model's own joints (the target joints are the ones named
``target*``; their qpos addresses give the target's slice), not from fixed indices, and every
reset checks the layout against the simulator state (target entries equal the target joints'
qpos, the last two equal fingertip - target), so a gymnasium change fails loudly.

The POMDP, float32, 8 entries:
[cos(theta_1), cos(theta_2), sin(theta_1), sin(theta_2), target_x, target_y, theta_1_dot,
theta_2_dot], where target_x, target_y are the true target position in the first
``visible_steps`` observations of an episode (5 by default: the reset observation and those of
steps 1..4) and exactly 0 from then on; the fingertip-to-target vector is removed (it reveals
the target on every step). Actions (continuous 2 in [-1, 1]), reward (minus the fingertip-target
distance minus the control cost) and the 50-step time limit (a truncation: bootstrap from the
last state) are Reacher-v5's. The target is sampled uniformly in the disc of radius 0.2 at reset,
so a zero target reading is the "hidden" signal in practice. The reward still carries the
distance to the target, as in every Reacher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtu_edge.envs.mujoco_pomdp import _import_gymnasium_mujoco

if TYPE_CHECKING:
    import gymnasium

ENV_ID = "mujoco/Reacher-POMDP"
VISIBLE_STEPS = 5  # observations (reset + steps 1..4) that show the target
KEPT = ("cos", "sin", "target", "qvel")  # the parts of Reacher-v5's observation kept, in order


def reacher_pomdp(visible_steps: int = VISIBLE_STEPS, **kwargs: Any) -> gymnasium.Env:
    """Reacher-v5 with the target shown for ``visible_steps`` observations, then zeroed, and the
    fingertip-target vector removed. Other kwargs go to ``gymnasium.make``."""
    _import_gymnasium_mujoco(ENV_ID)
    import gymnasium as gym

    from rtu_edge.envs.reacher_env import ReacherPOMDP

    return ReacherPOMDP(gym.make("Reacher-v5", **kwargs), visible_steps)


ENVS = (
    (
        ENV_ID,
        reacher_pomdp,
        f"Reacher-v5, target shown only in the first {VISIBLE_STEPS} observations then 0,"
        " fingertip-target removed (obs: cos 2, sin 2, target 2, joint vel 2);"
        " continuous 2 in [-1, 1]",
    ),
)
