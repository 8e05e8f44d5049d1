"""Animal-learning prediction streams (Rafiee et al. 2022, "From eye-blinks to state
construction"): trace conditioning, trace patterning and noisy patterning.

These are prediction tasks: the learner predicts the discounted sum of the US, which the env
hands out as its reward. The definitions below are this project's, written from the benchmark's
description (/work/shared/design/benchmarks.md); they were not checked against the authors' code.

One endless stream of trials, time in steps. A trial starts at trial step 0:

- CS: the trial's CS pattern is on for trial steps 0, 1, 2, 3 (4 steps).
- ISI (inter-stimulus interval, CS onset to US onset) ~ uniform integer in
  [ISI0 - floor(ISI0/3), ISI0 + floor(ISI0/3)], drawn at trial start (ISI0 = 10: 7..13;
  ISI0 = 30: 20..40).
- US: on for trial steps ISI and ISI + 1 (2 steps), in trials that deliver it.
- ITI (inter-trial interval, US offset to the next CS onset) ~ uniform integer in [80, 120]: the
  trial lasts ISI + 2 + ITI steps and the next one starts at trial step ISI + 2 + ITI.
- Distractors (10 by default, ``num_distractors``): distractor i = 1..10 is an independent bit;
  on a step where it is off it turns on with probability 1/(10 i) (1/10, 1/20, ..., 1/100) and
  then stays on for exactly 4 steps, whatever the trial does.

Observation: float32 binary vector [US, CS_1..CS_k, D_1..D_m] of the current step.
Reward (the cumulant): the US bit of the observation that ``step`` returns, so the learner's
cumulant C_t arrives with S_t, as rtu_edge/train.py feeds it. The first observation (from
``reset``) is trial step 0 of the first trial.

Tasks (``k`` CS bits):

- ``animal/trace-conditioning``: k = 1, every trial delivers the US.
- ``animal/trace-patterning``: k = 6. Each trial shows one of the C(6, 3) = 20 patterns with
  exactly 3 of the 6 CS bits on, uniformly at random. A pattern is positive (its trial delivers
  the US) when an odd number of its active bits lie in CS_1..CS_3: 10 positive patterns, 10
  negative. The rule is a parity, so no linear function of the CS bits separates the two sets
  (a learner needs a non-linear, configural representation of the pattern, as in patterning).
- ``animal/noisy-patterning``: trace patterning whose outcome is noisy: a positive pattern
  delivers the US with probability 1 - noise, a negative one with probability noise (noise =
  0.1 by default, kwarg ``noise``).

ISIs registered: ISI0 = 10 (the plain ids) and ISI0 = 30 (ids ending ``-isi30``); any other is
``make(id, isi0=...)``. The discount that matches an ISI0 (about 1 - 1/ISI0) is
``GAMMA_FOR_ISI`` = {4: .75, 5: .8, 10: .9, 20: .95, 30: .966, 40: .975, 80: .9875} (other ISI0:
1 - 1/ISI0), exposed as ``env.unwrapped.gamma`` and ``info["gamma"]`` of ``reset``. The TD
learner's default gamma, 0.9, is the one for ISI0 = 10; for the -isi30 ids train with
``--set learner.gamma=0.966``.

No episodes: the stream never terminates. The registry requires a TimeLimit, so it gets one at
``STREAM_STEPS`` = 10**9 steps, far beyond any run here; reaching it would truncate (the learner
bootstraps) and the next reset would start a new stream. The env reads no actions: the action
space is Discrete(1), whose only action 0 it ignores (anything else is an error), so the generic
training loop and its random behaviour policy run unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtu_edge.envs.registry import require

if TYPE_CHECKING:
    import gymnasium

STREAM_STEPS = 10**9  # the TimeLimit of an endless stream (see the module docstring)
CS_STEPS = 4  # the CS stays on for this many steps at trial start
US_STEPS = 2  # the US stays on for this many steps, from trial step ISI
ITI_RANGE = (80, 120)  # inclusive bounds of the inter-trial interval
NUM_DISTRACTORS = 10  # distractor i = 1..10 has onset probability 1/(10 i)
DISTRACTOR_STEPS = 4  # a distractor stays on for this many steps after its onset
PATTERN_CS = 6  # CS bits of the patterning tasks
PATTERN_ACTIVE = 3  # CS bits on in every pattern
NOISE = 0.1  # noisy patterning: the probability that a trial's outcome is flipped
# The benchmark's discount per ISI0 (about 1 - 1/ISI0).
GAMMA_FOR_ISI = {4: 0.75, 5: 0.8, 10: 0.9, 20: 0.95, 30: 0.966, 40: 0.975, 80: 0.9875}
REGISTERED_ISI = (10, 30)


def gamma_for_isi(isi0: int) -> float:
    """The discount the benchmark uses for ISI0 (GAMMA_FOR_ISI, else 1 - 1/ISI0)."""
    return GAMMA_FOR_ISI.get(int(isi0), 1.0 - 1.0 / int(isi0))


def isi_range(isi0: int) -> tuple[int, int]:
    """Inclusive bounds of the ISI for ISI0: ISI0 -+ floor(ISI0 / 3)."""
    return int(isi0) - int(isi0) // 3, int(isi0) + int(isi0) // 3


def patterns() -> tuple[tuple[tuple[int, ...], ...], tuple[bool, ...]]:
    """The patterning tasks' 20 CS patterns (3 of 6 bits on, lexicographic order of the active
    indices) and whether each is positive (an odd number of active bits among CS_1..CS_3)."""
    from itertools import combinations

    pats, positive = [], []
    for active in combinations(range(PATTERN_CS), PATTERN_ACTIVE):
        pats.append(tuple(int(i in active) for i in range(PATTERN_CS)))
        positive.append(sum(i < PATTERN_CS // 2 for i in active) % 2 == 1)
    return tuple(pats), tuple(positive)


def _stream(env_id: str, **kwargs: Any) -> gymnasium.Env:
    require("gymnasium", env_id)
    from gymnasium.wrappers import TimeLimit

    from rtu_edge.envs.animal_env import TraceStream

    return TimeLimit(TraceStream(**kwargs), max_episode_steps=STREAM_STEPS)


def trace_conditioning(isi0: int = 10, **kwargs: Any) -> gymnasium.Env:
    """One CS, US on every trial. kwargs go to TraceStream (e.g. num_distractors=0)."""
    return _stream("animal/trace-conditioning", isi0=isi0, **kwargs)


def trace_patterning(isi0: int = 10, **kwargs: Any) -> gymnasium.Env:
    """Six CS bits, 20 patterns, US after the 10 positive ones."""
    pats, positive = patterns()
    return _stream("animal/trace-patterning", isi0=isi0, patterns=pats, positive=positive, **kwargs)


def noisy_patterning(isi0: int = 10, noise: float = NOISE, **kwargs: Any) -> gymnasium.Env:
    """Trace patterning with each trial's outcome flipped with probability ``noise``."""
    pats, positive = patterns()
    return _stream(
        "animal/noisy-patterning",
        isi0=isi0,
        patterns=pats,
        positive=positive,
        noise=noise,
        **kwargs,
    )


