"""The wrapper behind ``mujoco/Reacher-POMDP`` (definition in rtu_edge/envs/reacher_pomdp.py).

Imported lazily by the factory (it needs gymnasium and MuJoCo).
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from rtu_edge.envs.reacher_pomdp import KEPT


def reacher_layout(env: gymnasium.Env) -> dict[str, slice]:
    """Slices of Reacher-v5's raw observation, from the model's joints:
    {"cos", "sin", "target", "qvel", "fingertip_minus_target"}."""
    model = env.unwrapped.model
    joints = [model.joint(i) for i in range(model.njnt)]
    target = [j for j in joints if j.name.startswith("target")]
    arm = [j for j in joints if not j.name.startswith("target")]
    arm_adr = sorted(int(j.qposadr[0]) for j in arm)
    target_adr = sorted(int(j.qposadr[0]) for j in target)
    n_arm, n_target = len(arm), len(target)
    # Reacher-v5 observes qpos[:n_arm] as angles and qpos[n_arm:] as the target: check that the
    # arm's hinges come first and the target's slides fill the rest.
    if (
        n_target != 2
        or arm_adr != list(range(n_arm))
        or target_adr != list(range(n_arm, n_arm + n_target))
        or model.nq != n_arm + n_target
    ):
        raise RuntimeError(f"{env.spec}: unexpected joints {[j.name for j in joints]}")
    sizes = {"cos": n_arm, "sin": n_arm, "target": n_target, "qvel": n_arm}
    sizes["fingertip_minus_target"] = 2
    layout, start = {}, 0
    for name, size in sizes.items():
        layout[name] = slice(start, start + size)
        start += size
    if start != env.observation_space.shape[0]:
        raise RuntimeError(
            f"{env.spec}: observation has {env.observation_space.shape[0]} entries, the"
            f" Reacher-v5 layout {sizes} has {start}; the gymnasium version changed it"
        )
    return layout


def check_layout(env: gymnasium.Env, layout: dict[str, slice], raw: np.ndarray) -> None:
    """Raise unless ``raw`` (the observation just returned) matches the simulator state."""
    base = env.unwrapped
    data = base.data
    n_arm = layout["cos"].stop - layout["cos"].start
    tip = (base.get_body_com("fingertip") - base.get_body_com("target"))[:2]
    ok = (
        np.allclose(raw[layout["cos"]], np.cos(data.qpos[:n_arm]))
        and np.allclose(raw[layout["sin"]], np.sin(data.qpos[:n_arm]))
        and np.array_equal(raw[layout["target"]], data.qpos[n_arm:])
        and np.array_equal(raw[layout["qvel"]], data.qvel[:n_arm])
        and np.allclose(raw[layout["fingertip_minus_target"]], tip)
    )
    if not ok:
        raise RuntimeError(
            f"{env.spec}: the observation no longer matches the Reacher-v5 layout {layout};"
            " the gymnasium version changed it"
        )


class ReacherPOMDP(gymnasium.Wrapper):
    """Keep cos, sin, target, qvel of Reacher-v5 (float32); zero the target from the
    ``visible_steps``-th observation of an episode on."""

    def __init__(self, env: gymnasium.Env, visible_steps: int):
        super().__init__(env)
        if int(visible_steps) < 0:
            raise ValueError(f"visible_steps must be >= 0, got {visible_steps}")
        self.visible_steps = int(visible_steps)
        self.layout = reacher_layout(env)
        self._keep = np.concatenate(
            [np.arange(self.layout[k].start, self.layout[k].stop) for k in KEPT]
        )
        lo, hi = self.layout["target"].start, self.layout["target"].stop
        self.target_index = np.flatnonzero((self._keep >= lo) & (self._keep < hi))  # in our obs
        inner = env.observation_space
        self.observation_space = spaces.Box(
            inner.low[self._keep].astype(np.float32),
            inner.high[self._keep].astype(np.float32),
            dtype=np.float32,
        )
        self._t = 0

    def _observe(self, raw: np.ndarray) -> np.ndarray:
        obs = np.asarray(raw)[self._keep].astype(np.float32)
        if self._t >= self.visible_steps:
            obs[self.target_index] = 0.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        raw, info = self.env.reset(seed=seed, options=options)
        check_layout(self.env, self.layout, raw)
        self._t = 0
        return self._observe(raw), info

    def step(self, action):
        raw, reward, terminated, truncated, info = self.env.step(action)
        self._t += 1
        return self._observe(raw), reward, terminated, truncated, info
