"""The benchmark tasks written here, against their documented definitions: the animal-learning
streams (rtu_edge/envs/animal.py), the memory chain (memory.py) and Reacher-POMDP
(reacher_pomdp.py). Every one of them also passes test_envs.py's conformance test."""

from __future__ import annotations

import numpy as np
import pytest

from rtu_edge.envs import animal, env_info, make, memory
from rtu_edge.train import msre

# --- animal/ ----------------------------------------------------------------------------------


def stream(env_id: str, steps: int, seed: int = 0, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Observations (reset + ``steps`` steps) and rewards (rewards[0] = 0 for the reset)."""
    env = make(env_id, seed=seed, **kwargs)
    obs, _ = env.reset()
    observations, rewards = [obs], [0.0]
    for _ in range(steps):
        obs, reward, terminated, truncated, _ = env.step(0)
        assert not (terminated or truncated)
        observations.append(obs)
        rewards.append(reward)
    return np.array(observations), np.array(rewards)


def runs(bit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(onsets, lengths) of the runs of 1s in a 0/1 series (a run cut by the end is dropped)."""
    padded = np.concatenate(([0], bit.astype(np.int8), [0]))
    edges = np.diff(padded)
    onsets, offsets = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    keep = offsets < len(bit)
    return onsets[keep], (offsets - onsets)[keep]


@pytest.mark.parametrize(
    "env_id, isi0", [("animal/trace-conditioning", 10), ("animal/trace-conditioning-isi30", 30)]
)
def test_trace_conditioning_timing_over_many_trials(env_id, isi0):
    obs, rewards = stream(env_id, steps=300 * 115)
    us, cs, distractors = obs[:, 0], obs[:, 1], obs[:, 2:]
    assert obs.shape[1] == 12 and set(np.unique(obs)) <= {0.0, 1.0}
    np.testing.assert_array_equal(rewards[1:], us[1:])  # the cumulant is the US of S_t
    assert cs[0] == 1.0  # the reset observation is trial step 0

    cs_on, cs_len = runs(cs)
    us_on, us_len = runs(us)
    assert cs_on[0] == 0 and len(cs_on) > 250
    assert set(cs_len) == {animal.CS_STEPS} and set(us_len) == {animal.US_STEPS}
    n = min(len(cs_on) - 1, len(us_on))
    isi = us_on[:n] - cs_on[:n]  # CS onset to US onset, every trial delivers the US
    iti = cs_on[1 : n + 1] - (us_on[:n] + animal.US_STEPS)  # US offset to the next CS onset
    lo, hi = isi0 - isi0 // 3, isi0 + isi0 // 3
    assert set(isi) == set(range(lo, hi + 1))  # uniform integers: every value turns up
    assert iti.min() >= 80 and iti.max() <= 120
    assert iti.min() <= 82 and iti.max() >= 118
    assert abs(iti.mean() - 100) < 2.0 and abs(isi.mean() - isi0) < 0.1 * isi0

    # distractor i turns on with probability 1/(10 i) on a step where it is off, for 4 steps
    for i in (1, 2, 5, 10):
        bit = distractors[:, i - 1]
        _, length = runs(bit)
        assert set(length % animal.DISTRACTOR_STEPS) == {0}  # back-to-back onsets join runs
        onsets = length.sum() // animal.DISTRACTOR_STEPS
        p_hat = onsets / (np.sum(bit == 0) + onsets)  # an onset step was off before its draw
        assert abs(p_hat * 10 * i - 1) < 0.1, (i, p_hat)


def test_gamma_for_each_isi_is_exposed():
    for env_id, isi0, gamma in [
        ("animal/trace-conditioning", 10, 0.9),
        ("animal/trace-patterning-isi30", 30, 0.966),
        ("animal/noisy-patterning", 10, 0.9),
    ]:
        env = make(env_id, seed=0)
        _, info = env.reset()
        assert env.unwrapped.gamma == info["gamma"] == gamma and env.unwrapped.isi0 == isi0
    env = make("animal/trace-conditioning", isi0=40)
    assert env.unwrapped.gamma == 0.975 and env.unwrapped.isi_range == (27, 53)
    assert make("animal/trace-conditioning", isi0=7).unwrapped.gamma == pytest.approx(1 - 1 / 7)
    with pytest.raises(TypeError):  # the -isi30 id fixes its ISI0
        make("animal/trace-conditioning-isi30", isi0=10)


@pytest.mark.parametrize("env_id", ["animal/trace-conditioning", "animal/noisy-patterning-isi30"])
def test_msre_of_the_true_return_is_zero(env_id):
    """Fed as rtu_edge/train.py feeds a learner (call i: S_i, the C_i that came with it, first
    only on call 0), the return computed forward from the US bits has MSRE 0 under train.msre:
    the env's cumulant and the US of its observations line up with the metric."""
    env = make(env_id, seed=3)
    gamma = env.unwrapped.gamma
    obs, rewards = stream(env_id, steps=3000, seed=3)
    us = obs[:, 0].astype(np.float64)
    first = np.zeros(len(us))
    first[0] = 1.0
    # G_i = sum_k>=1 gamma^(k-1) US_{i+k}, cut at the end of the window as msre cuts it
    discounts = gamma ** np.arange(len(us))
    true_return = np.array([discounts[: len(us) - 1 - i] @ us[i + 1 :] for i in range(len(us))])
    assert msre(true_return, rewards, first, gamma) == pytest.approx(0.0, abs=1e-10)
    assert msre(np.zeros_like(true_return), rewards, first, gamma) > 1e-3  # not trivially 0


def test_trace_patterning_patterns_and_outcomes():
    pats, positive = animal.patterns()
    assert len(pats) == 20 and len(set(pats)) == 20 and all(sum(p) == 3 for p in pats)
    assert sum(positive) == 10
    obs, _ = stream("animal/trace-patterning", steps=200 * 115, seed=1)
    cs, us = obs[:, 1:7], obs[:, 0]
    onsets, length = runs(cs.any(axis=1))
    assert set(length) == {animal.CS_STEPS}
    seen = set()
    for start, end in zip(onsets[:-1], onsets[1:]):
        pattern = tuple(int(x) for x in cs[start])
        assert np.all(cs[start : start + animal.CS_STEPS] == cs[start])  # one pattern, 4 steps
        seen.add(pattern)
        delivered = us[start:end].any()
        assert delivered == positive[pats.index(pattern)], pattern  # noise-free
        if delivered:
            us_on = start + np.flatnonzero(us[start:end])[0]
            assert 7 <= us_on - start <= 13
    assert seen == set(pats)


def test_noisy_patterning_flips_outcomes_with_the_noise_level():
    pats, positive = animal.patterns()
    env = make("animal/noisy-patterning", seed=2, iti_range=(1, 1), num_distractors=0)
    env.reset()
    flips = trials = 0
    for _ in range(30_000):
        _, _, _, _, info = env.step(0)
        if info["trial_step"] == 0:
            trials += 1
            flips += info["us"] != positive[info["pattern"]]
    assert trials > 1500
    assert abs(flips / trials - animal.NOISE) < 0.02
    env = make("animal/noisy-patterning", noise=0.5)
    assert env.unwrapped.noise == 0.5


def test_animal_streams_ignore_their_one_action():
    env = make("animal/trace-conditioning", seed=0)
    assert env.action_space.n == 1 and env_info("animal/trace-conditioning").num_actions == 1
    env.reset()
    env.step(0)
    with pytest.raises(ValueError, match="only action is 0"):
        env.step(1)
    assert env_info("animal/trace-conditioning").max_episode_steps == animal.STREAM_STEPS


def test_distractors_can_be_turned_off():
    obs, _ = stream("animal/trace-conditioning", steps=500, num_distractors=0)
    assert obs.shape[1] == 2


# --- memory/chain-L ---------------------------------------------------------------------------


def play_chain(env_id: str, policy, episodes: int, seed: int = 0, **kwargs) -> list[float]:
    """Episode returns of ``policy(obs, t, memory) -> (action, memory)``."""
    env = make(env_id, seed=seed, **kwargs)
    length = env.unwrapped.length
    returns = []
    for _ in range(episodes):
        obs, _ = env.reset()
        memory, total = None, 0.0
        for t in range(length):
            action, memory = policy(obs, t, memory)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += reward
            assert terminated == (t == length - 1) and not truncated
            if t < length - 1:
                assert reward == 0.0
        assert reward in (1.0, -1.0)
        returns.append(total)
    return returns


def remember(obs, t, memory):
    """Store the context shown at t = 0; answer the queried bit when the query appears."""
    n = (obs.size - 1) // 2
    if t == 0:
        memory = (obs[1 : 1 + n] > 0).astype(int)
    query = obs[1 + n :]
    return (int(memory[np.argmax(query)]) if query.any() else 0), memory


@pytest.mark.parametrize("length", [2, 16, 128])
def test_memory_chain_remembering_wins_a_constant_policy_breaks_even(length):
    env_id = f"memory/chain-{length}"
    assert env_info(env_id).max_episode_steps == length
    assert play_chain(env_id, remember, episodes=100) == [1.0] * 100
    for constant in (0, 1):
        returns = play_chain(env_id, lambda obs, t, m, a=constant: (a, m), episodes=400, seed=5)
        assert abs(np.mean(returns)) < 0.15  # 3 standard errors of a fair +-1 coin


def test_memory_chain_observations():
    env = make("memory/chain-4", seed=0)
    obs, info = env.reset()
    context = int(info["context"][0])
    np.testing.assert_array_equal(obs, [1.0, 2 * context - 1, 0.0])
    seen = [obs]
    for _ in range(4):
        obs, *_ = env.step(0)
        seen.append(obs)
    np.testing.assert_array_equal(
        np.array(seen),
        [[1, 2 * context - 1, 0], [0.75, 0, 0], [0.5, 0, 0], [0.25, 0, 1], [0, 0, 0]],
    )
    # several bits: the query is one-hot, the remembering policy still always wins
    assert play_chain("memory/chain-8", remember, episodes=50, num_bits=3) == [1.0] * 50
    assert make("memory/chain-8", num_bits=3).observation_space.shape == (7,)


# --- mujoco/Reacher-POMDP ---------------------------------------------------------------------


def test_reacher_pomdp_shows_the_target_only_at_the_start():
    env = make("mujoco/Reacher-POMDP", seed=4)
    env.action_space.seed(4)
    base = env.unwrapped
    k = 5
    for _episode in range(2):
        obs, _ = env.reset()
        t, done = 0, False
        while not done:
            qpos, qvel = base.data.qpos, base.data.qvel
            expected = np.concatenate(
                [np.cos(qpos[:2]), np.sin(qpos[:2]), qpos[2:4] if t < k else [0, 0], qvel[:2]]
            ).astype(np.float32)
            np.testing.assert_allclose(obs, expected, rtol=1e-6, atol=1e-7)
            if t < k:
                assert np.all(obs[4:6] != 0) and np.array_equal(
                    obs[4:6], qpos[2:4].astype(np.float32)
                )
            else:
                assert np.all(obs[4:6] == 0)
            # no entry is (either component of) the fingertip-to-target vector
            tip = (base.get_body_com("fingertip") - base.get_body_com("target"))[:2]
            assert not np.isin(obs, tip.astype(np.float32)).any()
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
            t += 1
        assert t == 50 and truncated  # Reacher-v5's time limit, a truncation
    assert env_info("mujoco/Reacher-POMDP").obs_size == 8


def test_reacher_pomdp_visible_steps_option():
    env = make("mujoco/Reacher-POMDP", seed=0, visible_steps=0)
    obs, _ = env.reset()
    assert np.all(obs[4:6] == 0)
    env = make("mujoco/Reacher-POMDP", seed=0, visible_steps=2)
    obs, _ = env.reset()
    seen = [obs[4:6].copy()]
    for _ in range(3):
        seen.append(env.step(env.action_space.sample())[0][4:6])
    assert [bool(np.any(s)) for s in seen] == [True, True, False, False]


# --- docs -------------------------------------------------------------------------------------


def test_docs_environments_cover_every_family_and_the_new_ids():
    from pathlib import Path

    from rtu_edge.envs import list_envs

    text = (Path(__file__).resolve().parents[2] / "docs" / "environments.md").read_text()
    ids = [env_id for env_id, _ in list_envs()]
    for family in {env_id.split("/")[0] for env_id in ids}:
        assert f"## {family}/" in text, family
    for env_id in ids:
        family, name = env_id.split("/")
        if family == "animal":
            assert f"`animal/{name.removesuffix('-isi30')}`" in text, env_id
    lengths = "{" + ", ".join(str(n) for n in memory.LENGTHS) + "}"
    assert f"L in {lengths}" in text
    assert "## mujoco/Reacher-POMDP" in text
