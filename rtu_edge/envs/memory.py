"""Memory chain (bsuite's MemoryChain / "memory_len", Osband et al. 2020): remember one context
bit for L steps and report it at the end.

``memory/chain-L``, for L in ``LENGTHS``; ``make(id, num_bits=n)`` gives n context bits, of
which the last step asks for one. An episode has exactly L observations t = 0..L-1 and L
actions:

- observation (float32, size 1 + 2n): [time left, context_1..context_n, query_1..query_n];
  time left = 1 - t/L on every step (1 at t = 0, 1/L at t = L-1: a clock, as in bsuite);
  context_j = +1 or -1 (context bit 1 or 0) at t = 0 only, 0 afterwards; query = one-hot of the
  queried bit at t = L-1 only (with n = 1 it is a plain "answer now" flag), 0 before.
- context bits uniform in {0, 1} and the queried bit uniform, drawn at reset.
- actions: Discrete(2). Actions at t < L-1 are ignored (reward 0). The action after the query
  (at t = L-1) ends the episode (terminated): reward +1 if it equals the queried context bit,
  -1 otherwise. The final observation is [0, 0...] (time left 0, nothing shown).
- a TimeLimit of L steps, which never cuts an episode (it terminates on its L-th step).

So a policy that remembers the context gets +1 every episode and a memoryless one 0 on average.
Differences from bsuite: bsuite returns the t = 0 observation twice (its episodes are L + 1
steps, the context shown on two), and shows the query as a bit index (always 0 with one bit);
here every step advances time and the query is one-hot. The return is the same: +1 or -1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rtu_edge.envs.registry import require

if TYPE_CHECKING:
    import gymnasium

LENGTHS = (2, 4, 8, 16, 32, 64, 128)


def memory_chain(length: int, num_bits: int = 1) -> gymnasium.Env:
    """The chain of ``length`` steps with ``num_bits`` context bits, in a TimeLimit of length."""
    require("gymnasium", f"memory/chain-{length}")
    from gymnasium.wrappers import TimeLimit

    from rtu_edge.envs.memory_env import MemoryChain

    return TimeLimit(MemoryChain(length, num_bits), max_episode_steps=int(length))


def _factory(length: int):
    def factory(**kwargs: Any) -> gymnasium.Env:
        return memory_chain(length, **kwargs)

    factory.__name__ = f"make_chain_{length}"
    factory.__doc__ = f"Memory chain of {length} steps (see module docstring)."
    return factory


def _description(length: int) -> str:
    return (
        f"bsuite memory chain: context bit at t=0, report it after {length} steps, reward +-1"
        " at the end (obs: time left, context, query); discrete 2"
    )


# (id, factory, description) for the registry.
ENVS = tuple((f"memory/chain-{n}", _factory(n), _description(n)) for n in LENGTHS)