def _with_isi(factory, isi0: int):
    def make_isi(**kwargs: Any) -> gymnasium.Env:
        return factory(isi0=isi0, **kwargs)  # a second isi0 is a TypeError

    make_isi.__name__ = f"{factory.__name__}_isi{isi0}"
    make_isi.__doc__ = f"{factory.__doc__} ISI0 = {isi0}."
    return make_isi


_TASKS = (  # name, factory, observation, which trials deliver the US
    ("trace-conditioning", trace_conditioning, "obs 12: US, CS, 10 distractors", "every trial"),
    (
        "trace-patterning",
        trace_patterning,
        "obs 17: US, 6 CS, 10 distractors",
        "after 10 of 20 CS patterns",
    ),
    (
        "noisy-patterning",
        noisy_patterning,
        "obs 17: US, 6 CS, 10 distractors",
        f"after 10 of 20 CS patterns, outcome flipped w.p. {NOISE}",
    ),
)


def _description(name: str, obs: str, us: str, isi0: int) -> str:
    lo, hi = isi_range(isi0)
    return (
        f"{name.replace('-', ' ')} stream: predict the US ({us}), ISI {lo}-{hi},"
        f" ITI {ITI_RANGE[0]}-{ITI_RANGE[1]}, gamma {gamma_for_isi(isi0):g} ({obs});"
        " discrete 1 (ignored)"
    )


def _entries():
    for name, factory, obs, us in _TASKS:
        yield f"animal/{name}", factory, _description(name, obs, us, 10)
    for name, factory, obs, us in _TASKS:
        for isi0 in REGISTERED_ISI[1:]:
            yield (
                f"animal/{name}-isi{isi0}",
                _with_isi(factory, isi0),
                _description(name, obs, us, isi0),
            )


# (id, factory, description) for the registry.
ENVS = tuple(_entries())
